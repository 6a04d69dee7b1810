"""Accounts: users, sign-in sessions, and turning a bearer token into a principal."""

from __future__ import annotations

import asyncio
import datetime as dt
import secrets
import time
from dataclasses import dataclass

import peewee as pw
from sanic import Request

from .api.errors import ApiError, conflict, forbidden, unauthorized
from .security import (TokenError, TokenIssuer, hash_password, hash_refresh_token, new_refresh_token,
                       verify_password)
from .stores.relational import AuditEvent, AuthSession, Prepared, Relational, User, utcnow

RECENT_SECONDS = 5.0
GUEST_HOURS = 12
RECENT_TOKENS = 10_000


@dataclass(frozen=True)
class Principal:
    """Who is calling: a signed-in user (kind "user") or a meeting guest (kind "guest")."""

    kind: str
    id: str
    name: str
    role: str = "member"
    email: str = ""
    session_id: str = ""
    meeting_id: str = ""

    @property
    def is_admin(self) -> bool:
        return self.kind == "user" and self.role == "admin"


@dataclass(frozen=True)
class Tokens:
    access_token: str
    refresh_token: str
    expires_in: int


async def create_user(db: Relational, email: str, password: str, name: str | None = None,
                      role: str = "member", actor: str | None = None) -> User:
    """Create an account (audited); 409 when the e-mail is taken."""
    password_hash = await asyncio.to_thread(hash_password, password)

    def create() -> User:
        with db.atomic():
            try:
                user = User.create(email=email, password_hash=password_hash,
                                   name=name or email.split("@", 1)[0], role=role)
            except pw.IntegrityError:
                raise conflict(f"a user with e-mail {email} already exists", "email") from None
            AuditEvent.create(actor=actor, action="user.created",
                              detail={"user_id": user.id, "email": email, "role": role})
            return user

    return await db.run(create)


class Accounts:
    def __init__(self, db: Relational, issuer: TokenIssuer, refresh_ttl: dt.timedelta) -> None:
        self.db = db
        self.issuer = issuer
        self.refresh_ttl = refresh_ttl
        self.setup_token: str | None = None  # one-time token to create the first admin
        # Tokens verified recently, with their principal: saves the signature check and a database
        # round trip on every request. Sign-out and account changes made through this process
        # take effect at once; others (another process, the CLI) within RECENT_SECONDS.
        self._recent: dict[str, tuple[float, Principal]] = {}

    # ------------------------------------------------------------------ users
    async def create_user(self, email: str, password: str, name: str | None = None,
                          role: str = "member", actor: str | None = None) -> User:
        return await create_user(self.db, email, password, name, role, actor)

    async def user_count(self) -> int:
        return await self.db.run(User.select().count)

    def begin_setup(self) -> str:
        self.setup_token = secrets.token_urlsafe(24)
        return self.setup_token

    async def complete_setup(self, token: str, email: str, password: str, name: str | None) -> User:
        if self.setup_token is None or not secrets.compare_digest(token.encode("utf-8", "surrogatepass"),
                                                                     self.setup_token.encode()):
            if await self.user_count():
                raise conflict("confmeet is already set up; sign in instead")
            raise forbidden("the setup token is wrong; use the link the appliance printed at start")
        user = await self.create_user(email, password, name, role="admin")
        self.setup_token = None
        return user

    # ------------------------------------------------------------------ sessions
    async def login(self, email: str, password: str) -> Tokens:
        user = await self.db.run(lambda: User.get_or_none(User.email == email))
        ok = await asyncio.to_thread(verify_password, user.password_hash if user else None, password)
        if not ok or user is None or not user.active:
            raise ApiError(401, "invalid_credentials", "wrong e-mail or password, or the account is disabled")
        return await self.db.run(self._start_session, user)

    def _start_session(self, user: User) -> Tokens:
        refresh, refresh_hash = new_refresh_token()
        session = AuthSession.create(user=user, refresh_hash=refresh_hash,
                                     expires_at=utcnow() + self.refresh_ttl)
        return self._tokens(user, session.id, refresh)

    def _tokens(self, user: User, session_id: str, refresh: str) -> Tokens:
        access = self.issuer.issue("access", user.id, sid=session_id, role=user.role)
        return Tokens(access, refresh, int(self.issuer.access_ttl.total_seconds()))

    async def refresh(self, refresh_token: str) -> Tokens:
        def rotate() -> Tokens:
            with self.db.atomic():
                session = (AuthSession.select(AuthSession, User).join(User)
                           .where(AuthSession.refresh_hash == hash_refresh_token(refresh_token))
                           .first())
                if (session is None or session.revoked_at is not None
                        or session.expires_at < utcnow() or not session.user.active):
                    raise ApiError(401, "invalid_refresh_token",
                                   "the refresh token is unknown, used, revoked or expired; sign in again")
                refresh, refresh_hash = new_refresh_token()
                session.refresh_hash = refresh_hash
                session.save()
                return self._tokens(session.user, session.id, refresh)

        return await self.db.run(rotate)

    async def logout(self, principal: Principal) -> None:
        self.forget(session_id=principal.session_id)
        await self.db.run(lambda: AuthSession.update(revoked_at=utcnow())
                          .where(AuthSession.id == principal.session_id).execute())

    # ------------------------------------------------------------------ authentication
    async def authenticate(self, request: Request, admin: bool = False) -> Principal:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise unauthorized()
        principal = await self.principal_for_token(token.strip())
        if admin and not principal.is_admin:
            raise forbidden("this needs an administrator")
        return principal

    async def principal_for_token(self, token: str) -> Principal:
        now = time.monotonic()
        cached = self._recent.get(token)
        if cached is not None and cached[0] > now:
            return cached[1]
        try:
            claims = self.issuer.verify(token, "access", "guest")
        except TokenError as exc:
            raise unauthorized(str(exc)) from None
        if claims["typ"] == "guest":
            # A guest has no account: the token itself names them and their one meeting.
            return Principal("guest", claims["sub"], claims.get("name", "Guest"), role="guest",
                             meeting_id=claims.get("mid", ""))
        principal = self._principal(await self.db.fetch(
            LIVE_SESSION, sid=claims.get("sid", ""), uid=claims["sub"], now=utcnow()), claims.get("sid", ""))
        if principal is None:
            raise unauthorized("the session has ended (signed out or account disabled); sign in again")
        if len(self._recent) >= RECENT_TOKENS:
            self._recent.clear()
        lifetime = min(RECENT_SECONDS, claims["exp"] - time.time())
        self._recent[token] = (now + lifetime, principal)
        return principal

    def guest_token(self, meeting_id: str, name: str) -> Tokens:
        """A token that lets someone without an account into one meeting (GUEST_HOURS long)."""
        ttl = dt.timedelta(hours=GUEST_HOURS)
        token = self.issuer.issue("guest", f"g-{secrets.token_hex(8)}", ttl, mid=meeting_id, name=name)
        return Tokens(token, "", int(ttl.total_seconds()))

    def forget(self, user_id: str | None = None, session_id: str | None = None) -> None:
        """Drop remembered tokens of a user or session that changed (signed out, disabled, new role)."""
        for token, (_, principal) in list(self._recent.items()):
            if principal.id == user_id or principal.session_id == session_id:
                del self._recent[token]

    @staticmethod
    def _principal(found: list[tuple], session_id: str) -> Principal | None:
        if not found:
            return None
        uid, name, email, role = found[0]
        return Principal("user", uid, name, role=role, email=email, session_id=session_id)


LIVE_SESSION = Prepared(
    lambda sid, uid, now: User.select(User.id, User.name, User.email, User.role).join(AuthSession)
    .where(AuthSession.id == sid, User.id == uid, User.active == True,  # noqa: E712
           AuthSession.revoked_at.is_null(), AuthSession.expires_at > now)
    .limit(1),
    "sid", "uid", "now")
