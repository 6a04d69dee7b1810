"""WebSocket signaling (``/ws/signaling``): seats in meetings, SDP/ICE relay to the SFU, events.

The protocol is documented message by message in docs/protocol.md. Signaling talks to the SFU only
through :class:`appliance.sfu.host.RoomHost` messages. Each seat (a participant's place in a
meeting) outlives its WebSocket for ``RESUME_SECONDS`` so that a client can reconnect without the
others seeing it leave. Seat changes are published on the event bus (``meeting.<id>``) so that a
second process can follow the room state.
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
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from sanic import Request
from sanic.exceptions import WebsocketClosed
from sanic.server.websockets.impl import WebsocketImplProtocol
from websockets.exceptions import ConnectionClosed

from .accounts import ACCOUNTS_CHANNEL, Accounts, Principal
from .api.errors import ApiError
from .captions.controls import CaptionControls
from .controls import Knock, MeetingControls
from .display_names import name_problem
from .meetings import Meetings, channel
from .security import verify_password
from .settings import Settings
from .sfu.host import RoomHost
from .stores.bus import EventBus
from .stores.documents import DocumentStore
from .stores.relational import Meeting, Participant, Relational, utcnow
from .throttle import Throttle, Throttled, client_address

log = logging.getLogger("confmeet.signaling")


class Feature(Protocol):
    def handles(self, event: dict[str, Any]) -> bool: ...

    async def sfu_event(self, event: dict[str, Any]) -> None: ...

    def view(self, meeting_id: str) -> dict[str, Any] | None: ...

RESUME_SECONDS = 30.0
IDLE_SECONDS = 30.0
MAX_MESSAGE = 256 * 1024
SFU_REQUESTS = {"offer", "answer", "candidate"}
CLIENT_LEFT = (1000, 1001)  # close codes of a client that went away on purpose
CLOSE_LEFT, CLOSE_UNAUTHORIZED, CLOSE_IDLE, CLOSE_ENDED, CLOSE_REPLACED = 1000, 4001, 4002, 4010, 4011


class SignalingError(Exception):
    """A request that cannot be served: sent to the client as an ``error`` message."""

    def __init__(self, code: str, message: str, close: int | None = None, re: Any = None,
                 retry_after: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.close = close
        self.re = re
        self.retry_after = retry_after


@dataclass(eq=False)
class Connection:
    """One WebSocket. Everything sent to it goes through its outbox, drained by one task."""

    ws: WebsocketImplProtocol
    principal: Principal
    address: str = ""  # the client's IP address (for the per-address limits)
    outbox: asyncio.Queue[dict[str, Any] | None] = field(default_factory=asyncio.Queue)
    seat: Seat | None = None
    knock: Knock | None = None
    close_code: int | None = None
    held: list[dict[str, Any]] | None = None  # events that wait for the join's reply

    def send(self, message: dict[str, Any]) -> None:
        if self.held is not None:
            self.held.append(message)
        else:
            self.outbox.put_nowait(message)

    def hold(self) -> None:
        """Keep what is sent from now on until :meth:`release`: a client must see its own
        ``joined`` before any event about the meeting it joined."""
        if self.held is None:
            self.held = []

    def release(self, *first: dict[str, Any]) -> None:
        """Send ``first``, then what was held (less what ``first`` already carries), in order."""
        held, self.held = self.held or [], None
        for message in first:
            self.outbox.put_nowait(message)
        for message in held:
            if not any(message is m for m in first):
                self.outbox.put_nowait(message)

    def close(self, code: int) -> None:
        if self.close_code is None:
            self.close_code = code
            self.outbox.put_nowait(None)

    async def drain(self) -> None:
        try:
            while (message := await self.outbox.get()) is not None:
                await self.ws.send(json.dumps(message, separators=(",", ":")))
        except (WebsocketClosed, ConnectionClosed):
            return  # the client is gone; the reader side releases or keeps the seat
        with contextlib.suppress(Exception):
            await self.ws.close(self.close_code or CLOSE_LEFT)


@dataclass(eq=False)
class Seat:
    id: str
    meeting_id: str
    meeting: dict[str, str]
    principal: Principal
    name: str
    role: str
    session: str
    connection: Connection | None = None
    expiry: asyncio.TimerHandle | None = None  # releases the seat if nobody resumes it
    muted: bool = False
    camera_off: bool = False
    hand_at: float | None = None  # when the hand went up (the order hands are taken in)
    pending_offer: dict[str, Any] | None = None  # the SFU's offer this seat has not answered yet

    @property
    def user_id(self) -> str:
        return self.principal.id

    @property
    def principal_kind(self) -> str:
        return self.principal.kind

    def view(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "role": self.role, "guest": self.principal.kind == "guest",
                "muted": self.muted, "camera_off": self.camera_off, "hand_raised_at": self.hand_at}

    def send(self, message: dict[str, Any]) -> None:
        if self.connection is not None:
            self.connection.send(message)


def turn_credentials(secret: str, user: str, minutes: int) -> tuple[str, str]:
    """coturn's time-limited credentials (use-auth-secret): ``expiry:user`` and its HMAC-SHA1."""
    username = f"{int(time.time()) + minutes * 60}:{user}"
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return username, base64.b64encode(digest).decode()


def _storable(value: Any) -> bool:
    """No text anywhere in a parsed message holds what JSON may escape but no text column stores:
    a lone UTF-16 surrogate ("\\ud800") or NUL."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return False
        return "\x00" not in value
    if isinstance(value, dict):
        return all(_storable(k) and _storable(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_storable(v) for v in value)
    return True


class Signaling:
    def __init__(self, settings: Settings, host: RoomHost, accounts: Accounts, meetings: Meetings,
                 db: Relational, bus: EventBus, documents: DocumentStore, throttle: Throttle) -> None:
        self.settings = settings
        self.host = host
        self.accounts = accounts
        self.meetings = meetings
        self.throttle = throttle
        self.db = db
        self.bus = bus
        self.documents = documents
        self.controls = MeetingControls(self)
        self.captions = CaptionControls(self)
        # Features built on SFU sinks (captions, recording; the app attaches the latter): each
        # takes its own SFU events and adds its state, by name, to the ``joined`` reply.
        self.features: dict[str, Feature] = {"captions": self.captions}
        self.seats: dict[str, Seat] = {}
        self.sessions: dict[str, Seat] = {}
        self.connections: set[Connection] = set()
        # Tracks published in each meeting, by track id, as clients see them.
        self.tracks: dict[str, dict[str, dict[str, Any]]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._releasing: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        self._tasks = [asyncio.create_task(self._sfu_events(), name="signaling-sfu-events"),
                       asyncio.create_task(self._bus_events(), name="signaling-bus-events"),
                       asyncio.create_task(self._account_events(), name="signaling-account-events"),
                       asyncio.create_task(self._check_sign_ins(), name="signaling-sign-in-checks")]

    async def close(self) -> None:
        for seat in list(self.seats.values()):
            await self.release(seat, "left", close=CLOSE_LEFT)
        for conn in list(self.connections):
            conn.close(1001)  # going away: the server is stopping
        if self._writers:
            await asyncio.wait(self._writers, timeout=5)
        for task in [*self._tasks, *self._writers]:
            task.cancel()
        await asyncio.gather(*self._tasks, *self._writers, *self._releasing, return_exceptions=True)

    def in_meeting(self, meeting_id: str) -> list[Seat]:
        return [seat for seat in self.seats.values() if seat.meeting_id == meeting_id]

    def seat_of(self, meeting_id: str, principal_id: str) -> Seat | None:
        """The seat someone holds in a meeting now, if any."""
        return next((s for s in self.in_meeting(meeting_id) if s.user_id == principal_id), None)

    # ------------------------------------------------------------------ one WebSocket
    async def serve(self, request: Request, ws: WebsocketImplProtocol) -> None:
        token = request.args.get("token", "")
        try:
            principal = await self.accounts.principal_for_token(token)
        except ApiError as exc:
            await ws.send(json.dumps({"type": "error", "code": "unauthorized", "message": exc.message}))
            await ws.close(CLOSE_UNAUTHORIZED, "unauthorized")
            return
        conn = Connection(ws, principal, client_address(request))
        self.connections.add(conn)
        writer = asyncio.create_task(conn.drain(), name="signaling-writer")
        self._writers.add(writer)
        writer.add_done_callback(self._writers.discard)
        try:
            await self._read(conn)
        finally:
            self.connections.discard(conn)
            seat = conn.seat
            if seat is not None and seat.connection is conn:
                received = getattr(conn.ws.ws_proto, "close_rcvd", None)
                if conn.close_code is None and getattr(received, "code", None) in CLIENT_LEFT:
                    await self.release(seat, "left")  # closed on purpose (a closed tab), not a blip
                else:
                    self._connection_lost(seat)
            if conn.knock is not None:
                self.controls.cancel_knock(conn.knock)
            conn.close(conn.close_code or CLOSE_LEFT)
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
                conn.send({"type": "error", "code": "idle", "message": f"nothing received for {IDLE_SECONDS:.0f} s"})
                conn.close(CLOSE_IDLE)
                return
            reply_to = None
            try:
                message = self._parse(raw)
                reply_to = message.get("id")
                reply = await self._dispatch(conn, message)
            except (SignalingError, Throttled) as exc:
                if isinstance(exc, Throttled):
                    exc = SignalingError(exc.code, exc.message, retry_after=exc.retry_after)
                error: dict[str, Any] = {"type": "error", "code": exc.code, "message": exc.message}
                if exc.retry_after is not None:
                    error["retry_after"] = exc.retry_after
                if reply_to is not None or exc.re is not None:
                    error["re"] = reply_to if reply_to is not None else exc.re
                conn.send(error)
                if exc.close is not None:
                    conn.close(exc.close)
                continue
            except Exception:
                log.exception("signaling message failed")
                conn.send({"type": "error", "code": "internal", "message": "internal error; see the server log",
                           **({"re": reply_to} if reply_to is not None else {})})
                continue
            if reply is not None:
                if reply_to is not None:
                    reply["re"] = reply_to
                conn.send(reply)

    @staticmethod
    def _parse(raw: str | bytes) -> dict[str, Any]:
        if len(raw) > MAX_MESSAGE:
            raise SignalingError("bad_message", f"messages are limited to {MAX_MESSAGE // 1024} KiB")
        try:
            message = json.loads(raw)
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise SignalingError("bad_message", "a message must be a JSON object") from None
        if not isinstance(message, dict):
            raise SignalingError("bad_message", "a message must be a JSON object")
        try:
            storable = _storable(message)
        except RecursionError:  # nested deeper than any message of the protocol
            storable = False
        if not storable:
            raise SignalingError("bad_message", "the message is nested too deep, or holds a lone surrogate "
                                 "or a NUL character")
        reply_to = message.get("id")
        if reply_to is not None and (not isinstance(reply_to, (str, int)) or isinstance(reply_to, bool)):
            raise SignalingError("bad_message", "'id' must be a string or a number")
        if not isinstance(message.get("type"), str):
            raise SignalingError("bad_message", "a message needs a string 'type'", re=reply_to)
        return message

    async def _dispatch(self, conn: Connection, message: dict[str, Any]) -> dict[str, Any] | None:
        kind = message["type"]
        if kind == "ping":
            return {"type": "pong"}
        if kind == "join":
            conn.hold()
            try:
                reply = await self._join(conn, message)
            except BaseException:
                conn.release()
                raise
            if conn.seat is None:  # waiting in the lobby
                conn.release()
                return reply
            # The reply first, then an offer sent while the socket was down, then the events
            # that happened meanwhile.
            pending = conn.seat.pending_offer if reply.get("resumed") else None
            conn.release({**reply, **({"re": message["id"]} if "id" in message else {})},
                         *([pending] if pending is not None else []))
            return None
        control = self.controls.handlers.get(kind)
        if control is None and kind not in SFU_REQUESTS | {"leave"}:
            raise SignalingError("unknown_type", f"unknown message type {kind!r}")
        seat = conn.seat
        if seat is None or seat.connection is not conn:
            waiting = " (you are waiting in the lobby)" if conn.knock is not None else ""
            raise SignalingError("not_joined", f"send 'join' before {kind!r}{waiting}")
        if control is not None:
            return await control(seat, message)
        if kind == "leave":
            await self.release(seat, "left")
            reply = {"type": "left", **({"re": message["id"]} if "id" in message else {})}
            conn.send(reply)
            conn.close(CLOSE_LEFT)
            return None
        if kind == "offer":
            self._check_published(message)
        forwarded = {k: v for k, v in message.items() if k in ("type", "sdp", "tracks", "candidate")}
        reply = await self.host.request(seat.meeting_id, {**forwarded, "participant": seat.id})
        if reply.get("type") == "error":
            raise SignalingError(reply.get("code", "internal"), reply.get("message", "media negotiation failed"))
        if kind == "answer":
            seat.pending_offer = None
        return reply

    # ------------------------------------------------------------------ join / resume / leave
    async def _join(self, conn: Connection, message: dict[str, Any]) -> dict[str, Any]:
        if conn.seat is not None or conn.knock is not None:
            raise SignalingError("already_joined", "this connection has already joined a meeting")
        resume = message.get("resume")
        if resume is not None:
            return await self._resume(conn, resume)
        principal = conn.principal
        ref = message.get("meeting")
        if not isinstance(ref, str) or not 1 <= len(ref) <= 64:
            raise SignalingError("bad_message", "'meeting' must be the meeting's join code or id")
        name = message.get("name", principal.name)
        if not isinstance(name, str) or not 1 <= len(name.strip()) <= 100:
            raise SignalingError("bad_message", "'name' must be 1 to 100 characters")
        password = message.get("password")
        if password is not None and not isinstance(password, str):
            raise SignalingError("bad_message", "'password' must be a string")

        meeting, role = await self.db.run(self._find_meeting, principal, ref)
        if meeting is None or (principal.kind == "guest" and not meeting.allow_guests):
            raise SignalingError("not_found", "no such meeting")
        if meeting.status == "ended":
            raise SignalingError("meeting_ended", "this meeting has ended", close=CLOSE_ENDED)
        if meeting.password_hash and role != "host":
            limits = self.throttle.limits
            attempt = ((limits.password_address, conn.address), (limits.password_meeting, meeting.code))
            self.throttle.check(*attempt)
            ok = await asyncio.to_thread(verify_password, meeting.password_hash, password or "")
            if not ok:
                await self.throttle.record(*attempt)
                if principal.kind == "guest":
                    raise SignalingError("not_found", "no such meeting")
                raise SignalingError("wrong_password", "this meeting needs its password")

        role = role or "participant"
        if meeting.locked and role not in ("host", "moderator"):
            raise SignalingError("locked", "the meeting is locked; ask the host to unlock it")
        self.check_name(meeting.id, principal, name.strip())
        knock, removed = await self.controls.must_knock(meeting, principal, role)
        if knock:
            return self.controls.knock(conn, meeting, role, name.strip(), removed)
        return await self.seat_connection(conn, meeting, role, name.strip())

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
        """Give the connection a seat in the meeting: the SFU, the roster, the record."""
        principal = conn.principal
        self.check_name(meeting.id, principal, name)  # again: others may have joined while it waited
        seat = Seat(id=f"p-{secrets.token_hex(8)}", meeting_id=meeting.id,
                    meeting={"id": meeting.id, "code": meeting.code, "title": meeting.title},
                    principal=principal, name=name, role=role, session=secrets.token_urlsafe(24))
        reply = await self.host.request(meeting.id, {"type": "join", "participant": seat.id, "name": seat.name})
        if reply.get("type") == "error":
            raise SignalingError(reply.get("code", "internal"), reply.get("message", "the SFU refused the join"))
        others = self.in_meeting(meeting.id)
        self.seats[seat.id] = seat
        self.sessions[seat.session] = seat
        self._attach(seat, conn)
        joined = self._joined(seat, resumed=False)  # the meeting as it is at this very moment
        for other in others:
            other.send({"type": "participant_joined", "participant": seat.view()})
        await self.db.run(self._record_join, seat, principal)
        await self.bus.publish(channel(meeting.id), {"type": "participant_joined", "meeting": meeting.id,
                                                     "participant": seat.view()})
        joined["chat"] = await self.controls.history(seat)
        return joined

    async def _resume(self, conn: Connection, session: Any) -> dict[str, Any]:
        seat = self.sessions.get(session) if isinstance(session, str) else None
        if seat is None or seat.user_id != conn.principal.id:
            raise SignalingError("session_expired", "that seat is gone; join the meeting afresh")
        if seat.connection is not None:
            seat.connection.send({"type": "error", "code": "replaced",
                                  "message": "this seat was taken over by a newer connection"})
            seat.connection.close(CLOSE_REPLACED)
        self._attach(seat, conn)
        joined = self._joined(seat, resumed=True)
        joined["chat"] = await self.controls.history(seat)
        return joined

    def _attach(self, seat: Seat, conn: Connection) -> None:
        if seat.expiry is not None:
            seat.expiry.cancel()
            seat.expiry = None
        seat.connection = conn
        conn.seat = seat

    def _joined(self, seat: Seat, resumed: bool) -> dict[str, Any]:
        """The ``joined`` reply, less the chat history: taken with no ``await`` between the seat
        joining and this snapshot, so that every later change reaches the client as an event
        (held behind this reply by the connection)."""
        joined = {
            "type": "joined", "meeting": seat.meeting, "participant": seat.view(), "session": seat.session,
            "resumed": resumed, "ice_servers": self.client_ice_servers(seat.id),
            "participants": [s.view() for s in self.in_meeting(seat.meeting_id) if s is not seat],
            "tracks": [t for t in self.tracks.get(seat.meeting_id, {}).values() if t["participant"] != seat.id],
            **{name: feature.view(seat.meeting_id) for name, feature in self.features.items()},
        }
        if seat.role in ("host", "moderator"):
            joined["waiting"] = self.controls.waiting_view(seat.meeting_id)
        return joined

    def client_ice_servers(self, seat_id: str) -> list[dict[str, Any]]:
        """STUN servers, and TURN servers with credentials made for this seat alone, that open new
        relays for turn_credential_minutes: someone removed cannot go on making relays."""
        servers: list[dict[str, Any]] = []
        stun = [url for url in self.settings.ice_servers if url.startswith("stun")]
        turn = [url for url in self.settings.ice_servers if url.startswith("turn")]
        if stun:
            servers.append({"urls": stun})
        if turn:
            username, credential = turn_credentials(self.settings.turn_secret, seat_id,
                                                    self.settings.turn_credential_minutes)
            servers.append({"urls": turn, "username": username, "credential": credential})
        return servers

    @staticmethod
    def _find_meeting(principal: Principal, ref: str) -> tuple[Meeting | None, str | None]:
        try:
            return Meetings._load(principal, code=ref.lower()) if "-" in ref else Meetings._load(principal, ref)
        except ApiError:
            return None, None

    @staticmethod
    def _record_join(seat: Seat, principal: Principal) -> None:
        Participant.create(id=seat.id, meeting=seat.meeting_id,
                           user=principal.id if principal.kind == "user" else None,
                           display_name=seat.name, role=seat.role)
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
        tracks = self.tracks.get(seat.meeting_id, {})
        for track_id in [t for t, track in tracks.items() if track["participant"] == seat.id]:
            tracks.pop(track_id)
        if not tracks:
            self.tracks.pop(seat.meeting_id, None)
        for other in self.in_meeting(seat.meeting_id):
            other.send({"type": "participant_left", "participant_id": seat.id, "reason": reason})
        task = asyncio.create_task(self._finish_release(seat, reason), name=f"release-{seat.id}")
        self._releasing.add(task)
        task.add_done_callback(self._releasing.discard)
        await asyncio.shield(task)

    async def _finish_release(self, seat: Seat, reason: str) -> None:
        await self.host.request(seat.meeting_id, {"type": "leave", "participant": seat.id})
        await self.db.run(lambda: Participant.update(left_at=utcnow()).where(Participant.id == seat.id).execute())
        await self.bus.publish(channel(seat.meeting_id), {"type": "participant_left", "meeting": seat.meeting_id,
                                                          "participant_id": seat.id, "reason": reason})

    # ------------------------------------------------------------------ events
    async def _sfu_events(self) -> None:
        async for event in self.host.subscribe_events():
            try:
                await self._sfu_event(event)
            except Exception:
                log.exception("handling SFU event %s failed", event.get("type"))

    async def _sfu_event(self, event: dict[str, Any]) -> None:
        kind, meeting_id, addressee = event["type"], event["room"], event.get("participant")
        feature = next((f for f in self.features.values() if f.handles(event)), None)
        if feature is not None:
            await feature.sfu_event(event)
            return
        if kind == "participant_left":
            seat = self.seats.get(event["subject"])
            if seat is not None and event.get("reason") != "left":
                # The media connection closed or failed (a closed tab, a dead network).
                await self.release(seat, "disconnected", close=CLOSE_LEFT)
            return
        if kind == "participant_joined":
            return  # signaling announces seats itself, with their roles
        message = self._translate(event)
        if kind == "track_published":
            self.tracks.setdefault(meeting_id, {})[message["track"]["track_id"]] = message["track"]
        elif kind == "track_unpublished":
            self.tracks.get(meeting_id, {}).pop(message["track"]["track_id"], None)
        if addressee is not None:
            seat = self.seats.get(addressee)
            if seat is not None:
                if kind == "offer":
                    seat.pending_offer = message  # resent after a resume if the socket is down now
                seat.send(message)
            return
        for seat in self.in_meeting(meeting_id):
            if kind in ("track_published", "track_unpublished") and message["track"]["participant"] == seat.id:
                continue
            seat.send(message)

    @staticmethod
    def _translate(event: dict[str, Any]) -> dict[str, Any]:
        """An SFU event as the protocol says it: publishers are ``participant`` there."""
        kind = event["type"]

        def track(t: dict[str, Any]) -> dict[str, Any]:
            out = {k: v for k, v in t.items() if k not in ("subject", "type", "room", "participant")}
            out["participant"] = t["subject"]
            return out

        if kind == "offer":
            return {"type": "offer", "sdp": event["sdp"], "tracks": [track(t) for t in event.get("tracks", [])]}
        if kind in ("track_published", "track_unpublished"):
            return {"type": kind, "track": track(event)}
        body = {k: v for k, v in event.items() if k not in ("type", "room", "participant", "subject")}
        return {"type": kind, "participant_id": event.get("subject"), **body}

    async def _bus_events(self) -> None:
        async with self.bus.subscribe("meeting.*") as events:
            async for _, event in events:
                if event.get("type") == "meeting_ended":
                    for seat in self.in_meeting(event["meeting"]):
                        seat.send({"type": "meeting_ended"})
                        await self.release(seat, "left", close=CLOSE_ENDED)

    async def file_shared(self, seat: Seat, file: dict[str, Any]) -> None:
        """Post a shared file to the meeting's chat from the uploader's seat."""
        await self.controls.post(seat.meeting_id, seat.id, seat.name, file["name"], file=file)

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

    async def sign_out(self, match: Any) -> None:
        """Close every connection, and release every seat, of the principals ``match`` accepts."""
        notice = {"type": "error", "code": "unauthorized",
                  "message": "you were signed out (the session ended or the account was disabled); sign in again"}
        for seat in [s for s in self.seats.values() if match(s.principal)]:
            seat.send(notice)
            await self.release(seat, "left", close=CLOSE_UNAUTHORIZED)
        for conn in [c for c in self.connections if match(c.principal) and c.close_code is None]:
            conn.send(notice)
            conn.close(CLOSE_UNAUTHORIZED)

    # ------------------------------------------------------------------ operators
    async def live(self, meeting_id: str) -> list[dict[str, Any]]:
        """Who is in the meeting now, with their media counters (for hosts and operators)."""
        out = []
        for seat in self.in_meeting(meeting_id):
            stats = await self.host.request(meeting_id, {"type": "stats", "participant": seat.id})
            out.append({**seat.view(), "connected": seat.connection is not None,
                        "connection_state": stats.get("connection_state"),
                        "audio_level_dbov": stats.get("audio_level_dbov"),
                        "published": stats.get("published", []), "subscribed": stats.get("subscribed", []),
                        "quality": stats.get("quality")})
        return out
