"""Shared fixtures: a real loopback serving endpoint and clients pointed at it.

Helpers live in plain modules next to this file (``serving_server``, ``image_factory``...), which the
tests import directly.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from serving_server import ServingServer

from clip_client import AsyncClipClient, ClipClient


@pytest.fixture
def server() -> Iterator[ServingServer]:
    """A started :class:`ServingServer`; set ``.latency``, ``.script`` or ``.model`` as needed."""
    with ServingServer() as started:
        yield started


@pytest.fixture
def client(server: ServingServer) -> Iterator[ClipClient]:
    """A ``ClipClient`` of ``server`` (``server.client_kwargs()``), closed afterwards."""
    with ClipClient(**server.client_kwargs()) as c:
        yield c


@pytest.fixture
async def aclient(server: ServingServer) -> AsyncIterator[AsyncClipClient]:
    """An ``AsyncClipClient`` of ``server``, closed afterwards."""
    async with AsyncClipClient(**server.client_kwargs()) as c:
        yield c
