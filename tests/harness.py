"""One face for both clients, so each end-to-end test body is written once and runs twice."""

from __future__ import annotations

import inspect
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from serving_server import ServingServer

from clip_client import AsyncClipClient, ClipClient
from clip_client.types import ClientStats

__all__ = ["Embedder", "Make", "clients_of", "embed_in_threads"]


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


@asynccontextmanager
async def clients_of(kind: str, server: ServingServer, **defaults: Any) -> AsyncIterator[Make]:
    """``make(**overrides)`` builds a ``kind`` ("sync"/"async") client of ``server``; all are closed
    on exit."""
    cls = ClipClient if kind == "sync" else AsyncClipClient
    made: list[ClipClient | AsyncClipClient] = []

    def factory(**overrides: Any) -> Embedder:
        made.append(cls(**server.client_kwargs(**{**defaults, **overrides})))
        return Embedder(made[-1])

    try:
        yield factory
    finally:
        for c in made:
            await Embedder(c).close()


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
