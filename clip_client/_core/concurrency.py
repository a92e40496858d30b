"""Waiting, in one place: how many requests one client keeps in flight, and what a call's requests
share while they wait (its deadline and cancellation).

`AIMDLimit` is the policy, free of I/O: additive increase (about +1 per round of successful
requests) and multiplicative decrease (halve) when the endpoint signals overload with 429 or 503,
never above `max_concurrency` nor below 1. A burst of overload answers from requests that were all
sent before the last decrease counts once, as TCP does with losses in one window.

`ThreadLimiter` and `AsyncLimiter` are the two thin shells that wait on it: the sync client's
threads and the async client's tasks obey the same numbers.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass

from .. import _constants as C
from ..errors import APIError, APITimeoutError, ClipClientError

__all__ = ["AIMDLimit", "AsyncLimiter", "CallCancelled", "CallContext", "Counters", "Slot", "ThreadLimiter"]


@dataclass
class Slot:
    """One admitted request. The caller marks how it ended before the slot is released."""

    ticket: int
    overloaded: bool = False
    succeeded: bool = False
    expected_503: bool = False
    """Sent while its endpoint may be starting: a 503 for it is expected, not overload."""


_LONGEST_WAIT = threading.TIMEOUT_MAX - C.DEADLINE_GRACE
"""The most seconds `CallContext.remaining` says: what a thread can wait, less the grace added to it."""


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

    def set_ceiling(self, maximum: int) -> None:
        """Move the ceiling to `maximum` (`max_concurrency="auto"` once the endpoint said what it
        serves), and the live limit by as much, so a limit that was at its ceiling stays there and one
        that was lowered by overload stays that far below it."""
        if maximum < self.minimum:
            raise ValueError(f"need maximum >= {self.minimum}, got {maximum}")
        self.limit = min(float(maximum), max(float(self.minimum), self.limit + maximum - self.maximum))
        self.maximum = maximum

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

    def set_ceiling(self, maximum: int) -> None:
        """`AIMDLimit.set_ceiling`, waking the threads a higher ceiling lets in."""
        with self._cond:
            self.policy.set_ceiling(maximum)
            self._cond.notify_all()

    @contextmanager
    def slot(self, ctx: CallContext | None = None, endpoint: str | None = None) -> Iterator[Slot]:
        """A slot, waited for no longer than `ctx`'s deadline (then `APITimeoutError`)."""
        left = None if ctx is None else ctx.remaining()
        with self._cond:
            if not self._cond.wait_for(self.policy.can_start, None if left is None else max(0.0, left)):
                assert ctx is not None
                raise ctx.expired_error(endpoint, waiting="for a free request slot")
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

    def set_ceiling(self, maximum: int) -> None:
        """`AIMDLimit.set_ceiling`, waking the tasks a higher ceiling lets in (call it on the
        loop)."""
        self.policy.set_ceiling(maximum)
        self._wake()

    def _wake(self) -> None:
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)

    @asynccontextmanager
    async def slot(self, ctx: CallContext | None = None, endpoint: str | None = None) -> AsyncIterator[Slot]:
        """A slot, waited for no longer than `ctx`'s deadline (then `APITimeoutError`)."""
        while not self.policy.can_start():
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            left = None if ctx is None else ctx.remaining()
            try:
                await asyncio.wait_for(waiter, None if left is None else max(0.0, left))
            except asyncio.TimeoutError:
                assert ctx is not None
                raise ctx.expired_error(endpoint, waiting="for a free request slot") from None
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
        slot = self.policy.start()
        try:
            yield slot
        finally:
            self.policy.finish(slot)
            self._wake()


class CallCancelled(ClipClientError):
    """Internal: the call this work belonged to was interrupted or cancelled; nobody awaits it."""


class Counters:
    """What one client has done since it was created, counted from every thread and task that
    uses it: the one source of `client.stats`. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests = 0
        self.retries = 0
        self.overloads = 0
        self.splits = 0
        self.cache_hits = 0
        self.cache_misses = 0
        self.cache_rejected = 0

    def attempt(self, number: int = 1) -> None:
        """One request (an HTTP attempt, a forward pass); `number` > 1 marks it as a retry."""
        with self._lock:
            self.requests += 1
            self.retries += number > 1

    def overload(self) -> None:
        """An answer that said the endpoint is overloaded (429, 503)."""
        with self._lock:
            self.overloads += 1

    def split(self) -> None:
        """A batch split in half (refused as too large, or isolating the input a 400 was about)."""
        with self._lock:
            self.splits += 1

    def cache_lookup(self, *, hit: bool) -> None:
        """One input looked up in the embedding cache: found (it costs no request), or not."""
        with self._lock:
            if hit:
                self.cache_hits += 1
            else:
                self.cache_misses += 1

    def cache_reject(self) -> None:
        """A cached row refused: damaged in the file, not finite, or of another width than the
        backend's answers (it is looked up as a miss, and recomputed)."""
        with self._lock:
            self.cache_rejected += 1


class CallContext:
    """What every request of one embed call shares, handed to [`Backend.embed`][clip_client.Backend.embed] /
    [`Backend.aembed`][clip_client.Backend.aembed] with each batch.

    A backend calls [`check`][clip_client.CallContext.check] before starting work (it raises once the call was
    cancelled or its deadline passed), sleeps between retries with [`sleep`][clip_client.CallContext.sleep] /
    [`asleep`][clip_client.CallContext.asleep] (which wake at cancellation and never outlast the deadline),
    reports each request with [`attempted`][clip_client.CallContext.attempted], overload answers with
    [`overloaded`][clip_client.CallContext.overloaded] and failures with
    [`failed`][clip_client.CallContext.failed], so that `client.stats` counts them and the error raised when
    the deadline passes names what went wrong before it (a refused connection, a DNS failure, a timeout) and
    chains it.

    Args:
        deadline: seconds from the context's creation until the call must be over; None for no bound.
        counters: where [`attempted`][clip_client.CallContext.attempted] and
            [`overloaded`][clip_client.CallContext.overloaded] count (the client's); a fresh `Counters` when
            None.
    """

    def __init__(self, deadline: float | None = None, counters: Counters | None = None) -> None:
        self.deadline = deadline
        self.expires_at = None if deadline is None else time.monotonic() + deadline
        self.cancelled = threading.Event()
        self.counters = counters if counters is not None else Counters()
        self.last_error: BaseException | None = None
        """The last error an attempt of this call failed with (any batch, any thread or task)."""

    def attempted(self, number: int = 1) -> None:
        """Count one request; `number` is its attempt number within its batch (2+ is a retry)."""
        self.counters.attempt(number)

    def overloaded(self) -> None:
        """Count an answer that said the endpoint is overloaded (429, 503)."""
        self.counters.overload()

    def remaining(self) -> float | None:
        """Seconds left before the deadline (negative once it passed), or None without one; never
        more than `threading.TIMEOUT_MAX` (about 292 years), the longest a thread can wait, so a
        deadline of `1e12` or `float("inf")` bounds nothing and breaks no wait."""
        if self.expires_at is None:
            return None
        return min(self.expires_at - time.monotonic(), _LONGEST_WAIT)

    def wait_limit(self) -> float | None:
        """How long a caller waits on this call's requests in flight before raising the deadline's
        error itself: until the deadline, plus a grace for the requests to report it (with what
        they were doing); None without a deadline."""
        left = self.remaining()
        return None if left is None else min(max(0.0, left + C.DEADLINE_GRACE), threading.TIMEOUT_MAX)

    def expires_within(self, seconds: float) -> bool:
        """Whether the deadline passes within `seconds` from now (never, without a deadline)."""
        left = self.remaining()
        return left is not None and left <= seconds

    def failed(self, error: BaseException) -> None:
        """Remember an attempt's failure (the deadline's own errors are not failures of their own)."""
        if not getattr(error, "deadline_passed", False):
            self.last_error = error

    def expired_error(
        self,
        endpoint: str | None = None,
        *,
        waiting: str | None = None,
        next_wait: float | None = None,
        cause: BaseException | None = None,
        cut: BaseException | None = None,
        attempts: int = 1,
    ) -> APITimeoutError:
        """The error for a call whose deadline passed, or would pass before the next retry is due
        (`next_wait` seconds from now). It names the last failure (`cause`, else the last one
        [`failed`][clip_client.CallContext.failed] saw) and is chained to it; `cut` is the exception of an
        attempt the deadline cut short, chained when there was no earlier failure. `waiting` says what the
        call was waiting for when the deadline passed ("for the endpoint's answer (ReadTimeout)")."""
        if next_wait is not None and not self.expires_within(0):
            left = max(0.0, self.remaining() or 0.0)
            text = (
                f"the call's deadline of {self.deadline:g}s would pass before the next retry "
                f"(due in {next_wait:.2f}s, {left:.2f}s left)"
            )
        else:
            text = f"the call's deadline of {self.deadline:g}s passed"
            if waiting:
                text += f" while waiting {waiting}"
        last = cause if cause is not None else self.last_error
        if last is not None:
            text += f"; last failure: {_describe(last)}"
        error = APITimeoutError(text, endpoint=endpoint, attempts=attempts)
        error.retryable = False
        error.deadline_passed = True
        error.__cause__ = last if last is not None else cut
        return error

    def check(self, endpoint: str | None = None) -> None:
        """Raise if the call was cancelled or its deadline has passed."""
        if self.cancelled.is_set():
            raise CallCancelled("the call was cancelled")
        if self.expires_within(0):
            raise self.expired_error(endpoint)

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


def _describe(error: BaseException) -> str:
    """An error's own text, without the endpoint (the deadline's error names it) or attempt count."""
    if not isinstance(error, APIError):
        return f"{type(error).__name__}: {error}"
    text = error._describe()
    for prefix in (f"endpoint {error.endpoint!r}: ", f"endpoint {error.endpoint!r} answered "):
        if error.endpoint and text.startswith(prefix):
            return text[len(prefix) :]
    return text
