"""Who holds a port: a bind test, and whether what answers there is confmeet or a STUN/TURN server."""

from __future__ import annotations

import errno
import json
import os
import socket
import ssl
import urllib.error
import urllib.request
from typing import Literal

Protocol = Literal["tcp", "udp"]
STUN_MAGIC_COOKIE = 0x2112A442


def bind_error(address: str, port: int, protocol: Protocol) -> OSError | None:
    """The error binding ``address:port`` gives (None: the port is free for us)."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    kind = socket.SOCK_STREAM if protocol == "tcp" else socket.SOCK_DGRAM
    with socket.socket(family, kind) as sock:
        if protocol == "tcp":
            # A listener still makes this fail; TIME_WAIT leftovers of a stopped server do not.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((address, port))
        except OSError as exc:
            return exc
    return None


def describe_bind_error(exc: OSError, address: str, port: int, protocol: Protocol) -> tuple[str, str]:
    """(what happened, the fix) for a failed bind."""
    where = f"{address}:{port}/{protocol}"
    if exc.errno == errno.EADDRINUSE:
        ss = "ss -ltnp" if protocol == "tcp" else "ss -lunp"
        return (f"{where} is taken by another program",
                f"find it with \"{ss} 'sport = :{port}'\" and stop it, or configure another port")
    if exc.errno == errno.EACCES:
        return (f"{where} cannot be tested without root (ports below 1024 are privileged)",
                "rerun as root")
    if exc.errno == errno.EADDRNOTAVAIL:
        return (f"{address} is not an address of this host",
                "use one of the addresses 'ip -brief address' lists, or 0.0.0.0")
    return f"cannot bind {where}: {exc.strerror or exc}", "check the address and port"


def loopback_for(address: str) -> str:
    """Where to connect to reach a server bound on ``address`` from this host."""
    if address in ("", "0.0.0.0"):
        return "127.0.0.1"
    if address == "::":
        return "::1"
    return address


def confmeet_version(address: str, port: int, tls: bool, timeout: float = 2.0) -> str | None:
    """The version confmeet's /healthz reports on that port, or None when something else (or
    nothing) answers."""
    host = loopback_for(address)
    url = f"{'https' if tls else 'http'}://{f'[{host}]' if ':' in host else host}:{port}/healthz"
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # any certificate: this only asks who answers
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=context if tls else None) as response:
            body = json.loads(response.read(4096))
    except (OSError, ValueError, urllib.error.URLError):
        return None
    if isinstance(body, dict) and body.get("status") == "ok" and "version" in body:
        return str(body["version"])
    return None


def stun_answers(address: str, port: int, timeout: float = 1.0) -> bool:
    """Whether a STUN server (coturn, for one) answers a binding request on ``address:port``/udp."""
    host = loopback_for(address)
    transaction = os.urandom(12)
    request = (0x0001).to_bytes(2, "big") + (0).to_bytes(2, "big") + STUN_MAGIC_COOKIE.to_bytes(4, "big") \
        + transaction
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.sendto(request, (host, port))
            reply = sock.recv(2048)
        except OSError:
            return False
    return len(reply) >= 20 and reply[0:2] == b"\x01\x01" and reply[8:20] == transaction
