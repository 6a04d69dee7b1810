"""Upgrading the installed appliance to another release, and rolling back.

``upgrade`` makes the new release beside the running one (``/opt/confmeet/releases/<version>/``),
stops the unit, backs the whole install up with the running release's ``confmeet backup
create``, migrates the database with the new release's ``confmeet migrate``, switches
``current`` and the unit to the new release, starts it and waits until ``/readyz`` answers 200
from the new version. If it does not, the same run goes back: the database is restored from
that backup when the schema moved, ``current`` and the unit point at the old release again, it
starts, and the new release is removed if this run made it.

``rollback`` undoes the last upgrade (``/etc/confmeet/upgrade.json``): when the upgrade moved
the database schema, the old release cannot run on it, so the backup taken at the upgrade is
restored (what was written since is lost, and the plan says so); without that backup it refuses
and names the fix. The database it replaces is set aside, never deleted: PostgreSQL's schema
``public`` is renamed, an SQLite file moved.

Every release command runs as the service user (``runuser -u confmeet``) with the unit's umask,
so the files it creates in the data directory stay the appliance's.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
import shutil
import ssl
import subprocess
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import release, units
from .deploy import InstallRecord, Layout, SERVICE_USER, service_user_exists, systemd_running

UPGRADE_FILE = "upgrade.json"  # the last upgrade that succeeded
INTERRUPTED_FILE = "upgrade.interrupted.json"  # one under way, or stopped before it finished or went back
LOCK_FILE = ".upgrade.lock"
UNIT_UMASK = 0o027  # confmeet.service's UMask=
RELEASE_COMMAND_TIMEOUT = 3600  # a backup or restore of a large install takes long

Log = Callable[[str], None]


class UpgradeError(Exception):
    """An upgrade or rollback cannot go on; the message says what happened and what to do."""


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def version_key(version: str) -> tuple:
    """Orders release versions (1.10 after 1.9); non-numeric parts sort before numbers."""
    return tuple((1, int(p)) if p.isdigit() else (0, p) for p in version.replace("-", ".").split("."))


# ---------------------------------------------------------------------- what the upgrade remembers
@dataclass
class UpgradeRecord:
    """The last upgrade, kept in ``/etc/confmeet/upgrade.json`` (0600) for ``rollback``."""

    from_version: str
    from_release: str
    to_version: str
    to_release: str
    schema_before: int
    schema_after: int
    backup_location: str
    backup_archive: str
    upgraded_at: str
    rolled_back_at: str = ""

    @property
    def schema_moved(self) -> bool:
        return self.schema_after != self.schema_before

    @classmethod
    def read(cls, layout: Layout, name: str = UPGRADE_FILE) -> UpgradeRecord | None:
        path = layout.config_dir / name
        try:
            values = json.loads(path.read_text())
            return cls(**{k: v for k, v in values.items() if k in cls.__dataclass_fields__})
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError) as exc:
            raise UpgradeError(f"cannot read {path} ({exc}): run as root; if it is damaged, move it away "
                               "(rollback then has nothing to undo)") from None

    def write(self, layout: Layout, name: str = UPGRADE_FILE) -> None:
        from ..fsutil import write_atomically

        write_atomically(layout.config_dir / name, json.dumps(asdict(self), indent=2).encode() + b"\n", mode=0o600)


def _forget_interrupted(layout: Layout) -> None:
    (layout.config_dir / INTERRUPTED_FILE).unlink(missing_ok=True)


# ---------------------------------------------------------------------- a release's own commands
def release_command(layout: Layout, target: Path, *args: str, what: str, log: Log = lambda message: None
                    ) -> dict[str, Any]:
    """``<target>/bin/confmeet ARGS --config CONFIG --json``, as the service user when installing
    onto this host (so what it creates in the data directory is the appliance's), with the unit's
    umask and data directory; its JSON. UpgradeError with its last error lines when it fails."""
    argv = [str(target / "bin/confmeet"), *args, "--config", str(layout.config_file), "--json"]
    if layout.is_host and os.geteuid() == 0 and service_user_exists():
        argv = ["runuser", "-u", SERVICE_USER, "--", *argv]
    env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8",
           "CONFMEET_DATA_DIR": str(layout.data_dir), "PYTHONUNBUFFERED": "1", "COLUMNS": "120", "TERM": "dumb"}
    log(f"{what}: {target.name}/bin/confmeet {' '.join(args)}")
    try:
        done = subprocess.run(argv, capture_output=True, text=True, env=env, cwd="/", umask=UNIT_UMASK,
                              timeout=RELEASE_COMMAND_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise UpgradeError(f"{what} failed: {exc}") from None
    if done.returncode != 0:
        lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
        tail = "\n".join(lines[-6:]).removeprefix("error: ")
        raise UpgradeError(f"{what} failed (confmeet {target.name} exited {done.returncode}): "
                           f"{tail or done.stdout.strip()[-500:]}")
    try:
        return json.loads(done.stdout)
    except ValueError:
        raise UpgradeError(f"{what}: confmeet {target.name} printed no JSON: {done.stdout[-300:]}") from None


# ---------------------------------------------------------------------- the installed host
@dataclass
class Ready:
    ok: bool
    detail: str
    version: str = ""


@dataclass
class Host:
    """The installed appliance as upgrade and rollback act on it."""

    layout: Layout
    log: Log = lambda message: None
    record: InstallRecord = field(init=False)

    def __post_init__(self) -> None:
        from .deploy import DeployError

        try:
            record = InstallRecord.read(self.layout)
        except DeployError as exc:
            raise UpgradeError(str(exc)) from None
        if record is None:
            raise UpgradeError(f"no install found under {self.layout.root} ({self.layout.record_file} is "
                               "missing): install first with 'confmeet install'")
        self.record = record

    @property
    def systemd(self) -> bool:
        return systemd_running(self.layout)

    @property
    def current(self) -> Path:
        found = release.current(self.layout.opt_dir)
        if found is None or not (found / "bin/confmeet").exists():
            raise UpgradeError(f"{self.layout.opt_dir / 'current'} points at no release: run 'confmeet install' "
                               "(it makes the release), then upgrade")
        return found

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """One upgrade or rollback at a time."""
        path = self.layout.config_dir / LOCK_FILE
        with path.open("a") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise UpgradeError(f"another upgrade or rollback is running (it holds {path}); wait for it "
                                   "to finish") from None
            yield

    # ------------------------------------------------------------------ running a release's confmeet
    def release_command(self, target: Path, *args: str, what: str) -> dict[str, Any]:
        return release_command(self.layout, target, *args, what=what, log=self.log)

    def schema(self, target: Path) -> dict[str, Any]:
        """The database's schema version and the one ``target`` knows (nothing changes)."""
        return self.release_command(target, "migrate", "--check", what="reading the database schema")

    # ------------------------------------------------------------------ the unit
    def write_unit(self, target: Path) -> None:
        """confmeet.service from ``target``'s own files, running /opt/confmeet/current."""
        layout = self.layout
        config = "/etc/confmeet/confmeet.toml" if layout.is_host else str(layout.config_file)
        try:
            units.write_appliance_unit(layout.unit_dir, release.program(layout.opt_dir, layout.root), config,
                                       privileged_port=self.record.appliance_port < 1024,
                                       systemd_dir=target / "share/confmeet/systemd")
            if self.systemd:
                units.systemctl("daemon-reload")
        except units.UnitError as exc:
            raise UpgradeError(str(exc)) from None

    def stop(self) -> bool:
        """Stop the unit; whether it was running."""
        if not self.systemd:
            return False
        active = units.systemctl("is-active", units.APPLIANCE_UNIT) in ("active", "activating")
        try:
            units.systemctl("stop", units.APPLIANCE_UNIT)
        except units.UnitError as exc:
            raise UpgradeError(str(exc)) from None
        return active

    def start(self) -> None:
        if self.systemd:
            try:
                units.systemctl("reset-failed", units.APPLIANCE_UNIT)
            except units.UnitError:
                pass  # it had not failed
            try:
                units.systemctl("start", units.APPLIANCE_UNIT)
            except units.UnitError as exc:
                raise UpgradeError(str(exc)) from None

    def unit_state(self) -> dict[str, str]:
        out = units.systemctl("show", units.APPLIANCE_UNIT, "-p", "ActiveState", "-p", "SubState", "-p",
                              "NRestarts", "-p", "Result")
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def journal(self, since: str, lines: int = 12) -> str:
        """The unit's last log lines since ``since`` (local time)."""
        done = subprocess.run(["journalctl", "-u", units.APPLIANCE_UNIT, "--since", since, "-o", "cat", "--no-pager"],
                              capture_output=True, text=True)
        return "\n".join(done.stdout.strip().splitlines()[-lines:])

    def ready(self, timeout: float = 3) -> Ready:
        """``/healthz`` (the version) and ``/readyz`` over the settings' address, verifying the
        certificate against the private CA when the installer made it."""
        from .ports import loopback_for

        record = self.record
        host = loopback_for(record.listen)
        base = f"https://{f'[{host}]' if ':' in host else host}:{record.appliance_port}"
        if record.tls_generated:
            context = ssl.create_default_context(cafile=str(self.layout.tls_dir / "ca.pem"))
        else:  # the operator's certificate names the public host, not loopback
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        try:
            with urllib.request.urlopen(f"{base}/healthz", context=context, timeout=timeout) as response:
                version = json.loads(response.read()).get("version", "")
            with urllib.request.urlopen(f"{base}/readyz", context=context, timeout=timeout) as response:
                return Ready(response.status == 200, f"{base}/readyz answered {response.status}", version)
        except urllib.error.HTTPError as exc:
            return Ready(False, f"{base}/readyz answered {exc.code}: {exc.read()[:200].decode(errors='replace')}")
        except (OSError, ValueError) as exc:
            return Ready(False, f"{base}: {getattr(exc, 'reason', None) or exc}")

    def wait_ready(self, version: str, timeout: float) -> Ready:
        """Until ``version`` answers /readyz 200; sooner a failure when the unit fails or restarts."""
        before = self.unit_state().get("NRestarts", "0")
        deadline = time.monotonic() + timeout
        answer = Ready(False, "not asked yet")
        while time.monotonic() < deadline:
            state = self.unit_state()
            if (state.get("ActiveState") == "failed" or state.get("SubState") == "auto-restart"
                    or state.get("NRestarts", "0") != before):
                return Ready(False, f"the unit stopped ({state.get('Result', '?')}) and systemd restarts it")
            answer = self.ready()
            if answer.ok and answer.version == version:
                return answer
            if answer.ok:
                answer = Ready(False, f"confmeet {answer.version} answers, not {version}")
            time.sleep(0.5)
        return Ready(False, f"not ready within {timeout:.0f} s: {answer.detail}")

    # ------------------------------------------------------------------ the database
    def set_aside_database(self, stamp: str) -> str:
        """Move the database away so that a restore starts from an empty one; nothing is deleted.
        Returns where the old one went."""
        from ..settings import load_settings
        from ..stores.urls import local_path, scheme

        url = load_settings(self.layout.config_file, env={}).database_url
        if scheme(url) == "sqlite":
            path = local_path(url)
            kept = path.with_name(f"{path.name}.before-rollback-{stamp}")
            for suffix in ("", "-wal", "-shm"):
                source = Path(f"{path}{suffix}")
                if source.exists():
                    source.rename(f"{kept}{suffix}")
            return str(kept)
        import peewee as pw

        from ..stores.relational import connect_database

        schema = f"confmeet_before_rollback_{stamp}"
        db = connect_database(url)
        try:
            db.connect()
            with db.atomic():
                db.execute_sql(f'ALTER SCHEMA public RENAME TO "{schema}"')
                db.execute_sql("CREATE SCHEMA public")
        except pw.PeeweeException as exc:
            raise UpgradeError(f"cannot set the database aside for the restore ({str(exc).strip()}); the role "
                               "must own schema public (the installer's database does)") from None
        finally:
            db.close()
        return f"schema {schema} of the database"


# ---------------------------------------------------------------------- where the new release comes from
@contextlib.contextmanager
def release_source(path: Path, wheelhouse: Path | None, log: Log) -> Iterator[tuple[release.Source, Path | None]]:
    """A confmeet wheel as it is, or an offline bundle's (checked against its manifest, its
    wheels unpacked for the release's dependencies)."""
    if not path.is_file():
        raise UpgradeError(f"{path} does not exist: give a confmeet wheel (confmeet-VERSION-*.whl) "
                           "or an offline bundle (confmeet bundle create)")
    if path.name.endswith(".whl"):
        if not path.name.startswith("confmeet-"):
            raise UpgradeError(f"{path.name} is not a confmeet wheel")
        yield release.Source("wheel", str(path.absolute())), wheelhouse
        return
    from .images import ImageError, verify_bundle

    try:
        manifest = verify_bundle(path, log)
    except ImageError as exc:
        raise UpgradeError(str(exc)) from None
    wheels = [n for n in manifest.files if n.startswith("wheels/") and n.endswith(".whl")]
    own = [n for n in wheels if n.startswith("wheels/confmeet-")]
    if not own:
        raise UpgradeError(f"{path} holds no confmeet wheel: make it again with 'confmeet bundle create'")
    with tempfile.TemporaryDirectory(prefix="confmeet-upgrade-") as tmp:
        log(f"unpacking {len(wheels)} wheel(s) from {path.name}")
        with tarfile.open(path, "r:") as tar:
            for name in wheels:
                member = tar.getmember(name)
                source = tar.extractfile(member)
                assert source is not None
                with (Path(tmp) / Path(name).name).open("wb") as out:
                    shutil.copyfileobj(source, out)
        yield release.Source("wheel", str(Path(tmp) / Path(own[0]).name)), Path(tmp)


# ---------------------------------------------------------------------- upgrade
@dataclass
class Outcome:
    """What an upgrade or rollback did, for the table and for --json."""

    ok: bool
    from_version: str
    to_version: str
    steps: list[tuple[str, str]] = field(default_factory=list)
    error: str = ""
    notes: list[str] = field(default_factory=list)

    def done(self, step: str, result: str) -> None:
        self.steps.append((step, result))

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "from": self.from_version, "to": self.to_version, "error": self.error,
                "steps": [{"step": s, "result": r} for s, r in self.steps], "notes": self.notes}


Step = Callable[[str], contextlib.AbstractContextManager[Log]]


def upgrade(host: Host, source: release.Source, wheelhouse: Path | None, backup_to: str | None, timeout: float,
            step: Step) -> Outcome:
    """Install ``source`` beside the running release and switch to it (see the module's doc)."""
    layout = host.layout
    old = host.current
    old_version = release.release_version(old) or old.name
    outcome = Outcome(False, old_version, "?")
    with step("making the new release") as log:
        target, made = release.install_release(layout.opt_dir, source, wheelhouse, log=log)
    new_version = release.release_version(target) or target.name
    outcome.to_version = new_version
    outcome.done("release", f"{made} {target}")
    if target == old:
        raise UpgradeError(f"confmeet {new_version} is already the running release ({old}): nothing to upgrade")

    def drop_new_release() -> None:
        if made == "created":
            shutil.rmtree(target, ignore_errors=True)
            outcome.done("release", f"removed {target}")

    try:
        with step("checking the database schema"):
            schema = host.schema(target)
    except UpgradeError:
        drop_new_release()
        raise
    if schema["schema"] > schema["release"]:
        drop_new_release()
        raise UpgradeError(f"the database's schema is version {schema['schema']}, newer than confmeet "
                           f"{new_version} knows ({schema['release']}): it cannot run on it; choose a newer "
                           "release, or 'confmeet rollback' if the database moved at the last upgrade")
    since = dt.datetime.now().strftime("%Y-%m-%d %H:%M:%S")
    with step("stopping the appliance"):
        was_running = host.stop()
    outcome.done("appliance", "stopped" if was_running else "was not running")
    try:
        with step(f"backing up with confmeet {old_version}"):
            backup = host.release_command(old, "backup", "create", *(["--to", backup_to] if backup_to else []),
                                          what="the backup")
    except UpgradeError as exc:
        drop_new_release()
        if was_running:
            with step("starting the old release again"):
                host.start()
        raise UpgradeError(f"{exc}; nothing was changed" + (f", {old_version} runs again" if was_running else "")
                           ) from None
    outcome.done("backup", f"{backup['archive']} in {backup['location']} ({backup['size'] / 1e6:.1f} MB)")
    before = int(backup["manifest"]["schema_version"])
    record = UpgradeRecord(old_version, str(old), new_version, str(target), before, before,
                           backup_to or backup["location"], backup["archive"], _now())
    record.write(layout, INTERRUPTED_FILE)  # if this run stops half-way, rollback finishes going back
    problem = ""
    try:
        with step(f"migrating the database with confmeet {new_version}"):
            migrated = host.release_command(target, "migrate", what="the migration")
        record.schema_after = int(migrated["schema_after"])
        outcome.done("database", f"schema {record.schema_before} → {record.schema_after} "
                                 f"({migrated['migrations_run']} migration(s))")
        with step(f"switching to {target.name}"):
            host.write_unit(target)
            release.switch(layout.opt_dir, target)
        outcome.done("current", f"{layout.opt_dir / 'current'} → releases/{target.name}")
        if host.systemd:
            with step(f"starting confmeet {new_version}"):
                host.start()
                answer = host.wait_ready(new_version, timeout)
            if not answer.ok:
                problem = f"confmeet {new_version} did not come up: {answer.detail}"
                log_lines = host.journal(since)
                if log_lines:
                    problem += "\nits last log lines:\n" + log_lines
            else:
                outcome.done("appliance", f"{new_version} ready ({answer.detail})")
        else:
            outcome.notes.append("systemd does not run this host: start the appliance yourself "
                                 f"({layout.opt_dir / 'current/bin/confmeet'} serve) and check /readyz")
    except UpgradeError as exc:
        problem = str(exc)
    if not problem:
        record.write(layout)
        _forget_interrupted(layout)
        outcome.ok = True
        outcome.notes.append(f"'confmeet rollback' goes back to {old_version}" + (
            f" (restoring {record.backup_archive}: the schema moved)" if record.schema_moved else ""))
        return outcome
    outcome.error = problem
    try:
        with step(f"going back to confmeet {old_version}") as log:
            go_back(host, record, outcome, log, timeout)
    except UpgradeError as exc:
        outcome.error += f"\nand going back failed too: {exc}"
        return outcome
    drop_new_release()
    _forget_interrupted(layout)
    outcome.notes.append(f"nothing changed: confmeet {old_version} runs as before; fix the cause above and "
                         "upgrade again")
    return outcome


def go_back(host: Host, record: UpgradeRecord, outcome: Outcome, log: Log, timeout: float) -> None:
    """Stop, restore the database when the schema moved, point current and the unit at the old
    release, start it and wait until it is ready."""
    layout, old = host.layout, Path(record.from_release)
    if not (old / "bin/confmeet").exists():
        raise UpgradeError(f"the release {old} is gone: install {record.from_version} again with its "
                           f"wheel ('confmeet upgrade confmeet-{record.from_version}-*.whl')")
    host.stop()
    if host.schema(old)["schema"] != record.schema_before:
        archive = f"{record.backup_location.rstrip('/')}/{record.backup_archive}"
        log(f"verifying {record.backup_archive}")
        host.release_command(old, "backup", "verify", archive, what="checking the backup")
        stamp = dt.datetime.now().strftime("%Y%m%d%H%M%S")
        kept = host.set_aside_database(stamp)
        outcome.notes.append(f"the database as it was before this rollback is kept as {kept}")
        log(f"restoring {record.backup_archive}")
        host.release_command(old, "backup", "restore", archive, "--force", what="restoring the backup")
        outcome.done("database", f"restored {record.backup_archive} (schema {record.schema_before})")
    else:
        outcome.done("database", f"unchanged (schema {record.schema_before})")
    host.write_unit(old)
    release.switch(layout.opt_dir, old)
    outcome.done("current", f"{layout.opt_dir / 'current'} → releases/{old.name}")
    if host.systemd:
        host.start()
        answer = host.wait_ready(record.from_version, timeout)
        if not answer.ok:
            raise UpgradeError(f"confmeet {record.from_version} does not come up either: {answer.detail}; see "
                               "'journalctl -u confmeet'")
        outcome.done("appliance", f"{record.from_version} ready ({answer.detail})")


# ---------------------------------------------------------------------- rollback
@dataclass
class RollbackPlan:
    record: UpgradeRecord
    restore: bool  # the schema moved: the backup must be restored
    schema_now: int
    interrupted: bool  # an upgrade that stopped half-way (its process killed, the host down)


def plan_rollback(host: Host) -> RollbackPlan:
    interrupted = UpgradeRecord.read(host.layout, INTERRUPTED_FILE)
    record = interrupted or UpgradeRecord.read(host.layout)
    if record is None:
        raise UpgradeError(f"no upgrade to roll back ({host.layout.config_dir / UPGRADE_FILE} is missing): "
                           "rollback undoes the last 'confmeet upgrade'")
    if record.rolled_back_at:
        raise UpgradeError(f"the upgrade from {record.from_version} to {record.to_version} was rolled back "
                           f"already ({record.rolled_back_at}); to run {record.to_version} again, upgrade to it")
    current = host.current
    allowed = [record.to_release, record.from_release] if interrupted else [record.to_release]
    if str(current) not in allowed:
        raise UpgradeError(f"the running release is {current}, not {record.to_release} (the last upgrade's): "
                           "rollback only undoes the last upgrade")
    if not Path(record.from_release, "bin/confmeet").exists():
        raise UpgradeError(f"the release to go back to ({record.from_release}) is gone; install it again with "
                           f"'confmeet upgrade confmeet-{record.from_version}-*.whl'")
    schema = host.schema(Path(record.from_release))
    restore = schema["schema"] != record.schema_before
    if restore and "://" not in record.backup_location and not Path(record.backup_location,
                                                                     record.backup_archive).is_file():
        raise UpgradeError(
            f"the upgrade moved the database schema from {record.schema_before} to {schema['schema']}, so "
            f"confmeet {record.from_version} cannot run on it, and the backup taken then "
            f"({Path(record.backup_location, record.backup_archive)}) is gone: put that archive back (from "
            "your copies) and run rollback again, or restore an older archive yourself (confmeet backup restore "
            f"ARCHIVE --force, with releases/{Path(record.from_release).name}/bin/confmeet) — or stay on "
            f"{record.to_version}")
    return RollbackPlan(record, restore, schema["schema"], interrupted is not None)


def rollback(host: Host, plan: RollbackPlan, step: Step, timeout: float) -> Outcome:
    record = plan.record
    outcome = Outcome(False, record.to_version, record.from_version)
    with step(f"going back to confmeet {record.from_version}") as log:
        go_back(host, record, outcome, log, timeout)
    if plan.interrupted:
        _forget_interrupted(host.layout)  # upgrade.json still holds the last upgrade that succeeded
    else:
        record.rolled_back_at = _now()
        record.write(host.layout)
    outcome.ok = True
    outcome.notes.append(f"releases/{Path(record.to_release).name} is kept: 'confmeet upgrade' to it again, "
                         f"or delete it ({record.to_release})")
    return outcome
