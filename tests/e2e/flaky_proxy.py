"""A TCP proxy in front of the appliance that can drop every connection through it for a while:
a network blip as a browser sees it (WebSocket closed without a close frame, reconnects refused),
while media keeps flowing over UDP straight to the SFU."""

from __future__ import annotations

import contextlib
import socket
import threading
import time


class FlakyProxy:
    def __init__(self, upstream_port: int) -> None:
        self.upstream = ("127.0.0.1", upstream_port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._down_until = 0.0
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def drop(self, seconds: float | None = None) -> None:
        """Cut every connection now and refuse new ones for ``seconds`` (None: until restore())."""
        with self._lock:
            self._down_until = time.monotonic() + seconds if seconds is not None else float("inf")
            sockets, self._open = self._open, set()
        for sock in sockets:
            _shut(sock)

    def restore(self) -> None:
        self._down_until = 0.0

    def close(self) -> None:
        self.drop(0)
        self.listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if time.monotonic() < self._down_until:
                _shut(client)
                continue
            try:
                server = socket.create_connection(self.upstream)
            except OSError:
                _shut(client)
                continue
            with self._lock:
                self._open |= {client, server}
            for source, sink in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        for sock in (source, sink):
            _shut(sock)
            with self._lock:
                self._open.discard(sock)


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()
