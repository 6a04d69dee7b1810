"""The host the appliance is installed on: GPU, preflight and doctor checks, TLS files, systemd units."""
