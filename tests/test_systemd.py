"""The appliance's unit under a real systemd (PID 1 in a container), installed from a wheel the
way an administrator installs it, and upgraded and rolled back there.

The container is Podman's (Debian's ``podman``, 4.3): ``--systemd=always /sbin/init`` boots the
stand-in rootfs (bundles/standins/recipe.toml: Debian bookworm with systemd, python3-venv,
PostgreSQL, Redis and coturn) with the mounts systemd needs on this host's cgroup v1. It gets
CAP_SYS_ADMIN so that systemd can set up the unit's sandbox (without it systemd skips
ProtectSystem= and the other namespaces, "assuming containerized execution", and the test would
prove nothing about them). Its network is a namespace this test creates: loopback and one veth
address, like a server's own network card; nothing leaves it.

Inside, the documented bootstrap (a virtualenv of the system's python3 with the wheel, mounted
read-only from here, its dependencies from the test wheelhouse) runs ``confmeet install --mode
native``: Debian's PostgreSQL, Redis and coturn units, the release in /opt/confmeet, and
confmeet.service started by systemd on port 443 (with its CAP_NET_BIND_SERVICE drop-in). Two
things make the container a fresh Debian server with those packages: the PostgreSQL cluster that
the package's postinst creates (``pg_createcluster``), and ``PrivateUsers=no`` for Debian's
redis-server.service, whose user namespace systemd cannot set up in this container ("Failed to
set up user namespacing: No such file or directory"; confmeet.service on port 443 runs without
PrivateUsers=, see its drop-in).
"""

from __future__ import annotations

import json
import re
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from appliance.machine import images
from netns import Namespace
# The release and the administrator's bootstrap are test_install's session fixtures: one wheel,
# one bootstrap virtualenv for both files in a run of the whole suite.
from test_install import CACHE, PROJECT, Wheelhouse, release_files, wheelhouse  # noqa: F401 (fixtures)

CONTAINER = "confmeet-systemd-test"
ADDRESS = "10.213.1.2"  # the container's own address, in the namespace this test creates
CONFIG = "/etc/confmeet/confmeet.toml"
WHEELHOUSE = "/wheelhouse"
# What goes into a wheel (setup.cfg's packages and data_files).
TREE = ["appliance", "cli", "systemd", "bundles", "model_repository", "setup.cfg", "setup.py", "pyproject.toml",
        "MANIFEST.in", "README.md"]

pytestmark = pytest.mark.docker


class Podman:
    """The podman command with a storage of its own (removed at the end)."""

    def __init__(self, directory: Path) -> None:
        if shutil.which("podman") is None:
            pytest.fail("podman is missing: apt-get install podman (make system-packages)")
        self.directory = directory
        self.base = ["podman", f"--root={directory / 'storage'}", f"--runroot={directory / 'run'}",
                     "--cgroup-manager=cgroupfs", "--events-backend=file"]

    def __call__(self, *args: str, input: str | None = None, timeout: float = 600,
                 check: bool = True) -> subprocess.CompletedProcess:
        done = subprocess.run([*self.base, *args], input=input, capture_output=True, text=True, timeout=timeout)
        if check and done.returncode != 0:
            raise AssertionError(f"podman {' '.join(args[:4])} exited {done.returncode}:\n{done.stdout[-3000:]}\n"
                                 f"{done.stderr[-3000:]}")
        return done

    def remove(self) -> None:
        self("rm", "--force", "--time=5", CONTAINER, check=False)
        self("system", "reset", "--force", check=False, timeout=120)
        with open("/proc/mounts") as fh:
            mounts = [line.split()[1] for line in fh if line.split()[1].startswith(f"{self.directory}/")]
        for mount in sorted(mounts, key=len, reverse=True):
            subprocess.run(["umount", "-l", mount], capture_output=True)
        shutil.rmtree(self.directory, ignore_errors=True)


@dataclass
class Machine:
    """The booted container with confmeet installed."""

    podman: Podman
    network: Namespace
    bootstrap: Path  # the administrator's virtualenv with confmeet (same path inside)
    wheels: dict[str, Path]  # version → wheel (same path inside)
    work: Path  # where the test builds more wheels (same path inside)

    def exec(self, *argv: str, input: str | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
        return self.podman("exec", *(["-i"] if input is not None else []), "-e", "COLUMNS=200", "-e", "TERM=dumb",
                           CONTAINER, *argv, input=input, timeout=timeout, check=False)

    def sh(self, script: str) -> str:
        done = self.exec("sh", "-c", script)
        assert done.returncode == 0, f"{script}: {done.stdout}{done.stderr}"
        return done.stdout.strip()

    def confmeet(self, *args: str) -> subprocess.CompletedProcess:
        """The administrator's ``sudo confmeet ...``."""
        return self.exec(str(self.bootstrap / "bin/confmeet"), *args)

    def appliance_cli(self, *args: str, input: str | None = None) -> subprocess.CompletedProcess:
        """The installed release's confmeet, as the service user."""
        return self.exec("runuser", "-u", "confmeet", "--", "/opt/confmeet/current/bin/confmeet", *args,
                         "--config", CONFIG, input=input)

    def readyz(self) -> tuple[int, dict, dict]:
        """/healthz and /readyz over HTTPS, the certificate checked against the private CA that
        the install made, asked from the container's network namespace."""
        context = ssl.create_default_context(cadata=self.sh("cat /etc/confmeet/tls/ca.pem"))

        def ask() -> tuple[int, dict, dict]:
            with urllib.request.urlopen("https://localhost/healthz", context=context, timeout=5) as response:
                health = json.loads(response.read())
            with urllib.request.urlopen("https://localhost/readyz", context=context, timeout=5) as response:
                return response.status, json.loads(response.read()), health

        return self.network.run(ask)

    def wait_ready(self, timeout: float = 60) -> tuple[int, dict, dict]:
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self.readyz()
            except OSError as exc:
                if time.monotonic() > deadline:
                    raise AssertionError(f"no /readyz answer: {exc}\n{self.sh('journalctl -u confmeet -n 30')}")
                time.sleep(0.5)

    def current(self) -> str:
        return self.sh("readlink /opt/confmeet/current")

    def schema(self) -> int:
        done = self.appliance_cli("migrate", "--check", "--json")
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)["schema"]

    def users(self) -> list[str]:
        done = self.appliance_cli("user", "list", "--json")
        assert done.returncode == 0, done.stderr
        return sorted(u["email"] for u in json.loads(done.stdout))

    def add_user(self, email: str) -> None:
        done = self.appliance_cli("user", "add", email, "--password-stdin", input="a long password 1\n")
        assert done.returncode == 0, done.stderr


def build_wheel(into: Path, version: str, migration: bool = False, broken: bool = False) -> Path:
    """confmeet's wheel from this tree as ``version``; ``migration`` adds a schema migration,
    ``broken`` a release whose ``serve`` fails after the stores opened."""
    source = into / f"src-{version}"
    for name in TREE:
        path = PROJECT / name
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(path, source / name)
    init = source / "appliance/__init__.py"
    init.write_text(re.sub(r'__version__ = "[^"]+"', f'__version__ = "{version}"', init.read_text()))
    if migration:
        relational = source / "appliance/stores/relational.py"
        text = relational.read_text()
        marker = "SCHEMA_VERSION = MIGRATIONS[-1][0]"
        assert marker in text
        relational.write_text(text.replace(marker, (
            'MIGRATIONS.append((MIGRATIONS[-1][0] + 1, "upgrade test: a table of its own",\n'
            '                   lambda db: db.execute_sql("CREATE TABLE upgrade_probe (id integer)")))\n' + marker)))
    if broken:
        app = source / "appliance/app.py"
        text = app.read_text()
        signature = re.search(r"^def create_app\(.*\n", text, re.MULTILINE)
        assert signature, "appliance/app.py has no create_app"
        app.write_text(text.replace(signature.group(0), signature.group(0)
                                    + '    raise RuntimeError("this release is broken on purpose")\n'))
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                           "--wheel-dir", str(into / "dist"), str(source)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    return next((into / "dist").glob(f"confmeet-{version}-*.whl"))


@pytest.fixture(scope="module")
def machine(tmp_path_factory: pytest.TempPathFactory, wheelhouse: Wheelhouse,
            release_files: dict[str, Path]) -> Iterator[Machine]:
    """Booted, with ``confmeet install --mode native`` done by the documented bootstrap (the
    release's wheel installed into a virtualenv of the system's python3)."""
    from appliance import __version__

    wheels = {__version__: release_files["wheel"]}
    bootstrap = release_files["confmeet"].parents[1]
    work = tmp_path_factory.mktemp("systemd")
    try:
        rootfs = images.build_rootfs(images.StandinRecipe.load(), CACHE, log=lambda message: print(message))
    except images.ImageError as exc:
        pytest.fail(f"the rootfs cannot be built: {exc}")
    podman = Podman(Path(tempfile.mkdtemp(prefix="podman-", dir="/tmp")))
    network = Namespace("cm-systemd", f"{ADDRESS}/24")
    try:
        podman("import", "--quiet", str(rootfs), "localhost/confmeet-test/systemd:bookworm")
        podman("run", "--detach", f"--name={CONTAINER}", f"--network=ns:{network.path}", "--systemd=always",
               "--cap-add=SYS_ADMIN", "--ulimit=nofile=20000:20000", "--ulimit=nproc=32768:32768",
               f"--volume={work}:{work}:ro", f"--volume={bootstrap}:{bootstrap}:ro",
               f"--volume={release_files['dist']}:{release_files['dist']}:ro",
               f"--volume={wheelhouse.wait()}:{WHEELHOUSE}:ro",
               "localhost/confmeet-test/systemd:bookworm", "/sbin/init")
        machine = Machine(podman, network, bootstrap, wheels, work)
        deadline, state = time.monotonic() + 120, ""
        while state not in ("running", "degraded") and time.monotonic() < deadline:  # PID 1 answers, booted
            state = machine.exec("systemctl", "is-system-running", "--wait", timeout=120).stdout.strip()
            time.sleep(0.2)
        assert state in ("running", "degraded"), machine.podman("logs", CONTAINER, check=False).stdout[-3000:]
        # What the Debian packages' own installation does on a real server (see the module's doc).
        machine.sh("pg_createcluster --start 15 main >/dev/null && mkdir -p /etc/systemd/system/redis-server.service.d"
                   " && printf '[Service]\\nPrivateUsers=no\\n' > /etc/systemd/system/redis-server.service.d/ns.conf"
                   " && systemctl daemon-reload")
        installed = machine.confmeet("install", "--mode", "native", "--yes", "--wheelhouse", WHEELHOUSE,
                                     "--public-host", "localhost")
        assert installed.returncode == 0, f"{installed.stdout[-6000:]}\n{installed.stderr[-3000:]}"
        assert "installed, enabled, started" in installed.stdout
        yield machine
    finally:
        podman.remove()
        network.delete()


# ---------------------------------------------------------------------- the unit
def test_the_unit_serves_readyz_over_https_from_opt(machine: Machine) -> None:
    """Acceptance 2 of issue 11: systemd starts confmeet.service from /opt/confmeet, as the
    confmeet user, sandboxed, and it serves /readyz 200 over HTTPS with the generated CA."""
    from appliance import __version__

    status, ready, health = machine.wait_ready()
    assert status == 200 and ready["status"] == "ready", ready
    assert health["version"] == __version__
    assert {name: item["kind"] for name, item in ready["stores"].items()} == {
        "database": "postgresql", "bus": "redis", "documents": "sqlite", "objects": "file"}
    assert machine.current() == f"releases/{__version__}"
    assert machine.sh("systemctl is-active confmeet.service") == "active"
    pid = machine.sh("systemctl show -p MainPID --value confmeet.service")
    assert "/opt/confmeet/current/bin/confmeet\0serve" in machine.sh(f"cat /proc/{pid}/cmdline")
    status_lines = dict(line.split(":\t", 1) for line in machine.sh(f"cat /proc/{pid}/status").splitlines()
                        if ":\t" in line)
    uid = machine.sh("id -u confmeet")
    assert status_lines["Uid"].split() == [uid] * 4  # the service user, never root
    assert status_lines["NoNewPrivs"] == "1" and status_lines["Seccomp"] == "2"  # SystemCallFilter= applies
    assert int(status_lines["CapEff"], 16) == 1 << 10  # CAP_NET_BIND_SERVICE only (port 443's drop-in)
    mounts = {fields[4]: fields[5] for fields in (line.split() for line in
                                                  machine.sh(f"cat /proc/{pid}/mountinfo").splitlines())}
    assert mounts["/"].startswith("ro"), mounts  # ProtectSystem=strict
    assert mounts["/var/lib/confmeet"].startswith("rw"), mounts  # its StateDirectory=, the one writable place
    assert "/home" in mounts and "/tmp" in mounts  # ProtectHome=, PrivateTmp=
    exposure = re.search(r"Overall exposure level for confmeet.service: (\d+\.\d+)",
                         machine.sh("systemd-analyze security --no-pager confmeet.service"))
    assert exposure and float(exposure.group(1)) < 2.0, exposure  # 1.7 measured; docs/install.md says so


# ---------------------------------------------------------------------- upgrade and rollback
def test_upgrade_migrates_goes_back_by_itself_and_rolls_back(machine: Machine, tmp_path: Path) -> None:
    from appliance import __version__ as old

    work = machine.work
    schema = machine.schema()
    machine.add_user("before@example.com")

    # An upgrade with a migration: backup, migrate, switch, start; the new version answers. (The
    # broken release's wheel builds meanwhile.)
    building = ThreadPoolExecutor(1)
    broken_wheel = building.submit(build_wheel, work, "99.0.2", migration=True, broken=True)
    building.shutdown(wait=False)
    newer = build_wheel(work, "99.0.1", migration=True)
    done = machine.confmeet("upgrade", str(newer), "--wheelhouse", WHEELHOUSE, "--yes", "--json")
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
    report = json.loads(done.stdout)
    assert (report["ok"], report["from"], report["to"]) == (True, old, "99.0.1"), report
    assert machine.current() == "releases/99.0.1"
    assert machine.wait_ready()[2]["version"] == "99.0.1"
    assert machine.schema() == schema + 1
    steps = {s["step"]: s["result"] for s in report["steps"]}
    assert f"schema {schema} → {schema + 1} (1 migration(s))" == steps["database"], report
    record = json.loads(machine.sh("cat /etc/confmeet/upgrade.json"))
    archive = f"{record['backup_location']}/{record['backup_archive']}"
    assert machine.sh(f"stat -c %U {archive}") == "confmeet"  # made by the release, as the service user
    machine.add_user("after@example.com")

    # A release that does not come up: the upgrade goes back by itself and removes it.
    broken = broken_wheel.result()
    done = machine.confmeet("upgrade", str(broken), "--wheelhouse", WHEELHOUSE, "--yes", "--timeout", "60")
    assert done.returncode == 2, f"{done.stdout}\n{done.stderr}"
    assert "confmeet 99.0.2 did not come up" in done.stderr and "broken on purpose" in done.stderr, done.stderr
    assert "99.0.1 runs as before" in done.stdout, done.stdout
    assert machine.current() == "releases/99.0.1"
    assert machine.wait_ready()[2]["version"] == "99.0.1"
    assert "99.0.2" not in machine.sh("ls /opt/confmeet/releases")
    assert machine.users() == ["after@example.com", "before@example.com"]  # nothing restored: schema unchanged

    # An upgrade killed half-way (after its backup): rollback finishes going back.
    upgrading = subprocess.Popen([*machine.podman.base, "exec", CONTAINER, "sh", "-c",
                                  f"echo $$ > /run/upgrade.pid && exec {machine.bootstrap}/bin/confmeet upgrade "
                                  f"{broken} --wheelhouse {WHEELHOUSE} --yes --timeout 300"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while machine.exec("test", "-e", "/etc/confmeet/upgrade.interrupted.json").returncode != 0:
            assert upgrading.poll() is None and time.monotonic() < deadline, "the upgrade never got past its backup"
            time.sleep(0.2)
        machine.sh("kill -KILL $(cat /run/upgrade.pid)")
    finally:
        upgrading.wait(30)
    done = machine.confmeet("rollback", "--yes", "--json")
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
    assert (json.loads(done.stdout)["from"], json.loads(done.stdout)["to"]) == ("99.0.2", "99.0.1"), done.stdout
    assert machine.current() == "releases/99.0.1"
    assert machine.wait_ready()[2]["version"] == "99.0.1"

    # A release older than the database's schema cannot run on it: refused before anything stops.
    older = machine.confmeet("upgrade", str(machine.wheels[old]), "--wheelhouse", WHEELHOUSE, "--yes")
    assert older.returncode == 2 and f"newer than confmeet {old} knows" in older.stderr, older.stderr
    assert machine.current() == "releases/99.0.1" and old in machine.sh("ls /opt/confmeet/releases")

    # The upgrade to 99.0.1 (the last that succeeded) is what rollback undoes. It moved the
    # schema: without the backup taken then, rollback refuses and says what to do.
    machine.sh(f"mv {archive} /root/kept-archive")
    refused = machine.confmeet("rollback", "--yes")
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "is gone: put that archive back" in refused.stderr and archive in refused.stderr, refused.stderr
    assert machine.current() == "releases/99.0.1"
    machine.sh(f"mv /root/kept-archive {archive}")

    shown = machine.confmeet("rollback")  # the plan, then "no" at the question
    assert shown.returncode == 1 and "is lost: accounts, meetings, recordings" in shown.stdout, shown.stdout
    done = machine.confmeet("rollback", "--yes", "--json")
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
    report = json.loads(done.stdout)
    assert (report["ok"], report["from"], report["to"]) == (True, "99.0.1", old), report
    assert machine.current() == f"releases/{old}"
    assert machine.wait_ready()[2]["version"] == old
    assert machine.schema() == schema
    assert machine.users() == ["before@example.com"]  # the backup taken at the upgrade
    assert any("before_rollback" in note for note in report["notes"]), report  # the newer database is kept
    again = machine.confmeet("rollback", "--yes")
    assert again.returncode == 2 and "rolled back already" in again.stderr, again.stderr
