class StoreUnavailable(Exception):
    """A backing service cannot be reached or used; the message names it and the fix."""
