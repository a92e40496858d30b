"""The shared test scaffold: one face for both clients, and the helpers more than one module needs.

``Embedder`` wraps a ``ClipClient`` or an ``AsyncClipClient`` so that ``await e.embed_texts(...)``
works for either: each test body is written once and runs for both (the ``make`` fixture in
``conftest.py``, parametrized over :data:`KINDS`, builds them through :func:`clients_of`). The
servers they talk to are ``serving_server.ServingServer`` (real HTTP on 127.0.0.1) and
``mock_workspace`` (respx); images come from ``image_factory``, bad inputs from ``bad_inputs``.
"""

from __future__ import annotations

import inspect
import pickle
import threading
import time
import traceback
from collections.abc import AsyncIterator, Callable
from contextlib import ExitStack, asynccontextmanager
from typing import Any

import numpy as np
from serving_server import DIM, ServingServer, expected_vector

from clip_client import AsyncClipClient, ClipClient
from clip_client.types import ClientStats

__all__ = [
    "IMAGE",
    "KINDS",
    "TEXT",
    "Embedder",
    "Make",
    "Serve",
    "assert_secret_absent",
    "clients_of",
    "embed_in_threads",
    "header",
    "records",
    "rendered",
    "start_server",
    "text_rows",
]

#: The two clients every adapted test runs with.
KINDS = ("sync", "async")
#: The endpoints a client calls by default (and ``ServingServer`` serves).
TEXT = "clip-text-embedding"
IMAGE = "clip-image-embedding"


class Embedder:
    """``await e.embed_texts(...)`` calls the sync client directly and awaits the async one."""

    def __init__(self, client: ClipClient | AsyncClipClient) -> None:
        self.client = client

    @property
    def stats(self) -> ClientStats:
        return self.client.stats

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self.client, name)

        async def call(*args: Any, **kwargs: Any) -> Any:
            result = method(*args, **kwargs)
            return await result if inspect.isawaitable(result) else result

        return call


Make = Callable[..., Embedder]
#: ``serve(**options)``: the ``serve`` fixture, a ``ServingServer`` of a test's own.
Serve = Callable[..., ServingServer]


def start_server(stack: ExitStack, cls: type[ServingServer] = ServingServer, **options: Any) -> ServingServer:
    """The one factory of the tests' servers (the ``server`` and ``serve`` fixtures): a started
    ``cls(**options)`` (a ``ServingServer``, or a subclass such as ``FilesServer``), stopped in the
    background (``ServingServer.stop_soon``) when ``stack`` closes, at the end of its test."""
    started = cls(**options).__enter__()
    stack.callback(started.stop_soon)
    return started


@asynccontextmanager
async def clients_of(kind: str, **options: Any) -> AsyncIterator[Make]:
    """``make(**overrides)`` builds a ``kind`` ("sync"/"async") client with ``options`` and the
    overrides (``server.client_kwargs()`` for the loopback server, ``mock_workspace.client_kwargs()``
    for respx); every client made is closed on exit."""
    cls = ClipClient if kind == "sync" else AsyncClipClient
    made: list[ClipClient | AsyncClipClient] = []

    def factory(**overrides: Any) -> Embedder:
        made.append(cls(**{**options, **overrides}))
        return Embedder(made[-1])

    try:
        yield factory
    finally:
        for c in made:
            await close_and_drain(c)


async def close_and_drain(client: ClipClient | AsyncClipClient, within: float = 5.0) -> None:
    """Close a client, then wait (up to ``within`` seconds) for the requests its worker threads still
    have on the wire: a sync call that raised leaves the batches already sent to finish in the
    background, and they would otherwise still be running (and hold their server's threads) while
    the next test runs. Each test has its own server, so they could not reach the next test's."""
    if isinstance(client, ClipClient):
        close_and_drain_sync(client, within)
    else:
        await client.close()


def close_and_drain_sync(client: ClipClient, within: float = 5.0) -> None:
    """:func:`close_and_drain` for a ``ClipClient``, from a test that is not async."""
    threads = list(getattr(getattr(client, "_request_threads", None), "_threads", ()))
    client.close()
    deadline = time.monotonic() + within
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))


def embed_in_threads(client: ClipClient, lists: list[list[str]]) -> dict[int, Any]:
    """Each list embedded by its own thread, all started together on one shared client; returns the
    results by thread, and raises the first error any thread met."""
    results: dict[int, Any] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(len(lists))

    def work(t: int) -> None:
        try:
            start.wait()
            results[t] = client.embed_texts(lists[t])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(len(lists))]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    if errors:
        raise errors[0]
    return results


# --------------------------------------------------------------------------------------------------
# What the loopback server answers and received


def text_rows(texts: list[str], dim: int = DIM) -> np.ndarray:
    """The rows ``ServingServer(dim=dim)`` answers for ``texts``."""
    return np.stack([expected_vector("text", t, dim) for t in texts])


def records(server: ServingServer) -> list[str]:
    """The image records ``server`` answered, in the order it received them."""
    return server.inputs(IMAGE)


def header(headers: dict[str, str], name: str) -> str | None:
    """The value of header ``name`` (any case) in ``headers``, or None."""
    return next((v for k, v in headers.items() if k.lower() == name.lower()), None)


# --------------------------------------------------------------------------------------------------
# Errors


def rendered(exc: BaseException) -> str:
    """Everything a user or a log could see of an error: its traceback with every chained cause,
    its repr and attributes, and its pickle."""
    text = "".join(traceback.format_exception(exc)) + repr(exc) + repr(vars(exc))
    cause = exc.__cause__ or exc.__context__
    while cause is not None:
        text += repr(cause) + repr(vars(cause)) if hasattr(cause, "__dict__") else repr(cause)
        cause = cause.__cause__ or cause.__context__
    return text + pickle.dumps(exc).decode("latin-1")


def assert_secret_absent(secret: str, *objects: object) -> None:
    """Neither ``str`` nor ``repr`` of any of ``objects`` shows ``secret``."""
    for obj in objects:
        assert secret not in str(obj), obj
        assert secret not in repr(obj), obj
