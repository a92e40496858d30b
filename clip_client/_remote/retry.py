"""The retry policy: what is retried, how long to wait, when to stop.

tenacity's `Retrying` and `AsyncRetrying` share it, so the sync and async backends retry alike.
"""

from __future__ import annotations

import logging
import random
import threading
import weakref
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .. import _constants as C
from .._core.concurrency import CallContext
from ..errors import (
    APIConnectionError,
    APIError,
    APIStatusError,
    ResponseFormatError,
)

if TYPE_CHECKING:
    from tenacity import RetryCallState

__all__ = ["call_retry_arguments", "is_retryable", "retry_arguments"]

logger = logging.getLogger(C.LOGGER_NAME)


# --------------------------------------------------------------------------------------------------
# Retry policy


def is_retryable(exc: BaseException) -> bool:
    """Worth another attempt: connection trouble, timeouts, 408/429/5xx, and a 200 whose body was
    not the embeddings asked for (an HTML page from a gateway, a truncated answer). Some of these
    are worth only one more attempt per batch: see `_retries_allowed`."""
    if isinstance(exc, APIStatusError):
        return exc.status_code in C.RETRYABLE_STATUS_CODES
    if isinstance(exc, APIConnectionError):
        return exc.retryable
    return isinstance(exc, ResponseFormatError)


def _retries_allowed(exc: BaseException) -> tuple[str, int] | None:
    """Failures that are most likely to happen again, and the retries one batch may spend on each:
    a malformed 200 (a gateway's HTML page is transient, a model that answers the wrong shape is
    not) and a host name that does not resolve (a wrong host or profile, or a VPN that is down, does
    not fix itself in a second; one retry covers a resolver's hiccup). None: up to `max_retries`."""
    if isinstance(exc, ResponseFormatError):
        return "malformed answer", C.MALFORMED_ANSWER_RETRIES
    if isinstance(exc, APIConnectionError) and exc.name_resolution:
        return "name resolution", C.NAME_RESOLUTION_RETRIES
    return None


class _Backoff:
    """Wait for `Retry-After` when the server sent one, else capped exponential backoff with
    jitter (half fixed, half random, so concurrent clients spread out without waiting zero)."""

    def __init__(self, initial: float, maximum: float) -> None:
        self.initial = initial
        self.maximum = maximum
        self._random = random.Random()
        self._lock = threading.Lock()

    def __call__(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        retry_after = getattr(exc, "retry_after", None)
        if retry_after is not None:
            return float(min(retry_after, C.RETRY_AFTER_MAX))
        ceiling = min(self.maximum, self.initial * 2 ** (state.attempt_number - 1))
        with self._lock:
            return float(ceiling / 2 + self._random.uniform(0, ceiling / 2))


def _log_retry(state: RetryCallState) -> None:
    exc = state.outcome.exception() if state.outcome else None
    wait = state.next_action.sleep if state.next_action else 0.0
    logger.info("retrying after attempt %d failed: %s; waiting %.2fs", state.attempt_number, exc, wait)


def _outcome_error(state: RetryCallState) -> BaseException | None:
    return state.outcome.exception() if state.outcome is not None and state.outcome.failed else None


# Per batch (one tenacity run), how often each kind of failure in `_retries_allowed` was met.
_limited_seen: weakref.WeakKeyDictionary[RetryCallState, Counter[str]] = weakref.WeakKeyDictionary()
_limited_lock = threading.Lock()


def _should_retry(state: RetryCallState) -> bool:
    """The retry decision. It also stamps the attempt count on the error, so one that is raised at
    once (a 400 after two 503s, a second malformed answer) reports every attempt its batch took."""
    exc = _outcome_error(state)
    if isinstance(exc, APIError):
        exc.attempts = state.attempt_number
    if exc is None or not is_retryable(exc):
        return False
    limited = _retries_allowed(exc)
    if limited is None:
        return True
    kind, allowed = limited
    with _limited_lock:
        seen = _limited_seen.setdefault(state, Counter())
        seen[kind] += 1
        return seen[kind] <= allowed


class _AnyOf:
    """Stop once any of `stops` says so: tenacity's `stop_any` (`a | b`), for plain callables too,
    so that this module need not import tenacity (`import clip_client` does not)."""

    def __init__(self, *stops: Callable[[RetryCallState], bool]) -> None:
        self.stops = stops

    def __call__(self, state: RetryCallState) -> bool:
        return any(stop(state) for stop in self.stops)


class _StopAfterAttempts:
    """`stop_after_attempt(attempts)`, except that the failures `expected` says were expected do
    not count: the 503s of an endpoint that is starting, a wait that `retry_deadline` alone bounds."""

    def __init__(self, attempts: int, expected: Callable[[BaseException], bool]) -> None:
        self.attempts = attempts
        self.expected = expected

    def __call__(self, state: RetryCallState) -> bool:
        exc = _outcome_error(state)
        counted = exc is None or not self.expected(exc)
        with _limited_lock:
            seen = _limited_seen.setdefault(state, Counter())
            seen["counted attempts"] += counted
            return seen["counted attempts"] >= self.attempts


def retry_arguments(
    *,
    max_retries: int,
    deadline: float,
    backoff: float,
    backoff_max: float,
    expected: Callable[[BaseException], bool] | None = None,
) -> dict[str, Any]:
    """Keyword arguments for `tenacity.Retrying` and `tenacity.AsyncRetrying` alike, for one
    batch (a fresh `Retrying` per batch: the once-only kinds are counted per run).

    `expected(error)` says whether a failure was expected (an endpoint starting up answers 503
    until it is ready): those are retried like any other but do not count against `max_retries`,
    so only `deadline` bounds the wait. The error that finally escapes is the last one, of its
    precise type, with `attempts` set (`reraise`). `call_retry_arguments` adds what one
    call's deadline asks for.
    """
    from tenacity import stop_after_attempt, stop_before_delay  # on first use: import cost

    attempts = max_retries + 1
    counted = stop_after_attempt(attempts) if expected is None else _StopAfterAttempts(attempts, expected)
    return {
        "retry": _should_retry,
        "stop": _AnyOf(counted, stop_before_delay(deadline)),
        "wait": _Backoff(backoff, backoff_max),
        "before_sleep": _log_retry,
        "reraise": True,
    }


class _StopAtDeadline:
    """Stop once the call was cancelled, or when its deadline would pass before the next retry."""

    def __init__(self, ctx: CallContext) -> None:
        self.ctx = ctx

    def __call__(self, retry_state: RetryCallState) -> bool:
        return self.ctx.cancelled.is_set() or self.ctx.expires_within(retry_state.upcoming_sleep)


def call_retry_arguments(
    arguments: dict[str, Any], ctx: CallContext, endpoint: str, sleep: Callable[[float], Any]
) -> dict[str, Any]:
    """`arguments` for one batch of a call with a [`CallContext`][clip_client.CallContext]: every failure is
    remembered by the context; retrying stops when the call is cancelled or its deadline would pass
    before the next attempt, and then raises the deadline's `APITimeoutError`, naming the last
    failure and chained to it (`__cause__`); waits are `sleep` (which wakes on cancellation)."""
    decide: Callable[[RetryCallState], bool] = arguments["retry"]

    def retry(state: RetryCallState) -> bool:
        exc = _outcome_error(state)
        if exc is not None:
            ctx.failed(exc)
        return decide(state)

    def give_up(state: RetryCallState) -> Any:
        exc = _outcome_error(state)
        assert exc is not None
        if not ctx.cancelled.is_set() and ctx.expires_within(state.upcoming_sleep):
            raise ctx.expired_error(
                endpoint, next_wait=state.upcoming_sleep, cause=exc, attempts=state.attempt_number
            )
        raise exc

    return {
        **arguments,
        "retry": retry,
        "stop": _AnyOf(arguments["stop"], _StopAtDeadline(ctx)),
        "sleep": sleep,
        "retry_error_callback": give_up,
    }
