"""Signaling: the WebSocket protocol (protocol.py), its server (server.py) and its features, each a
module against the narrow view of room.py. docs/protocol.md documents the messages."""

from .captions import Captions
from .chat import Chat
from .lobby import Lobby
from .moderation import Moderation
from .protocol import Close, Connection, Seat, SignalingError
from .recording import Recording
from .server import Signaling

__all__ = ["Captions", "Chat", "Close", "Connection", "Lobby", "Moderation", "Recording", "Seat", "Signaling",
           "SignalingError"]
