"""Start-up repairs: what a process that died (killed, out of memory, a power cut) left open or
half-done is closed here, in one place, before the appliance serves. Each kind of state has its
rule, and none reports a loss as a success:

- participants still seated (``left_at`` empty): they left when the dead process was last known
  alive (this node's only: several nodes share the database, appliance/cluster.py);
- recordings under way (this node's): every track file finished up to its last complete frame, the recording
  stored as interrupted (recording/service.py); pending recording uploads and exports resumed;
- transcription jobs queued, running or interrupted (this node's, and those of nodes that died):
  resumed from their last utterance, or failed with the reason (captions/files.py);
- partial writes in the object store (temporary files, incomplete multipart uploads): removed; with
  several nodes sharing a bucket, only uploads begun over an hour ago (another node's may be under way);
- archives a backup left half-written in the default backup directory: removed.

The instance lock comes first: one appliance per data directory, so that a second start (by
mistake, beside a running one) never "repairs" the live state of the first. Its file's mtime is
touched every ``HEARTBEAT_S`` while the appliance runs, which dates the death of a process.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from pathlib import Path

from .backup.location import DirectoryLocation, default_location
from .instance import InstanceLock
from .captions.files import FileJobs
from .cluster import read_nodes
from .recording.service import Recordings
from .settings import Settings
from .stores import Stores
from .stores.relational import Participant, utcnow

log = logging.getLogger("confmeet.reconcile")

# The object keys the appliance writes: files shared in meetings (api/files.py), recordings and
# their exports (recording/), transcription inputs (captions/files.py). Backups that run beside
# the appliance and write into its bucket use other keys, and clean up after themselves.
APPLIANCE_KEYS = ("meetings/", "recordings/", "ai/")
# With several nodes an upload in the shared bucket may be another node's, under way: only those
# begun this long ago are taken for a dead process's (S3 does not say which node began one), and
# only transcription inputs stored this long ago for a stop's leftovers.
OTHER_NODES_UPLOADS = dt.timedelta(hours=1)


async def reconcile(settings: Settings, stores: Stores, lock: InstanceLock, recordings: Recordings,
                    file_jobs: FileJobs) -> dict[str, int]:
    """Repair what a previous process left (see the module docstring); what was repaired, counted."""
    repaired: dict[str, int] = {}
    left_at = min(lock.last_alive, utcnow()) if lock.last_alive is not None else utcnow()
    repaired["participants closed"] = await stores.db.run(lambda: Participant.update(left_at=left_at).where(
        Participant.left_at.is_null(), (Participant.node == settings.node) | Participant.node.is_null()).execute())
    repaired |= await recordings.recover()
    # Several nodes share the stores: another node's jobs and uploads may be under way.
    alive = {n.name for n in await read_nodes(settings.bus) if n.alive} if stores.bus.kind == "redis" else None
    begun_before = dt.datetime.now(dt.UTC) - OTHER_NODES_UPLOADS if alive is not None else None
    repaired |= await file_jobs.resume(alive, begun_before)
    partial = 0
    for prefix in APPLIANCE_KEYS:
        partial += await stores.objects.remove_partial_writes(prefix, begun_before)
    repaired["partial object writes removed"] = partial
    backups = DirectoryLocation(Path(default_location(settings)))
    repaired["partial backup archives removed"] = len(await asyncio.to_thread(backups.remove_partials))
    if any(repaired.values()):
        log.warning("repaired what the previous run left: %s",
                    ", ".join(f"{count} {what}" for what, count in repaired.items() if count))
    return repaired
