"""A restore never destroys data it cannot replace (issue 12, finding 6): it refuses while the
appliance runs, and a restore that fails part-way (a failure injected at several points, and a
real file size limit) leaves the previous data exactly as it was."""

from __future__ import annotations

import asyncio
import json
import resource
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import appliance.backup.restore as restore_module
from appliance.backup import Portal, restore_archive
from appliance.backup.location import DirectoryLocation
from appliance.stores.objects import FileObjects
from appliance_server import CONFMEET, start_appliance
from conftest import stop
from test_backup import Install, dump, restore_error, seed


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An archive of an install that shares keys and ids with the targets below, with other content."""
    root = tmp_path_factory.mktemp("restore-source")
    source = Install(root / "data")
    asyncio.run(seed(source, users=3, meetings=2, documents=30))
    created = json.loads(source.ok("backup", "create", "--to", str(root / "archives"), "--json").stdout)
    return root / "archives" / created["archive"]


@pytest.fixture
def target(tmp_path: Path) -> Iterator[tuple[Install, dict[str, Any]]]:
    """An install holding data of its own, and everything it holds."""
    install = Install(tmp_path / "target")
    asyncio.run(seed(install, users=2, meetings=1, documents=10))
    yield install, asyncio.run(dump(install))


def unchanged(install: Install, before: dict[str, Any]) -> None:
    assert asyncio.run(dump(install)) == before
    assert not install.journal.exists() and not (install.data_dir / "restore-undo.jsonl").exists()


def fail_when(monkeypatch: pytest.MonkeyPatch, owner: Any, name: str, error: BaseException,
              when: Callable[[int, tuple], bool]) -> None:
    """Make ``owner.name`` raise ``error`` on the call for which ``when(call number, args)`` holds."""
    real = getattr(owner, name)
    calls = 0

    def failing(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if when(calls, args):
            raise error
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, failing)


@pytest.mark.parametrize("point", ["objects", "database", "documents", "switch"])
def test_a_failed_forced_restore_leaves_the_previous_data_intact(
        point: str, archive: Path, target: tuple[Install, dict[str, Any]], monkeypatch: pytest.MonkeyPatch) -> None:
    install, before = target
    disk_full = OSError(28, "No space left on device")
    if point == "objects":  # the third object written fails
        fail_when(monkeypatch, FileObjects, "_put", disk_full, lambda n, args: n == 3)
    elif point == "database":  # the rows of one of the last tables fail
        fail_when(monkeypatch, restore_module, "insert_rows", disk_full, lambda n, args: args[0].__name__ == "AuditEvent")
    elif point == "documents":  # documents fail after objects and rows are all written
        fail_when(monkeypatch, restore_module, "insert_documents", disk_full, lambda n, args: n == 1)
    else:  # everything is written; the database's switch itself fails
        fail_when(monkeypatch, restore_module, "reset_sequences", disk_full, lambda n, args: True)
    message = restore_error(install, archive, force=True)
    unchanged(install, before)
    assert "No space left on device" in message and "Nothing was changed" in message


def test_a_restore_stopped_by_a_file_size_limit_changes_nothing(archive: Path,
                                                               target: tuple[Install, dict[str, Any]]) -> None:
    """The failure the review hit: the restore's process may not write files over 1 MB, and the
    archive holds a 1.5 MB recording track."""
    install, before = target

    def limit_file_size() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))

    done = subprocess.run([*CONFMEET, "backup", "restore", str(archive), "--force"], env=install.env,
                          capture_output=True, text=True, timeout=120, preexec_fn=limit_file_size)
    assert done.returncode != 0 and "Traceback" not in done.stderr, done.stderr
    unchanged(install, before)
    assert "Nothing was changed" in done.stderr, done.stderr
    install.ok("backup", "restore", str(archive), "--force")  # without the limit it goes through
    after = asyncio.run(dump(install))
    assert after != before and {u[1] for u in after["tables"]["user"]} == {f"user{i}@example.org" for i in range(3)}


def test_restore_refuses_while_the_appliance_runs(archive: Path, target: tuple[Install, dict[str, Any]]) -> None:
    install, _ = target
    app = start_appliance(install.data_dir)
    try:
        before = asyncio.run(dump(install))  # as the running appliance left it (it repairs at start)
        message = install.fails("backup", "restore", str(archive), "--force")
        assert "the appliance is running" in message and "stop" in message
        with Portal() as portal, pytest.raises(Exception, match="appliance is running"):
            restore_archive(install.settings(), DirectoryLocation(archive.parent), archive.name, portal, force=True)
    finally:
        stop(app.proc)
    unchanged(install, before)
