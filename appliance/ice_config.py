"""ICE as the settings configure it: how the SFU binds and which servers it asks (STUN only), and
the time-limited TURN credentials that clients, and ``confmeet doctor``'s TURN check, present."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time

from .settings import Settings
from .sfu.ice import IceServer, IceSettings


def media_ice_settings(settings: Settings) -> IceSettings:
    """The SFU's ICE configuration. The SFU itself only uses STUN; TURN is for clients."""
    stun = tuple(IceServer((url,)) for url in settings.ice_servers if url.startswith("stun"))
    return IceSettings(announced_addresses=tuple(settings.announced_addresses),
                       udp_port_min=settings.media_udp_min, udp_port_max=settings.media_udp_max,
                       ice_servers=stun, loopback=settings.media_loopback)


def turn_credentials(secret: str, user: str, minutes: int) -> tuple[str, str]:
    """coturn's time-limited credentials (use-auth-secret): ``expiry:user`` and its HMAC-SHA1."""
    username = f"{int(time.time()) + minutes * 60}:{user}"
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return username, base64.b64encode(digest).decode()
