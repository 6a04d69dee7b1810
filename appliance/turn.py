"""coturn's time-limited credentials (its ``use-auth-secret`` mode, "TURN REST API")."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time


def turn_credentials(secret: str, user: str, minutes: int) -> tuple[str, str]:
    """``expiry:user`` and its HMAC-SHA1 under the shared secret, valid for ``minutes``."""
    username = f"{int(time.time()) + minutes * 60}:{user}"
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return username, base64.b64encode(digest).decode()
