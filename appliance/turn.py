"""TURN credentials: coturn's time-limited ones (use-auth-secret), made for each client's join and
for ``confmeet doctor``'s TURN check."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time


def turn_credentials(secret: str, user: str, minutes: int) -> tuple[str, str]:
    """coturn's time-limited credentials (use-auth-secret): ``expiry:user`` and its HMAC-SHA1."""
    username = f"{int(time.time()) + minutes * 60}:{user}"
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return username, base64.b64encode(digest).decode()
