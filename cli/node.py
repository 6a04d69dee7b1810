"""``confmeet node list|drain|undrain``: the nodes of an install that spans several machines
(appliance/cluster.py), read from and written to the Redis they share."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
from typing import Annotated, Any

import typer
from redis.exceptions import RedisError
from rich.table import Table

from .options import ConfigOpt, DataDirOpt, console, fail, settings_from

node_app = typer.Typer(help="See, add and drain the nodes of a several-node install.", no_args_is_help=True)


def _redis(config: Any, data_dir: Any) -> Any:
    import redis.asyncio as aioredis

    settings = settings_from(config, data_dir=data_dir)
    if not settings.bus.startswith(("redis://", "rediss://")):
        fail(f"this install is one node: its bus is {settings.bus!r}. Several nodes share a Redis bus "
             "(set 'bus' to its redis:// URL on every node).")
    return aioredis.from_url(settings.bus, socket_connect_timeout=5)


def _run(config: Any, data_dir: Any, work: Any) -> Any:
    async def go() -> Any:
        redis = _redis(config, data_dir)
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

    nodes = _run(config, data_dir, list_nodes)
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

    if not _run(config, data_dir, work):
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
    nodes: Annotated[list[str], typer.Argument(help="Every node's address as host:port (its 'host' and 'port').")],
    listen: Annotated[str, typer.Option(help="Where the gateway listens (nginx's 'listen': a port, or address:port).")] = "80",
    tls_cert: Annotated[str, typer.Option(help="Certificate file for HTTPS (then listen on 443).")] = "",
    tls_key: Annotated[str, typer.Option(help="Its private key file.")] = "",
) -> None:
    """Print an nginx.conf for the gateway in front of the nodes (save it as /etc/nginx/nginx.conf)."""
    from appliance.machine.gateway import nginx_config

    if bool(tls_cert) != bool(tls_key):
        fail("give both --tls-cert and --tls-key, or neither")
    bad = [n for n in nodes if ":" not in n or not n.rsplit(":", 1)[1].isdigit()]
    if bad:
        fail(f"a node's address is host:port (e.g. 10.0.0.11:8800), not {', '.join(map(repr, bad))}")
    print(nginx_config(nodes, listen, user="www-data", tls_cert=tls_cert, tls_key=tls_key), end="")


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
    token = _run(config, data_dir, lambda redis: issue_join_token(redis, int(hours * 3600)))
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
