"""Waiting, in one place: how many requests one client keeps in flight, and what a call's requests
share while they wait (its deadline and cancellation).

``AIMDLimit`` is the policy, free of I/O: additive increase (about +1 per round of successful
requests) and multiplicative decrease (halve) when the endpoint signals overload with 429 or 503,
never above ``max_concurrency`` nor below 1. A burst of overload answers from requests that were all
sent before the last decrease counts once, as TCP does with losses in one window.

``ThreadLimiter`` and ``AsyncLimiter`` are the two thin shells that wait on it: the sync client's
threads and the async client's tasks obey the same numbers.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass

from .errors import APITimeoutError, ClipClientError

__all__ = ["AIMDLimit", "AsyncLimiter", "CallCancelled", "CallContext", "Slot", "ThreadLimiter"]


@dataclass
class Slot:
    """One admitted request. The caller marks how it ended before the slot is released."""

    ticket: int
    overloaded: bool = False
    succeeded: bool = False


class AIMDLimit:
    """The additive-increase / multiplicative-decrease state. Not thread-safe on its own: the
    limiters below hold a lock (or run on one event loop) around every call."""

    def __init__(self, maximum: int, *, minimum: int = 1, decrease: float = 0.5) -> None:
        if maximum < 1 or not 1 <= minimum <= maximum:
            raise ValueError(f"need 1 <= minimum <= maximum, got {minimum} and {maximum}")
        self.maximum = maximum
        self.minimum = minimum
        self.decrease = decrease
        self.limit = float(maximum)
        self.in_flight = 0
        self.decreases = 0
        self._next_ticket = 0
        self._last_decrease_ticket = -1

    @property
    def current(self) -> int:
        """Requests allowed in flight right now."""
        return max(self.minimum, int(self.limit))

    def can_start(self) -> bool:
        return self.in_flight < self.current

    def start(self) -> Slot:
        self.in_flight += 1
        self._next_ticket += 1
        return Slot(self._next_ticket)

    def finish(self, slot: Slot) -> None:
        self.in_flight -= 1
        if slot.overloaded:
            if slot.ticket > self._last_decrease_ticket:
                self.limit = max(float(self.minimum), self.limit * self.decrease)
                self._last_decrease_ticket = self._next_ticket
                self.decreases += 1
        elif slot.succeeded and self.limit < self.maximum:
            self.limit = min(float(self.maximum), self.limit + 1.0 / self.limit)


class ThreadLimiter:
    """Blocks threads until the policy admits them."""

    def __init__(self, policy: AIMDLimit) -> None:
        self.policy = policy
        self._cond = threading.Condition()

    @contextmanager
    def slot(self) -> Iterator[Slot]:
        with self._cond:
            self._cond.wait_for(self.policy.can_start)
            slot = self.policy.start()
        try:
            yield slot
        finally:
            with self._cond:
                self.policy.finish(slot)
                self._cond.notify_all()


class AsyncLimiter:
    """Suspends tasks until the policy admits them. Everything runs on one event loop, so no lock is
    needed: waiters park on futures and re-check the policy whenever a slot is released."""

    def __init__(self, policy: AIMDLimit) -> None:
        self.policy = policy
        self._waiters: list[asyncio.Future[None]] = []

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[Slot]:
        while not self.policy.can_start():
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
        slot = self.policy.start()
        try:
            yield slot
        finally:
            self.policy.finish(slot)
            for waiter in self._waiters:
                if not waiter.done():
                    waiter.set_result(None)


class CallCancelled(ClipClientError):
    """Internal: the call this work belonged to was interrupted or cancelled; nobody awaits it."""


class CallContext:
    """What every request of one call shares: its deadline and whether it was cancelled."""

    def __init__(self, deadline: float | None = None) -> None:
        self.deadline = deadline
        self.expires_at = None if deadline is None else time.monotonic() + deadline
        self.cancelled = threading.Event()

    def remaining(self) -> float | None:
        return None if self.expires_at is None else self.expires_at - time.monotonic()

    def check(self, endpoint: str | None = None) -> None:
        """Raise if the call was cancelled or its deadline has passed."""
        if self.cancelled.is_set():
            raise CallCancelled("the call was cancelled")
        left = self.remaining()
        if left is not None and left <= 0:
            raise APITimeoutError(f"the call's deadline of {self.deadline:g}s passed", endpoint=endpoint)

    def sleep(self, seconds: float) -> None:
        """A retry wait that wakes at once when the call is cancelled and never outlasts the deadline."""
        left = self.remaining()
        if left is not None:
            seconds = max(0.0, min(seconds, left))
        if self.cancelled.wait(seconds):
            raise CallCancelled("the call was cancelled")

    async def asleep(self, seconds: float) -> None:
        left = self.remaining()
        if left is not None:
            seconds = max(0.0, min(seconds, left))
        await asyncio.sleep(seconds)
