"""The confmeet command line."""
