"""A machine joins an install of several nodes (appliance/machine/join.py, appliance/api/cluster.py,
``confmeet node invite``, ``confmeet install --join``).

The first node is a real ``confmeet serve`` over TLS with the install's private CA, on PostgreSQL
and a Redis database of this module's own. The token it makes works once, only against its own
certificate (a node with another certificate is sent nothing), and never for a name a live node
has. ``confmeet install --join`` puts a release on a new root (Debian's units in native mode, as
tests/test_install.py does: coturn is the one component a joining node runs), and the node it
installed serves the same install: it is in ``confmeet node list``, knows the first node's
accounts and tokens, has a certificate of the same CA, and a meeting placed on it is reached
through the first node by a relay over TLS checked against that CA."""

from __future__ import annotations

import asyncio
import json
import re
import ssl
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg2
import pytest
import redis

from appliance.machine import tls
from appliance.machine.join import JoinError, fetch_shared, invitation, parse_invitation
from appliance_server import Appliance, start_appliance
from cli.client.signaling import SignalingClient
from conftest import drop_pg_database, free_port, make_pg_database, stop
from test_install import ADMIN_ENV, Wheelhouse, confmeet, free_port_block, settings_of, show

BUS = "redis://127.0.0.1:6379/12"  # this module's own Redis database, emptied before and after
ADA = ("ada@example.com", "ada password 1")

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


@pytest.fixture(scope="module")
def first(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Appliance]:
    """The install's first node, over TLS with a private CA as `confmeet install` makes one."""
    base = tmp_path_factory.mktemp("first")
    files = tls.ensure_certificates(base / "tls", ["127.0.0.1", "localhost"])
    redis.Redis.from_url(BUS).flushdb()
    db_name, db_url = make_pg_database()
    app = None
    try:
        app = start_appliance(base / "data", ca=files.ca_cert, tls_cert=str(files.cert), tls_key=str(files.key),
                              database=db_url, bus=BUS, node_name="n1", node_ca_file=str(files.ca_cert),
                              media_loopback="true", sfu_workers="1", allow_registration="true")
        app.add_user(*ADA, admin=True)
        yield app
    finally:
        if app is not None:
            stop(app.proc)
        drop_pg_database(db_name)
        redis.Redis.from_url(BUS).flushdb()
    assert "Traceback" not in app.output(), app.output()


def invite(app: Appliance, *args: str) -> str:
    """The token `confmeet node invite` prints, after checking the command line it prints."""
    done = app.cli("node", "invite", "--json", *args)
    assert done.returncode == 0, done.stderr
    printed = json.loads(done.stdout)
    assert printed["join"] == app.url and printed["loopback_stores"] == ["database", "bus"], printed
    return printed["join_token"]


def test_a_token_works_once_and_only_against_the_certificate_it_names(first: Appliance) -> None:
    ca = Path(str(first.verify))
    table = first.cli("node", "invite")
    assert table.returncode == 0, table.stderr
    assert re.search(rf"confmeet install --join {re.escape(first.url)} --join-token \S+\.[0-9a-f]{{64}}", table.stdout)
    assert "listen on loopback" in table.stdout  # database and bus: no other machine reaches them

    token = invite(first)
    secret, fingerprint = parse_invitation(token)
    # Another certificate at the address (a node that is not the one that made the token): nothing is sent,
    # and the token still works afterwards.
    wrong = invitation(secret, "0" * 64)
    with pytest.raises(JoinError, match="not the node that made the token"):
        fetch_shared(first.url, wrong, "n2")
    # A live node's name is refused, and does not use the token up either.
    clash = httpx.post(f"{first.url}/api/v1/cluster/join", json={"token": secret, "node": "n1"}, verify=str(ca))
    assert clash.status_code == 409 and clash.json()["error"]["field"] == "node", clash.text
    bad_name = httpx.post(f"{first.url}/api/v1/cluster/join", json={"token": secret, "node": "../n2"},
                          verify=str(ca))
    assert bad_name.status_code == 422 and bad_name.json()["error"]["field"] == "node", bad_name.text

    shared = fetch_shared(first.url, token, "n2")
    settings = shared.settings
    assert settings["secret_key"] == first.secret_key
    assert settings["bus"] == BUS and settings["database"].startswith("postgresql://")
    assert settings["allow_registration"] is True
    for own in ("data_dir", "port", "tls_cert", "tls_key", "node_name", "node_ca_file", "media_loopback"):
        assert own not in settings, own
    assert shared.ca_cert == ca.read_text() and "PRIVATE KEY" in shared.ca_key

    with pytest.raises(JoinError, match=r"\(403\).*unknown, used or expired"):
        fetch_shared(first.url, token, "n3")  # once only
    with pytest.raises(JoinError, match="SECRET.FINGERPRINT"):
        fetch_shared(first.url, "not-a-token", "n3")
    with psycopg2.connect(settings["database"]) as conn, conn.cursor() as cur:
        cur.execute("SELECT detail FROM audit_event WHERE action = 'node.joined'")
        assert [json.loads(row[0])["node"] for row in cur.fetchall()] == ["n2"]


def test_a_single_node_or_an_expired_token_lets_nobody_join(first: Appliance, tmp_path: Path) -> None:
    token = invite(first, "--hours", "0.0003")  # about a second
    time.sleep(1.6)
    with pytest.raises(JoinError, match="unknown, used or expired"):
        fetch_shared(first.url, token, "n4")
    mangled = confmeet("install", "--yes", "--root", str(tmp_path / "root"), "--join", first.url,
                       "--join-token", token[:-1])  # a character short: refused before anything else
    assert mangled.returncode == 2 and "SECRET.FINGERPRINT" in mangled.stderr, show(mangled)
    assert not (tmp_path / "root").exists()
    files = tls.ensure_certificates(tmp_path / "tls", ["127.0.0.1"])
    alone = start_appliance(tmp_path / "alone", ca=files.ca_cert, tls_cert=str(files.cert), tls_key=str(files.key))
    try:
        r = httpx.post(f"{alone.url}/api/v1/cluster/join", json={"token": "x" * 43, "node": "n2"},
                       verify=str(files.ca_cert))
        assert r.status_code == 404 and "one node" in r.json()["error"]["message"], r.text
        done = alone.cli("node", "invite")
        assert done.returncode == 2 and "this install is one node" in done.stderr, done.stderr
    finally:
        stop(alone.proc)


@pytest.mark.slow
def test_install_join_makes_a_node_of_the_same_install(first: Appliance, tmp_path: Path) -> None:
    root = tmp_path / "root"
    unit = root / "lib/systemd/system/coturn.service"  # Debian's coturn, as tests/test_install.py fakes it
    unit.parent.mkdir(parents=True)
    unit.write_text("[Service]\nExecStart=/bin/true\n[Install]\nWantedBy=multi-user.target\n")
    common = ["install", "--mode", "native", "--yes", "--root", str(root), "--port-offset", str(free_port_block()),
              "--listen", "127.0.0.1", "--public-host", "127.0.0.1"]
    wheelhouse = str(Wheelhouse().wait())

    # A store of its own on the joining machine is refused before the token is used.
    token = invite(first)
    refused = confmeet(*common, "--components", "coturn,redis", "--join", first.url, "--join-token", token,
                       "--node-name", "n2", "--wheelhouse", wheelhouse)
    assert refused.returncode == 2 and "leave redis out of --components" in refused.stderr, show(refused)
    assert not (root / "etc/confmeet").exists()

    gateway = f"127.0.0.1:{free_port()}"
    done = confmeet(*common, "--join", first.url, "--join-token", token, "--node-name", "n2",
                    "--gateway", gateway, "--wheelhouse", wheelhouse)
    assert done.returncode == 0, show(done)
    settings = settings_of(root)
    assert settings["secret_key"] == first.secret_key and settings["bus"] == BUS
    assert settings["node_name"] == "n2" and settings["node_ca_file"].endswith("/tls/ca.pem")
    assert settings["ice_servers"] == ["turn:127.0.0.1:3478", "turns:127.0.0.1:5349?transport=tcp"]
    assert "static-auth-secret=" + settings["turn_secret"] in (root / "etc/turnserver.conf").read_text()
    with (first.data_dir / "secrets.toml").open("rb") as fh:
        assert settings["turn_secret"] == tomllib.load(fh)["turn_secret"]  # TURN credentials good on every node
    record = json.loads((root / "etc/confmeet/install.json").read_text())
    assert record["components"] == ["coturn"] and record["joined"] == first.url and record["node_name"] == "n2"
    ca = Path(str(first.verify))
    assert (root / "etc/confmeet/tls/ca.pem").read_text() == ca.read_text()
    # The gateway: nginx's site (this node until the follower adds the others) and its unit, enabled.
    site = root / "etc/nginx/conf.d/confmeet-gateway.conf"
    assert f"listen {gateway} ssl;" in site.read_text()
    assert f"proxy_ssl_trusted_certificate {root}/etc/confmeet/tls/ca.pem;" in site.read_text()
    assert (root / "etc/systemd/system/multi-user.target.wants/confmeet-gateway.service").is_symlink()

    # A second install converges without a token: it keeps what it was handed.
    again = confmeet(*common, "--wheelhouse", wheelhouse)
    assert again.returncode == 0, show(again)
    assert settings_of(root) == settings

    port = free_port()
    program = root / "opt/confmeet/current/bin/confmeet"
    log = (tmp_path / "n2.log").open("w")
    n2 = subprocess.Popen([str(program), "serve", "--config", str(root / "etc/confmeet/confmeet.toml")],
                          stdout=log, stderr=subprocess.STDOUT,
                          env={**ADMIN_ENV, "CONFMEET_PORT": str(port), "CONFMEET_MEDIA_LOOPBACK": "true",
                               "CONFMEET_NODE_URL": f"https://127.0.0.1:{port}"})
    url = f"https://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:  # its certificate is the install CA's: the first node's ca.pem checks it
            assert n2.poll() is None and time.monotonic() < deadline, (tmp_path / "n2.log").read_text()
            try:
                if httpx.get(f"{url}/readyz", verify=str(ca), timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        nodes = {n["name"]: n for n in json.loads(first.cli("node", "list", "--json").stdout)}
        assert nodes["n2"]["alive"] and nodes["n2"]["url"] == url, nodes
        # What the gateway's unit runs, from the release, with this node's settings: both nodes in the site.
        follow = subprocess.run([str(program), "node", "gateway", "--follow", str(site), "--once", "--listen", gateway,
                                 "--config", str(root / "etc/confmeet/confmeet.toml"), "--nginx", "true"],
                                capture_output=True, text=True, env=ADMIN_ENV, timeout=60)
        assert follow.returncode == 0, follow.stderr
        assert f"server {first.url.removeprefix('https://')} " in site.read_text()
        assert f"server 127.0.0.1:{port} " in site.read_text()
        # The first node's account signs in here, and its tokens are good here (one database, one secret).
        tokens = first.login(*ADA)
        r = httpx.get(f"{url}/api/v1/users/me", headers={"Authorization": f"Bearer {tokens['access_token']}"},
                      verify=str(ca))
        assert r.status_code == 200 and r.json()["email"] == ADA[0], r.text
        # A meeting placed on n2 (n1 drained) is reached through n1: relayed over TLS, checked with the CA.
        meeting = httpx.post(f"{first.url}/api/v1/meetings", json={"title": "joined"}, verify=str(ca),
                             headers={"Authorization": f"Bearer {tokens['access_token']}"}).json()
        assert first.cli("node", "drain", "n1").returncode == 0
        try:
            reply, owner = asyncio.run(join_through(first.url, ca, tokens["access_token"], meeting))
        finally:
            first.cli("node", "undrain", "n1")
        assert reply["type"] == "joined" and owner == b"n2", (reply, owner)
    finally:
        stop(n2)
        log.close()
    assert "Traceback" not in (tmp_path / "n2.log").read_text()
    # --gateway "" takes the gateway away: its site and its unit.
    removed = confmeet(*common, "--gateway", "", "--wheelhouse", wheelhouse)
    assert removed.returncode == 0, show(removed)
    assert not site.exists() and not (root / "etc/systemd/system/confmeet-gateway.service").exists()


async def join_through(url: str, ca: Path, token: str, meeting: dict) -> tuple[dict, bytes | None]:
    """A seat taken through the node at ``url``: the reply, and the node the meeting lives on meanwhile."""
    context = ssl.create_default_context(cafile=str(ca))
    ws = url.replace("https://", "wss://") + f"/ws/signaling?token={token}"
    client = await SignalingClient.connect(ws, lambda event: None, lambda client: None, tls=context)
    try:
        reply = await client.request({"type": "join", "meeting": meeting["code"], "name": "Ada"})
        return reply, redis.Redis.from_url(BUS).get(f"confmeet:meeting:{meeting['id']}")
    finally:
        await client.close()


def test_the_first_nodes_shared_stores_listen_on_its_cluster_address(tmp_path: Path) -> None:
    """--cluster-address: the stores the nodes share listen there and the settings name them there;
    the observability layer and the exporters' own ports stay on loopback (the exporters reach their
    store at its address); the node is reached at https://ADDRESS:PORT with the install's CA."""
    from appliance.machine.deploy import (COMPONENTS, SHARED_STORES, DeployError, InstallOptions, Layout,
                                          container_spec, render_settings, resolve, settings_for)

    layout = Layout(tmp_path)
    record = resolve(InstallOptions(root=tmp_path, cluster_address="10.0.0.11", node_name="n1"), None, "containers")
    settings = settings_for(record, layout)
    for setting in ("database", "bus", "documents", "objects", "inference"):
        assert "@10.0.0.11:" in settings[setting] or "//10.0.0.11:" in settings[setting], (setting, settings[setting])
    assert settings["node_url"] == "https://10.0.0.11:443" and settings["node_name"] == "n1"
    assert settings["node_ca_file"] == str(layout.tls_dir / "ca.pem")
    assert settings["forwarded_proxies"] == 1  # behind the gateway: limits count clients, not the gateway
    assert "forwarded_proxies" not in settings_for(resolve(InstallOptions(root=tmp_path), None, "containers"), layout)
    for name in COMPONENTS:
        spec = container_spec(name, record, layout, gpu=False)
        words = " ".join([*spec.command, *spec.environment.values(), *spec.healthcheck])
        if name in SHARED_STORES:
            assert "10.0.0.11" in words and "127.0.0.1" not in words, (name, words)
        elif COMPONENTS[name].exports:  # listens on loopback, reaches its store on the cluster address
            assert "127.0.0.1" in words and "10.0.0.11" in words, (name, words)
        elif name != "coturn":
            assert "10.0.0.11" not in words, (name, words)
    assert "node_url = \"https://10.0.0.11:443\"" in render_settings(record, layout)
    # Kept by the next install, which gives no options.
    assert resolve(InstallOptions(root=tmp_path), record, "containers").cluster_address == "10.0.0.11"
    for address, message in (("127.0.0.1", "cannot reach it"), ("0.0.0.0", "cannot reach it"),
                             ("node1.example", "not an IP address")):
        with pytest.raises(DeployError, match=message):
            resolve(InstallOptions(root=tmp_path, cluster_address=address), None, "containers")
    with pytest.raises(DeployError, match="the appliance listens on port 443 too"):
        resolve(InstallOptions(root=tmp_path, gateway="443"), None, "containers")
    with pytest.raises(DeployError, match="give the port the gateway listens on"):
        resolve(InstallOptions(root=tmp_path, gateway="443; include /etc/passwd"), None, "containers")
    with pytest.raises(DeployError, match="needs --mode containers"):
        resolve(InstallOptions(root=tmp_path, cluster_address="10.0.0.11"), None, "native")
    # A machine with stores of its own does not join (its settings would name two installs' stores).
    with pytest.raises(DeployError, match="has an install of its own"):
        resolve(InstallOptions(root=tmp_path, joined="https://10.0.0.11:443", shared={}), record, "containers")


def test_the_gateway_follows_the_live_nodes_and_reaches_them_over_tls(first: Appliance, tmp_path: Path) -> None:
    """`confmeet node gateway --follow` (what confmeet-gateway.service runs) writes nginx's site
    from the registry, has nginx check and reload it, and nginx then passes HTTPS to the node over
    TLS checked against the install's CA; an address in the registry that is not HOST:PORT is left
    out rather than written into nginx's configuration."""
    ca, cert, key = (str(first.verify), str(Path(str(first.verify)).parent / "cert.pem"),
                     str(Path(str(first.verify)).parent / "key.pem"))
    prefix, sites = tmp_path / "nginx", tmp_path / "nginx/conf.d"
    sites.mkdir(parents=True)
    main = prefix / "nginx.conf"
    main.write_text(f"pid {prefix}/nginx.pid;\nerror_log {prefix}/error.log warn;\nevents {{}}\nhttp {{\n"
                    f"  access_log {prefix}/access.log;\n  client_body_temp_path {prefix}/body;\n"
                    f"  proxy_temp_path {prefix}/proxy;\n  fastcgi_temp_path {prefix}/fastcgi;\n"
                    f"  uwsgi_temp_path {prefix}/uwsgi;\n  scgi_temp_path {prefix}/scgi;\n"
                    f"  include {sites}/*.conf;\n}}\n")
    nginx = ["nginx", "-c", str(main), "-p", str(prefix)]
    started = subprocess.run(nginx, capture_output=True, text=True)
    assert started.returncode == 0, started.stderr
    site, port = sites / "confmeet-gateway.conf", free_port()
    evil = "confmeet:node:evil"
    bus = redis.Redis.from_url(BUS)
    try:
        bus.hset(evil, mapping={"url": "https://x;include /etc/passwd;:1", "meetings": 0, "participants": 0,
                                "started": 0, "seen": 0})
        bus.expire(evil, 60)
        bus.sadd("confmeet:nodes", "evil")

        def follow() -> subprocess.CompletedProcess:
            return first.cli("node", "gateway", "--follow", str(site), "--once", "--listen", f"127.0.0.1:{port}",
                             "--tls-cert", cert, "--tls-key", key, "--nginx", " ".join(nginx))

        done = follow()
        assert done.returncode == 0, done.stderr
        assert "node evil left out" in done.stderr and "passwd" not in site.read_text()
        assert f"server {first.url.removeprefix('https://')} " in site.read_text()
        assert "nginx reloaded" in done.stdout
        r = httpx.get(f"https://127.0.0.1:{port}/readyz", verify=ca, timeout=10)
        assert r.status_code == 200, r.text
        again = follow()  # nothing changed: nothing written, nginx left alone
        assert again.returncode == 0 and "reloaded" not in again.stdout, again.stdout + again.stderr
    finally:
        bus.delete(evil)
        bus.srem("confmeet:nodes", "evil")
        subprocess.run([*nginx, "-s", "quit"], capture_output=True)


def test_the_gateway_unit_verifies_and_runs_the_follower(tmp_path: Path) -> None:
    from appliance.machine import units

    unit = tmp_path / units.GATEWAY_UNIT
    unit.write_text(units.render_gateway_unit(str(Path(sys.executable).parent / "confmeet"),
                                              "/etc/confmeet/confmeet.toml", "/etc/nginx/conf.d/confmeet-gateway.conf",
                                              "443", "/etc/confmeet/tls/cert.pem", "/etc/confmeet/tls/key.pem"))
    assert re.search(r"^ExecStart=\S+/confmeet node gateway --follow /etc/nginx/conf.d/confmeet-gateway.conf "
                     r"--listen 443 --tls-cert \S+ --tls-key \S+ --config /etc/confmeet/confmeet.toml$",
                     unit.read_text(), re.MULTILINE)
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stderr == "", result.stderr
