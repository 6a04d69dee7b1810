"""``confmeet backup``: create, list, verify, restore and prune archives of the whole install."""

from __future__ import annotations

import contextlib
import json
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.progress import (BarColumn, DownloadColumn, MofNCompleteColumn, Progress, ProgressColumn, Task,
                           TaskID, TextColumn, TimeElapsedColumn, TransferSpeedColumn)
from rich.table import Table
from rich.text import Text

from appliance.settings import Settings

from .options import FAILED, ConfigOpt, DataDirOpt, JsonOpt, console, err, fail, settings_from

backup_app = typer.Typer(
    help="Back up and restore the whole install: database, documents, objects, settings and secrets.",
    no_args_is_help=True)


PassphraseOpt = Annotated[Optional[Path], typer.Option(
    "--passphrase-file", envvar="CONFMEET_BACKUP_PASSPHRASE_FILE",
    help="File whose first line is the passphrase that encrypts (or decrypts) the secrets or the archive.")]
LocationArg = Annotated[Optional[str], typer.Argument(
    help="Directory or s3://BUCKET/PREFIX \\[default: DATA_DIR/backups].", envvar="CONFMEET_BACKUP_TO",
    show_default=False)]
ArchiveArg = Annotated[str, typer.Argument(help="Archive file, or s3://BUCKET/PREFIX/NAME.")]


def load(config: Path | None, data_dir: Path | None) -> Settings:
    return settings_from(config, data_dir=data_dir)


def read_passphrase(path: Path | None) -> bytes | None:
    if path is None:
        return None
    try:
        lines = path.read_bytes().splitlines()
    except OSError as exc:
        fail(f"cannot read the passphrase file {path} ({exc.strerror or exc})")
    passphrase = lines[0] if lines else b""
    if not passphrase:
        fail(f"the passphrase file {path} is empty: put the passphrase on its first line")
    return passphrase


class _Amount(ProgressColumn):
    """Bytes for byte-counted steps, "n/total" for the others."""

    def __init__(self) -> None:
        super().__init__()
        self._bytes, self._items = DownloadColumn(), MofNCompleteColumn()

    def render(self, task: Task) -> Text:
        if task.fields.get("in_bytes"):
            return self._bytes.render(task)
        return self._items.render(task) if task.total is not None else Text(f"{int(task.completed)}")


class _Speed(ProgressColumn):
    def __init__(self) -> None:
        super().__init__()
        self._speed = TransferSpeedColumn()

    def render(self, task: Task) -> Text:
        return self._speed.render(task) if task.fields.get("in_bytes") else Text("")


class RichProgress:
    """The backup steps as Rich progress bars on standard error."""

    def __init__(self) -> None:
        self._bars = Progress(TextColumn("{task.description:<14}"), BarColumn(), _Amount(), _Speed(),
                              TimeElapsedColumn(), console=err)
        self._task: TaskID | None = None

    def __enter__(self) -> RichProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self._finish()
        self._bars.stop()

    def _finish(self) -> None:
        if self._task is not None:
            task = self._bars.tasks[-1]
            self._bars.update(self._task, total=max(task.completed, task.total or 0))

    def phase(self, label: str, total: int | None, *, in_bytes: bool = False) -> None:
        if self._task is None:
            self._bars.start()
        self._finish()
        self._task = self._bars.add_task(label, total=total, in_bytes=in_bytes)

    def advance(self, amount: int = 1) -> None:
        if self._task is not None:
            self._bars.advance(self._task, amount)


def _stop(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM (systemctl stop) cleans up as Ctrl-C does


@contextlib.contextmanager
def archive_operation(archive: str, passphrase_file: Path | None, config: Path | None,
                      data_dir: Path | None) -> Iterator[tuple[Settings, Any, Any, str, bytes | None]]:
    """What reading an archive starts with: the settings, the passphrase, and inside
    ``operation`` the portal and the archive's location; yields those and the archive's name."""
    from appliance.backup import open_location, split_archive

    settings = load(config, data_dir)
    passphrase = read_passphrase(passphrase_file)
    folder, name = split_archive(archive)
    with operation(settings) as portal:
        yield settings, portal, open_location(folder, settings, portal), name, passphrase


@contextlib.contextmanager
def operation(settings: Settings) -> Iterator[Any]:
    """A portal to the stores; errors become one line and a non-zero exit, never a traceback."""
    from appliance.backup import BackupError, Portal
    from appliance.stores import StoreUnavailable

    from appliance import tracing

    previous = signal.signal(signal.SIGTERM, _stop)
    tracing.configure(settings, "confmeet-backup")
    try:
        with Portal() as portal:
            yield portal
    except typer.Exit:
        raise
    except (BackupError, StoreUnavailable) as exc:
        fail(str(exc), FAILED)
    except KeyboardInterrupt:
        fail("interrupted: nothing was left half-written", 130)
    except OSError as exc:
        fail(f"{exc.strerror or exc}{f': {exc.filename}' if exc.filename else ''}", FAILED)
    except Exception as exc:  # a store failing in a way it does not name: say what, not where
        fail(f"{type(exc).__name__}: {exc}", FAILED)
    finally:
        signal.signal(signal.SIGTERM, previous)
        tracing.shutdown()  # the backup's spans are sent before the command exits


def mb(size: int) -> str:
    return f"{size / 1e6:.1f} MB"


def summary(manifest: dict[str, Any]) -> str:
    rows = sum(manifest["database"]["tables"].values())
    docs = sum(manifest["documents"]["collections"].values())
    objects = manifest["objects"]
    return (f"{rows} rows in {len(manifest['database']['tables'])} tables, {docs} documents in "
            f"{len(manifest['documents']['collections'])} collections, {objects['count']} objects "
            f"({mb(objects['bytes'])})")


@backup_app.command("create")
def create(
    to: Annotated[Optional[str], typer.Option(
        "--to", envvar="CONFMEET_BACKUP_TO", show_default=False,
        help="Directory or s3://BUCKET/PREFIX (or s3://KEY:SECRET@HOST:PORT/BUCKET/PREFIX) "
             "\\[default: DATA_DIR/backups].")] = None,
    passphrase_file: PassphraseOpt = None,
    encrypt_archive: Annotated[bool, typer.Option(
        "--encrypt-archive", help="Encrypt the whole archive, not only the settings and secrets.")] = False,
    keep: Annotated[Optional[int], typer.Option(
        "--keep", min=1, help="Then delete all but the newest N archives there.")] = None,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Back up the database, documents, objects and settings into one archive, while serving."""
    from appliance.backup import create_backup, default_location, open_location

    settings = load(config, data_dir)
    passphrase = read_passphrase(passphrase_file)
    if encrypt_archive and passphrase is None:
        fail("--encrypt-archive needs --passphrase-file")
    with operation(settings) as portal:
        location = open_location(to or default_location(settings), settings, portal)
        with RichProgress() as progress:
            created = create_backup(settings, location, portal, passphrase=passphrase,
                                    encrypt_archive=encrypt_archive, progress=progress)
        pruned = location.prune(keep) if keep else []
    if as_json:
        print(json.dumps({"location": created.location, "archive": created.name, "size": created.size,
                          "seconds": round(created.seconds, 3), "pruned": pruned,
                          "removed_partials": created.removed_partials, "manifest": created.manifest}, indent=2))
        return
    console.print(f"wrote [bold]{created.name}[/] to {created.location}: {mb(created.size)} in "
                  f"{created.seconds:.1f} s ({created.size / 1e6 / max(created.seconds, 1e-9):.1f} MB/s)",
                  highlight=False)
    console.print(f"  {summary(created.manifest)}", highlight=False)
    excluded = sum(created.manifest["database"]["excluded"].values())
    if excluded or created.manifest["objects"]["vanished"]:
        console.print(f"  deleted while the backup ran, left out: {excluded} rows, "
                      f"{created.manifest['objects']['vanished']} objects", highlight=False)
    if passphrase is None:
        console.print("  [yellow]the secrets are stored unencrypted: keep the archive private, or pass "
                      "--passphrase-file[/]")
    if pruned:
        console.print(f"  deleted {len(pruned)} older archive(s): {', '.join(pruned)}", highlight=False)
    if created.removed_partials:
        console.print(f"  removed {len(created.removed_partials)} archive(s) left half-written by a backup "
                      f"that stopped: {', '.join(created.removed_partials)}", highlight=False)


PARTIAL_STATES = {True: "half-written: its backup stopped", False: "being written", None: "incomplete upload"}


@backup_app.command("list")
def list_archives(
    location: LocationArg = None,
    show_all: Annotated[bool, typer.Option(
        "--all", help="Also list the archives being written, or left half-written by a backup that stopped.")] = False,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """List the archives in a directory or S3 prefix, oldest first."""
    from appliance.backup import default_location, open_location

    settings = load(config, data_dir)
    with operation(settings) as portal:
        where = open_location(location or default_location(settings), settings, portal)
        archives = where.archives()
        partials = where.partials() if show_all else []
    if as_json:
        listed = [{"name": a.name, "size": a.size, "modified": a.modified.isoformat(),
                   "encrypted": a.encrypted} for a in archives]
        listed += [{"name": p.name, "size": p.size, "modified": p.begun.isoformat(), "partial": True,
                    "state": PARTIAL_STATES[p.abandoned]} for p in partials]
        print(json.dumps(listed, indent=2))
        return
    title = f"{len(archives)} archive(s)" + (f" and {len(partials)} incomplete" if show_all else "")
    table = Table(title=f"{title} in {where.describe()}")
    for column in ("archive", "size", "written", "encrypted"):
        table.add_column(column)
    for a in archives:
        table.add_row(a.name, mb(a.size), a.modified.strftime("%Y-%m-%d %H:%M:%S UTC"),
                      "whole archive" if a.encrypted else "")
    for p in partials:
        table.add_row(f"{p.name} ({PARTIAL_STATES[p.abandoned]})", "" if p.size is None else mb(p.size),
                      p.begun.strftime("%Y-%m-%d %H:%M:%S UTC"), "")
    console.print(table)


@backup_app.command("verify")
def verify(
    archive: ArchiveArg,
    passphrase_file: PassphraseOpt = None,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Read a whole archive back: every checksum, the manifest, and every part as a restore reads it."""
    from appliance.backup import verify_archive

    with archive_operation(archive, passphrase_file, config, data_dir) as (_, _, location, name, passphrase):
        with RichProgress() as progress:
            verified = verify_archive(location, name, passphrase, progress)
        verified.close()
    if as_json:
        print(json.dumps({"archive": name, "size": verified.size, "manifest": verified.manifest,
                          "unopened": verified.encrypted_config}, indent=2))
        return
    console.print(f"[green]{name} is intact[/]: {summary(verified.manifest)}", highlight=False)
    if verified.encrypted_config:
        console.print(f"  not opened without --passphrase-file: {', '.join(verified.encrypted_config)}",
                      highlight=False)


@backup_app.command("restore")
def restore(
    archive: ArchiveArg,
    passphrase_file: PassphraseOpt = None,
    force: Annotated[bool, typer.Option("--force", help="Replace everything in a non-empty install.")] = False,
    resume: Annotated[bool, typer.Option("--resume", help="Finish a restore that was interrupted.")] = False,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Restore an archive into the stores the settings name (stop the appliance first)."""
    from appliance.backup import restore_archive

    with archive_operation(archive, passphrase_file, config, data_dir) as (settings, portal, location, name,
                                                                             passphrase):
        with RichProgress() as progress:
            restored = restore_archive(settings, location, name, portal, passphrase=passphrase, force=force,
                                       resume=resume, progress=progress)
    if as_json:
        print(json.dumps({"archive": name, "seconds": round(restored.seconds, 3), "notes": restored.notes,
                          "manifest": restored.manifest}, indent=2))
        return
    console.print(f"[green]restored {name}[/] in {restored.seconds:.1f} s: {summary(restored.manifest)}",
                  highlight=False)
    for note in restored.notes:
        console.print(f"  {note}", highlight=False)


@backup_app.command("prune")
def prune(
    keep: Annotated[int, typer.Option("--keep", min=1, help="How many of the newest archives to keep.")],
    location: LocationArg = None,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Delete all but the newest N archives, and what backups that stopped left half-written."""
    from appliance.backup import default_location, open_location

    settings = load(config, data_dir)
    with operation(settings) as portal:
        where = open_location(location or default_location(settings), settings, portal)
        deleted = where.prune(keep)
        removed = where.remove_partials()
    if as_json:
        print(json.dumps({"deleted": deleted, "removed_partials": removed}))
        return
    console.print(f"deleted {len(deleted)} archive(s) from {where.describe()}, kept the newest {keep}",
                  highlight=False)
    if removed:
        console.print(f"removed {len(removed)} archive(s) left half-written by a backup that stopped: "
                      f"{', '.join(removed)}", highlight=False)
