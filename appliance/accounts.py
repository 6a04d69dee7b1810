"""Accounts: users and what makes one, sign-in sessions, and turning an access token into a principal."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import logging
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import peewee as pw
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from . import audit
from .directory import Directory, DirectoryError
from .errors import Conflict, Forbidden, Invalid, NotFound, Unauthorized, Unavailable
from .fsutil import write_atomically
from .roles import GUEST
from .security import (TokenError, TokenIssuer, hash_password, hash_refresh_token, new_refresh_token,
                       refresh_token_session, verify_password)
from .stores.bus import EventBus
from .stores.relational import AuthSession, PasswordLink, Prepared, Relational, User, new_id, utcnow

log = logging.getLogger("confmeet.accounts")

RECENT_SECONDS = 5.0
GUEST_HOURS = 12
RECENT_TOKENS = 10_000
# A refresh token presented again within this time of its rotation, while its successor is unused
# (two tabs refreshing at once), gets the same successor; otherwise it is taken for a stolen copy
# and ends the whole session.
REUSE_GRACE_SECONDS = 10.0
ACCOUNTS_CHANNEL = "accounts"  # bus channel: sessions that ended, accounts disabled
EMAIL_PATTERN = r"^[^@\s]+@[^@\s]+\.[^@\s]+$"
# The password hash of an account whose password is checked elsewhere (the directory, the OpenID
# provider): no password verifies against it (not an argon2 hash), so such an account never signs
# in with a local password.
EXTERNAL_ACCOUNT = "!external"
# The password hash of a local account that has no password yet (invited) or no longer (reset by
# an administrator): it signs in only after its one-time password link sets one.
NO_PASSWORD = "!unset"
PASSWORD_LINK_TTL = dt.timedelta(days=7)


def nonblank(value: str) -> str:
    """A name or title without its surrounding spaces; a blank one is refused (a pydantic validator)."""
    value = value.strip()
    if not value:
        raise ValueError("must not be blank")
    return value


# What an account is made of, declared once: the API's request bodies and `confmeet user add` use them.
Email = Annotated[str, StringConstraints(strip_whitespace=True, to_lower=True, max_length=254,
                                         pattern=EMAIL_PATTERN)]
Password = Annotated[str, Field(min_length=8, max_length=256)]
UserName = Annotated[str, Field(max_length=200), AfterValidator(nonblank)]
AccountRole = Literal["admin", "member"]


class NewUser(BaseModel):
    """A new account's fields, checked (the e-mail lower-cased, the name stripped)."""

    model_config = ConfigDict(extra="forbid")

    email: Email
    password: Password
    name: UserName | None = None
    role: AccountRole = "member"


def new_user(email: str, password: str, name: str | None = None, role: str = "member") -> NewUser:
    """The fields of a new account checked as the API checks them; Invalid names the first wrong one
    (``"password: String should have at least 8 characters"``)."""
    try:
        return NewUser(email=email, password=password, name=name, role=role)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        field = ".".join(str(part) for part in first["loc"])
        raise Invalid(f"{field}: {first['msg']}", field) from None


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
    expires_at: float = 0.0  # a guest's: when the guest token runs out (seconds since the epoch)

    @property
    def is_admin(self) -> bool:
        return self.kind == "user" and self.role == "admin"


@dataclass(frozen=True)
class Tokens:
    access_token: str
    refresh_token: str
    expires_in: int


async def create_user(db: Relational, email: str, password: str, name: str | None = None,
                      role: str = "member", actor: str | None = None, first: bool = False) -> User:
    """Create an account (audited); Conflict when the e-mail is taken (its ``field`` "email"), or
    with ``first`` when any account exists already (checked and created in one transaction that no
    other insert passes; no ``field``)."""
    password_hash = await asyncio.to_thread(hash_password, password)

    def create() -> User:
        with db.atomic():
            if first:
                lock_users(db.db)
                if User.select().exists():
                    raise Conflict("confmeet is already set up; sign in instead")
            try:
                user = User.create(email=email, password_hash=password_hash,
                                   name=name or email.split("@", 1)[0], role=role)
            except pw.IntegrityError:
                raise Conflict(f"a user with e-mail {email} already exists", "email") from None
            audit.record("user.created", actor, user_id=user.id, email=email, role=role)
            return user

    return await db.run(create)


def lock_users(db: pw.Database) -> None:
    """Within a transaction: no other transaction adds a user until this one ends."""
    if isinstance(db, pw.PostgresqlDatabase):
        db.execute_sql('LOCK TABLE "user" IN SHARE ROW EXCLUSIVE MODE')
    else:  # SQLite: take the write lock now rather than at the first write
        db.execute_sql('UPDATE "user" SET id = id WHERE 0')


def _new_link_token() -> tuple[str, str]:
    """A one-time password link's token and the hash that is stored."""
    token = secrets.token_urlsafe(32)
    return token, hashlib.sha256(token.encode()).hexdigest()


def password_link_url(base_url: str, token: str) -> str:
    return f"{base_url}/#set-password={token}"


def _iso(value: dt.datetime) -> str:
    return value.replace(tzinfo=dt.UTC).isoformat().replace("+00:00", "Z")


class SetupLink:
    """The one-time link that creates the first administrator. It works for ``ttl`` seconds and
    only while no account exists. It is written to a file only the appliance's user reads (0600),
    deleted when the link is used or expires, and printed only to a terminal: never to a log that
    outlives it."""

    def __init__(self, path: Path, base_url: str, ttl: float) -> None:
        self.path = path
        self.token = secrets.token_urlsafe(24)
        self.url = f"{base_url}/#setup={self.token}"
        self.expires_at = time.monotonic() + ttl
        self.ttl = ttl
        write_atomically(path, (self.url + "\n").encode())
        self._timer = asyncio.get_running_loop().call_later(ttl, self.close)

    def announce(self, terminal: bool) -> str:
        minutes = max(1, round(self.ttl / 60))
        where = self.url if terminal else f"the link in {self.path} (readable by this user only)"
        return (f"No users yet. Create the first administrator within {minutes} min: open {where}\n"
                "  or run: confmeet user add EMAIL --admin")

    @property
    def expired(self) -> bool:
        return time.monotonic() >= self.expires_at

    def matches(self, token: str) -> bool:
        return secrets.compare_digest(token.encode("utf-8", "surrogatepass"), self.token.encode())

    def close(self) -> None:
        self._timer.cancel()
        self.path.unlink(missing_ok=True)


class Accounts:
    def __init__(self, db: Relational, issuer: TokenIssuer, refresh_ttl: dt.timedelta, bus: EventBus,
                 directory: Directory | None = None) -> None:
        self.db = db
        self.directory = directory
        self.issuer = issuer
        self.refresh_ttl = refresh_ttl
        self.bus = bus
        self.setup: SetupLink | None = None  # while no account exists
        # Tokens verified recently, with their principal: saves the signature check and a database
        # round trip on every request. Sign-out and account changes made through this process
        # take effect at once; others (another process, the CLI) within RECENT_SECONDS.
        self._recent: dict[str, tuple[float, Principal]] = {}
        # Refresh tokens rotated lately (their hash) -> (until when, the successor pair).
        self._rotated: dict[str, tuple[float, Tokens]] = {}

    # ------------------------------------------------------------------ users
    async def create_user(self, email: str, password: str, name: str | None = None,
                          role: str = "member", actor: str | None = None) -> User:
        return await create_user(self.db, email, password, name, role, actor)

    async def user_count(self) -> int:
        return await self.db.run(User.select().count)

    def begin_setup(self, path: Path, base_url: str, ttl: float) -> SetupLink:
        self.setup = SetupLink(path, base_url, ttl)
        return self.setup

    async def complete_setup(self, token: str, email: str, password: str, name: str | None) -> User:
        link = self.setup
        if link is None or not link.matches(token):
            if await self.user_count():
                raise Conflict("confmeet is already set up; sign in instead")
            raise Forbidden("the setup token is wrong; use the link the appliance wrote at start")
        if link.expired:
            raise Forbidden("the setup link has expired: restart confmeet for a new one, "
                            "or run 'confmeet user add EMAIL --admin'")
        try:
            user = await create_user(self.db, email, password, name, role="admin", first=True)
        except Conflict as exc:
            if exc.field is None:  # an account exists (made another way): the link is spent
                self.end_setup()
            raise
        self.end_setup()
        return user

    def end_setup(self) -> None:
        if self.setup is not None:
            self.setup.close()
            self.setup = None

    # ------------------------------------------------------------------ one-time password links
    async def invite(self, email: str, name: str | None, role: str, actor: str, base_url: str) -> tuple[User, str, dt.datetime]:
        """A new local account without a password, and the one-time link (PASSWORD_LINK_TTL) with
        which its owner chooses one: (the user, the link, when it expires). Conflict when the e-mail is taken."""
        token, token_hash = _new_link_token()

        def create() -> tuple[User, dt.datetime]:
            with self.db.atomic():
                try:
                    user = User.create(email=email, password_hash=NO_PASSWORD, name=name or email.split("@", 1)[0],
                                       role=role)
                except pw.IntegrityError:
                    raise Conflict(f"a user with e-mail {email} already exists", "email") from None
                link = PasswordLink.create(token_hash=token_hash, user=user, purpose="invite", created_by=actor,
                                           expires_at=utcnow() + PASSWORD_LINK_TTL)
                audit.record("user.invited", actor, user_id=user.id, email=email, role=role,
                             expires_at=_iso(link.expires_at))
                return user, link.expires_at

        user, expires_at = await self.db.run(create)
        return user, password_link_url(base_url, token), expires_at

    async def reset_password(self, user_id: str, actor: str, base_url: str) -> tuple[User, str, dt.datetime]:
        """Take a local account's password away, end its sessions, and make a one-time link with
        which its owner chooses a new one (earlier links of the account stop working). Conflict for
        an account whose password is the directory's or the OpenID provider's."""
        token, token_hash = _new_link_token()

        def reset() -> tuple[User, list[str], dt.datetime]:
            with self.db.atomic():
                user = User.get_or_none(User.id == user_id)
                if user is None:
                    raise NotFound("user")
                if user.password_hash == EXTERNAL_ACCOUNT:
                    raise Conflict(f"{user.email} signs in through the directory or the OpenID provider: "
                                   "reset the password there", code="external_account")
                user.password_hash = NO_PASSWORD
                user.save()
                PasswordLink.delete().where(PasswordLink.user == user, PasswordLink.used_at.is_null()).execute()
                link = PasswordLink.create(token_hash=token_hash, user=user, purpose="reset", created_by=actor,
                                           expires_at=utcnow() + PASSWORD_LINK_TTL)
                sessions = [s.id for s in AuthSession.select(AuthSession.id).where(
                    AuthSession.user == user, AuthSession.revoked_at.is_null())]
                AuthSession.update(revoked_at=utcnow()).where(AuthSession.id.in_(sessions)).execute()
                audit.record("user.password_reset", actor, user_id=user.id, sessions_ended=len(sessions),
                             expires_at=_iso(link.expires_at))
                return user, sessions, link.expires_at

        user, sessions, expires_at = await self.db.run(reset)
        for session_id in sessions:
            await self.session_ended(session_id)
        self.forget(user_id=user.id)
        return user, password_link_url(base_url, token), expires_at

    async def set_password(self, token: str, password: str) -> Tokens:
        """The password chosen through a one-time link (spent by it), and a session for its owner.
        Forbidden when the link is unknown, used or expired, or the account is disabled."""
        token_hash = hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()
        password_hash = await asyncio.to_thread(hash_password, password)

        def use() -> Tokens:
            with self.db.atomic():
                link = (PasswordLink.select(PasswordLink, User).join(User, on=(PasswordLink.user == User.id))
                        .where(PasswordLink.token_hash == token_hash).first())
                invalid = Forbidden("this password link is not valid: it was used already, has expired or was "
                                    "replaced, or the account is disabled; ask an administrator for a new one",
                                    code="invalid_password_link")
                if link is None or link.used_at is not None or link.expires_at < utcnow() or not link.user.active:
                    raise invalid
                # Spent only if no one else spent it meanwhile (two tabs, two clicks): a link works once.
                spent = PasswordLink.update(used_at=utcnow()).where(PasswordLink.token_hash == token_hash,
                                                                    PasswordLink.used_at.is_null()).execute()
                if not spent:
                    raise invalid
                user = link.user
                user.password_hash = password_hash
                user.save()
                audit.record("user.password_set", user.id, user_id=user.id, link=link.purpose)
                return self._start_session(user)

        return await self.db.run(use)

    # ------------------------------------------------------------------ sessions
    async def login(self, email: str, password: str) -> Tokens:
        """A local account's password is checked here; any other sign-in goes to the directory
        when one is configured (a local account never falls through to it: a directory entry
        with the same e-mail cannot take it over)."""
        user = await self.db.run(lambda: User.get_or_none(User.email == email))
        if self.directory is not None and (user is None or user.password_hash == EXTERNAL_ACCOUNT):
            user = await self._directory_login(self.directory, email, password)
        elif not await asyncio.to_thread(verify_password, user.password_hash if user else None, password):
            user = None
        if user is None or not user.active:
            raise Unauthorized("wrong e-mail or password, or the account is disabled", code="invalid_credentials")
        return await self.db.run(self._start_session, user)

    async def _directory_login(self, directory: Directory, login: str, password: str) -> User | None:
        try:
            found = await asyncio.to_thread(directory.authenticate, login, password)
        except DirectoryError as exc:
            log.warning("directory sign-in unavailable: %s", exc)
            raise Unavailable(f"sign-in through the directory is unavailable: {exc}", code="directory_unavailable") from None
        if found is None:
            return None
        return await self.db.run(self._external_account, found.email, found.name, found.admin, "directory",
                                 {"dn": found.dn})

    async def external_login(self, email: str, name: str, admin: bool | None, source: str,
                             detail: dict[str, str]) -> Tokens:
        """A session for someone the OpenID provider signed in (see ``_external_account``)."""
        user = await self.db.run(self._external_account, email, name, admin, source, detail)
        if user is None or not user.active:
            raise Unauthorized(f"{email} may not sign in here: the account is disabled or signs in with its "
                               "local password", code="invalid_credentials")
        return await self.db.run(self._start_session, user)

    def _external_account(self, email: str, name: str, admin: bool | None, source: str,
                          detail: dict[str, str]) -> User | None:
        """The account of someone the directory or the OpenID provider signed in: made at the
        first sign-in (audited with ``source`` and ``detail``); its name, and its role when
        ``admin`` is not None (an admin group is configured), follow them at each. None when
        the e-mail is a local account's: the two are never merged."""
        role = "admin" if admin else "member"
        with self.db.atomic():
            user = User.get_or_none(User.email == email)
            if user is None:
                user = User.create(email=email, password_hash=EXTERNAL_ACCOUNT, name=name, role=role)
                audit.record("user.created", None, user_id=user.id, email=email, role=role, source=source, **detail)
                return user
            if user.password_hash != EXTERNAL_ACCOUNT:
                return None
            changes = {key: value for key, value in (("name", name), ("role", role))
                       if getattr(user, key) != value and (key != "role" or admin is not None)}
            if changes:
                for key, value in changes.items():
                    setattr(user, key, value)
                user.save()
                audit.record("user.updated", None, user_id=user.id, source=source, **changes)
            return user

    def _start_session(self, user: User) -> Tokens:
        session_id = new_id()
        refresh, refresh_hash = new_refresh_token(session_id)
        AuthSession.create(id=session_id, user=user, refresh_hash=refresh_hash,
                           expires_at=utcnow() + self.refresh_ttl)
        return self._tokens(user, session_id, refresh)

    def _tokens(self, user: User, session_id: str, refresh: str) -> Tokens:
        access = self.issuer.issue("access", user.id, sid=session_id, role=user.role)
        return Tokens(access, refresh, int(self.issuer.access_ttl.total_seconds()))

    async def refresh(self, refresh_token: str) -> Tokens:
        presented = hash_refresh_token(refresh_token)

        def rotate() -> Tokens | str:
            with self.db.atomic():
                session = (AuthSession.select(AuthSession, User).join(User)
                           .where(AuthSession.refresh_hash == presented).first())
                if session is None:
                    return self._presented_again(refresh_token, presented)
                if session.revoked_at is not None or session.expires_at < utcnow() or not session.user.active:
                    raise Unauthorized("the refresh token is unknown, used, revoked or expired; sign in again",
                                       code="invalid_refresh_token")
                refresh, refresh_hash = new_refresh_token(session.id)
                session.refresh_hash = refresh_hash
                session.save()
                return self._tokens(session.user, session.id, refresh)

        result = await self.db.run(rotate)
        if isinstance(result, str):  # a rotated token came back: end its session everywhere
            await self.session_ended(result)
            raise Unauthorized("this refresh token was already used, so it may have been copied: the session "
                               "is ended everywhere; sign in again", code="invalid_refresh_token")
        now = time.monotonic()
        if presented not in self._rotated and len(self._rotated) >= RECENT_TOKENS:
            self._rotated = {k: v for k, v in self._rotated.items() if v[0] > now}
        self._rotated[presented] = (now + REUSE_GRACE_SECONDS, result)
        return result

    def _presented_again(self, refresh_token: str, presented: str) -> Tokens | str:
        """A refresh token that is not its session's current one. Presented again moments after
        its rotation while its successor is still unused (two tabs refreshing at once), it gets
        that successor again; otherwise it is an old token of the session, or a copy: the session
        is revoked and its id returned. A token naming no live session is Unauthorized."""
        session_id = refresh_token_session(refresh_token)
        session = AuthSession.get_or_none(AuthSession.id == session_id) if session_id else None
        if session is None or session.revoked_at is not None:
            raise Unauthorized("the refresh token is unknown, used, revoked or expired; sign in again",
                               code="invalid_refresh_token")
        until, successor = self._rotated.get(presented, (0.0, None))
        if (successor is not None and until > time.monotonic()
                and session.refresh_hash == hash_refresh_token(successor.refresh_token)):
            return successor
        session.revoked_at = utcnow()
        session.save()
        audit.record("session.refresh_reused", session.user_id, session_id=session.id)
        return session.id

    async def logout(self, principal: Principal) -> None:
        await self.db.run(lambda: AuthSession.update(revoked_at=utcnow())
                          .where(AuthSession.id == principal.session_id).execute())
        await self.session_ended(principal.session_id)

    async def session_ended(self, session_id: str) -> None:
        """A session was revoked: its tokens stop working here at once, and every process closes
        its connections (signaling listens on the bus)."""
        self.forget(session_id=session_id)
        await self.bus.publish(ACCOUNTS_CHANNEL, {"type": "session_ended", "session_id": session_id})

    async def user_changed(self, user_id: str, active: bool) -> None:
        """An account was changed by an administrator; disabled, its connections close everywhere."""
        self.forget(user_id=user_id)
        if not active:
            await self.bus.publish(ACCOUNTS_CHANNEL, {"type": "user_disabled", "user_id": user_id})

    async def still_signed_in(self, principal: Principal) -> bool:
        """Whether a principal authenticated earlier may still act: the account active and the
        session live; a guest's token not run out."""
        if principal.kind == "guest":
            return time.time() < principal.expires_at
        return bool(await self.db.fetch(LIVE_SESSION, sid=principal.session_id, uid=principal.id, now=utcnow()))

    # ------------------------------------------------------------------ authentication
    async def principal_for_token(self, token: str) -> Principal:
        """Who an access token or guest token (as sent, without "Bearer ") names. Raises
        Unauthorized (code "unauthorized") with why: forged, expired, of the wrong kind, or its
        session ended (signed out, account disabled)."""
        now = time.monotonic()
        cached = self._recent.get(token)
        if cached is not None and cached[0] > now:
            return cached[1]
        try:
            claims = self.issuer.verify(token, "access", "guest")
        except TokenError as exc:
            raise Unauthorized(str(exc)) from None
        if claims["typ"] == "guest":
            # A guest has no account: the token itself names them and their one meeting.
            return Principal("guest", claims["sub"], claims.get("name", "Guest"), role=GUEST,
                             meeting_id=claims.get("mid", ""), expires_at=float(claims["exp"]))
        principal = self._principal(await self.db.fetch(
            LIVE_SESSION, sid=claims.get("sid", ""), uid=claims["sub"], now=utcnow()), claims.get("sid", ""))
        if principal is None:
            raise Unauthorized("the session has ended (signed out or account disabled); sign in again")
        if len(self._recent) >= RECENT_TOKENS:
            self._recent.clear()
        lifetime = min(RECENT_SECONDS, claims["exp"] - time.time())
        self._recent[token] = (now + lifetime, principal)
        return principal

    def guest_token(self, meeting_id: str, name: str, guest_id: str) -> Tokens:
        """A token that lets someone without an account into one meeting (GUEST_HOURS long)."""
        ttl = dt.timedelta(hours=GUEST_HOURS)
        token = self.issuer.issue("guest", guest_id, ttl, mid=meeting_id, name=name)
        return Tokens(token, "", int(ttl.total_seconds()))

    def guest_id(self, browser_token: str | None, ttl: dt.timedelta) -> tuple[str, str]:
        """The guest id of a browser, from its signed cookie (``browser_token``) or a new one, and
        the cookie to set (valid ``ttl``): a browser keeps its guest id across guest passes, so that
        being removed from a meeting holds for its next pass too."""
        try:
            guest_id = self.issuer.verify(browser_token or "", "browser")["sub"]
        except TokenError:
            guest_id = f"g-{secrets.token_hex(8)}"
        return guest_id, self.issuer.issue("browser", guest_id, ttl)

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
