"""Signaling's Prometheus metrics (docs/operations.md lists them). Labels stay few and fixed: a
message's ``type`` is one the protocol knows (anything else counts as ``unknown``), an error's
``code`` one the server sends; no meeting or participant ever becomes a label."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

CONNECTIONS = Gauge("confmeet_signaling_connections", "open signaling WebSockets (signed in)")
MESSAGES = Counter("confmeet_signaling_messages", "messages received from clients, by type", ["type"])
ERRORS = Counter("confmeet_signaling_errors", "error messages sent to clients, by code", ["code"])
REFUSED = Counter("confmeet_signaling_refused_connections", "WebSockets closed before any message: no valid sign-in")
