"""End-to-end: ClipClient and AsyncClipClient against a real HTTP server on 127.0.0.1.

Every request crosses a real socket into ``serving_server.ServingServer``, which validates the body,
records what it received and answers with embeddings derived from each input, so every returned row
can be checked against the input it belongs to. Most tests run once per client (sync and async):
the ``make`` fixture (``conftest.py``) builds clients of ``server`` of each kind. The token's secrecy
is tested in ``test_secrets``.
"""

from __future__ import annotations

import asyncio
import io
import re
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from harness import IMAGE, KINDS, TEXT, Make, Serve, clients_of, embed_in_threads, header, text_rows
from image_factory import encode, noise
from PIL import Image
from serving_server import Reply, ServingServer, expected_vector, image_pixels

from clip_client import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    AsyncClipClient,
    AuthenticationError,
    BadRequestError,
    ClipClient,
    EndpointNotFoundError,
    InvalidInputError,
    PermissionDeniedError,
    RateLimitError,
    ResponseFormatError,
    ServerError,
)


def unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


# --------------------------------------------------------------------------------------------------
# Texts: order, batching, concurrency


async def test_thousand_texts_come_back_in_order_through_concurrent_requests(
    make: Make, server: ServingServer
) -> None:
    server.latency = 0.02
    texts = [f"text number {i}: {'x' * (i % 17)}" for i in range(1000)]
    client = make(batch_size=32, max_concurrency=4)

    out = await client.embed_texts(texts)

    assert out.dtype == np.float32
    assert out.shape == (1000, 768)
    np.testing.assert_array_equal(out, text_rows(texts))
    assert 1 < server.max_in_flight <= 4
    assert all(len(r.inputs) <= 32 for r in server.received)
    assert len(server.received) == 32  # ceil(1000 / 32)
    sent = Counter(server.inputs(TEXT))
    assert sent == Counter(texts)  # every text exactly once: none missing, none duplicated


async def test_empty_list_sends_no_request(make: Make, server: ServingServer) -> None:
    client = make()
    out = await client.embed_texts([])
    assert out.dtype == np.float32
    assert out.shape == (0, 768)
    out = await client.embed_images([])
    assert out.shape == (0, 768)
    assert server.requests == []


async def test_embed_text_returns_one_row(make: Make, server: ServingServer) -> None:
    row = await make().embed_text("a photo of a cat")
    assert row.shape == (768,)
    assert row.dtype == np.float32
    np.testing.assert_array_equal(row, expected_vector("text", "a photo of a cat"))
    assert server.inputs() == ["a photo of a cat"]


async def test_normalize_gives_unit_rows_with_per_call_override(make: Make) -> None:
    texts = ["red", "green", "blue"]
    raw = text_rows(texts)

    normalizing = make(normalize=True)
    out = await normalizing.embed_texts(texts)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(out, unit(raw), rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(await normalizing.embed_texts(texts, normalize=False), raw)
    np.testing.assert_allclose(np.linalg.norm(await normalizing.embed_text("red")), 1.0, rtol=1e-6)

    plain = make()
    np.testing.assert_array_equal(await plain.embed_texts(texts), raw)
    np.testing.assert_allclose(
        await plain.embed_texts(texts, normalize=True), unit(raw), rtol=1e-5, atol=1e-7
    )
    np.testing.assert_allclose(
        await plain.embed_text("blue", normalize=True), unit(raw)[2], rtol=1e-5, atol=1e-7
    )


async def test_per_call_batch_size_changes_the_request_count(make: Make, server: ServingServer) -> None:
    texts = [f"t{i}" for i in range(100)]
    client = make(batch_size=32)

    np.testing.assert_array_equal(await client.embed_texts(texts), text_rows(texts))
    assert sorted(len(r.inputs) for r in server.received) == [4, 32, 32, 32]

    server.received.clear()
    np.testing.assert_array_equal(await client.embed_texts(texts, batch_size=10), text_rows(texts))
    assert [len(r.inputs) for r in server.received] == [10] * 10

    server.received.clear()  # the override was for one call only
    await client.embed_texts(texts)
    assert len(server.received) == 4


async def test_progress_bar_counts_every_item(
    make: Make, server: ServingServer, capsys: pytest.CaptureFixture[str]
) -> None:
    texts = [f"t{i}" for i in range(70)]
    client = make(batch_size=16)

    np.testing.assert_array_equal(await client.embed_texts(texts, progress=True), text_rows(texts))

    err = capsys.readouterr().err
    counts = re.findall(r"(\d+)/(\d+)", err)
    assert counts, f"no progress bar on stderr: {err!r}"
    assert {total for _, total in counts} == {"70"}
    assert ("70", "70") in counts

    await client.embed_texts(texts)  # progress is off by default
    assert capsys.readouterr().err == ""


async def test_progress_from_the_constructor(make: Make, capsys: pytest.CaptureFixture[str]) -> None:
    await make(progress=True).embed_texts(["a", "b", "c"])
    assert "3/3" in capsys.readouterr().err


def test_shared_sync_client_caps_requests_in_flight_across_threads(server: ServingServer) -> None:
    server.latency = 0.005
    n_threads, per_thread, cap = 16, 60, 3
    lists = [[f"thread {t} item {i}" for i in range(per_thread)] for t in range(n_threads)]
    with ClipClient(**server.client_kwargs(batch_size=8, max_concurrency=cap)) as client:
        results = embed_in_threads(client, lists)
    for t in range(n_threads):
        np.testing.assert_array_equal(results[t], text_rows(lists[t]))
    assert 1 < server.max_in_flight <= cap
    assert Counter(server.inputs(TEXT)) == Counter(x for lst in lists for x in lst)


async def test_async_client_caps_requests_in_flight_across_gathered_calls(server: ServingServer) -> None:
    server.latency = 0.005
    cap = 3
    lists = [[f"task {t} item {i}" for i in range(60)] for t in range(12)]
    async with AsyncClipClient(**server.client_kwargs(batch_size=8, max_concurrency=cap)) as client:
        results = await asyncio.gather(*(client.embed_texts(lst) for lst in lists))
    for lst, out in zip(lists, results):
        np.testing.assert_array_equal(out, text_rows(lst))
    assert 1 < server.max_in_flight <= cap
    assert Counter(server.inputs(TEXT)) == Counter(x for lst in lists for x in lst)


# --------------------------------------------------------------------------------------------------
# Images: batching by bytes


def colour_of(i: int) -> tuple[int, int, int]:
    return (10 + 5 * i, 250 - 3 * i, 77)


def tagged_image(path: Path, i: int) -> Path:
    """A 300x250 picture whose centre has a colour unique to ``i`` and whose top rows are noise
    (a different amount per image, so the encoded sizes differ)."""
    arr = np.empty((250, 300, 3), dtype=np.uint8)
    arr[:] = colour_of(i)
    rng = np.random.default_rng(i)
    rows = 2 + i % 6
    arr[:rows] = rng.integers(0, 256, size=(rows, 300, 3), dtype=np.uint8)
    Image.fromarray(arr).save(path)
    return path


def noise_image(path: Path, seed: int = 99) -> Path:
    """Incompressible: even resized to 224x224 its PNG is ~150 KB."""
    Image.fromarray(noise(300, 300, seed)).save(path)
    return path


def centre_colour_model(kind: str, inputs: list[str]) -> list[list[float]]:
    """Server-side model: an image's row starts with the colour the server decodes at its centre."""
    if kind == "text":
        return [expected_vector("text", x).tolist() for x in inputs]
    rows = []
    for b64 in inputs:
        pixels = image_pixels(b64)
        assert pixels.shape == (224, 224, 3)
        rows.append([float(v) for v in pixels[112, 112]] + [0.0] * 765)
    return rows


async def test_image_requests_stay_under_max_request_bytes_and_keep_order(
    make: Make, server: ServingServer, tmp_path: Path
) -> None:
    server.model = centre_colour_model
    n, limit = 30, 20_000
    paths = [tagged_image(tmp_path / f"img{i}.png", i) for i in range(n)]
    client = make(max_request_bytes=limit, batch_size=32, max_concurrency=3)

    out = await client.embed_images(paths)

    assert out.shape == (n, 768)
    np.testing.assert_array_equal(out[:, :3], np.array([colour_of(i) for i in range(n)], dtype=np.float32))
    sizes = [r.nbytes for r in server.received]
    assert all(size <= limit for size in sizes), sizes
    # the byte limit, not batch_size, is what split them, and it still packed several per request
    assert len(server.received) > 1
    assert max(len(r.inputs) for r in server.received) > 1
    assert sum(len(r.inputs) for r in server.received) == n


async def test_image_over_the_byte_limit_alone_fails_before_it_is_sent(
    make: Make, server: ServingServer, tmp_path: Path
) -> None:
    server.model = centre_colour_model
    paths: list[Path] = [tagged_image(tmp_path / f"img{i}.png", i) for i in range(5)]
    paths.insert(3, noise_image(tmp_path / "noise.png"))
    client = make(max_request_bytes=20_000)

    with pytest.raises(InvalidInputError, match="max_request_bytes") as info:
        await client.embed_images(paths)

    assert info.value.index == 3
    assert "input 3" in str(info.value)
    colours_sent = {tuple(int(v) for v in image_pixels(b64)[112, 112]) for b64 in server.inputs(IMAGE)}
    assert colours_sent <= {colour_of(i) for i in range(3)}  # at most the images before it


# --------------------------------------------------------------------------------------------------
# Server errors through the real HTTP path


async def test_unknown_endpoint_is_one_request_and_names_the_endpoint(
    make: Make, server: ServingServer
) -> None:
    client = make(text_endpoint="no-such-endpoint", max_retries=3)
    with pytest.raises(EndpointNotFoundError) as info:
        await client.embed_texts(["a"])
    err = info.value
    assert err.status_code == 404
    assert err.error_code == "RESOURCE_DOES_NOT_EXIST"
    assert err.endpoint == "no-such-endpoint"
    assert err.request_id == "req-err"
    assert err.attempts == 1
    assert "no-such-endpoint" in str(err)
    posts = [(m, path) for m, path in server.requests if m == "POST"]  # the state GET aside
    assert posts == [("POST", "/serving-endpoints/no-such-endpoint/invocations")]


@pytest.mark.parametrize(
    ("status", "error"),
    [(401, AuthenticationError), (403, PermissionDeniedError), (404, EndpointNotFoundError)],
)
@pytest.mark.parametrize("kind", KINDS)
async def test_errors_fatal_to_the_call_stop_it_even_in_mark_mode(
    serve: Serve, kind: str, status: int, error: type[APIStatusError]
) -> None:
    """``on_error="mark"`` is for failures of some inputs. Bad credentials, a missing permission or a
    wrong endpoint name would fail every batch: the call stops at the first, rather than send all of
    them to collect a failure per input. (A server of its own: the batch still in flight when the
    call stops may arrive after the test, where it must not meet the next test's script.)"""
    server = serve()
    server.script = [Reply(status, {"error_code": "X", "message": "no"})] * 50
    texts = [f"t{i}" for i in range(200)]
    async with clients_of(kind, **server.client_kwargs()) as make:
        with pytest.raises(error):
            await make(batch_size=4, max_concurrency=2, max_retries=0).embed_texts(texts, on_error="mark")
    assert server.posts() <= 4  # the batches already in flight, not all 50


@pytest.mark.parametrize("stream", [False, True])
async def test_an_input_too_large_alone_is_marked_not_raised(
    make: Make, server: ServingServer, stream: bool
) -> None:
    texts = ["ok", "y" * 5000, "ok2"]
    client = make(max_request_bytes=2000)
    if stream:
        it = client.client.iter_embed_texts(texts, on_error="mark")
        got = [row async for row in it] if hasattr(it, "__aiter__") else list(it)
        failures = it.failures
        rows = np.stack([row for _, row in got])
    else:
        result = await client.embed_texts(texts, on_error="mark")
        failures, rows = result.failures, result.embeddings
    assert [f.index for f in failures] == [1]
    assert isinstance(failures[0].error, InvalidInputError)
    assert "max_request_bytes" in str(failures[0].error)
    np.testing.assert_array_equal(rows[[0, 2]], text_rows(["ok", "ok2"]))
    assert np.isnan(rows[1]).all()
    with pytest.raises(InvalidInputError) as info:
        await client.embed_texts(texts)
    assert info.value.index == 1


@pytest.mark.parametrize("count", [1, 2, 40])
@pytest.mark.parametrize(
    ("status", "error"),
    [
        (401, AuthenticationError),
        (403, PermissionDeniedError),
        (404, EndpointNotFoundError),
        (503, ServerError),
    ],
)
async def test_errors_about_the_endpoint_name_no_input(
    make: Make, server: ServingServer, count: int, status: int, error: type[APIStatusError]
) -> None:
    """However many inputs were sent, an error about the endpoint, the credentials or the permissions
    is not about any of them: no index, no "input N:" in the message."""
    server.script = [Reply(status, {"error_code": "X", "message": "no"})]
    with pytest.raises(error) as info:
        await make(max_retries=0).embed_texts([f"t{i}" for i in range(count)])
    assert info.value.index is None
    assert not str(info.value).startswith("input")


async def test_a_400_for_a_single_input_names_it(make: Make, server: ServingServer) -> None:
    server.script = [Reply(400, {"error_code": "BAD_REQUEST", "message": "cannot embed this"})]
    with pytest.raises(BadRequestError) as info:
        await make().embed_texts(["only one"])
    assert info.value.index == 0
    assert str(info.value).startswith("input 0: ")


async def test_empty_and_whitespace_texts_are_sent_and_embedded(make: Make, server: ServingServer) -> None:
    """The served model embeds "" (CLIP tokenises it to its start and end tokens), as SQL ai_query and
    Spark do: one empty caption must not sink a job."""
    texts = ["a caption", "", "   ", "\n", "another"]
    client = make()
    np.testing.assert_array_equal(await client.embed_texts(texts), text_rows(texts))
    assert server.inputs(TEXT) == texts
    np.testing.assert_array_equal(await client.embed_text(""), text_rows([""])[0])


@pytest.mark.parametrize(
    "reply",
    [
        Reply(503, {"error_code": "TEMPORARILY_UNAVAILABLE", "message": "scaling from zero"}),
        Reply(429, {"error_code": "REQUEST_LIMIT_EXCEEDED", "message": "slow down"}, {"Retry-After": "0"}),
        Reply(504, b"upstream request timeout", {"Content-Type": "text/plain"}),
        Reply(drop=True),
    ],
    ids=["503", "429-retry-after", "504-plain-text", "dropped-connection"],
)
async def test_transient_failure_is_retried_then_succeeds(
    make: Make, server: ServingServer, reply: Reply
) -> None:
    server.script = [reply]
    texts = ["a", "b", "c"]
    out = await make(max_retries=2).embed_texts(texts)
    np.testing.assert_array_equal(out, text_rows(texts))
    assert server.posts(TEXT) == 2
    assert server.inputs(TEXT) == texts


@pytest.mark.parametrize(
    ("reply", "error"),
    [
        (Reply(503, {"error_code": "TEMPORARILY_UNAVAILABLE", "message": "scaling from zero"}), ServerError),
        (
            Reply(429, {"error_code": "REQUEST_LIMIT_EXCEEDED", "message": "slow"}, {"Retry-After": "0"}),
            RateLimitError,
        ),
        (Reply(drop=True), APIConnectionError),
    ],
    ids=["503", "429", "dropped-connection"],
)
async def test_transient_failure_without_retries_raises(
    make: Make, server: ServingServer, reply: Reply, error: type[Exception]
) -> None:
    server.script = [reply, reply]
    with pytest.raises(error) as info:
        await make(max_retries=1).embed_texts(["a"])
    assert getattr(info.value, "attempts", None) == 2
    assert "gave up after 2 attempts" in str(info.value)
    assert server.posts(TEXT) == 2


@pytest.mark.parametrize(
    ("body", "match"),
    [
        ({"predictions": [expected_vector("text", "a").tolist()]}, "sent 2 records but got 1 rows"),
        (b"<html><body><h1>502 Bad Gateway</h1></body></html>", "not JSON"),
        ({"result": "ok"}, "no 'predictions'"),
        ({"predictions": [[1.0, 2.0], [1.0]]}, "equal-length"),
    ],
    ids=["one-row-too-few", "html", "no-predictions", "ragged"],
)
async def test_malformed_200_is_a_response_format_error(
    make: Make, server: ServingServer, body: Any, match: str
) -> None:
    server.script = [Reply(200, body, {"x-request-id": "req-bad"})] * 3
    with pytest.raises(ResponseFormatError, match=match) as info:
        await make(max_retries=2).embed_texts(["a", "b"])
    assert info.value.endpoint == TEXT
    assert info.value.request_id == "req-bad"
    assert server.posts() == 2  # retried once, then an error: never a wrong array
    assert info.value.attempts == 2


async def test_one_malformed_200_is_retried(make: Make, server: ServingServer) -> None:
    server.script = [Reply(200, b"<html><body><h1>502 Bad Gateway</h1></body></html>")]
    out = await make(max_retries=2).embed_texts(["a", "b"])
    np.testing.assert_array_equal(out, text_rows(["a", "b"]))
    assert server.posts() == 2


async def test_reply_slower_than_timeout_is_retried(make: Make, server: ServingServer) -> None:
    server.script = [Reply(delay=1.0)]
    out = await make(timeout=0.3, max_retries=2).embed_texts(["a", "b"])
    np.testing.assert_array_equal(out, text_rows(["a", "b"]))
    assert server.posts(TEXT) == 2


async def test_reply_slower_than_timeout_without_retries_raises(make: Make, server: ServingServer) -> None:
    server.script = [Reply(delay=1.0)]
    with pytest.raises(APITimeoutError) as info:
        await make(timeout=0.3, max_retries=0).embed_texts(["a"])
    assert info.value.endpoint == TEXT
    assert info.value.attempts == 1
    assert server.posts(TEXT) == 1


# --------------------------------------------------------------------------------------------------
# Workspace from databricks-sdk's Config chain


@pytest.fixture
def sdk_env(server: ServingServer, clean_env: pytest.MonkeyPatch, tmp_path: Path) -> str:
    """DATABRICKS_HOST/TOKEN pointing at ``server``, and nothing else that Config could pick up."""
    token = "dapi-from-env-9876543210"
    clean_env.setenv("DATABRICKS_HOST", server.url)
    clean_env.setenv("DATABRICKS_TOKEN", token)
    clean_env.setenv("HOME", str(tmp_path))
    return token


@pytest.mark.parametrize("kind", KINDS)
async def test_workspace_resolved_from_sdk_config_env(server: ServingServer, sdk_env: str, kind: str) -> None:
    texts = ["from", "the", "environment"]
    if kind == "sync":
        with ClipClient(retry_backoff=0, timeout=30) as client:
            out = client.embed_texts(texts)
            shown = repr(client)
    else:
        async with AsyncClipClient(retry_backoff=0, timeout=30) as aclient:
            out = await aclient.embed_texts(texts)
            shown = repr(aclient)
    np.testing.assert_array_equal(out, text_rows(texts))
    assert [header(r.headers, "Authorization") for r in server.received] == [f"Bearer {sdk_env}"]
    assert server.url in shown
    assert sdk_env not in shown


# --------------------------------------------------------------------------------------------------
# Lifecycle


def test_sync_context_manager_closes(server: ServingServer) -> None:
    with ClipClient(**server.client_kwargs()) as client:
        np.testing.assert_array_equal(client.embed_texts(["x"]), text_rows(["x"]))
    with pytest.raises(RuntimeError, match="closed"):
        client.embed_texts(["x"])
    with pytest.raises(RuntimeError, match="closed"):
        client.embed_text("x")
    client.close()  # idempotent
    client.close()
    assert server.posts() == 1


async def test_async_context_manager_closes(server: ServingServer) -> None:
    async with AsyncClipClient(**server.client_kwargs()) as client:
        np.testing.assert_array_equal(await client.embed_texts(["x"]), text_rows(["x"]))
    with pytest.raises(RuntimeError, match="closed"):
        await client.embed_texts(["x"])
    with pytest.raises(RuntimeError, match="closed"):
        await client.embed_images([b"not even read"])
    await client.close()  # idempotent
    await client.close()
    assert server.posts() == 1


async def test_a_stream_that_close_overtook_raises_the_closed_error(make: Make) -> None:
    """A stream read on after `close` (the remote backend's thread pools and connections gone), or
    made before it and first read after: the client's own closed error, not the executor's."""
    client = make(batch_size=4, max_concurrency=2).client
    name = type(client).__name__
    texts = [f"text {i}" for i in range(200)]
    overtaken = client.iter_embed_texts(texts)
    unread = client.iter_embed_texts(texts)
    if isinstance(client, ClipClient):
        rows = iter(overtaken)
        next(rows)
        client.close()
        with pytest.raises(RuntimeError, match=rf"^this {name} is closed$"):
            list(rows)
        with pytest.raises(RuntimeError, match=rf"^this {name} is closed$"):
            list(unread)
    else:
        arows = overtaken.__aiter__()
        await arows.__anext__()
        await client.close()
        with pytest.raises(RuntimeError, match=rf"^this {name} is closed$"):
            async for _ in arows:
                pass
        with pytest.raises(RuntimeError, match=rf"^this {name} is closed$"):
            async for _ in unread:
                pass


async def test_close_without_use_and_twice(make: Make) -> None:
    client = make()
    await client.close()
    await client.close()


# --------------------------------------------------------------------------------------------------
# The event loop keeps running while images are prepared


class GatedFile(io.BytesIO):
    """An image file whose pixel data cannot be read until the event loop has run again.

    Once armed, the first read records its thread and waits for ``gate``, which only a task on the
    event loop opens. Decoded in a worker thread, the task opens it at once; decoded on the event
    loop, nothing can open it and the read gives up after a while, marking the file ``starved``.
    """

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.armed = False
        self.waiting = threading.Event()
        self.gate = threading.Event()
        self.starved = False
        self.reader: threading.Thread | None = None

    def read(self, size: int | None = -1) -> bytes:
        if self.armed and not self.gate.is_set():
            self.reader = threading.current_thread()
            self.waiting.set()
            if not self.gate.wait(timeout=5):
                self.starved = True
            self.gate.set()
        return super().read(size)


def big_jpeg(seed: int, size: tuple[int, int] = (1600, 1200)) -> bytes:
    return encode(Image.fromarray(noise(*size, seed)), "JPEG", quality=90)


async def test_event_loop_keeps_ticking_while_images_decode(aclient: AsyncClipClient) -> None:
    gated_png = encode(Image.fromarray(noise(1200, 900, seed=5)))
    gated = GatedFile(gated_png)
    gated_image = Image.open(gated)  # reads the header now; the pixels are read on load()
    gated.armed = True
    images: list[Any] = [big_jpeg(1), gated_image, big_jpeg(2), big_jpeg(3)]

    loop_thread = threading.current_thread()
    ticks = 0
    done = False

    async def ticker() -> None:
        nonlocal ticks
        while not done:
            ticks += 1
            if gated.waiting.is_set():
                gated.gate.set()
            await asyncio.sleep(0.001)

    ticking = asyncio.create_task(ticker())
    try:
        out = await aclient.embed_images(images)
    finally:
        done = True
        await ticking

    assert out.shape == (4, 768)
    assert ticks > 0
    assert gated.reader is not None, "the gated image was never decoded"
    assert gated.reader is not loop_thread
    assert not gated.starved, "the image was decoded while the event loop was blocked"
    # the gated image came back in its place: same row as the same pixels sent as plain bytes
    np.testing.assert_array_equal(out[1], await aclient.embed_image(gated_png))


def test_one_async_client_works_across_event_loops(server: ServingServer) -> None:
    """A script that calls ``asyncio.run`` twice with one client: the second loop must not reuse
    connections that belong to the first, closed one."""
    client = AsyncClipClient(**server.client_kwargs())
    first = asyncio.run(client.embed_texts(["a", "b"]))
    second = asyncio.run(client.embed_texts(["c"]))
    asyncio.run(client.close())
    np.testing.assert_array_equal(first, text_rows(["a", "b"]))
    np.testing.assert_array_equal(second, text_rows(["c"]))


async def test_a_width_change_from_an_endpoint_advises_about_the_endpoint(
    make: Make, server: ServingServer
) -> None:
    """A serving endpoint's user wrote no Backend: a wrong answer's advice is about the endpoint."""
    server.script = [Reply(answer=True), Reply(200, {"predictions": [[0.5] * 10, [0.5] * 10]})]
    client = make(batch_size=2, max_concurrency=1, max_retries=0)
    with pytest.raises(ResponseFormatError, match=r"width changed between requests \(768 then 10\)") as info:
        await client.embed_texts(["a", "b", "c", "d"])
    assert "serves a CLIP embedding model" in str(info.value)
    assert "Backend's embed()" not in str(info.value)
