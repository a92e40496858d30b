"""Reliability under faults: nothing lost, nothing duplicated, nothing out of order.

Every test runs against ``serving_server.ServingServer`` with fault injection (``Faults``): 429s with
and without ``Retry-After``, 503s, 500s, plain-text 504s, dropped connections, replies slower than
the client's timeout, 200s a row short or made of HTML, and a body-size limit that hangs up on big
requests. The server answers each input with a vector derived from its bytes, so every returned row
is checked against the input it belongs to. Most tests run once per client (sync and async), built
by the ``make`` fixture (``conftest.py``) with ``FAST`` retries.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from harness import IMAGE, TEXT, Make, embed_in_threads, text_rows
from image_factory import png
from serving_server import FAULT_KINDS, Faults, Reply, ServingServer, expected_vector

from clip_client import (
    AsyncClipClient,
    AuthenticationError,
    ClipClient,
    EndpointNotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
    ResponseFormatError,
)
from clip_client._core.images import ImageOptions, prepare_image
from clip_client.types import EmbeddingResult

#: Retries cost next to nothing, and a reply later than ``timeout`` is a timeout.
FAST: dict[str, Any] = {"retry_backoff": 0.001, "retry_backoff_max": 0.01, "max_retries": 10}
TIMEOUT, SLOW_DELAY = 0.5, 0.8
OVERLOAD_KINDS = ("rate_limit", "rate_limit_bare", "unavailable")

#: Every client ``make`` builds here retries fast.
pytestmark = pytest.mark.client(**FAST)


# --------------------------------------------------------------------------------------------------
# Images: small, real, distinct per index; half pass through as they are, half are resized


def small_image(i: int) -> bytes:
    """Even ``i``: a 224x224 RGB PNG, which the client sends as it is. Odd ``i``: a 40x30 PNG, which
    it resizes and crops. Each has a flat colour and a corner of pixels that spell out ``i``."""
    size = (224, 224) if i % 2 == 0 else (30, 40)
    arr = np.empty((*size, 3), dtype=np.uint8)
    arr[:] = ((37 * i) % 256, (91 * i) % 256, 200)
    arr[:4, :4] = np.random.default_rng(i).integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
    arr[0, 0] = (i % 256, i // 256, 7)
    return png(arr)


@pytest.fixture(scope="module")
def images() -> tuple[list[bytes], np.ndarray]:
    """300 images and the row the server must answer for each: the vector of the record the client
    sends for it (recomputed here with the client's own image preparation)."""
    files = [small_image(i) for i in range(300)]
    sent = [prepare_image(f, i, ImageOptions()).encoded for i, f in enumerate(files)]
    assert sent[0] == files[0]  # a 224x224 PNG travels as it is...
    assert sent[1] != files[1]  # ...a smaller one is resized first
    assert len(set(sent)) == len(sent)
    expected = np.stack([expected_vector("image", s or b"") for s in sent])
    return files, expected


# --------------------------------------------------------------------------------------------------
# 30% of requests fail, in every way at once


async def test_every_row_is_right_through_thirty_percent_faults(
    make: Make, server: ServingServer, images: tuple[list[bytes], np.ndarray]
) -> None:
    server.faults = Faults.spread(0.30, slow_delay=SLOW_DELAY, seed=1234)
    texts = [f"text {i}: {'xyz'[i % 3] * (i % 29)}" for i in range(2000)]
    files, image_rows = images
    client = make(timeout=TIMEOUT, batch_size=16)

    out_texts = await client.embed_texts(texts)
    out_images = await client.embed_images(files)

    # every row is the one of its input, in order: none missing, none duplicated, none misplaced
    assert out_texts.shape == (2000, 768)
    assert out_texts.dtype == np.float32
    np.testing.assert_array_equal(out_texts, text_rows(texts))
    assert out_images.shape == (300, 768)
    np.testing.assert_array_equal(out_images, image_rows)
    # the faults did happen, of every kind, and the client saw them
    assert all(server.injected[kind] > 0 for kind in FAULT_KINDS), server.injected
    stats = client.stats
    assert stats.retries > 0
    assert stats.overloads == sum(server.injected[k] for k in OVERLOAD_KINDS) > 0
    assert stats.requests == server.posts()
    assert 1 <= stats.concurrency_limit <= stats.max_concurrency
    # every input was answered correctly at least once (an abandoned slow reply is not recorded,
    # but a retry of a batch whose reply was merely late may be: so count by the client's output)
    assert set(server.inputs(TEXT)) == set(texts)
    assert len(set(server.inputs(IMAGE))) == 300


# --------------------------------------------------------------------------------------------------
# Errors that no retry can fix fail at once


@pytest.mark.parametrize(
    ("status", "error"),
    [(401, AuthenticationError), (403, PermissionDeniedError), (404, EndpointNotFoundError)],
)
async def test_auth_and_not_found_fail_at_once_with_one_request(
    make: Make, server: ServingServer, status: int, error: type[Exception]
) -> None:
    server.faults = Faults(status_for_all=status)
    client = make()
    with pytest.raises(error) as info:
        await client.embed_texts([f"t{i}" for i in range(40)], batch_size=40)
    assert getattr(info.value, "status_code", None) == status
    assert getattr(info.value, "attempts", None) == 1
    assert server.posts() == 1
    assert client.stats.retries == 0
    assert server.received == []


@pytest.mark.parametrize(
    ("kind", "match"), [("short", "sent 2 records but got 1 rows"), ("html", "not JSON")]
)
async def test_malformed_200_on_every_answer_ends_in_response_format_error(
    make: Make, server: ServingServer, kind: str, match: str
) -> None:
    server.faults = Faults(**{kind: 1.0})
    client = make(max_retries=3)
    with pytest.raises(ResponseFormatError, match=match):
        await client.embed_texts(["a", "b"])  # never a shorter array, never an HTML "row"
    assert server.posts(TEXT) == 2  # retried once (max_retries=3 notwithstanding), then given up
    assert server.injected[kind] == 2
    assert client.stats.retries == 1


async def test_malformed_200_is_retried_and_then_answered(make: Make, server: ServingServer) -> None:
    server.script = [
        Reply(200, {"predictions": [expected_vector("text", "a").tolist()]}),
        Reply(503, {"error_code": "TEMPORARILY_UNAVAILABLE", "message": "scaling from zero"}),
    ]
    out = await make().embed_texts(["a", "b"])
    np.testing.assert_array_equal(out, text_rows(["a", "b"]))
    assert server.posts(TEXT) == 3


# --------------------------------------------------------------------------------------------------
# A body-size limit: batches split in half until they fit; an item too big alone fails alone
#
# Proxies in front of serving endpoints hang up on uploads of megabytes rather than answer 413, so the
# records here are big (150 kB): 16 of them are 2.4 MB, 8 are 1.2 MB, both over the 1.1 MB limit;
# 4 (600 kB) fit. Either way the server never answers a request over the limit.

RECORD_CHARS = 150_000
BODY_LIMIT = 1_100_000
HUGE = 13


def sized_texts(n: int) -> list[str]:
    return [f"{i:04d} " + "abcdefghij"[i % 10] * RECORD_CHARS for i in range(n)]


def with_huge(n: int) -> list[str]:
    texts = sized_texts(n)
    texts[HUGE] = "huge " + "z" * (BODY_LIMIT + 100_000)  # over the limit all by itself
    return texts


@pytest.mark.parametrize("status", [None, 413], ids=["dropped", "413"])
async def test_batches_over_the_body_limit_are_split_until_they_fit(
    make: Make, server: ServingServer, status: int | None
) -> None:
    texts = sized_texts(40)
    server.faults = Faults(body_limit=BODY_LIMIT, body_limit_status=status)
    client = make(batch_size=16)

    out = await client.embed_texts(texts)

    np.testing.assert_array_equal(out, text_rows(texts))
    assert client.stats.splits > 0
    assert server.injected["body_limit"] > 0
    assert all(r.nbytes <= BODY_LIMIT for r in server.received)
    assert sorted(server.inputs(TEXT)) == sorted(texts)  # each answered once: refusals answer nothing


@pytest.mark.parametrize("status", [None, 413], ids=["dropped", "413"])
async def test_item_over_the_body_limit_alone_fails_with_its_index(
    make: Make, server: ServingServer, status: int | None
) -> None:
    server.faults = Faults(body_limit=BODY_LIMIT, body_limit_status=status)
    client = make(batch_size=16)

    with pytest.raises(PayloadTooLargeError) as info:
        await client.embed_texts(with_huge(40))
    assert getattr(info.value, "index", None) == HUGE
    assert f"input {HUGE}" in str(info.value)
    assert not any(x.startswith("huge") for x in server.inputs(TEXT))


@pytest.mark.parametrize("status", [None, 413], ids=["dropped", "413"])
async def test_item_over_the_body_limit_is_marked_and_the_rest_come_back(
    make: Make, server: ServingServer, status: int | None
) -> None:
    texts = with_huge(40)
    server.faults = Faults(body_limit=BODY_LIMIT, body_limit_status=status)
    client = make(batch_size=16)

    result = await client.embed_texts(texts, on_error="mark")

    assert isinstance(result, EmbeddingResult)
    assert [f.index for f in result.failures] == [HUGE]
    assert isinstance(result.failures[0].error, PayloadTooLargeError)
    assert result.embeddings.shape == (40, 768)
    assert np.isnan(result.embeddings[HUGE]).all()
    others = [i for i in range(40) if i != HUGE]
    np.testing.assert_array_equal(result.embeddings[others], text_rows([texts[i] for i in others]))
    assert result.ok.tolist() == [i != HUGE for i in range(40)]
    assert client.stats.splits > 0
    assert sorted(server.inputs(TEXT)) == sorted(texts[i] for i in others)


# --------------------------------------------------------------------------------------------------
# Many threads, one client


def test_sixteen_threads_share_one_client_through_faults(server: ServingServer) -> None:
    server.faults = Faults.spread(0.10, slow_delay=SLOW_DELAY, seed=99)
    n_threads = 16
    lists = [[f"thread {t} item {i}" for i in range(48)] for t in range(n_threads)]
    with ClipClient(**server.client_kwargs(**FAST, timeout=TIMEOUT, batch_size=8)) as client:
        results = embed_in_threads(client, lists)
        stats = client.stats
    for t in range(n_threads):
        np.testing.assert_array_equal(results[t], text_rows(lists[t]))
    assert sum(server.injected.values()) > 0
    assert stats.retries > 0
    assert stats.requests == server.posts()


# --------------------------------------------------------------------------------------------------
# Adaptive concurrency


async def test_concurrency_limit_drops_on_429s_and_recovers(make: Make, server: ServingServer) -> None:
    cap = 8
    server.latency = 0.002
    client = make(max_concurrency=cap, batch_size=1, max_retries=100)
    seen: list[int] = []  # the client's limit whenever the server answers a request correctly

    def model(kind: str, inputs: list[str]) -> list[list[float]]:
        seen.append(client.stats.concurrency_limit)
        return [expected_vector(kind, x).tolist() for x in inputs]

    server.model = model
    server.script = [
        Reply(429, {"error_code": "REQUEST_LIMIT_EXCEEDED", "message": "slow down"}, {"Retry-After": "0"})
    ] * 40
    burst = [f"burst {i}" for i in range(16)]
    np.testing.assert_array_equal(await client.embed_texts(burst), text_rows(burst))

    assert client.stats.overloads == 40
    assert min(seen) < cap  # the burst lowered the limit...

    calm = [f"calm {i}" for i in range(300)]
    np.testing.assert_array_equal(await client.embed_texts(calm), text_rows(calm))

    stats = client.stats
    assert stats.concurrency_limit == stats.max_concurrency == cap  # ...and successes raised it again
    assert stats.overloads == 40
    assert 1 < server.max_in_flight <= cap


# --------------------------------------------------------------------------------------------------
# Streaming through faults


def numbered(n: int) -> Iterator[str]:
    """A generator, so the client cannot know the length up front."""
    for i in range(n):
        yield f"streamed {i}"


async def test_streaming_yields_every_row_in_order_through_faults(make: Make, server: ServingServer) -> None:
    server.faults = Faults.spread(0.30, slow_delay=SLOW_DELAY, seed=5)
    client = make(timeout=TIMEOUT, batch_size=16)
    stream = await client.iter_embed_texts(numbered(500))

    got: list[tuple[int, np.ndarray]] = []
    if hasattr(stream, "__aiter__"):
        async for index, row in stream:
            got.append((index, row))
    else:
        got.extend(stream)

    assert [i for i, _ in got] == list(range(500))
    np.testing.assert_array_equal(np.stack([r for _, r in got]), text_rows(list(numbered(500))))
    assert sum(server.injected[k] for k in FAULT_KINDS) > 0


async def test_async_gathered_calls_through_faults(server: ServingServer) -> None:
    server.faults = Faults.spread(0.30, slow_delay=SLOW_DELAY, seed=77)
    lists = [[f"task {t} item {i}" for i in range(64)] for t in range(8)]
    async with AsyncClipClient(**server.client_kwargs(**FAST, timeout=TIMEOUT, batch_size=8)) as client:
        results = await asyncio.gather(*(client.embed_texts(lst) for lst in lists))
        assert client.stats.retries > 0
    for lst, out in zip(lists, results):
        np.testing.assert_array_equal(out, text_rows(lst))
