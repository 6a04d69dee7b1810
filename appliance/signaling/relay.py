"""A signaling WebSocket whose meeting lives on another node is relayed there (appliance/cluster.py).

The node a client reached (through the gateway, any node) reads its ``join``, finds the meeting
placed elsewhere, opens a WebSocket to that node with the client's own access token, passes the
``join`` on first and then every frame both ways, unchanged: the owner authenticates, seats and
answers as if the client had reached it directly. Media does not pass here: the owner's SFU gives
the client its own addresses. A close is passed on with its meaning: a client that left on purpose
(1000, 1001) leaves the owner the same way, any other drop keeps the seat there for a resume; the
owner's application codes (4xxx) reach the client as they are, and a lost owner is
``Close.NODE_LOST``, on which the client resumes (and its meeting is placed anew).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
from urllib.parse import quote

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from ..cluster import Cluster
from .protocol import CLIENT_LEFT, Close, Connection

log = logging.getLogger("confmeet.signaling")

CONNECT_SECONDS = 5.0
MAX_FRAME = 1 << 20  # as the appliance's own WEBSOCKET_MAX_SIZE
# Between nodes on one network: a node that vanishes (its machine off, its link down: nothing
# refuses the connection) is noticed within two of these, and its clients told to resume.
PING_SECONDS = 2.0


CLIENT_HEADER = "X-Confmeet-Relayed-For"  # "<client address> <signature>", from a relaying node


def relayed_for(secret: str, address: str, token: str) -> str:
    """The header a relaying node adds: the client's address, signed with the install's secret
    (and bound to the client's token), so that the owner's per-address limits count the client,
    not the node that relays it."""
    digest = hmac.new(secret.encode(), f"relay\n{address}\n{token}".encode(), hashlib.sha256).hexdigest()
    return f"{address} {digest[:32]}"


def relayed_client(secret: str, header: str, token: str) -> str | None:
    """The client address a genuine relay header names, else None."""
    address, _, _ = header.partition(" ")
    if not address or len(header) > 200:
        return None
    return address if hmac.compare_digest(relayed_for(secret, address, token), header) else None


class Elsewhere(Exception):
    """The meeting a connection asked for lives on another node."""

    def __init__(self, node: str) -> None:
        super().__init__(node)
        self.node = node


def ws_url(node_url: str, token: str) -> str:
    scheme, _, rest = node_url.partition("://")
    return f"{'wss' if scheme == 'https' else 'ws'}://{rest.rstrip('/')}/ws/signaling?token={quote(token)}"


async def relay(conn: Connection, cluster: Cluster, token: str) -> None:
    """Relay ``conn`` to the node ``conn.relay_to`` until either side closes."""
    node = conn.relay_to
    assert node is not None
    url = await cluster.url_of(node)
    if url is None:
        log.warning("meeting's node %s went away before the relay opened", node)
        conn.close(Close.NODE_LOST)
        return
    try:
        async with connect(ws_url(url, token), open_timeout=CONNECT_SECONDS, max_size=MAX_FRAME,
                           ssl=cluster.tls if url.startswith("https://") else None,
                           ping_interval=PING_SECONDS, ping_timeout=PING_SECONDS,
                           additional_headers={CLIENT_HEADER: relayed_for(cluster.secret, conn.address, token)}
                           ) as upstream:
            await upstream.send(conn.relay_first)
            down = asyncio.create_task(_down(upstream, conn), name="relay-down")
            up = asyncio.create_task(_up(conn, upstream), name="relay-up")
            try:
                done, _ = await asyncio.wait({down, up}, return_when=asyncio.FIRST_COMPLETED)
            finally:  # also when the relay itself is cancelled (the server stopping)
                for task in (down, up):
                    task.cancel()
                await asyncio.gather(down, up, return_exceptions=True)
            if up in done or (down in done and not down.cancelled() and down.result() == "client"):
                received = getattr(conn.ws.ws_proto, "close_rcvd", None)
                code = getattr(received, "code", None)  # the client went: the owner learns how
                await upstream.close(code if code in CLIENT_LEFT else Close.RELAY_DROPPED)
                conn.close(code or Close.LEFT)
                return
            code = upstream.close_code
    except ConnectionClosed as exc:  # the owner closed at once (an expired sign-in: 4001, say)
        code = exc.rcvd.code if exc.rcvd is not None else None
    except (OSError, TimeoutError, InvalidHandshake, InvalidURI) as exc:
        log.warning("relaying a signaling connection to node %s (%s) failed: %s", node, url, exc)
        code = None
    # The owner closed: its own code (1000: the seat ended; 4xxx: why); else the owner is lost.
    conn.close(code if code is not None and (code == Close.LEFT or code >= 4000) else Close.NODE_LOST)


async def _down(upstream, conn: Connection) -> str:  # type: ignore[no-untyped-def]
    """Pass the owner's frames on; which side ended it ("owner" or "client")."""
    try:
        async for frame in upstream:
            try:
                await conn.ws.send(frame)
            except Exception:
                return "client"
    except ConnectionClosed:
        pass
    return "owner"


async def _up(conn: Connection, upstream) -> None:  # type: ignore[no-untyped-def]
    """Pass the client's frames on until the client's socket ends."""
    while True:
        try:
            frame = await conn.ws.recv()
        except Exception:
            return
        if frame is not None:
            try:
                await upstream.send(frame)
            except ConnectionClosed:
                await asyncio.Event().wait()  # the owner ended: _down says so
