"""Time bounds that a server cannot defeat, and failures that say what they were.

Against ``serving_server.ServingServer`` (real HTTP on 127.0.0.1): a server that sends its whole
answer, status line and headers included, one byte every 0.25 s (``Reply(trickle=...)``), so that
no read ever waits long enough to time out; a slow reply for injected http clients; a port that
refuses connections; a host name that does not resolve; and answers of the wrong shape. The upper
bounds asserted on elapsed time are the behaviour under test (a deadline is a wall-clock bound), with
margins for a loaded machine; without the bounds these calls would take 30 s or more.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from harness import KINDS, TEXT, Embedder, Make, clients_of, text_rows
from serving_server import TOKEN, Reply, ServingServer

from clip_client import (
    APIConnectionError,
    APITimeoutError,
    AsyncClipClient,
    ClipClient,
    ResponseFormatError,
)
from clip_client import _constants as C
from clip_client._remote.workspace import _config_class, resolve_workspace

#: A server whose answers are small (2 floats a row): a trickled answer takes about 40 s in full, so
#: a call that was not cut short fails the test rather than hang it.
pytestmark = pytest.mark.server(dim=2)

#: One byte every this many seconds, the whole answer long.
TRICKLE = 0.25
#: How far past a bound a bounded call may end: a generous margin for a loaded 2-core machine.
MARGIN = 1.5
UNRESOLVABLE = "no-such-workspace.invalid"


def trickled(n: int = 1) -> list[Reply]:
    """``n`` correct answers, each sent one byte every ``TRICKLE`` seconds from its status line on."""
    return [Reply(answer=True, trickle=TRICKLE)] * n


async def timed(call: Any) -> tuple[Any, float]:
    """``(exception or result, seconds)`` of awaiting ``call``."""
    start = time.monotonic()
    try:
        result = await call
    except Exception as exc:
        result = exc
    return result, time.monotonic() - start


# --------------------------------------------------------------------------------------------------
# deadline= is a wall-clock bound on the whole call; timeout= bounds one attempt's whole time


@pytest.mark.timeout(60)
async def test_deadline_bounds_a_call_against_a_trickling_server(make: Make, server: ServingServer) -> None:
    server.script = trickled(10)
    client = make(timeout=1)

    error, seconds = await timed(client.embed_texts(["a", "b"], deadline=2))

    assert isinstance(error, APITimeoutError), error
    assert seconds < 2 + MARGIN
    assert error.deadline_passed
    assert error.endpoint == TEXT
    message = str(error)
    assert "deadline of 2s passed" in message
    # the last underlying failure: the first attempt ran out of its timeout=1s
    assert "timeout=1s" in message
    assert isinstance(error.__cause__, APITimeoutError)
    assert not error.__cause__.deadline_passed
    assert "timeout=1s" in str(error.__cause__)
    assert error.attempts == 2
    assert server.posts() == 2  # one attempt cut by timeout=1, the next by the deadline


@pytest.mark.timeout(60)
async def test_timeout_bounds_one_attempt_from_its_first_byte_to_its_last(
    make: Make, server: ServingServer
) -> None:
    server.script = trickled()
    client = make(timeout=1, max_retries=0)

    error, seconds = await timed(client.embed_texts(["a"]))

    assert isinstance(error, APITimeoutError), error
    assert seconds < 1 + MARGIN
    assert not error.deadline_passed
    assert "no complete answer within timeout=1s" in str(error)
    assert error.attempts == 1


@pytest.mark.timeout(60)
async def test_a_trickled_attempt_is_retried_and_the_retry_answers(make: Make, server: ServingServer) -> None:
    server.script = trickled()
    client = make(timeout=1, max_retries=2)

    out = await client.embed_texts(["a", "b"])

    np.testing.assert_array_equal(out, text_rows(["a", "b"], 2))
    assert server.posts() == 2


@pytest.mark.timeout(60)
async def test_an_abandoned_answer_never_goes_back_to_the_pool(make: Make, server: ServingServer) -> None:
    """The attempt given up mid-answer closed its connection. Had it gone back to the pool, the next
    request would be written behind the unread rest of the old answer and read it as its own."""
    client = make(timeout=1, max_retries=0)
    server.script = trickled()
    with pytest.raises(APITimeoutError):
        await client.embed_texts(["first"])

    for texts in (["second"], ["third", "fourth"]):
        np.testing.assert_array_equal(await client.embed_texts(texts), text_rows(texts, 2))
    assert server.posts() == 3


@pytest.mark.timeout(60)
async def test_deadline_in_mark_mode_marks_every_row_of_a_trickled_call(
    make: Make, server: ServingServer
) -> None:
    server.script = trickled(10)
    result, seconds = await timed(
        make(timeout=5, batch_size=2).embed_texts(["a", "b", "c"], deadline=1, on_error="mark")
    )

    assert seconds < 1 + MARGIN
    assert np.isnan(result.embeddings).all()
    assert [f.index for f in result.failures] == [0, 1, 2]
    assert all(isinstance(f.error, APITimeoutError) and f.error.deadline_passed for f in result.failures)


@pytest.mark.timeout(60)
async def test_deadline_in_mark_mode_marks_the_batches_it_caught_before_they_were_sent(
    make: Make, server: ServingServer
) -> None:
    """One request at a time: the first batch is answered (slowly), and the deadline passes before the
    others go out. Those are marked failed, the answered rows kept: the call does not raise."""
    server.script = [Reply(answer=True, delay=0.8)] * 2  # the second is cut by the deadline
    texts = ["a", "b", "c", "d", "e", "f"]
    result, seconds = await timed(
        make(batch_size=2, max_concurrency=1).embed_texts(texts, deadline=1.2, on_error="mark")
    )
    assert seconds < 1.2 + MARGIN
    assert [f.index for f in result.failures] == [2, 3, 4, 5]
    assert server.posts() == 2  # the third batch was caught before it was sent
    assert all(isinstance(f.error, APITimeoutError) for f in result.failures)
    assert np.isnan(result.embeddings[~result.ok]).all()
    ok = result.ok
    assert ok[:2].all()  # the batch that was answered keeps its rows
    np.testing.assert_array_equal(result.embeddings[ok], text_rows([t for t, k in zip(texts, ok) if k], 2))


# --------------------------------------------------------------------------------------------------
# An injected http client: its own timeouts apply; only a nearer deadline shortens them


def injected(kind: str, server: ServingServer, http_timeout: float, **options: Any) -> Embedder:
    """A client of ``server`` that sends through an http client of ``kind`` with ``http_timeout``."""
    kwargs = server.client_kwargs(**options)
    if kind == "sync":
        return Embedder(ClipClient(**kwargs, http_client=httpx.Client(timeout=http_timeout)))
    return Embedder(AsyncClipClient(**kwargs, http_client=httpx.AsyncClient(timeout=http_timeout)))


async def close_all(client: Embedder) -> None:
    await client.close()
    http = client.client.backend._client or client.client.backend._aclient  # type: ignore[attr-defined]
    if isinstance(http, httpx.Client):
        http.close()
    else:
        await http.aclose()


@pytest.mark.parametrize("kind", KINDS)
async def test_an_injected_clients_timeout_applies(kind: str, server: ServingServer) -> None:
    server.script = [Reply(answer=True, delay=2.0)]
    client = injected(kind, server, 0.5, timeout=30, max_retries=0)
    try:
        error, seconds = await timed(client.embed_texts(["a"]))
    finally:
        await close_all(client)

    assert isinstance(error, APITimeoutError), error  # not the 2 s answer that timeout=30 allows
    assert seconds < 0.5 + MARGIN
    assert "the http_client's timeouts" in str(error)
    assert not error.deadline_passed


@pytest.mark.parametrize("kind", KINDS)
async def test_timeout_setting_does_not_cut_an_injected_client(kind: str, server: ServingServer) -> None:
    server.script = [Reply(answer=True, delay=1.0)]
    client = injected(kind, server, 10, timeout=0.3, max_retries=0)
    try:
        out = await client.embed_texts(["a"])
    finally:
        await close_all(client)

    np.testing.assert_array_equal(out, text_rows(["a"], 2))
    assert server.posts() == 1


@pytest.mark.parametrize("kind", KINDS)
async def test_a_nearer_deadline_shortens_an_injected_clients_timeout(
    kind: str, server: ServingServer
) -> None:
    server.script = [Reply(answer=True, delay=3.0)]
    client = injected(kind, server, 10, max_retries=0)
    try:
        error, seconds = await timed(client.embed_texts(["a"], deadline=0.5))
    finally:
        await close_all(client)

    assert isinstance(error, APITimeoutError), error
    assert error.deadline_passed
    assert "deadline of 0.5s passed" in str(error)
    assert seconds < 0.5 + MARGIN


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("phase", ["headers", "body"])
async def test_deadline_bounds_a_call_through_an_injected_client_against_a_trickle(
    kind: str, phase: str, server: ServingServer
) -> None:
    """The injected client reads each byte well within its own 5 s read timeout. The async call
    cancels its attempt; the sync one stops reading the body at the deadline, and returns at the
    deadline (plus a short grace) even while its worker is held in the header phase."""
    server.script = [Reply(answer=True, trickle=TRICKLE, trickle_body=phase == "body")] * 5
    client = injected(kind, server, 5.0)
    try:
        error, seconds = await timed(client.embed_texts(["a"], deadline=1))
    finally:
        await close_all(client)

    assert isinstance(error, APITimeoutError), error
    assert error.deadline_passed
    assert "deadline of 1s passed" in str(error)
    assert seconds < 1 + MARGIN


@pytest.mark.timeout(60)
async def test_a_sync_call_held_in_the_header_phase_marks_its_rows_at_the_deadline(
    server: ServingServer,
) -> None:
    """With ``on_error="mark"``, the batches a stuck worker holds are marked failed at the deadline,
    as those that report the deadline themselves are."""
    server.script = [Reply(answer=True, trickle=TRICKLE)] * 5
    client = injected("sync", server, 5.0, batch_size=1)
    try:
        result, seconds = await timed(client.embed_texts(["a", "b"], deadline=1, on_error="mark"))
    finally:
        await close_all(client)

    assert seconds < 1 + MARGIN
    assert np.isnan(result.embeddings).all()
    assert [f.index for f in result.failures] == [0, 1]
    assert all(isinstance(f.error, APITimeoutError) and f.error.deadline_passed for f in result.failures)


# --------------------------------------------------------------------------------------------------
# Failures to connect say what they were, deadline or not


def refused_url() -> str:
    """A loopback URL nothing listens on: the port of a socket that was bound, then closed."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.mark.parametrize("kind", KINDS)
async def test_a_refused_port_with_a_deadline_names_the_refusal(kind: str) -> None:
    async with clients_of(kind, host=refused_url(), token=TOKEN, retry_backoff=0.2) as make_client:
        error, seconds = await timed(make_client().embed_texts(["a"], deadline=3))

    assert isinstance(error, APITimeoutError), error
    assert error.deadline_passed
    assert "deadline of 3s" in str(error)
    assert "refused" in str(error).lower()  # the last failure, named
    cause = error.__cause__
    assert isinstance(cause, APIConnectionError)
    assert not isinstance(cause, APITimeoutError)
    assert "refused" in str(cause).lower()
    assert isinstance(cause.__cause__, httpx.ConnectError)
    assert error.attempts > 1
    assert seconds < 3 + MARGIN


@pytest.mark.parametrize("kind", KINDS)
async def test_a_refused_port_without_a_deadline_names_the_refusal(kind: str) -> None:
    async with clients_of(
        kind, host=refused_url(), token=TOKEN, retry_backoff=0, max_retries=2
    ) as make_client:
        with pytest.raises(APIConnectionError) as info:
            await make_client().embed_texts(["a"])
    assert not isinstance(info.value, APITimeoutError)
    assert "refused" in str(info.value).lower()
    assert info.value.attempts == 3


@pytest.fixture
def unresolvable(monkeypatch: pytest.MonkeyPatch) -> str:
    """A host name that fails DNS at once. ``.invalid`` never resolves (RFC 6761) and fails locally;
    where the resolver hangs or answers anyway (a DNS-hijacking ISP), ``socket.getaddrinfo`` is
    patched to fail for it, as a resolver should."""
    start = time.monotonic()
    try:
        socket.getaddrinfo(UNRESOLVABLE, 443)
    except socket.gaierror:
        if time.monotonic() - start < 2:
            return UNRESOLVABLE
    real = socket.getaddrinfo

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(host, str) and host.endswith(".invalid"):
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return UNRESOLVABLE


@pytest.mark.parametrize("kind", KINDS)
async def test_a_host_that_does_not_resolve_fails_fast_and_says_what_to_check(
    kind: str, unresolvable: str
) -> None:
    async with clients_of(
        kind, host=f"https://{unresolvable}", token=TOKEN, retry_backoff=0.5
    ) as make_client:
        error, seconds = await timed(make_client().embed_texts(["a"]))

    assert isinstance(error, APIConnectionError), error
    assert not isinstance(error, APITimeoutError)
    assert error.name_resolution
    assert error.attempts == 2  # one retry for a resolver's hiccup, not max_retries=8
    message = str(error)
    assert unresolvable in message
    assert "DATABRICKS_HOST" in message
    assert "profile" in message
    assert "VPN" in message
    assert isinstance(error.__cause__, httpx.ConnectError)
    assert seconds < 10


@pytest.mark.timeout(120)
def test_a_wrong_databricks_host_fails_within_thirty_seconds(
    clean_env: pytest.MonkeyPatch, unresolvable: str
) -> None:
    """Through databricks-sdk's Config (env vars), whose host-metadata probe once held ``ClipClient()``
    for five minutes, and the first call, which once spent 75 s retrying DNS."""
    clean_env.setenv("DATABRICKS_HOST", f"https://{unresolvable}")
    clean_env.setenv("DATABRICKS_TOKEN", TOKEN)
    start = time.monotonic()
    with ClipClient() as client, pytest.raises(APIConnectionError) as info:
        client.embed_texts(["a"])
    seconds = time.monotonic() - start

    assert seconds < 30
    assert info.value.name_resolution
    assert unresolvable in str(info.value)
    assert "DATABRICKS_HOST" in str(info.value)


def test_config_time_bounds_are_set_only_where_nobody_set_them(
    clean_env: pytest.MonkeyPatch, server: ServingServer, tmp_path: Path
) -> None:
    config = _config_class()(host=server.url, token=TOKEN)
    assert config.retry_timeout_seconds == C.CONFIG_RETRY_TIMEOUT_SECONDS
    assert config.http_timeout_seconds == C.CONFIG_HTTP_TIMEOUT_SECONDS

    cfg = tmp_path / "databrickscfg"
    cfg.write_text(
        f"[slow]\nhost = {server.url}\ntoken = {TOKEN}\n"
        "retry_timeout_seconds = 77\nhttp_timeout_seconds = 33\n"
    )
    clean_env.setenv("DATABRICKS_CONFIG_FILE", str(cfg))
    config = _config_class()(profile="slow")
    assert config.retry_timeout_seconds == 77  # the profile's own values win
    assert config.http_timeout_seconds == 33
    assert config.token == TOKEN

    clean_env.setenv("DATABRICKS_HOST", server.url)
    clean_env.setenv("DATABRICKS_TOKEN", TOKEN)
    workspace = resolve_workspace()  # env vars still reach the subclass
    assert workspace.host == server.url
    assert workspace.auth_type == "pat"


# --------------------------------------------------------------------------------------------------
# Waiting for a request slot is bounded by the deadline too


@pytest.mark.parametrize("kind", KINDS)
async def test_waiting_for_a_slot_ends_at_the_deadline(kind: str, server: ServingServer) -> None:
    server.script = [Reply(answer=True, delay=3.0)]
    async with clients_of(kind, **server.client_kwargs()) as make_client:
        client = make_client(max_concurrency=1)
        busy: Any
        if kind == "sync":
            busy = threading.Thread(target=client.client.embed_texts, args=(["slow"],))
            busy.start()
        else:
            busy = asyncio.ensure_future(client.embed_texts(["slow"]))
        while server.posts() == 0:
            await asyncio.sleep(0.01)
        error, seconds = await timed(client.embed_texts(["quick"], deadline=0.5))
        if kind == "sync":
            busy.join()
        else:
            await busy

    assert isinstance(error, APITimeoutError), error
    assert error.deadline_passed
    assert seconds < 0.5 + MARGIN
    assert server.posts() == 1  # the second call never got a slot


# --------------------------------------------------------------------------------------------------
# A malformed 200 is retried once, at most


WRONG_SHAPE = {"predictions": [[1.0, 2.0]]}  # one row for two records, every time
HTML = b"<html><body><h1>502 Bad Gateway</h1></body></html>"


async def test_a_wrong_shape_every_time_is_raised_after_two_attempts(
    make: Make, server: ServingServer
) -> None:
    server.script = [Reply(200, WRONG_SHAPE, {"x-request-id": "req-shape"})] * 10
    client = make()  # max_retries=8

    with pytest.raises(ResponseFormatError, match="sent 2 records but got 1 rows") as info:
        await client.embed_texts(["a", "b"])

    assert info.value.attempts == 2
    assert "gave up after 2 attempts" in str(info.value)
    assert info.value.request_id == "req-shape"
    assert server.posts() == 2
    assert client.stats.retries == 1


async def test_one_html_page_then_the_answer_succeeds(make: Make, server: ServingServer) -> None:
    server.script = [Reply(200, HTML, {"Content-Type": "text/html"})]
    out = await make().embed_texts(["a", "b"])
    np.testing.assert_array_equal(out, text_rows(["a", "b"], 2))
    assert server.posts() == 2


async def test_the_once_is_per_batch_whatever_came_between(make: Make, server: ServingServer) -> None:
    unavailable = Reply(503, {"error_code": "TEMPORARILY_UNAVAILABLE", "message": "scaling"})
    server.script = [Reply(200, HTML), unavailable, Reply(200, HTML), unavailable]
    with pytest.raises(ResponseFormatError, match="not JSON") as info:
        await make().embed_texts(["a"])
    assert info.value.attempts == 3
    assert server.posts() == 3

    server.script = [Reply(200, HTML)]  # a new batch has its own retry
    np.testing.assert_array_equal(await make().embed_texts(["b"]), text_rows(["b"], 2))
