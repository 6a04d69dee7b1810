"""Signaling: the WebSocket protocol (protocol.py), its server (server.py) and its features, each a
module against the narrow view of room.py (docs/architecture.md). docs/protocol.md documents the
messages. Import what you need from its modules: importing a feature must not bring the server
(and with it the web framework) along."""
