"""Several appliance nodes behind one address: who is alive, how loaded, and where each meeting
lives (docs/architecture.md, "Several nodes").

A node registers itself in Redis (the bus's server, which every node of an install shares) as a
hash ``confmeet:node:<name>`` with its URL, its load (meetings, participants) and a lease: the key
expires ``LEASE_SECONDS`` after the node's last heartbeat, so a node that dies drops out on its
own. A meeting is placed when its first participant joins: on the node already holding it while
that node's lease lives, else on the least-loaded live node that is not drained (fewest
participants, then fewest meetings, then name), chosen and written in one Lua script so that two
nodes placing the same meeting at once agree. The owner refreshes its meetings' placements with
its heartbeat and drops each as it empties. Drained nodes are a Redis set the CLI writes
(``confmeet node drain``): they get no new meeting, and keep the ones they have until they end.

With the in-memory bus (one process, the embedded default) there is one node and nothing is
written anywhere: every meeting is this node's.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

log = logging.getLogger("confmeet.cluster")

PREFIX = "confmeet:"
NODES = PREFIX + "nodes"  # the names of the nodes registered and not stopped on purpose (live, or dead)
DRAINED = PREFIX + "drained"  # names of drained nodes
JOIN_PREFIX = PREFIX + "join:"  # one-time tokens that let a new machine join (confmeet node invite)
JOIN_SECONDS = 3600
HEARTBEAT_SECONDS = 1.0
LEASE_SECONDS = 4.0  # a node not heard of for this long is dead: its meetings are placed anew
PLACEMENT_SECONDS = 30.0  # a placement the owner stopped refreshing lapses (its meeting emptied)


def node_key(name: str) -> str:
    return f"{PREFIX}node:{name}"


def meeting_key(meeting_id: str) -> str:
    return f"{PREFIX}meeting:{meeting_id}"


# KEYS: the meeting's placement key. ARGV: placement ms, the node key prefix, NODES, DRAINED.
# The owner while its lease lives; else the least-loaded live, undrained node, written as owner.
# Returns the owner's name, or false when no live node takes new meetings.
PLACE = """
local owner = redis.call('GET', KEYS[1])
if owner and redis.call('EXISTS', ARGV[2] .. owner) == 1 then
  return owner
end
local best, best_load = false, nil
for _, name in ipairs(redis.call('SMEMBERS', ARGV[3])) do
  local key = ARGV[2] .. name
  if redis.call('EXISTS', key) == 1 and redis.call('SISMEMBER', ARGV[4], name) == 0 then
    local participants = tonumber(redis.call('HGET', key, 'participants') or '0')
    local meetings = tonumber(redis.call('HGET', key, 'meetings') or '0')
    local load = {participants, meetings, name}
    if not best_load or load[1] < best_load[1] or (load[1] == best_load[1] and
        (load[2] < best_load[2] or (load[2] == best_load[2] and load[3] < best_load[3]))) then
      best, best_load = name, load
    end
  end
end
if not best then
  return false
end
redis.call('SET', KEYS[1], best, 'PX', ARGV[1])
-- Counted at once, so that meetings placed before the node's next heartbeat spread out too.
redis.call('HINCRBY', ARGV[2] .. best, 'meetings', 1)
redis.call('HINCRBY', ARGV[2] .. best, 'participants', 1)
return best
"""

# KEYS: placement keys; ARGV: this node's name, placement ms. Refreshes those this node owns.
REFRESH = """
for _, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[1] then
    redis.call('PEXPIRE', key, ARGV[2])
  end
end
return 0
"""

# KEYS: a placement key; ARGV: this node's name. Drops it if this node owns it.
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


def _join_key(token: str) -> str:
    return JOIN_PREFIX + hashlib.sha256(token.encode()).hexdigest()  # Redis never holds the token itself


async def issue_join_token(redis: aioredis.Redis, seconds: int = JOIN_SECONDS) -> str:
    """A one-time token for ``POST /api/v1/cluster/join``, valid ``seconds``."""
    token = secrets.token_urlsafe(32)
    await redis.set(_join_key(token), "1", ex=seconds)
    return token


async def take_join_token(redis: aioredis.Redis, token: str) -> bool:
    """Whether ``token`` was issued and unused; it is used up by this call (GETDEL: once, even
    when two machines present it at the same moment)."""
    return await redis.getdel(_join_key(token)) is not None


def node_tls(ca_file: str) -> ssl.SSLContext:
    """How a node checks another's certificate when it relays there over https: against the
    install's CA (node_ca_file), else the system's CAs."""
    return ssl.create_default_context(cafile=ca_file or None)


class NoNode(Exception):
    """No live node takes new meetings (every one is drained)."""


@dataclass
class Node:
    name: str
    url: str
    meetings: int
    participants: int
    drained: bool
    alive: bool
    started: float
    seen: float  # the heartbeat's time.time()

    def view(self) -> dict[str, Any]:
        return {"name": self.name, "url": self.url, "alive": self.alive, "drained": self.drained,
                "meetings": self.meetings, "participants": self.participants,
                "started": self.started, "last_heartbeat": self.seen}


def default_node_name() -> str:
    return socket.gethostname()


async def list_nodes(redis: aioredis.Redis) -> list[Node]:
    """Every node registered and not stopped on purpose: live, or down (died without leaving)."""
    names = sorted(n.decode() for n in await redis.smembers(NODES))
    drained = {n.decode() for n in await redis.smembers(DRAINED)}
    nodes = []
    for name in names:
        fields = {k.decode(): v.decode() for k, v in (await redis.hgetall(node_key(name))).items()}
        nodes.append(Node(name, fields.get("url", ""), int(fields.get("meetings", 0)),
                          int(fields.get("participants", 0)), name in drained, bool(fields),
                          float(fields.get("started", 0)), float(fields.get("seen", 0))))
    return nodes


class Cluster:
    """This node's membership: its heartbeat, and the placement of meetings."""

    def __init__(self, url: str, name: str, node_url: str, secret: str,
                 load: Callable[[], dict[str, list[Any]]], ca_file: str = "") -> None:
        """``load``: the meetings in progress on this node, each with its seats. ``secret``: the
        install's secret_key, which every node shares (it signs what one node vouches for to another).
        ``ca_file``: what the other nodes' certificates are checked against (node_tls)."""
        self.redis = aioredis.from_url(url, socket_connect_timeout=5, health_check_interval=30)
        self.name = name
        self.secret = secret
        self.tls = node_tls(ca_file)
        self.url = node_url
        self._load = load
        self._started = time.time()
        self._place = self.redis.register_script(PLACE)
        self._refresh = self.redis.register_script(REFRESH)
        self._release = self.redis.register_script(RELEASE)
        self._heartbeat: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.beat()
        self._heartbeat = asyncio.create_task(self._beating(), name="cluster-heartbeat")
        log.info("node %s (%s) joined the cluster", self.name, self.url)

    async def leave(self) -> bool:
        """Stop on purpose: out of the registry at once (not "down"), so that this node's meetings
        are placed anew at their next join. Whether another node is there to take them."""
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            await asyncio.gather(self._heartbeat, return_exceptions=True)
            self._heartbeat = None
        try:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.delete(node_key(self.name))
                pipe.srem(NODES, self.name)
                await pipe.execute()
            return any(n.alive and not n.drained for n in await list_nodes(self.redis))
        except (RedisError, OSError) as exc:
            log.warning("node %s could not leave the registry in Redis: %s", self.name, exc)
            return False

    async def close(self) -> None:
        await self.leave()
        await self.redis.aclose()

    async def beat(self) -> None:
        meetings = self._load()
        key = node_key(self.name)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.sadd(NODES, self.name)
            pipe.hset(key, mapping={"url": self.url, "meetings": len(meetings),
                                    "participants": sum(len(s) for s in meetings.values()),
                                    "started": self._started, "seen": time.time()})
            pipe.pexpire(key, int(LEASE_SECONDS * 1000))
            await pipe.execute()
        if meetings:
            await self._refresh(keys=[meeting_key(m) for m in meetings],
                                args=[self.name, int(PLACEMENT_SECONDS * 1000)])

    async def _beating(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_SECONDS)
            try:
                await self.beat()
            except (RedisError, OSError) as exc:
                log.warning("node %s could not renew its lease in Redis: %s", self.name, exc)

    async def place(self, meeting_id: str) -> str:
        """The node a meeting lives on (placing it now if it lives nowhere); raises NoNode."""
        owner = await self._place(keys=[meeting_key(meeting_id)],
                                  args=[int(PLACEMENT_SECONDS * 1000), f"{PREFIX}node:", NODES, DRAINED])
        if owner is None:
            raise NoNode("no node takes new meetings: every node is drained or down "
                         "(confmeet node undrain NAME)")
        return owner.decode() if isinstance(owner, bytes) else str(owner)

    async def url_of(self, name: str) -> str | None:
        url = await self.redis.hget(node_key(name), "url")
        return url.decode() if url is not None else None

    async def release(self, meeting_id: str) -> None:
        """The meeting emptied here: its placement goes (the next first join places it anew)."""
        try:
            await self._release(keys=[meeting_key(meeting_id)], args=[self.name])
        except (RedisError, OSError) as exc:  # it lapses on its own (PLACEMENT_SECONDS)
            log.warning("node %s could not drop the placement of meeting %s: %s", self.name, meeting_id, exc)

    async def alive(self, name: str) -> bool:
        """Whether a node's lease lives."""
        return bool(await self.redis.exists(node_key(name)))

    async def drained(self) -> bool:
        return bool(await self.redis.sismember(DRAINED, self.name))


async def read_nodes(url: str) -> list[Node]:
    """The nodes, read from the Redis at ``url`` (a connection of its own, closed after)."""
    redis = aioredis.from_url(url, socket_connect_timeout=5, socket_timeout=5)
    try:
        return await list_nodes(redis)
    finally:
        await redis.aclose()
