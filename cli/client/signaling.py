"""One WebSocket to the appliance's ``/ws/signaling`` (docs/protocol.md): a request gets the reply
that names it in ``re``, every other message is an event, pings keep the socket open."""

from __future__ import annotations

import asyncio
import itertools
import json
import ssl
import urllib.parse
from collections.abc import Callable
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException

from . import REQUEST_TIMEOUT, ClientError

PING_INTERVAL = 10.0  # the protocol asks for one at least every 10 s
MAX_MESSAGE = 4 * 1024 * 1024


class SignalingError(Exception):
    """An ``error`` reply of the signaling server (its ``code`` and ``message``), or the end of the
    connection (code ``closed``) or of the wait for a reply (``timeout``)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{message} ({code})")
        self.code = code
        self.message = message


def signaling_url(base_url: str, token: str) -> str:
    """The signaling WebSocket of the appliance at ``base_url`` (http or https), for ``token``."""
    parts = urllib.parse.urlsplit(base_url.rstrip("/"))
    return urllib.parse.urlunsplit(("wss" if parts.scheme == "https" else "ws", parts.netloc,
                                    parts.path + "/ws/signaling", urllib.parse.urlencode({"token": token}), ""))


def _redacted(url: str) -> str:
    return url.split("?", 1)[0]


class SignalingClient:
    """One signaling connection. Every message that arrives is kept in ``arrived``; one that answers
    a pending request goes to it, any other to ``on_event``. ``on_close`` is told once the
    connection has ended, by then ``closed`` says why and ``close_code`` holds the WebSocket's."""

    def __init__(self, websocket: ClientConnection, on_event: Callable[[dict[str, Any]], None],
                 on_close: Callable[[SignalingClient], None]) -> None:
        self._ws = websocket
        self._on_event = on_event
        self._on_close = on_close
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.arrived: list[dict[str, Any]] = []  # replies and events, in order
        self.closed: str | None = None
        self.close_code: int | None = None
        self.dropped = False  # by drop(), on purpose
        loop = asyncio.get_running_loop()
        self._reader = loop.create_task(self._read())
        self._pinger = loop.create_task(self._ping())

    @classmethod
    async def connect(cls, url: str, on_event: Callable[[dict[str, Any]], None],
                      on_close: Callable[[SignalingClient], None], *, headers: dict[str, str] | None = None,
                      tls: ssl.SSLContext | None = None) -> SignalingClient:
        """Open the WebSocket at ``url`` (see signaling_url), with extra HTTP ``headers`` and, for
        wss://, the ``tls`` context to verify the appliance with (default: the system's)."""
        options: dict[str, Any] = {"ssl": tls} if tls is not None else {}
        try:
            websocket = await connect(url, open_timeout=REQUEST_TIMEOUT, compression=None, proxy=None,
                                      max_size=MAX_MESSAGE, additional_headers=headers, **options)
        except InvalidStatus as exc:
            status = exc.response.status_code
            hint = " (no signaling endpoint: is this a confmeet appliance, and recent enough?)" \
                if status == 404 else ""
            raise ClientError(f"{_redacted(url)} refused the WebSocket with HTTP {status}{hint}") from None
        except (OSError, TimeoutError, WebSocketException) as exc:
            raise ClientError(f"cannot open {_redacted(url)}: {exc or type(exc).__name__}") from None
        return cls(websocket, on_event, on_close)

    async def request(self, message: dict[str, Any], timeout: float = REQUEST_TIMEOUT, *,
                      check: bool = False) -> dict[str, Any]:
        """Send ``message`` with a fresh ``id`` and return the reply, an ``error`` one included,
        unless ``check``: then an ``error`` reply raises SignalingError. A closed connection, or
        no reply within ``timeout``, raises SignalingError either way."""
        if self.closed:
            raise SignalingError("closed", self.closed)
        request_id = next(self._ids)
        reply_future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = reply_future
        try:
            await self._ws.send(json.dumps({**message, "id": request_id}))
            reply = await asyncio.wait_for(reply_future, timeout)
        except TimeoutError:
            raise SignalingError("timeout", f"no reply to {message.get('type')!r} within {timeout:.0f} s") from None
        except (OSError, ConnectionClosed) as exc:
            raise SignalingError("closed", f"the signaling connection broke: {exc}") from None
        finally:
            self._pending.pop(request_id, None)
        if check and reply.get("type") == "error":
            raise SignalingError(str(reply.get("code")), str(reply.get("message", "")))
        return reply

    async def send_raw(self, text: str) -> None:
        """Send ``text`` as it is: no ``id``, no reply awaited."""
        await self._ws.send(text)

    def drop(self) -> None:
        """Lose the connection without a word, as a network blip does."""
        self.dropped = True
        self._ws.transport.abort()

    async def _read(self) -> None:
        try:
            async for raw in self._ws:
                try:
                    message = json.loads(raw)
                except ValueError:
                    continue
                if not isinstance(message, dict):
                    continue
                self.arrived.append(message)
                waiting = self._pending.get(message.get("re"))  # type: ignore[arg-type]
                if waiting is not None and not waiting.done():
                    waiting.set_result(message)
                else:
                    self._on_event(message)
        except ConnectionClosed:
            pass
        finally:
            self._pinger.cancel()
            self.close_code = self._ws.close_code
            reason = f": {self._ws.close_reason}" if self._ws.close_reason else ""
            self.closed = f"the appliance closed the signaling connection (code {self.close_code}{reason})"
            for waiting in self._pending.values():
                if not waiting.done():
                    waiting.set_exception(SignalingError("closed", self.closed))
            self._on_close(self)

    async def _ping(self) -> None:
        while self.closed is None:
            await asyncio.sleep(PING_INTERVAL)
            try:
                await self.request({"type": "ping"})
            except SignalingError:
                pass

    async def close(self) -> None:
        self._pinger.cancel()
        if self.closed is None:  # an ended connection has no closing handshake left (and websockets
            await self._ws.close()  # fails one on a transport aborted under a blocked send)
        await self._reader
