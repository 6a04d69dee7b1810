"""The one rate limiter: attempts counted per key over a sliding window, and lockouts that double.

Every limit of the appliance is a :class:`Rule` checked here: sign-in failures per account and per
address, meeting-password failures per meeting and per address (the guest-token endpoint and the
signaling ``join`` share them), guest tokens per address, chat messages and reactions per seat.
``check`` refuses a key while it is locked out; ``record`` counts an attempt and, past the limit,
locks the key out. A rule with a lockout locks for ``lockout`` seconds, doubling with each lockout
in a row up to ``lockout_max`` (a key that stays quiet for a window starts again from the first
step); a rule without one only makes the caller wait until the oldest attempt leaves the window.

The state lives in this process (the appliance is one process); at most ``MAX_KEYS`` keys are
tracked, the stalest forgotten first.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from . import audit
from .errors import TooMany
from .settings import Settings
from .stores.relational import Relational

MAX_KEYS = 100_000
FORGET_AFTER = 3600.0  # seconds without an attempt after which an unlocked key may be forgotten


class Throttled(TooMany):
    """Too many attempts: the caller may try again after ``retry_after`` seconds (a whole number,
    at least 1). The REST API answers 429 with ``Retry-After``; signaling an ``error`` carrying
    ``retry_after``."""

    def __init__(self, message: str, retry_after: float, code: str = "too_many_requests") -> None:
        super().__init__(message, max(1, math.ceil(retry_after)), code)


@dataclass(frozen=True)
class Rule:
    name: str  # also the audit log's name for a lockout under this rule
    limit: int  # attempts in the window
    window: float  # seconds
    lockout: float = 0.0  # seconds of the first lockout; 0: no lockout, only the window
    lockout_max: float = 0.0
    message: str = "too many attempts"
    code: str = "too_many_requests"


@dataclass
class _Key:
    attempts: deque[float] = field(default_factory=deque)
    locked_until: float = 0.0
    strikes: int = 0  # lockouts in a row
    last: float = 0.0


@dataclass(frozen=True)
class Limits:
    """The appliance's rules, from the settings."""

    login_account: Rule
    login_address: Rule
    password_meeting: Rule
    password_address: Rule
    guest_tokens: Rule
    chat: Rule
    reaction: Rule

    @classmethod
    def from_settings(cls, s: Settings) -> Limits:
        window, lockout, most = float(s.throttle_window_seconds), float(s.lockout_seconds), float(s.lockout_max_seconds)
        sign_in = "too many failed sign-ins"
        password = "too many wrong meeting passwords"
        return cls(
            login_account=Rule("login_account", s.login_failures_per_account, window, lockout, most, sign_in),
            login_address=Rule("login_address", s.login_failures_per_address, window, lockout, most, sign_in),
            password_meeting=Rule("password_meeting", s.password_failures_per_meeting, window, lockout, most, password),
            password_address=Rule("password_address", s.password_failures_per_address, window, lockout, most, password),
            guest_tokens=Rule("guest_tokens", s.guest_tokens_per_address, window,
                              message="too many guest passes from your address"),
            chat=Rule("chat", s.chat_messages_per_10s, 10.0, message="too many chat messages", code="too_fast"),
            reaction=Rule("reaction", 1, 0.5, message="one reaction per half second", code="too_fast"),
        )

    def meeting_password(self, address: str, code: str) -> tuple[tuple[Rule, str], ...]:
        """What one try of a meeting's password counts against: the caller's address and the
        meeting (by its join code)."""
        return (self.password_address, address), (self.password_meeting, code)


Lockout = Callable[[Rule, str, float], Awaitable[None]]


def client_address(request: Any) -> str:
    """The caller's address: the one the trusted proxies forwarded (``forwarded_proxies``), else the peer's."""
    return request.remote_addr or request.ip


class Throttle:
    def __init__(self, limits: Limits, on_lockout: Lockout | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits
        self.on_lockout = on_lockout
        self.clock = clock
        self._keys: dict[tuple[str, str], _Key] = {}

    def check(self, *limits: tuple[Rule, str]) -> None:
        """Raise :class:`Throttled` if any of the (rule, key) pairs may not try now."""
        now = self.clock()
        for rule, key in limits:
            state = self._keys.get((rule.name, key))
            if state is None:
                continue
            wait = self._wait(rule, state, now)
            if wait > 0:
                raise Throttled(f"{rule.message}; try again in {math.ceil(wait)} s", wait, rule.code)

    async def record(self, *limits: tuple[Rule, str]) -> None:
        """Count one attempt under each (rule, key); past a rule's limit its key is locked out."""
        now = self.clock()
        for rule, key in limits:
            state = self._state(rule, key, now)
            self._forget_old(rule, state, now)
            if rule.lockout and state.locked_until <= now and now - max(state.last, state.locked_until) > rule.window:
                state.strikes = 0  # quiet for a whole window: the next lockout is the first again
            state.attempts.append(now)
            state.last = now
            if rule.lockout and len(state.attempts) >= rule.limit:
                seconds = min(rule.lockout * 2 ** state.strikes, rule.lockout_max or math.inf)
                state.strikes += 1
                state.locked_until = now + seconds
                state.attempts.clear()
                if self.on_lockout is not None:
                    await self.on_lockout(rule, key, seconds)

    def clear(self, rule: Rule, key: str) -> None:
        """A success that proves the key legitimate (the right password): forget its attempts."""
        self._keys.pop((rule.name, key), None)

    def _wait(self, rule: Rule, state: _Key, now: float) -> float:
        if rule.lockout:
            return state.locked_until - now
        self._forget_old(rule, state, now)
        if len(state.attempts) < rule.limit:
            return 0.0
        return state.attempts[0] + rule.window - now

    @staticmethod
    def _forget_old(rule: Rule, state: _Key, now: float) -> None:
        while state.attempts and state.attempts[0] <= now - rule.window:
            state.attempts.popleft()

    def _state(self, rule: Rule, key: str, now: float) -> _Key:
        state = self._keys.get((rule.name, key))
        if state is None:
            if len(self._keys) >= MAX_KEYS:
                self._prune(now)
            state = self._keys[(rule.name, key)] = _Key()
        return state

    def _prune(self, now: float) -> None:
        """Forget keys that are neither locked out nor seen lately, else the stalest half."""
        stale = [k for k, s in self._keys.items() if s.locked_until <= now and now - s.last > FORGET_AFTER]
        if len(stale) < len(self._keys) // 2:
            stale = sorted(self._keys, key=lambda k: self._keys[k].last)[:len(self._keys) // 2]
        for k in stale:
            del self._keys[k]


def appliance_throttle(settings: Settings, db: Relational) -> Throttle:
    """The throttle of a running appliance: every lockout is written to the audit log."""

    async def record_lockout(rule: Rule, key: str, seconds: float) -> None:
        await db.run(audit.record, "security.lockout", rule=rule.name, key=key, seconds=seconds)

    return Throttle(Limits.from_settings(settings), record_lockout)
