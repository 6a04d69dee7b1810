"""A new machine joins an install of several nodes (``confmeet install --join URL --join-token
TOKEN``): it asks a node of the install for what every node shares (``POST /api/v1/cluster/join``)
over TLS, trusting that node's certificate only when its SHA-256 is the fingerprint the token
carries (``confmeet node invite`` writes both), since the reply holds the install's secrets.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import re
import ssl
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

TIMEOUT = 15.0
TOKEN = re.compile(r"^([A-Za-z0-9_-]{20,128})\.([0-9a-f]{64})$")


class JoinError(Exception):
    """Joining failed; the message says why and what to do."""


@dataclass
class Shared:
    settings: dict[str, Any]
    ca_cert: str
    ca_key: str


def invitation(secret: str, fingerprint: str) -> str:
    """What ``confmeet node invite`` prints: the one-time secret and the node's certificate fingerprint."""
    return f"{secret}.{fingerprint}"


def parse_invitation(text: str) -> tuple[str, str]:
    match = TOKEN.match(text.strip())
    if match is None:
        raise JoinError("--join-token is not one that `confmeet node invite` prints (SECRET.FINGERPRINT): copy it "
                        "whole, or make a new one")
    return match.group(1), match.group(2)


def fetch_shared(url: str, invitation_text: str, node: str) -> Shared:
    """The shared settings from the node at ``url`` (https://HOST[:PORT]), or JoinError."""
    secret, fingerprint = parse_invitation(invitation_text)
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise JoinError(f"--join {url!r}: give the node's https:// URL, as `confmeet node invite` prints it")
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # checked below, against the fingerprint, before anything is sent
    connection = http.client.HTTPSConnection(parts.hostname, parts.port or 443, timeout=TIMEOUT, context=context)
    try:
        connection.connect()
        assert connection.sock is not None
        seen = hashlib.sha256(connection.sock.getpeercert(binary_form=True) or b"").hexdigest()
        if not hmac.compare_digest(seen, fingerprint):
            raise JoinError(f"the node at {url} shows a certificate whose SHA-256 is {seen}, not the {fingerprint} "
                            "the token names: this is not the node that made the token (or its certificate "
                            "changed since). Nothing was sent; make a new token there")
        connection.request("POST", "/api/v1/cluster/join", json.dumps({"token": secret, "node": node}),
                           {"Content-Type": "application/json"})
        response = connection.getresponse()
        body = response.read(4 * 1024 * 1024)
    except (OSError, http.client.HTTPException) as exc:
        raise JoinError(f"cannot reach the node at {url}: {exc}; check the address and that it is running "
                        "(confmeet status there)") from None
    finally:
        connection.close()
    try:
        reply = json.loads(body)
    except ValueError:
        raise JoinError(f"the node at {url} answered {response.status} with something that is not JSON: is it a "
                        "confmeet node?") from None
    if response.status != 200:
        message = reply.get("error", {}).get("message") if isinstance(reply.get("error"), dict) else None
        raise JoinError(f"the node at {url} refused to let this machine join ({response.status}): "
                        f"{message or reply}")
    if not isinstance(reply.get("settings"), dict):
        raise JoinError(f"the node at {url} answered without settings: is it a confmeet node of this version?")
    return Shared(reply["settings"], str(reply.get("ca_cert", "")), str(reply.get("ca_key", "")))
