"""Start the real ``confmeet serve`` in a subprocess for tests, the way an operator would."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import redis

from conftest import drop_pg_database, free_port, make_pg_database, stop

CONFMEET = [sys.executable, "-m", "cli"]


@dataclass
class Appliance:
    url: str
    data_dir: Path
    env: dict[str, str]
    proc: subprocess.Popen
    log: Path
    tokens: dict[str, str] = field(default_factory=dict)
    verify: str | bool = True  # the CA file of an appliance served over TLS

    def cli(self, *args: str, input: str | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([*CONFMEET, *args], env=self.env, input=input, capture_output=True,
                              text=True, timeout=60)

    @property
    def secret_key(self) -> str:
        with (self.data_dir / "secrets.toml").open("rb") as fh:
            return tomllib.load(fh)["secret_key"]

    def output(self) -> str:
        return self.log.read_text()

    def add_user(self, email: str, password: str, admin: bool = False) -> None:
        """Create an account the way an operator does, with `confmeet user add`."""
        done = self.cli("user", "add", email, "--password-stdin", *(["--admin"] if admin else []),
                        input=password + "\n")
        assert done.returncode == 0, done.stderr

    def login(self, email: str, password: str) -> dict[str, str]:
        """The token pair of a successful sign-in."""
        r = httpx.post(f"{self.url}/api/v1/auth/login", json={"email": email, "password": password},
                       verify=self.verify)
        assert r.status_code == 200, r.text
        return r.json()


def appliance_env(data_dir: Path, port: int, **settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONFMEET_")}
    config = data_dir / "confmeet.toml"  # empty: never read the host's /etc/confmeet
    config.touch()
    env.update({"CONFMEET_DATA_DIR": str(data_dir), "CONFMEET_PORT": str(port),
                "CONFMEET_CONFIG": str(config), "PYTHONUNBUFFERED": "1"})
    env.update({f"CONFMEET_{k.upper()}": v for k, v in settings.items()})
    return env


def start_appliance(data_dir: Path, timeout: float = 30.0, ca: Path | None = None, prefix: list[str] | None = None,
                    **settings: str) -> Appliance:
    """``confmeet serve`` with these settings; over TLS (settings tls_cert and tls_key) when ``ca``
    names the CA that signed its certificate. ``prefix``: a command it runs behind (a network
    namespace's ``ip netns exec NS``: then call this from a thread that reaches ``host`` there,
    such as Namespace.run's, since the readiness poll runs in the calling thread)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = appliance_env(data_dir, port, **settings)
    log = data_dir / "serve.log"
    with log.open("w") as out:
        proc = subprocess.Popen([*(prefix or []), *CONFMEET, "serve"], env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"{'https' if ca else 'http'}://{settings.get('host', '127.0.0.1')}:{port}"
    verify = str(ca) if ca else True
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"confmeet serve exited with {proc.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(f"{url}/readyz", timeout=1, verify=verify).status_code == 200:
                return Appliance(url, data_dir, env, proc, log, verify=verify)
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    stop(proc)
    raise RuntimeError(f"confmeet serve not ready after {timeout}s:\n{log.read_text()}")


def start_nodes(base: Path, count: int, **settings: str) -> list[Appliance]:
    """``count`` nodes of one install (appliance/cluster.py): ``confmeet serve`` in base/n1, n2, …
    named n1, n2, …, each with its own media ports, sharing the stores these settings name and
    the first node's secrets (as `confmeet install --join` brings them). Stopped by the caller."""
    nodes: list[Appliance] = []
    try:
        for i in range(1, count + 1):
            data = base / f"n{i}"
            if nodes:
                data.mkdir(parents=True)
                shutil.copy(nodes[0].data_dir / "secrets.toml", data / "secrets.toml")
            low = 21000 + 100 * i  # each node its own media ports, as on its own machine
            nodes.append(start_appliance(data, node_name=f"n{i}", media_udp_min=str(low),
                                         media_udp_max=str(low + 99), **settings))
    except BaseException:
        for node in nodes:
            stop(node.proc)
        raise
    return nodes


def serving_nodes(base: Path, count: int, bus: str, accounts: list[tuple[str, str]],
                  **settings: str) -> Iterator[list[Appliance]]:
    """A module's nodes of one install (``yield from`` it in a fixture): start_nodes on a fresh
    PostgreSQL database and the Redis database ``bus`` (emptied before and after), with these
    accounts (email, password; the first an administrator); stopped after the module's tests,
    failing them if a node's output holds a traceback."""
    redis.Redis.from_url(bus).flushdb()
    db_name, db_url = make_pg_database()
    nodes: list[Appliance] = []
    try:
        nodes = start_nodes(base, count, database=db_url, bus=bus, **settings)
        for i, (email, password) in enumerate(accounts):
            nodes[0].add_user(email, password, admin=i == 0)
        yield nodes
    finally:
        for node in nodes:
            stop(node.proc)
        drop_pg_database(db_name)
        redis.Redis.from_url(bus).flushdb()
    for node in nodes:
        assert "Traceback" not in node.output(), node.output()


def serving(data_dir: Path, users: Mapping[str, tuple[str, ...]], **settings: str) -> Iterator[Appliance]:
    """A module's appliance (``yield from`` it in a fixture): started with these settings and
    accounts (email, password, …; the first one an administrator), stopped after the module's
    tests, and failing them if its output holds a traceback."""
    app = start_appliance(data_dir, **settings)
    for i, (email, password, *_) in enumerate(users.values()):
        app.add_user(email, password, admin=i == 0)
    yield app
    stop(app.proc)
    assert "Traceback" not in app.output(), app.output()
