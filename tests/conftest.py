"""Shared fixtures: the loopback serving endpoint, the mocked workspace, and clients of either.

- ``server``: a started ``ServingServer`` of the test's own (``@pytest.mark.server(dim=2)`` sets
  its options), so a test may set ``.script``, ``.faults``, ``.latency`` or ``.model`` freely, and
  no test can see another's requests: a request that a finished test's client still sends (a
  batch still on the wire when the call raised) reaches only that test's server, on a port no
  later server gets. ``serve(**options)`` starts more of a test's own (another model, say), through
  the same factory.
- ``router``: respx mocking httpx, for the unit tests of the HTTP layer (``mock_workspace``).
- ``make``: ``make(**overrides)`` builds a client, once a ``ClipClient`` and once an
  ``AsyncClipClient`` (the test runs for each), of ``server``, or of the mocked workspace when the
  test uses ``router``; ``@pytest.mark.client(**options)`` sets options for every client a test
  makes. ``client`` and ``aclient`` are one client of each kind, built the same way.
- ``clean_env``: no ambient Databricks configuration; ``processor``: the reference CLIP image
  processor (``clip_reference``).

Helpers live in plain modules next to this file (``harness``, ``serving_server``, ``mock_workspace``,
``image_factory``, ``bad_inputs``...), which the tests import directly.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

# databricks-sdk is imported here, at collection, whichever tests are selected: a client's first call
# reads its endpoint's state through the SDK's types, and the first import of the SDK (about a
# second) would otherwise fall inside whichever timed call happens to come first.
import databricks.sdk.service.serving  # noqa: F401
import mock_workspace
import pytest
import respx
from clip_reference import make_processor
from harness import KINDS, Make, Serve, clients_of, close_and_drain, start_server
from serving_server import ServingServer

from clip_client import AsyncClipClient, ClipClient


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "server(**options): the ServingServer options of this test's `server` (e.g. dim=2)"
    )
    config.addinivalue_line(
        "markers", "client(**options): client options for every client `make`, `client` and `aclient` build"
    )


@pytest.fixture
def server(request: pytest.FixtureRequest, serve: Serve) -> ServingServer:
    """A started :class:`ServingServer` of this test's own: no script, faults, latency or model,
    empty history. ``@pytest.mark.server(**options)`` picks its options."""
    marker = request.node.get_closest_marker("server")
    return serve(**(marker.kwargs if marker else {}))


@pytest.fixture
def serve() -> Iterator[Serve]:
    """``serve(**options)``: a ``ServingServer`` of this test's own, stopped after it."""
    with ExitStack() as stack:
        yield lambda **options: start_server(stack, **options)


@pytest.fixture
def router() -> Iterator[respx.MockRouter]:
    """respx, mocking every httpx client for the test (``mock_workspace`` builds the answers)."""
    with respx.mock(assert_all_called=False) as mock:
        yield mock


@pytest.fixture
def client_options(request: pytest.FixtureRequest) -> dict[str, Any]:
    """What ``make``, ``client`` and ``aclient`` build clients with: the mocked workspace's keywords
    when the test uses ``router``, else ``server``'s; then those of a ``client`` marker."""
    marker = request.node.get_closest_marker("client")
    options = marker.kwargs if marker else {}
    if "router" in request.fixturenames:
        return mock_workspace.client_kwargs(**options)
    server: ServingServer = request.getfixturevalue("server")
    return server.client_kwargs(**options)


@pytest.fixture(params=KINDS)
async def make(request: pytest.FixtureRequest, client_options: dict[str, Any]) -> AsyncIterator[Make]:
    """``make(**overrides)`` builds a client of the parametrized kind (sync, then async); all are
    closed after the test."""
    async with clients_of(request.param, **client_options) as factory:
        yield factory


@pytest.fixture
async def client(client_options: dict[str, Any]) -> AsyncIterator[ClipClient]:
    """A ``ClipClient`` built with ``client_options`` (of ``server``, usually), closed afterwards
    (and its requests still on the wire waited for: ``harness.close_and_drain``)."""
    c = ClipClient(**client_options)
    try:
        yield c
    finally:
        await close_and_drain(c)


@pytest.fixture
async def aclient(client_options: dict[str, Any]) -> AsyncIterator[AsyncClipClient]:
    """An ``AsyncClipClient`` built with ``client_options``, closed afterwards."""
    async with AsyncClipClient(**client_options) as c:
        yield c


@pytest.fixture(scope="session")
def processor() -> Any:
    """transformers' CLIP image processor: the PIL backend where it exists (``clip_reference``)."""
    return make_processor()


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """No ambient Databricks credentials: no env vars, and a config file that does not exist."""
    for name in list(os.environ):
        if name.startswith(("DATABRICKS_", "ARM_", "AZURE_", "GOOGLE_")):
            monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DATABRICKS_CONFIG_FILE", str(tmp_path / "no-such-databrickscfg"))
    return monkeypatch


@pytest.fixture
def in_tmp_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The test runs in ``tmp_path`` as its working folder: for libraries that write beside it
    (MLflow's ``./mlruns`` and ``./mlflow.db``), so nothing lands in the checkout."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random CLIP checkpoint (``tiny_clip.write_tiny_clip``), written once for the session:
    tests only read it."""
    from tiny_clip import write_tiny_clip

    return write_tiny_clip(tmp_path_factory.mktemp("tiny-clip") / "clip")
