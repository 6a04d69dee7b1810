"""Backups of a whole install: the database, the documents, the objects and the settings with their
secrets, in one archive (the format is described in archive.py), and their restore into the same
or other kinds of stores (SQLite to PostgreSQL, local files to S3, SQLite documents to MongoDB).

The archive code is blocking and streams everything (tar, hashes, encryption, JSON lines); it
reaches the async stores through a Portal. ``confmeet backup`` (cli/backup.py) is its front end.
"""

from .archive import BackupError
from .create import Created, create_backup
from .location import ArchiveInfo, Location, default_location, open_location, split_archive
from .portal import Portal
from .progress import Progress, Silent
from .restore import Restored, restore_archive, restore_state_path
from .verify import Verified, verify_archive

__all__ = [
    "ArchiveInfo", "BackupError", "Created", "Location", "Portal", "Progress", "Restored", "Silent", "Verified",
    "create_backup", "default_location", "open_location", "restore_archive", "restore_state_path",
    "split_archive", "verify_archive",
]
