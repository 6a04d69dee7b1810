"""What the appliance is made of at run time, typed: built once by ``open_services`` (app.py
calls it as the server starts) and reached by handlers as ``call.services`` (REST) or
``request.app.ctx.services``. Nothing else holds these objects."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from .accounts import Accounts
from .cluster import Cluster
from .directory import Directory
from .captions.files import FileJobs
from .captions.transcripts import Transcripts
from .inference import Inference, open_inference
from .instance import InstanceLock
from .media import start_sfu
from .meetings import Meetings
from .monitoring import Monitor
from .oidc import Oidc
from .recording.service import Recordings
from .security import TokenIssuer
from .settings import Settings
from .sfu.workers import SfuWorkers
from .signaling.breakouts import Breakouts
from .signaling.captions import Captions
from .signaling.chat import Chat
from .signaling.e2ee import E2ee
from .signaling.lobby import Lobby
from .signaling.moderation import Moderation
from .signaling.polls import Polls
from .signaling.recording import Recording
from .signaling.server import Signaling
from .signaling.whiteboard import Whiteboard
from .stores import Stores, open_stores
from .stores.relational import Relational
from .throttle import Throttle, appliance_throttle


@dataclass
class Services:
    settings: Settings
    instance: InstanceLock
    stores: Stores
    accounts: Accounts
    meetings: Meetings
    throttle: Throttle
    inference: Inference
    file_jobs: FileJobs
    recordings: Recordings
    sfu: SfuWorkers
    signaling: Signaling
    chat: Chat
    captions: Captions
    monitor: Monitor
    oidc: Oidc | None = None  # sign-in with an OpenID provider, when oidc_issuer is set
    cluster: Cluster | None = None  # several nodes, when the bus is Redis (appliance/cluster.py)

    @property
    def db(self) -> Relational:
        return self.stores.db


async def open_services(settings: Settings, instance: InstanceLock) -> Services:
    """Open the stores, start the SFU's workers, and build everything on them; signaling gets its
    features here (adding one is adding its module and one line below)."""
    stores = await open_stores(settings)
    issuer = TokenIssuer(settings.secret_key, dt.timedelta(minutes=settings.access_token_minutes))
    directory = Directory(settings) if settings.ldap_url else None
    accounts = Accounts(stores.db, issuer, dt.timedelta(days=settings.refresh_token_days), stores.bus, directory)
    meetings = Meetings(stores.db, stores.bus, stores.documents, settings.base_url)
    throttle = appliance_throttle(settings, stores.db)
    inference = open_inference(settings.inference, settings.model_repository_path)
    recordings = Recordings(settings, stores.db, stores.objects)
    sfu = await start_sfu(settings)
    # A node's meetings: those with seats, and those with only knocks in the lobby (their placement
    # must hold until a host comes to let them in, on this node).
    cluster = (Cluster(settings.bus, settings.node, settings.internal_url, settings.secret_key,
                       lambda: {**dict.fromkeys(lobby.waiting, []), **signaling.meetings_in_progress()},
                       settings.node_ca_file)
               if stores.bus.kind == "redis" else None)
    signaling = Signaling(settings, sfu, accounts, meetings, stores.db, stores.bus, throttle, cluster)
    room = signaling.room
    lobby = Lobby(room, meetings, settings.max_waiting_per_meeting)
    chat = Chat(room, stores.documents, throttle)
    e2ee = E2ee(room, stores.db, throttle)
    captions = Captions(room, Transcripts(stores.documents), stores.db, e2ee)
    signaling.use(lobby, Moderation(room, meetings, stores.db, throttle, lobby), chat, captions,
                  Recording(room, recordings, e2ee))
    signaling.use(Whiteboard(room, stores.documents, throttle))
    signaling.use(Polls(room, stores.documents, throttle, settings.secret_key))
    signaling.use(e2ee)
    signaling.use(Breakouts(room, stores.documents, stores.db, chat, throttle))
    return Services(settings, instance, stores, accounts, meetings, throttle, inference,
                    FileJobs(inference, stores.documents, stores.objects, node=settings.node), recordings, sfu,
                    signaling, chat, captions,
                    Monitor(settings, stores, inference, captions),
                    Oidc(settings, settings.secret_key) if settings.oidc_issuer else None, cluster)
