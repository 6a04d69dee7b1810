"""``triton://HOST1:PORT,HOST2:PORT,...``: several Triton servers used as one backend.

Each call goes to the server with the fewest calls in flight among those up (in turn when they
tie), so that a long transcription on one server does not hold back the voice activity of other
streams. A background check asks every server's health every few seconds and marks it up or down.
A call that finds its server unreachable marks it down at once and is tried once more on another
server; any other failure (an input refused, a model too slow) is the caller's, as with one
server, since another server runs the same models on the same input.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from ..settings import triton_addresses
from .base import Health, Inference, InferenceUnavailable, Transcript
from .metrics import IN_FLIGHT, MEMBER_UP
from .triton import ASR_TIMEOUT, VAD_TIMEOUT, TritonInference, TritonUnreachable

log = logging.getLogger("confmeet.inference")
T = TypeVar("T")

CHECK_SECONDS = 3.0
TRIES = 2  # the server picked first, then one other when the first is unreachable


@dataclass(eq=False)
class Member:
    """One server of the pool and what the pool knows of it."""

    inference: TritonInference
    # Up until a check or a call says otherwise: the first calls need not wait for a check.
    up: bool = True
    problem: str = ""  # why it is down, naming it
    in_flight: int = 0
    answered: int = 0  # calls it answered
    unreachable: int = 0  # calls that found it unreachable (each tried again on another server)
    found_down_at: float = -math.inf  # when a call last found it unreachable (time.monotonic)

    @property
    def address(self) -> str:
        return self.inference.address


class TritonPool(Inference):
    def __init__(self, url: str, check_every: float = CHECK_SECONDS, vad_timeout: float = VAD_TIMEOUT,
                 asr_timeout: float = ASR_TIMEOUT) -> None:
        self.url = url
        self.members = [Member(TritonInference(f"triton://{address}", vad_timeout, asr_timeout))
                        for address in triton_addresses(url)]
        self.check_every = check_every
        self._next = 0  # where the turn starts among members that tie
        self._checks: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ the calls
    async def vad(self, audio: np.ndarray, state: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return await self._call(lambda member: member.vad(audio, state))

    async def recognise(self, audio: np.ndarray, language: str, interim: bool) -> Transcript:
        return await self._call(lambda member: member.recognise(audio, language, interim))

    async def _call(self, work: Callable[[TritonInference], Awaitable[T]]) -> T:
        tried: list[Member] = []
        failure: TritonUnreachable | None = None
        for _ in range(TRIES):
            member = self._pick(tried)
            if member is None:
                break
            tried.append(member)
            member.in_flight += 1
            IN_FLIGHT.labels(member.address).inc()
            try:
                result = await work(member.inference)
            except TritonUnreachable as exc:
                member.unreachable += 1
                member.found_down_at = time.monotonic()
                self._mark(member, False, str(exc))
                failure = exc
                continue
            finally:
                member.in_flight -= 1
                IN_FLIGHT.labels(member.address).dec()
            member.answered += 1
            return result
        if failure is not None and any(m.up for m in self.members):
            raise failure  # two servers unreachable in a row, and others still up: the next call tries them
        raise InferenceUnavailable(self._none_up())

    def _pick(self, tried: list[Member]) -> Member | None:
        """The member up, not tried yet, with the fewest calls in flight; the first of those from
        where the last pick left off."""
        self._start_checks()
        count = len(self.members)
        turn = [self.members[(self._next + i) % count] for i in range(count)]
        candidates = [m for m in turn if m.up and m not in tried]
        if not candidates:
            return None
        chosen = min(candidates, key=lambda m: m.in_flight)
        self._next = (self.members.index(chosen) + 1) % count
        return chosen

    def _none_up(self) -> str:
        return "no Triton server of the pool is up: " + "; ".join(
            m.problem or f"Triton at {m.address} is down" for m in self.members)

    # ------------------------------------------------------------------ health
    def _mark(self, member: Member, up: bool, problem: str = "") -> None:
        if up != member.up:
            if up:
                log.info("Triton at %s is back in the pool", member.address)
            else:
                log.warning("Triton at %s is out of the pool until a health check passes: %s", member.address, problem)
        member.up, member.problem = up, "" if up else problem
        MEMBER_UP.labels(member.address).set(1 if up else 0)

    async def check(self) -> list[Health]:
        """Ask every member's health now and mark each up or down; each member's Health."""
        began = time.monotonic()
        healths = await asyncio.gather(*(m.inference.health() for m in self.members))
        for member, health in zip(self.members, healths):
            if health.ready and member.found_down_at > began:
                continue  # a call found it unreachable while this check was under way: the next check decides
            detail = health.detail or "not ready"
            self._mark(member, health.ready, detail if detail.startswith("Triton at")
                       else f"Triton at {member.address}: {detail}")
        return healths

    def _start_checks(self) -> None:
        if self._checks is None:
            self._checks = asyncio.get_running_loop().create_task(self._check_forever(),
                                                                  name="triton-pool-health")

    async def _check_forever(self) -> None:
        while True:
            await asyncio.sleep(self.check_every)
            try:
                await self.check()
            except Exception:
                log.exception("the Triton pool's health check failed")

    async def health(self) -> Health:
        self._start_checks()
        healths = await self.check()
        up = [health for member, health in zip(self.members, healths) if member.up]
        down = [member for member in self.members if not member.up]
        names = dict.fromkeys(name for health in healths for name in health.models)
        models = {name: any(health.models.get(name, False) for health in up) for name in names}
        if not up:
            detail = self._none_up()
        elif down:
            detail = (f"{len(down)} of {len(self.members)} Triton servers down: "
                      + "; ".join(member.problem for member in down))
        else:
            detail = ""
        return Health(bool(up), "triton", up[0].version if up else "", models, detail)

    async def close(self) -> None:
        if self._checks is not None:
            checks, self._checks = self._checks, None
            checks.cancel()
            await asyncio.gather(checks, return_exceptions=True)
        await asyncio.gather(*(member.inference.close() for member in self.members))
