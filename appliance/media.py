"""The SFU as the appliance runs it: its ICE configuration from the settings."""

from __future__ import annotations

from .settings import Settings
from .sfu.ice import IceServer, IceSettings


def media_ice_settings(settings: Settings) -> IceSettings:
    """The SFU's ICE configuration. The SFU itself only uses STUN; TURN is for clients."""
    stun = tuple(IceServer((url,)) for url in settings.ice_servers if url.startswith("stun"))
    return IceSettings(announced_addresses=tuple(settings.announced_addresses),
                       udp_port_min=settings.media_udp_min, udp_port_max=settings.media_udp_max,
                       ice_servers=stun, loopback=settings.media_loopback)
