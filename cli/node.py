"""``confmeet node list|drain|undrain``: the nodes of an install that spans several machines
(appliance/cluster.py), read from and written to the Redis they share."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import shlex
import subprocess
import time
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from redis.exceptions import RedisError
from rich.table import Table

from .options import MUST_FIX, ConfigOpt, DataDirOpt, console, err, fail, settings_from

node_app = typer.Typer(help="See, add and drain the nodes of a several-node install.", no_args_is_help=True)


def _redis(settings: Any) -> Any:
    import redis.asyncio as aioredis

    if not settings.bus.startswith(("redis://", "rediss://")):
        fail(f"this install is one node: its bus is {settings.bus!r}. Several nodes share a Redis bus "
             "(set 'bus' to its redis:// URL on every node).")
    return aioredis.from_url(settings.bus, socket_connect_timeout=5)


def _run(settings: Any, work: Any) -> Any:
    """``work(redis)`` on the Redis the nodes share (the settings' bus)."""
    async def go() -> Any:
        redis = _redis(settings)
        try:
            return await work(redis)
        finally:
            await redis.aclose()

    try:
        return asyncio.run(go())
    except (RedisError, OSError) as exc:
        fail(f"cannot reach the Redis the nodes share ({exc}); start it or fix the 'bus' URL")


@node_app.command("list")
def node_list(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Every node that has registered: alive or not, drained or not, and its load."""
    from appliance.cluster import list_nodes

    nodes = _run(settings_from(config, data_dir=data_dir), list_nodes)
    if as_json:
        print(json.dumps([n.view() for n in nodes], indent=2))
        return
    table = Table(title=f"{len(nodes)} node(s)")
    for column in ("node", "url", "state", "meetings", "participants", "up since"):
        table.add_column(column)
    now = time.time()
    for n in nodes:
        state = ("[red]down[/]" if not n.alive else "[yellow]drained[/]" if n.drained else "[green]serving[/]")
        if not n.alive and n.drained:
            state += " (drained)"
        since = dt.datetime.fromtimestamp(n.started).strftime("%Y-%m-%d %H:%M") if n.alive else "-"
        table.add_row(n.name, n.url or "-", state, str(n.meetings) if n.alive else "-",
                      str(n.participants) if n.alive else "-", since)
    console.print(table)
    if any(not n.alive for n in nodes):
        console.print(f"[dim]down: not heard of for over the lease; checked at {dt.datetime.fromtimestamp(now):%H:%M:%S}[/]")


def _set_drained(name: str, drained: bool, config: Any, data_dir: Any) -> None:
    from appliance.cluster import DRAINED, NODES

    async def work(redis: Any) -> bool:
        if not await redis.sismember(NODES, name):
            return False
        await (redis.sadd if drained else redis.srem)(DRAINED, name)
        return True

    if not _run(settings_from(config, data_dir=data_dir), work):
        fail(f"no node named {name!r} has registered; `confmeet node list` shows the nodes")


@node_app.command("drain")
def node_drain(
    name: Annotated[str, typer.Argument(help="The node's name (as `confmeet node list` shows it).")],
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Place no new meeting on a node; the meetings on it now go on until they end."""
    _set_drained(name, True, config, data_dir)
    console.print(f"node [bold]{name}[/] is drained: no new meeting goes there; its meetings go on until they end")


@node_app.command("undrain")
def node_undrain(
    name: Annotated[str, typer.Argument(help="The node's name.")],
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Let a drained node take new meetings again."""
    _set_drained(name, False, config, data_dir)
    console.print(f"node [bold]{name}[/] takes new meetings again")


@node_app.command("gateway")
def node_gateway(
    nodes: Annotated[Optional[list[str]], typer.Argument(
        help="Every node's address as host:port (its 'host' and 'port'); none: the live nodes of the registry.",
        show_default=False)] = None,
    listen: Annotated[str, typer.Option(help="Where the gateway listens (nginx's 'listen': a port, or address:port).")] = "80",
    tls_cert: Annotated[str, typer.Option(help="Certificate file for HTTPS (then listen on 443).")] = "",
    tls_key: Annotated[str, typer.Option(help="Its private key file.")] = "",
    follow: Annotated[Optional[Path], typer.Option(
        help="Keep this file (in nginx's conf.d) the gateway's site for the live nodes: rewrite it when they "
             "change, check it and reload nginx.", show_default=False)] = None,
    once: Annotated[bool, typer.Option("--once", help="With --follow: bring the file up to date once and stop.")] = False,
    interval: Annotated[float, typer.Option(help="With --follow: seconds between looks at the registry.")] = 2.0,
    nginx: Annotated[str, typer.Option(help="The nginx command that checks (-t) and reloads (-s reload) it.")] = "nginx",
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Print an nginx.conf for the gateway in front of the nodes (save it as /etc/nginx/nginx.conf),
    or with --follow keep nginx's site for the live nodes (what `confmeet install --gateway` runs)."""
    from appliance.machine.gateway import nginx_config

    if bool(tls_cert) != bool(tls_key):
        fail("give both --tls-cert and --tls-key, or neither")
    if follow is not None:
        if nodes:
            fail("--follow takes the nodes from the registry: give no addresses")
        _follow(follow, listen, tls_cert, tls_key, once, interval, shlex.split(nginx),
                settings_from(config, data_dir=data_dir))
        return
    upstream = None
    if not nodes:
        nodes, upstream = _live_addresses(settings_from(config, data_dir=data_dir))
    try:
        print(nginx_config(nodes, listen, user="www-data", tls_cert=tls_cert, tls_key=tls_key, upstream=upstream),
              end="")
    except ValueError as exc:
        fail(f"{exc} (e.g. 10.0.0.11:8800)")


def _live_addresses(settings: Any) -> tuple[list[str], Any]:
    """The live nodes' HOST:PORT, and how to reach them (Upstream when they serve https)."""
    from urllib.parse import urlsplit

    from appliance.cluster import list_nodes
    from appliance.machine.gateway import node_address, upstream

    live = [n for n in _run(settings, list_nodes) if n.alive]
    addresses = []
    for n in live:
        try:
            addresses.append(node_address(n.url))
        except ValueError as exc:
            err.print(f"[yellow]warning:[/] node {n.name} left out: {exc}")
    https = bool(live) and all(n.url.startswith("https://") for n in live)
    tls = upstream(settings.node_ca_file, urlsplit(settings.base_url).hostname or "") if https else None
    return addresses, tls


def _follow(path: Path, listen: str, tls_cert: str, tls_key: str, once: bool, interval: float, nginx: list[str],
            settings: Any) -> None:
    from appliance.fsutil import write_atomically
    from appliance.machine.gateway import site_config

    while True:
        nodes, upstream = _live_addresses(settings)
        problem = ""
        if not nodes:
            problem = "no node is live: the site keeps the nodes it names"
        else:
            text = site_config(nodes, listen, tls_cert=tls_cert, tls_key=tls_key, upstream=upstream)
            before = path.read_text() if path.exists() else None
            if text != before:
                write_atomically(path, text.encode(), 0o644)
                checked = subprocess.run([*nginx, "-t"], capture_output=True, text=True)
                reloaded = checked.returncode == 0 and subprocess.run(
                    [*nginx, "-s", "reload"], capture_output=True, text=True).returncode == 0
                if reloaded:
                    console.print(f"gateway: {len(nodes)} node(s): {', '.join(nodes)}; nginx reloaded")
                else:
                    if before is None:
                        path.unlink()
                    else:
                        write_atomically(path, before.encode(), 0o644)
                    problem = f"nginx refused the site for {', '.join(nodes)}: {checked.stderr.strip()[-500:]}; " \
                              "the previous one is kept"
        if problem:
            err.print(f"[yellow]gateway:[/] {problem}")
        if once:
            if problem:
                raise typer.Exit(MUST_FIX)
            return
        time.sleep(interval)


SHARED_URLS = ("database", "bus", "documents", "objects", "inference")


@node_app.command("invite")
def node_invite(
    hours: Annotated[float, typer.Option(help="How long the token works (once).")] = 1.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Make a one-time token that lets a new machine join this install (`confmeet install --join`)."""
    from urllib.parse import urlsplit

    from appliance.cluster import issue_join_token
    from appliance.machine.join import invitation
    from appliance.machine.tls import certificate_fingerprint

    if not 0 < hours <= 24 * 7:
        fail(f"--hours {hours}: give 0.1 to 168 (a week)")
    settings = settings_from(config, data_dir=data_dir)
    if not settings.tls_cert:
        fail("this node serves plain http: a joining machine is handed the install's secrets over TLS only. "
             "Install it with 'confmeet install' (which makes a certificate) or set tls_cert and tls_key")
    url = settings.internal_url
    token = _run(settings, lambda redis: issue_join_token(redis, int(hours * 3600)))
    text = invitation(token, certificate_fingerprint(settings.tls_cert))
    loopback = [name for name in SHARED_URLS if (host := urlsplit(getattr(settings, name)).hostname)
                and (host == "localhost" or host.startswith("127.") or host == "::1")]
    if as_json:
        print(json.dumps({"join": url, "join_token": text, "expires_in": int(hours * 3600),
                          "loopback_stores": loopback}, indent=2))
        return
    console.print(f"On the new machine, as root, within {hours:g} h (the token works once):\n")
    print(f"  confmeet install --join {url} --join-token {text} --cluster-address ITS_ADDRESS\n")
    if loopback:
        console.print(f"[yellow]warning:[/] this node's {', '.join(loopback)} listen on loopback: a node on another "
                      "machine cannot reach them. Install this node again with --cluster-address ADDRESS (its "
                      "address on the nodes' network) first")
