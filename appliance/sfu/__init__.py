"""The SFU: forwards each participant's RTP to the others without transcoding.

Signaling talks to it only through :class:`RoomHost` (messages in, events out).
"""

from .errors import SfuError
from .host import EventStream, RoomHost
from .ice import IceServer, IceSettings
from .speaker import SpeakerSettings
from .stats import SfuStats

__all__ = ["EventStream", "IceServer", "IceSettings", "RoomHost", "SfuError", "SfuStats", "SpeakerSettings"]
