"""WebSocket signaling (``/ws/signaling``): connections, seats in meetings, SDP/ICE to the SFU,
and events to the seats; everything else a message can ask for is a feature's (room.py).

The protocol is documented message by message in docs/protocol.md. Signaling reaches the SFU only
through its gateway's messages (appliance/sfu/host.py) and passes the SFU's events on as they come,
less their routing fields. Each seat (a participant's place in a meeting) outlives its WebSocket
for ``RESUME_SECONDS`` so that a client can reconnect without the others seeing it leave. Seat
changes are published on the event bus (``meeting.<id>``) so that a second process can follow.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import logging
import secrets
from collections.abc import Callable
from typing import Any

from sanic import Request
from sanic.exceptions import WebsocketClosed
from sanic.server.websockets.impl import WebsocketImplProtocol
from websockets.exceptions import ConnectionClosed

from .. import logs
from ..accounts import ACCOUNTS_CHANNEL, Accounts, Principal
from ..cluster import Cluster, NoNode
from ..display_names import name_problem
from ..errors import Conflict, DomainError, NotFound
from ..meetings import Meetings, channel
from ..settings import Settings
from ..stores.bus import EventBus
from ..stores.relational import Meeting, Participant, Relational, utcnow
from ..throttle import Throttle, client_address
from ..tracing import JoinTrace
from ..turn import turn_credentials
from .metrics import CONNECTIONS, ERRORS, MESSAGES, REFUSED
from .protocol import CLIENT_LEFT, Close, Connection, Seat, SignalingError, parse, sfu_refusal
from .relay import CLIENT_HEADER, Elsewhere, relay, relayed_client
from .room import Feature, Handler, RoomView, SfuGateway

log = logging.getLogger("confmeet.signaling")

RESUME_SECONDS = 30.0
IDLE_SECONDS = 30.0
SFU_REQUESTS = ("offer", "answer", "candidate", "video_layer")
ROUTING = ("room", "to")  # what an SFU event carries for signaling alone


class Signaling:
    def __init__(self, settings: Settings, sfu: SfuGateway, accounts: Accounts, meetings: Meetings,
                 db: Relational, bus: EventBus, throttle: Throttle, cluster: Cluster | None = None) -> None:
        self.settings = settings
        self.cluster = cluster  # several nodes: each meeting lives on one (appliance/cluster.py)
        self._session_key = hmac.new(settings.secret_key.encode(), b"confmeet seat sessions", hashlib.sha256).digest()
        self.sfu = sfu
        self.accounts = accounts
        self.meetings = meetings
        self.throttle = throttle
        self.db = db
        self.bus = bus
        self.seats: dict[str, Seat] = {}
        self.sessions: dict[str, Seat] = {}
        self._reclaiming: set[str] = set()  # seats of a stopped node being taken over here now
        self.connections: set[Connection] = set()
        self.room = RoomView(self.seats, sfu, db, self.release, self.seat_connection, self.check_name, self.move,
                             self._breakout_rooms)
        self.features: list[Feature] = []
        self.handlers: dict[str, Handler] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._releasing: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.Task[None]] = set()

    def use(self, *features: Feature) -> None:
        """Add features: their messages join the dispatch table (one owner per message type)."""
        for feature in features:
            for kind, handler in feature.handlers.items():
                if kind in self.handlers or kind in (*SFU_REQUESTS, "join", "leave", "ping"):
                    raise ValueError(f"two handlers for the message type {kind!r}")
                self.handlers[kind] = handler
            self.features.append(feature)

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        self._tasks = [asyncio.create_task(self._sfu_events(), name="signaling-sfu-events"),
                       asyncio.create_task(self._bus_events(), name="signaling-bus-events"),
                       asyncio.create_task(self._account_events(), name="signaling-account-events"),
                       asyncio.create_task(self._check_sign_ins(), name="signaling-sign-in-checks")]

    async def close(self) -> None:
        """The server stops. With other nodes live, the seats are handed over: this node leaves
        the registry, and every client is told to resume (Close.NODE_LOST), which another node
        answers by taking its seat over from the record (``_reclaim``); alone, every seat ends."""
        if self.cluster is not None and await self.cluster.leave():
            for seat in list(self.seats.values()):
                if seat.expiry is not None:
                    seat.expiry.cancel()
            log.info("handing %d seat(s) over to the other nodes", len(self.seats))
            self.seats.clear()
            self.sessions.clear()
            for conn in list(self.connections):
                conn.close(Close.NODE_LOST)
        for seat in list(self.seats.values()):
            await self.release(seat, "left", close=Close.LEFT)
        for conn in list(self.connections):
            conn.close(Close.GOING_AWAY)
        if self._writers:
            await asyncio.wait(self._writers, timeout=5)
        for task in [*self._tasks, *self._writers]:
            task.cancel()
        await asyncio.gather(*self._tasks, *self._writers, *self._releasing, return_exceptions=True)

    def in_meeting(self, meeting_id: str) -> list[Seat]:
        return self.room.in_meeting(meeting_id)

    def meetings_in_progress(self) -> dict[str, list[Seat]]:
        """Every meeting someone is in now, with their seats (the administrators' overview)."""
        meetings: dict[str, list[Seat]] = {}
        for seat in self.seats.values():
            meetings.setdefault(seat.meeting_id, []).append(seat)
        return meetings

    def seat_of(self, meeting_id: str, principal_id: str) -> Seat | None:
        """The seat someone holds in a meeting now, if any."""
        return next((s for s in self.in_meeting(meeting_id) if s.user_id == principal_id), None)

    # ------------------------------------------------------------------ one WebSocket
    async def serve(self, request: Request, ws: WebsocketImplProtocol) -> None:
        join = JoinTrace()
        try:
            with join.step("signaling.token_check"):
                principal = await self.accounts.principal_for_token(request.args.get("token", ""))
        except DomainError as exc:
            join.finish("unauthorized")
            error = SignalingError.of(exc)
            REFUSED.inc()
            ERRORS.labels(error.code).inc()
            await ws.send(json.dumps(error.message_for(None)))
            await ws.close(Close.UNAUTHORIZED, "unauthorized")
            return
        address = client_address(request)
        relayed = request.headers.get(CLIENT_HEADER)
        if relayed and self.cluster is not None:  # another node relays the client: count the client
            address = relayed_client(self.settings.secret_key, relayed, request.args.get("token", "")) or address
        conn = Connection(ws, principal, address, trace=join)
        self.connections.add(conn)
        CONNECTIONS.inc()
        writer = asyncio.create_task(conn.drain((WebsocketClosed, ConnectionClosed)), name="signaling-writer")
        self._writers.add(writer)
        writer.add_done_callback(self._writers.discard)
        try:
            await self._read(conn)
            if conn.relay_to is not None and self.cluster is not None:
                await relay(conn, self.cluster, request.args.get("token", ""))
        finally:
            self.connections.discard(conn)
            CONNECTIONS.dec()
            seat = conn.seat
            if seat is not None and seat.connection is conn:
                received = getattr(conn.ws.ws_proto, "close_rcvd", None)
                if conn.close_code is None and getattr(received, "code", None) in CLIENT_LEFT:
                    await self.release(seat, "left")  # closed on purpose (a closed tab), not a blip
                else:
                    self._connection_lost(seat)
            for feature in self.features:
                feature.connection_closed(conn)
            conn.trace.finish("closed")
            conn.close(conn.close_code or Close.LEFT)
            leftovers = asyncio.create_task(self._discard_incoming(conn.ws), name="signaling-leftovers")
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer, 5)
            leftovers.cancel()

    @staticmethod
    async def _discard_incoming(ws: WebsocketImplProtocol) -> None:
        """Read and drop what the client sent after the server stopped reading (messages behind a
        ``leave``): Sanic hands frames over one at a time, so unread ones would hold back the
        client's closing frame, and the close would end in a timeout instead of a handshake."""
        with contextlib.suppress(Exception):
            while True:
                await ws.recv()

    async def _read(self, conn: Connection) -> None:
        while conn.close_code is None:
            try:
                raw = await conn.ws.recv(timeout=IDLE_SECONDS)
            except (Exception, asyncio.CancelledError):  # the socket closed under us
                return
            if raw is None:  # silent for too long: treated like a dropped connection
                ERRORS.labels("idle").inc()
                conn.send({"type": "error", "code": "idle", "message": f"nothing received for {IDLE_SECONDS:.0f} s"})
                conn.close(Close.IDLE)
                return
            reply_to = None
            seat = conn.seat
            logs.bind(meeting_id=seat.meeting_id if seat else None, participant_id=seat.id if seat else None)
            try:
                message = parse(raw)
                reply_to = message.get("id")
                MESSAGES.labels(self._known_type(message["type"])).inc()
                try:
                    reply = await self._dispatch(conn, message)
                except DomainError as exc:
                    raise SignalingError.of(exc) from None
            except Elsewhere as exc:  # the meeting lives on another node: relay this socket there
                conn.relay_to, conn.relay_first = exc.node, raw
                return
            except SignalingError as exc:
                ERRORS.labels(exc.code).inc()
                conn.send(exc.message_for(reply_to))
                if exc.close is not None:
                    conn.close(exc.close)
                continue
            except Exception:
                log.exception("signaling message failed")
                ERRORS.labels("internal").inc()
                conn.send({"type": "error", "code": "internal", "message": "internal error; see the server log",
                           **({"re": reply_to} if reply_to is not None else {})})
                continue
            if reply is not None:
                if reply_to is not None:
                    reply["re"] = reply_to
                conn.send(reply)

    def _known_type(self, kind: str) -> str:
        """The message type as a metric label: one the protocol knows, else ``unknown``."""
        return kind if kind in self.handlers or kind in (*SFU_REQUESTS, "join", "leave", "ping") else "unknown"

    async def _dispatch(self, conn: Connection, message: dict[str, Any]) -> dict[str, Any] | None:
        kind = message["type"]
        if kind == "ping":
            return {"type": "pong"}
        if kind == "join":
            return await self._join_and_reply(conn, message)
        handler = self.handlers.get(kind)
        if handler is None and kind not in (*SFU_REQUESTS, "leave"):
            raise SignalingError("unknown_type", f"unknown message type {kind!r}")
        seat = conn.seat
        if seat is None or seat.connection is not conn:
            waiting = " (you are waiting in the lobby)" if conn.knock is not None else ""
            raise SignalingError("not_joined", f"send 'join' before {kind!r}{waiting}")
        if handler is not None:
            return await handler(seat, message)
        if kind == "leave":
            await self.release(seat, "left")
            conn.send({"type": "left", **({"re": message["id"]} if "id" in message else {})})
            conn.close(Close.LEFT)
            return None
        if kind == "offer":
            self._check_published(message)
        answered = seat.pending_offer
        if kind == "answer" and answered is None and seat.offer_left_behind:
            seat.offer_left_behind = False
            return {"type": "ok"}  # to an offer of the room the seat has left since: dropped
        forwarded = {k: v for k, v in message.items()
                     if k in ("type", "sdp", "tracks", "candidate", "publisher", "track_id", "max_layer")}
        first_offer = kind == "offer" and conn.trace.open
        with conn.trace.step("sfu.answer") if first_offer else contextlib.nullcontext():
            reply = await self.sfu.request(seat.media_room, {**forwarded, "participant": seat.id})
            if reply.get("type") == "error":
                raise sfu_refusal(reply, "media negotiation")
        if first_offer:
            conn.trace.finish("answered")
        if kind == "answer" and seat.pending_offer is answered:  # not the SFU's next offer, sent meanwhile
            seat.pending_offer = None
        return reply

    # ------------------------------------------------------------------ join / resume / leave
    async def _join_and_reply(self, conn: Connection, message: dict[str, Any]) -> dict[str, Any] | None:
        conn.hold()
        try:
            reply = await self._join(conn, message)
        except BaseException:
            conn.release()
            raise
        if conn.seat is None:  # waiting in the lobby
            conn.release()
            return reply
        if reply.get("resumed"):
            conn.trace.finish("resumed")
        # The reply first, then an offer sent while the socket was down, then the events that
        # happened meanwhile.
        pending = conn.seat.pending_offer if reply.get("resumed") else None
        conn.release({**reply, **({"re": message["id"]} if "id" in message else {})},
                     *([pending] if pending is not None else []))
        return None

    async def _join(self, conn: Connection, message: dict[str, Any]) -> dict[str, Any]:
        if conn.seat is not None or conn.knock is not None:
            raise SignalingError("already_joined", "this connection has already joined a meeting")
        resume = message.get("resume")
        ref = message.get("meeting")
        # A seat this node does not hold may be on another node (its meeting placed there).
        elsewhere = self.cluster is not None and resume not in self.sessions and isinstance(ref, str)
        if resume is not None and not elsewhere:
            return await self._resume(conn, resume)
        principal = conn.principal
        if not isinstance(ref, str) or not 1 <= len(ref) <= 64:
            raise SignalingError("bad_message", "'meeting' must be the meeting's join code or id")
        found = None  # the meeting and the person's role in it, looked up once
        if self.cluster is not None:
            try:
                found = await self.meetings.find_for_join(principal, ref)
            except NotFound:
                raise SignalingError("not_found", "no such meeting") from None
            await self._place(found[0].id)
            if resume is not None:  # a seat not held here, of a meeting placed here now
                return await self._reclaim(conn, resume, *found)
        name = message.get("name", principal.name)
        if not isinstance(name, str) or not 1 <= len(name.strip()) <= 100:
            raise SignalingError("bad_message", "'name' must be 1 to 100 characters")
        name = name.strip()
        password = message.get("password")
        if password is not None and not isinstance(password, str):
            raise SignalingError("bad_message", "'password' must be a string")

        with conn.trace.step("signaling.entry"):
            try:
                meeting, role = found or await self.meetings.find_for_join(principal, ref)
                role = await self.meetings.check_entry(meeting, principal, role, password, self.throttle,
                                                       conn.address)
            except NotFound:
                raise SignalingError("not_found", "no such meeting") from None
            self.check_name(meeting.id, principal, name)
        with conn.trace.step("signaling.lobby", waited=False) as lobby:
            for feature in self.features:
                waiting = await feature.gate(conn, meeting, role, name, principal)
                if waiting is not None:
                    conn.trace.wait(lobby)  # until let in (seat_connection) or the connection ends
                    return waiting
        return await self.seat_connection(conn, meeting, role, name)

    async def _place(self, meeting_id: str) -> None:
        """Where the meeting lives (placed now if nowhere): here, or Elsewhere (the connection is
        relayed to that node)."""
        assert self.cluster is not None
        try:
            node = await self.cluster.place(meeting_id)
        except NoNode as exc:
            raise SignalingError("no_capacity", str(exc)) from None
        if node != self.cluster.name:
            raise Elsewhere(node)

    def check_name(self, meeting_id: str, principal: Principal, name: str) -> None:
        """Refuse a display name that poses as a role or as someone else in the meeting."""
        problem = name_problem(name, [s.name for s in self.in_meeting(meeting_id) if s.user_id != principal.id])
        if problem:
            raise SignalingError("bad_name", problem)

    def _check_published(self, offer: dict[str, Any]) -> None:
        """Refuse an offer that would publish more tracks than one participant may."""
        sdp = offer.get("sdp")
        if not isinstance(sdp, str):
            return  # the SFU says what is wrong with it
        published = 0
        for section in sdp.split("\nm=")[1:]:
            media, _, rest = section.partition(" ")
            port = rest.split(" ", 1)[0]
            if media in ("audio", "video") and port != "0" and not any(
                    f"a={d}" in section for d in ("recvonly", "inactive")):
                published += 1
        most = self.settings.max_tracks_per_participant
        if published > most:
            raise SignalingError("too_many_tracks", f"one participant may publish at most {most} tracks")

    async def seat_connection(self, conn: Connection, meeting: Meeting, role: str, name: str) -> dict[str, Any]:
        """Give the connection a seat in the meeting: the SFU, the roster, the record; its
        ``joined`` reply."""
        principal = conn.principal
        self.check_name(meeting.id, principal, name)  # again: others may have joined while it waited
        seat_id = f"p-{secrets.token_hex(8)}"
        seat = Seat(id=seat_id, meeting_id=meeting.id,
                    meeting={"id": meeting.id, "code": meeting.code, "title": meeting.title},
                    principal=principal, name=name, role=role, session=self._session(seat_id, meeting.id, principal.id))
        conn.trace.admitted()
        conn.trace.seated(meeting.id, seat.id, role)
        joined = await self._take_seat(conn, seat, resumed=False)
        logs.bind(meeting_id=meeting.id, participant_id=seat.id)
        log.info("joined the meeting as %s", role)
        await self.db.run(self._record_join, seat, self.settings.node)
        await self.bus.publish(channel(meeting.id), {"type": "participant_joined", "meeting": meeting.id,
                                                     "participant": seat.view()})
        return await self._with_features(joined, seat)

    async def _take_seat(self, conn: Connection, seat: Seat, resumed: bool) -> dict[str, Any]:
        """The seat joins the SFU and the roster, on this connection; the others are told. Its
        ``joined`` reply: the meeting as it is at this very moment (everything later reaches the
        client as an event, held behind this reply by the connection)."""
        with conn.trace.step("sfu.join"):
            sfu = await self.sfu.request(seat.meeting_id, {"type": "join", "participant": seat.id, "name": seat.name})
            if sfu.get("type") == "error":
                raise sfu_refusal(sfu, "joining the media")
        others = self.in_meeting(seat.meeting_id)
        self.seats[seat.id] = seat
        self.sessions[seat.session] = seat
        self._attach(seat, conn)
        joined = self._joined(seat, resumed=resumed, tracks=sfu["tracks"], ice_servers=sfu["ice_servers"])
        for other in others:
            other.send({"type": "participant_joined", "participant": seat.view()})
        return joined

    def _session(self, seat_id: str, meeting_id: str, principal_id: str) -> str:
        """A seat's session token: random, and signed with the install's secret so that another
        node can tell which seat, meeting and person it was given for (``_reclaim``)."""
        payload = base64.urlsafe_b64encode(json.dumps(
            [seat_id, meeting_id, principal_id, secrets.token_urlsafe(12)]).encode()).decode().rstrip("=")
        return f"{payload}.{self._sign(payload)}"

    def _sign(self, payload: str) -> str:
        digest = hmac.new(self._session_key, payload.encode(), hashlib.sha256).digest()[:24]
        return base64.urlsafe_b64encode(digest).decode()

    def _session_claim(self, session: Any) -> list[str] | None:
        """[seat, meeting, principal] of a session token this install signed, else None."""
        if not isinstance(session, str) or len(session) > 512 or "." not in session:
            return None
        payload, _, signature = session.rpartition(".")
        if not hmac.compare_digest(signature, self._sign(payload)):
            return None
        try:
            claim = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        except ValueError:
            return None
        return claim[:3] if isinstance(claim, list) and len(claim) == 4 else None

    async def _reclaim(self, conn: Connection, session: Any, meeting: Meeting, role_now: str | None) -> dict[str, Any]:
        """A resume of a seat this node does not hold, for a meeting placed here: the seat of a
        node that died (its meeting was placed anew). Taken over with its id, name and role when
        the session is one this install gave that person for that seat in this meeting, and the
        record says the seat is still held by a node whose lease has lapsed; the client connects
        its media afresh (``media_reset`` in the reply). Its role: the one the meeting's roles
        give now (``role_now``, a promotion since included), else the one it joined with.
        A meeting that ended meanwhile (its host ended it while the node was dead) gives
        ``meeting_ended``, as a join does. Anything else: ``session_expired``."""
        assert self.cluster is not None
        if meeting.status == "ended":
            raise Conflict("this meeting has ended", code="meeting_ended")
        claim = self._session_claim(session)
        if (claim is None or claim[1] != meeting.id or claim[2] != conn.principal.id
                or claim[0] in self.seats or claim[0] in self._reclaiming):
            raise SignalingError("session_expired", "that seat is gone; join the meeting afresh")
        self._reclaiming.add(claim[0])  # two resumes of one seat racing: the second is refused
        try:
            row = await self.db.run(lambda: Participant.get_or_none(Participant.id == claim[0]))
            if (row is None or row.left_at is not None or row.node in (None, self.settings.node)
                    or await self.cluster.alive(row.node)):
                raise SignalingError("session_expired", "that seat is gone; join the meeting afresh")
            seat = Seat(id=row.id, meeting_id=meeting.id,
                        meeting={"id": meeting.id, "code": meeting.code, "title": meeting.title},
                        principal=conn.principal, name=row.display_name, role=role_now or row.role, session=session)
            joined = await self._take_seat(conn, seat, resumed=True)
        finally:
            self._reclaiming.discard(claim[0])
        joined["media_reset"] = True  # the media starts over on this node: a new peer connection
        log.info("took over seat %s of node %s, which stopped", seat.id, row.node)
        node = self.settings.node
        await self.db.run(lambda: Participant.update(node=node).where(Participant.id == seat.id).execute())
        return await self._with_features(joined, seat)

    async def _resume(self, conn: Connection, session: Any) -> dict[str, Any]:
        seat = self.sessions.get(session) if isinstance(session, str) else None
        if seat is None or seat.user_id != conn.principal.id:
            raise SignalingError("session_expired", "that seat is gone; join the meeting afresh")
        if seat.connection is not None:
            seat.connection.send({"type": "error", "code": "replaced",
                                  "message": "this seat was taken over by a newer connection"})
            seat.connection.close(Close.REPLACED)
        self._attach(seat, conn)
        sfu = await self.sfu.request(seat.media_room, {"type": "room", "participant": seat.id})
        if sfu.get("type") == "error":
            raise sfu_refusal(sfu, "resuming the media")
        joined = self._joined(seat, resumed=True, tracks=sfu["tracks"], ice_servers=sfu["ice_servers"])
        joined["last_n"] = sfu.get("last_n")  # what last_n events the dropped socket missed came to
        return await self._with_features(joined, seat)

    def _attach(self, seat: Seat, conn: Connection) -> None:
        if seat.expiry is not None:
            seat.expiry.cancel()
            seat.expiry = None
        seat.connection = conn
        conn.seat = seat

    def _joined(self, seat: Seat, resumed: bool, tracks: list[dict[str, Any]],
                ice_servers: list[dict[str, Any]]) -> dict[str, Any]:
        """The ``joined`` reply as the meeting is now: the tracks the SFU said are published there,
        its ICE servers for clients and TURN credentials made for this seat alone."""
        return {
            "type": "joined", "meeting": seat.meeting, "participant": seat.view(), "session": seat.session,
            "resumed": resumed, "ice_servers": [*ice_servers, *self._turn_servers(seat.id)],
            "participants": [s.view() for s in self.in_meeting(seat.meeting_id) if s is not seat],
            "tracks": [t for t in tracks if t["participant"] != seat.id],
        }

    async def _with_features(self, joined: dict[str, Any], seat: Seat) -> dict[str, Any]:
        for feature in self.features:
            joined.update(await feature.joined(seat))
        return joined

    def _turn_servers(self, seat_id: str) -> list[dict[str, Any]]:
        """TURN servers, with credentials made for this seat alone that open new relays for
        turn_credential_minutes: someone removed cannot go on making relays."""
        turn = [url for url in self.settings.ice_servers if url.startswith("turn")]
        if not turn:
            return []
        username, credential = turn_credentials(self.settings.turn_secret, seat_id,
                                                self.settings.turn_credential_minutes)
        return [{"urls": turn, "username": username, "credential": credential}]

    @staticmethod
    def _record_join(seat: Seat, node: str) -> None:
        Participant.create(id=seat.id, meeting=seat.meeting_id, user=seat.account,
                           display_name=seat.name, role=seat.role, node=node)
        Meeting.update(status="live").where(Meeting.id == seat.meeting_id, Meeting.status == "scheduled").execute()

    def _connection_lost(self, seat: Seat) -> None:
        """The WebSocket dropped without 'leave': keep the seat a while for a resume."""
        seat.connection = None
        loop = asyncio.get_running_loop()
        seat.expiry = loop.call_later(
            RESUME_SECONDS, lambda: asyncio.ensure_future(self.release(seat, "disconnected")))

    async def release(self, seat: Seat, reason: str, close: int | None = None) -> None:
        """The seat ends: the others are told at once; leaving the SFU and recording it finish
        even when the caller is cancelled (a handler whose socket closed mid-leave)."""
        if self.seats.pop(seat.id, None) is None:
            return
        self.sessions.pop(seat.session, None)
        if seat.expiry is not None:
            seat.expiry.cancel()
        if seat.connection is not None and close is not None:
            seat.connection.close(close)
        with logs.bound(meeting_id=seat.meeting_id, participant_id=seat.id):
            log.info("left the meeting (%s)", reason)
        for other in self.in_meeting(seat.meeting_id):
            other.send({"type": "participant_left", "participant_id": seat.id, "reason": reason})
        task = asyncio.create_task(self._finish_release(seat, reason), name=f"release-{seat.id}")
        self._releasing.add(task)
        task.add_done_callback(self._releasing.discard)
        await asyncio.shield(task)

    async def _finish_release(self, seat: Seat, reason: str) -> None:
        await self.sfu.request(seat.media_room, {"type": "leave", "participant": seat.id})
        await self.db.run(lambda: Participant.update(left_at=utcnow()).where(Participant.id == seat.id).execute())
        await self.bus.publish(channel(seat.meeting_id), {"type": "participant_left", "meeting": seat.meeting_id,
                                                          "participant_id": seat.id, "reason": reason})
        if not self.in_meeting(seat.meeting_id):
            if self.cluster is not None:
                await self.cluster.release(seat.meeting_id)
            for feature in self.features:
                try:
                    await feature.meeting_emptied(seat.meeting_id)
                except Exception:
                    log.exception("a feature failed to end its part of meeting %s", seat.meeting_id)

    # ------------------------------------------------------------------ events
    async def _sfu_events(self) -> None:
        async for event in self.sfu.subscribe_events():
            try:
                await self._sfu_event(event)
            except Exception:
                log.exception("handling SFU event %s failed", event.get("type"))

    async def _sfu_event(self, event: dict[str, Any]) -> None:
        kind, room, to = event["type"], event["room"], event.get("to")
        feature = next((f for f in self.features if f.handles(event)), None)
        if feature is not None:
            await feature.sfu_event(event)
            return
        if kind == "participant_left":
            seat = self.seats.get(event["participant_id"])
            if seat is not None and seat.media_room == room and event.get("reason") != "left":
                # The media connection closed or failed (a closed tab, a dead network).
                await self.release(seat, "disconnected", close=Close.LEFT)
            return
        if kind == "participant_joined":
            return  # signaling announces seats itself, with their roles
        if kind == "media_lost":
            await self._media_lost(room, event["participants"])
            return
        message = {k: v for k, v in event.items() if k not in ROUTING}
        if to is not None:
            seat = self.seats.get(to)
            if seat is not None and seat.media_room == room:  # not of a room the seat has left
                if kind == "offer":
                    seat.pending_offer = message  # resent after a resume if the socket is down now
                seat.send(message)
            return
        for seat in self.room.in_media_room(room):
            if kind in ("track_published", "track_unpublished") and message["track"]["participant"] == seat.id:
                continue
            seat.send(message)

    async def _media_lost(self, room: str, participants: list[str]) -> None:
        """The SFU worker hosting a room (a meeting's main room or a breakout room) died. The seats
        stay: each joins the SFU again (which places the room on a live worker) and its client is
        told to connect its media afresh."""
        log.warning("SFU room %s lost its media (an SFU worker stopped); its participants reconnect", room)
        for feature in self.features:
            await feature.media_lost(room)
        for seat in [self.seats[p] for p in participants if p in self.seats]:
            if seat.media_room == room:  # not moved to another room meanwhile
                await self._media_reset(seat)

    async def _breakout_rooms(self, meeting_id: str, rooms: dict[str, str]) -> None:
        """A meeting's open breakout rooms changed: every feature is told (one failing does not
        keep it from the others)."""
        for feature in self.features:
            try:
                await feature.breakout_rooms(meeting_id, dict(rooms))
            except Exception:
                log.exception("a feature failed to follow the breakout rooms of meeting %s", meeting_id)

    async def move(self, seat: Seat, breakout: str | None) -> None:
        """Move a seat's media to a breakout room of its meeting (None: the main room): it leaves
        its SFU room and joins the other, its client connects its media afresh (``media_reset``),
        and everyone sees the seat's new room."""
        if seat.breakout == breakout or self.seats.get(seat.id) is not seat:
            return
        left, seat.breakout = seat.media_room, breakout
        # An answer on its way now is to an offer of the room it leaves: dropped when it comes.
        seat.offer_left_behind, seat.pending_offer = seat.pending_offer is not None, None
        await self.sfu.request(left, {"type": "leave", "participant": seat.id})
        await self._media_reset(seat)
        if self.seats.get(seat.id) is seat:
            self.room.updated(seat)
            for feature in self.features:
                try:
                    await feature.moved(seat)
                except Exception:
                    log.exception("a feature failed to follow participant %s to room %s", seat.id, seat.media_room)

    async def _media_reset(self, seat: Seat) -> None:
        """Join the seat to its SFU room afresh (a moderator's hold of its microphone or camera
        included) and tell its client to connect its media anew; a seat the SFU refuses ends."""
        sfu = await self.sfu.request(seat.media_room, {"type": "join", "participant": seat.id, "name": seat.name})
        if sfu.get("type") == "error":
            log.error("participant %s could not join the SFU again: %s", seat.id, sfu.get("message"))
            await self.release(seat, "disconnected", close=Close.LEFT)
            return
        for source, held in (("microphone", seat.muted), ("camera", seat.camera_off)):
            if held:  # lifted again by the participant's own update_state, as before
                await self.sfu.request(seat.media_room, {"type": "hold", "participant": seat.id,
                                                         "source": source, "held": True})
        reset = {"type": "media_reset", "tracks": [t for t in sfu["tracks"] if t["participant"] != seat.id],
                 "ice_servers": [*sfu["ice_servers"], *self._turn_servers(seat.id)]}
        # A seat whose socket is down gets it right after its resume instead.
        seat.pending_offer = None if seat.connection is not None else reset
        seat.send(reset)

    async def _bus_events(self) -> None:
        async with self.bus.subscribe("meeting.*") as events:
            async for _, event in events:
                if event.get("type") == "meeting_ended":
                    for seat in self.in_meeting(event["meeting"]):
                        seat.send({"type": "meeting_ended"})
                        await self.release(seat, "left", close=Close.ENDED)

    # ------------------------------------------------------------------ sign-outs
    async def _account_events(self) -> None:
        """Sessions ended and accounts disabled, in any process: their connections close at once."""
        async with self.bus.subscribe(ACCOUNTS_CHANNEL) as events:
            async for _, event in events:
                try:
                    if event.get("type") == "session_ended":
                        self.accounts.forget(session_id=event["session_id"])
                        await self.sign_out(lambda p, sid=event["session_id"]: p.kind == "user" and p.session_id == sid)
                    elif event.get("type") == "user_disabled":
                        self.accounts.forget(user_id=event["user_id"])
                        await self.sign_out(lambda p, uid=event["user_id"]: p.kind == "user" and p.id == uid)
                except Exception:
                    log.exception("handling account event %s failed", event.get("type"))

    async def _check_sign_ins(self) -> None:
        """Every session_check_seconds, each open connection's sign-in is checked again (a change
        made where no event reaches this process, a guest pass that ran out)."""
        while True:
            await asyncio.sleep(self.settings.session_check_seconds)
            principals = {c.principal for c in self.connections} | {s.principal for s in self.seats.values()}
            for principal in principals:
                try:
                    if not await self.accounts.still_signed_in(principal):
                        await self.sign_out(lambda p, gone=principal: p == gone)
                except Exception:
                    log.exception("checking a connection's sign-in failed")

    async def sign_out(self, match: Callable[[Principal], bool]) -> None:
        """Close every connection, and release every seat, of the principals ``match`` accepts."""
        notice = {"type": "error", "code": "unauthorized",
                  "message": "you were signed out (the session ended or the account was disabled); sign in again"}
        for seat in [s for s in self.seats.values() if match(s.principal)]:
            seat.send(notice)
            await self.release(seat, "left", close=Close.UNAUTHORIZED)
        for conn in [c for c in self.connections if match(c.principal) and c.close_code is None]:
            conn.send(notice)
            conn.close(Close.UNAUTHORIZED)

    # ------------------------------------------------------------------ operators
    async def live(self, meeting_id: str) -> list[dict[str, Any]]:
        """Who is in the meeting now, with their media counters (for hosts and operators)."""
        out = []
        for seat in self.in_meeting(meeting_id):
            stats = await self.sfu.request(seat.media_room, {"type": "stats", "participant": seat.id})
            out.append({**seat.view(), "connected": seat.connection is not None,
                        "connection_state": stats.get("connection_state"),
                        "audio_level_dbov": stats.get("audio_level_dbov"),
                        "published": stats.get("published", []), "subscribed": stats.get("subscribed", []),
                        "quality": stats.get("quality"), "sfu_worker": stats.get("sfu_worker")})
        return out

