"""The SFU as the appliance runs it: ICE from the settings, and worker processes whose rooms have
the appliance's sinks (a room's captions and recording run where its media is)."""

from __future__ import annotations

from . import logs, tracing
from .captions.sink import caption_sink_factory
from .inference import open_inference
from .recording.sink import SINK as RECORDING, recording_sink_factory
from .settings import Settings
from .sfu.host import RoomHost
from .sfu.ice import IceServer, IceSettings
from .sfu.workers import SfuWorkers, default_workers


def media_ice_settings(settings: Settings) -> IceSettings:
    """The SFU's ICE configuration. The SFU itself only uses STUN; TURN is for clients."""
    stun = tuple(IceServer((url,)) for url in settings.ice_servers if url.startswith("stun"))
    return IceSettings(announced_addresses=tuple(settings.announced_addresses),
                       udp_port_min=settings.media_udp_min, udp_port_max=settings.media_udp_max,
                       ice_servers=stun, loopback=settings.media_loopback)


def worker_host(ice: IceSettings, settings: Settings) -> RoomHost:
    """An SFU worker's RoomHost (made in the worker process): the captions' inference is the
    worker's own (the models load there when a room first turns captions on). Its logs take the
    appliance's format."""
    logs.configure(settings)
    tracing.configure(settings, "confmeet-sfu")  # captions' spans; sent at the worker's exit too
    inference = open_inference(settings.inference, settings.model_repository_path)
    return RoomHost(ice, sinks={"captions": caption_sink_factory(inference),
                                RECORDING: recording_sink_factory(settings)},
                    last_n=settings.last_n)


async def start_sfu(settings: Settings) -> SfuWorkers:
    """The appliance's SFU: ``sfu_workers`` processes (0: one per core), started."""
    sfu = SfuWorkers(media_ice_settings(settings), settings.sfu_workers or default_workers(),
                     "appliance.media:worker_host", settings)
    await sfu.start()
    return sfu
