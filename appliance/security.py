"""Passwords (argon2) and tokens: short-lived signed access tokens, opaque rotating refresh tokens."""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
import time
from dataclasses import dataclass
from typing import Any

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

_hasher = PasswordHasher()
ALGORITHM = "HS256"
# A real argon2 hash of a random password: verifying against it when the account does not exist
# makes a login for an unknown e-mail cost the same time as one for a known e-mail.
_DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    try:
        return _hasher.verify(password_hash or _DUMMY_HASH, password) and password_hash is not None
    except (VerificationError, InvalidHashError):
        return False


def new_refresh_token(session_id: str) -> tuple[str, str]:
    """A fresh refresh token of a session and the hash to store (only the hash is ever kept). The
    token names its session, so that an old token presented again can end the session it was
    rotated out of (reuse detection)."""
    token = f"{session_id}.{secrets.token_urlsafe(32)}"
    return token, hash_refresh_token(token)


def refresh_token_session(token: str) -> str | None:
    """The session a refresh token names, if it names one."""
    session_id, dot, _ = token.partition(".")
    return session_id if dot and session_id else None


def hash_refresh_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class TokenError(Exception):
    """The token is missing, malformed, forged, expired or of the wrong kind."""


@dataclass(frozen=True)
class TokenIssuer:
    secret: str
    access_ttl: dt.timedelta

    def issue(self, kind: str, subject: str, ttl: dt.timedelta | None = None, **claims: Any) -> str:
        now = int(time.time())
        payload = {
            "typ": kind,
            "sub": subject,
            "iat": now,
            "exp": now + int((ttl or self.access_ttl).total_seconds()),
            **claims,
        }
        return jwt.encode(payload, self.secret, algorithm=ALGORITHM)

    def verify(self, token: str, *kinds: str) -> dict[str, Any]:
        try:
            claims = jwt.decode(token, self.secret, algorithms=[ALGORITHM],
                                options={"require": ["exp", "iat", "sub", "typ"]})
        except jwt.ExpiredSignatureError:
            raise TokenError("the token has expired; sign in again or refresh it") from None
        except jwt.PyJWTError:
            raise TokenError("the token is not valid") from None
        if claims.get("typ") not in kinds:
            raise TokenError("the token is not valid") from None
        return claims
