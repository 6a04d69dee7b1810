"""The appliance as an installed release: ``/opt/confmeet/releases/<version>/`` is a virtualenv
holding confmeet and its dependencies (root-owned, read-only to the ``confmeet`` user the unit
runs as), and ``/opt/confmeet/current`` points at the release the unit runs.

A release is made from the wheel the running ``confmeet`` was installed from (pipx or pip
record it in ``direct_url.json``), from a source tree (built into a wheel first), or by name from
the package index; its dependencies come from the index, or from a directory of wheels (an
offline bundle's ``wheels/``). The virtualenv uses the system's ``/usr/bin/python3``: an
interpreter under /root or /home would be hidden from the unit by ``ProtectHome=``.

``confmeet upgrade`` and ``confmeet rollback`` (upgrade.py) make and switch releases with these.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from urllib.parse import unquote, urlsplit

from .. import __version__

SYSTEM_PYTHON = Path("/usr/bin/python3")
MIN_PYTHON = (3, 11)
DISTRIBUTION = "confmeet"

Log = Callable[[str], None]


class ReleaseError(Exception):
    """A release cannot be made or switched to; the message says why and what to do."""


@dataclass(frozen=True)
class Source:
    """Where a release's confmeet comes from: a wheel file, a source tree, or the index."""

    kind: str  # "wheel", "tree" or "index"
    where: str

    def describe(self) -> str:
        return {"wheel": f"wheel {self.where}", "tree": f"source tree {self.where}",
                "index": f"{self.where} from the package index"}[self.kind]


def running_source() -> Source:
    """Where the running confmeet was installed from."""
    own_tree = Path(__file__).resolve().parents[2]  # the source tree this code runs from, if it is one
    try:
        dist = metadata.distribution(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return Source("tree", str(own_tree))
    direct = dist.read_text("direct_url.json")
    if not direct and (own_tree / "setup.cfg").is_file() and Path(str(dist.locate_file(""))).resolve() == own_tree:
        return Source("tree", str(own_tree))  # the tree's own egg-info (left by a build) on PYTHONPATH
    if direct:
        info = json.loads(direct)
        parts = urlsplit(info.get("url", ""))
        path = Path(unquote(parts.path))
        if parts.scheme == "file" and "dir_info" in info and path.is_dir():
            # An editable install: the tree whose code runs (PYTHONPATH may name another copy).
            return Source("tree", str(own_tree if (own_tree / "setup.cfg").is_file() else path))
        if parts.scheme == "file" and path.is_file() and path.name.endswith(".whl"):
            return Source("wheel", str(path))
    return Source("index", f"{DISTRIBUTION}=={dist.version}")


def python_version(python: Path) -> tuple[int, int] | None:
    try:
        out = subprocess.run([str(python), "-c", "import sys; print(*sys.version_info[:2])"],
                             capture_output=True, text=True, timeout=30, check=True).stdout.split()
        return int(out[0]), int(out[1])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None


def python_problem(python: Path = SYSTEM_PYTHON) -> tuple[str, str] | None:
    """(what is wrong, the fix) when ``python`` cannot carry a release, else None."""
    version = python_version(python)
    need = ".".join(map(str, MIN_PYTHON))
    if version is None:
        return (f"{python} is missing", f"apt-get install python3 python3-venv (Python {need} or later)")
    if version < MIN_PYTHON:
        return (f"{python} is Python {version[0]}.{version[1]}; confmeet needs {need} or later",
                "install on Debian 12 or Ubuntu 24.04 (or later), whose python3 is new enough")
    probe = subprocess.run([str(python), "-c", "import ensurepip, venv"], capture_output=True, text=True)
    if probe.returncode != 0:
        return (f"{python} cannot make virtualenvs (no ensurepip)", "apt-get install python3-venv")
    return None


def releases_dir(opt_dir: Path) -> Path:
    return opt_dir / "releases"


def current(opt_dir: Path) -> Path | None:
    """The release ``current`` points at, if any."""
    link = opt_dir / "current"
    return link.resolve() if link.is_symlink() and link.resolve().is_dir() else None


def release_version(release: Path) -> str | None:
    """The confmeet version installed in a release's virtualenv (read from its metadata)."""
    for info in release.glob("lib/python3*/site-packages/confmeet-*.dist-info/METADATA"):
        found = re.search(r"^Version: (\S+)$", info.read_text(errors="replace"), re.MULTILINE)
        if found:
            return found.group(1)
    return None


def program(opt_dir: Path, root: Path = Path("/")) -> str:
    """The confmeet command the unit runs, as seen on the installed host."""
    return "/" + str((opt_dir / "current/bin/confmeet").relative_to(root))


def _run(argv: list[str], what: str, log: Log) -> None:
    log(f"{what}: {' '.join(argv[:6])}{' …' if len(argv) > 6 else ''}")
    # The release's own interpreter and pip only: nothing of the caller's Python environment.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    done = subprocess.run(argv, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-8:])
        raise ReleaseError(f"{what} failed:\n{tail}")


def build_wheel(tree: Path, out_dir: Path, log: Log) -> Path:
    """confmeet's wheel from a source tree (no dependencies, no index)."""
    _run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
          "--wheel-dir", str(out_dir), str(tree)], "building confmeet's wheel", log)
    wheels = sorted(out_dir.glob("confmeet-*.whl"))
    if not wheels:
        raise ReleaseError(f"pip made no confmeet wheel from {tree}")
    return wheels[-1]


def install_release(opt_dir: Path, source: Source, wheelhouse: Path | None = None,
                    python: Path = SYSTEM_PYTHON, log: Log = lambda message: None) -> tuple[Path, str]:
    """Make the release for ``source`` under ``opt_dir/releases/`` (kept when that version is
    already there); returns (its directory, "kept" or "created")."""
    if source.kind == "tree":  # a release of the tree's version is kept: no wheel to build for it
        version = tree_version(Path(source.where))
        target = releases_dir(opt_dir) / (version or "")
        if version and release_version(target) == version and (target / "bin/confmeet").exists():
            return target, "kept"
    with tempfile.TemporaryDirectory(prefix="confmeet-release-") as tmp:
        requirement = source.where
        if source.kind == "tree":
            requirement = str(build_wheel(Path(source.where), Path(tmp), log))
        version = _version_of(requirement) or __version__
        target = releases_dir(opt_dir) / version
        if release_version(target) == version and (target / "bin/confmeet").exists():
            return target, "kept"
        problem = python_problem(python)
        if problem is not None:
            raise ReleaseError(f"{problem[0]}: {problem[1]}")
        if target.exists():
            shutil.rmtree(target)  # a release left half-made by an interrupted install
        target.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(opt_dir, 0o755)
        os.chmod(target.parent, 0o755)
        try:
            _run([str(python), "-m", "venv", str(target)], "making the virtualenv", log)
            pip = [str(target / "bin/python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                   "--no-cache-dir"]
            if wheelhouse is not None:
                pip += ["--no-index", "--find-links", str(wheelhouse)]
            _run([*pip, requirement], f"installing confmeet {version} and its dependencies", log)
        except BaseException:
            shutil.rmtree(target, ignore_errors=True)
            raise
        if release_version(target) != version:
            shutil.rmtree(target, ignore_errors=True)
            raise ReleaseError(f"{requirement} did not install confmeet {version}")
        subprocess.run(["chmod", "-R", "go-w", str(target)], check=True)
        return target, "created"


def tree_version(tree: Path) -> str | None:
    """The version a source tree's wheel would have (its ``appliance/__init__.py``)."""
    try:
        found = re.search(r'^__version__ = "([^"]+)"', (tree / "appliance/__init__.py").read_text(), re.MULTILINE)
    except OSError:
        return None
    return found.group(1) if found else None


def _version_of(requirement: str) -> str | None:
    name = Path(requirement).name
    if name.endswith(".whl"):
        return name.split("-")[1]
    found = re.fullmatch(r"confmeet==(\S+)", requirement)
    return found.group(1) if found else None


def switch(opt_dir: Path, release: Path) -> Path | None:
    """Point ``current`` at ``release`` atomically; returns the release it pointed at before."""
    link = opt_dir / "current"
    before = current(opt_dir)
    partial = opt_dir / ".current.new"
    partial.unlink(missing_ok=True)
    partial.symlink_to(Path("releases") / release.name)
    partial.rename(link)
    return before
