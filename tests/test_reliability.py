"""Reliability of one call: bad inputs, partial failure, streaming, deadlines, cancellation, safety.

Against ``serving_server.ServingServer`` (real HTTP on 127.0.0.1), whose rows are derived from each
input, so every row can be checked. Most tests run once per client (sync and async); the ``make``
fixture (``conftest.py``) builds clients of the parametrized kind. The bad inputs come from the
catalogue in ``bad_inputs``; the token's secrecy is tested in ``test_secrets``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import gc
import math
import re
import signal
import socket
import ssl
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from bad_inputs import BAD_IMAGES, BAD_TEXTS
from harness import IMAGE, KINDS, TEXT, Make, clients_of, rendered, text_rows
from image_factory import png
from serving_server import TOKEN, Reply, ServingServer, expected_vector

from clip_client import (
    APIConnectionError,
    APITimeoutError,
    AsyncClipClient,
    BadRequestError,
    ClipClient,
    ImageDecodeError,
    InvalidInputError,
)
from clip_client._client import _PREP_WORKERS, AsyncEmbeddingStream, EmbeddingStream
from clip_client._core.concurrency import AIMDLimit
from clip_client.types import ClientStats, EmbeddingResult

#: A narrow embedding for the big streaming runs: the server's JSON stays small and fast.
SMALL_DIM = 16


def ready_image(i: int) -> bytes:
    """A 224x224 RGB PNG with a colour unique to ``i``: the client sends these very bytes, so the
    server's row for it is ``expected_vector("image", ready_image(i))``."""
    arr = np.empty((224, 224, 3), dtype=np.uint8)
    arr[:] = (i % 256, (i // 256) % 256, 77)
    return png(arr)


def sent_images(server: ServingServer) -> list[bytes]:
    return [base64.b64decode(x) for x in server.inputs(IMAGE)]


def model_of(dim: int, on_call: Callable[[str, list[str]], None] | None = None) -> Any:
    """A server-side model answering ``expected_vector`` rows of width ``dim``; ``on_call`` sees each
    batch first (and may raise, which the server answers with a 400, as MLflow does)."""

    def model(kind: str, inputs: list[str]) -> list[list[float]]:
        if on_call is not None:
            on_call(kind, inputs)
        if kind == "text":
            return [expected_vector("text", x, dim).tolist() for x in inputs]
        return [expected_vector("image", base64.b64decode(x), dim).tolist() for x in inputs]

    return model


async def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Poll ``condition`` (without blocking an event loop) until it holds or ``timeout`` passes."""
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            return False
        await asyncio.sleep(0.01)
    return True


# --------------------------------------------------------------------------------------------------
# 1. The bad-input matrix: each bad input's error type and index, and no request carries it


BAD_INDEX = 2


@pytest.mark.parametrize("kind", list(BAD_IMAGES), ids=[kind.replace(" ", "-") for kind in BAD_IMAGES])
async def test_bad_image_gets_its_error_and_index_and_costs_no_request(
    make: Make, server: ServingServer, tmp_path: Path, kind: str
) -> None:
    bad = BAD_IMAGES[kind]
    error = bad.error
    goods = [ready_image(i) for i in range(4)]
    images: list[Any] = [*goods[:BAD_INDEX], bad.make(tmp_path), *goods[BAD_INDEX:]]
    client = make()

    with pytest.raises(InvalidInputError, match=re.escape(bad.says)) as info:
        await client.embed_images(images)
    assert type(info.value) is error
    assert info.value.index == BAD_INDEX
    assert f"input {BAD_INDEX}" in str(info.value)
    assert server.posts() == 0  # found while preparing: not even the good ones before it went out

    result = await client.embed_images(images, on_error="mark")

    assert isinstance(result, EmbeddingResult)
    assert result.embeddings.shape == (5, 768)
    assert result.embeddings.dtype == np.float32
    good_rows = [0, 1, 3, 4]
    np.testing.assert_array_equal(
        result.embeddings[good_rows], np.stack([expected_vector("image", g) for g in goods])
    )
    assert np.isnan(result.embeddings[BAD_INDEX]).all()
    assert [f.index for f in result.failures] == [BAD_INDEX]
    failure = result.failures[0].error
    assert type(failure) is error
    assert getattr(failure, "index", None) == BAD_INDEX
    assert result.ok.tolist() == [True, True, False, True, True]
    assert sent_images(server) == goods  # the good ones went out, in order, and nothing else did
    assert server.posts() == 1


@pytest.mark.parametrize("kind", list(BAD_TEXTS), ids=[kind.replace(" ", "-") for kind in BAD_TEXTS])
async def test_bad_text_gets_its_error_and_index_and_costs_no_request(
    make: Make, server: ServingServer, kind: str
) -> None:
    bad, error = BAD_TEXTS[kind].value, BAD_TEXTS[kind].error
    goods = ["a red car", "a dog", "a bowl of soup", "the sea at night"]
    texts: list[Any] = [*goods[:BAD_INDEX], bad, *goods[BAD_INDEX:]]
    client = make()

    with pytest.raises(InvalidInputError, match=re.escape(BAD_TEXTS[kind].says)) as info:
        await client.embed_texts(texts)
    assert type(info.value) is error
    assert info.value.index == BAD_INDEX
    assert server.posts() == 0

    result = await client.embed_texts(texts, on_error="mark")

    assert result.embeddings.shape == (5, 768)
    np.testing.assert_array_equal(result.embeddings[[0, 1, 3, 4]], text_rows(goods))
    assert np.isnan(result.embeddings[BAD_INDEX]).all()
    assert [f.index for f in result.failures] == [BAD_INDEX]
    assert type(result.failures[0].error) is error
    assert getattr(result.failures[0].error, "index", None) == BAD_INDEX
    assert server.inputs(TEXT) == goods
    assert server.posts() == 1

    # the streaming form marks it the same way
    stream = client.client.iter_embed_texts(iter(texts), on_error="mark")
    rows = await drain(stream)
    assert [i for i, _ in rows] == list(range(5))
    assert np.isnan(rows[BAD_INDEX][1]).all()
    assert [(f.index, type(f.error)) for f in stream.failures] == [(BAD_INDEX, error)]


async def test_every_input_bad_in_mark_mode_sends_nothing(make: Make, server: ServingServer) -> None:
    result = await make().embed_texts([None, b"x", 3], on_error="mark")
    assert result.embeddings.shape == (3, 768)
    assert np.isnan(result.embeddings).all()
    assert [f.index for f in result.failures] == [0, 1, 2]
    assert not result.ok.any()
    assert server.posts() == 0


# --------------------------------------------------------------------------------------------------
# 2. Streaming: any length, input order, memory bounded by a few batches


async def drain(
    stream: EmbeddingStream | AsyncEmbeddingStream, on_row: Callable[[int], None] | None = None
) -> list[tuple[int, np.ndarray]]:
    """Every ``(index, vector)`` of a sync or async stream, calling ``on_row(index)`` as each arrives."""
    rows: list[tuple[int, np.ndarray]] = []
    if isinstance(stream, EmbeddingStream):
        with stream:
            for index, vector in stream:
                if on_row is not None:
                    on_row(index)
                rows.append((index, vector))
    else:
        async with stream:
            async for index, vector in stream:
                if on_row is not None:
                    on_row(index)
                rows.append((index, vector))
    return rows


class Counted:
    """A generator of ``n`` items that records how many it has handed out."""

    def __init__(self, n: int, item: Callable[[int], Any]) -> None:
        self.n = n
        self.item = item
        self.taken = 0

    def __iter__(self) -> Iterator[Any]:
        return self._gen()

    def _gen(self) -> Iterator[Any]:
        for i in range(self.n):
            self.taken += 1
            yield self.item(i)


def ahead_bound(batch_size: int, concurrency: int) -> int:
    """How far a stream may read ahead of the rows it has handed out: a window of batches in flight
    (``2 * max_concurrency``), up to another window of finished rows held behind a slow batch, the
    batch being filled, and slack. Independent of the input's length."""
    return batch_size * (2 * (2 * concurrency) + 3)


async def test_iter_embed_texts_streams_a_long_generator_in_order_with_bounded_memory(
    make: Make, server: ServingServer
) -> None:
    n, batch_size, concurrency = 5000, 50, 4
    source = Counted(n, lambda i: f"streamed text {i}")
    taken_at_request: list[int] = []
    server.model = model_of(SMALL_DIM, lambda kind, inputs: taken_at_request.append(source.taken))
    client = make(batch_size=batch_size, max_concurrency=concurrency)
    ahead: list[int] = []  # how far the generator had run ahead of each row handed out

    stream = client.client.iter_embed_texts(iter(source))
    rows = await drain(stream, lambda index: ahead.append(source.taken - index))

    assert [i for i, _ in rows] == list(range(n))
    np.testing.assert_array_equal(
        np.stack([v for _, v in rows]), text_rows([f"streamed text {i}" for i in range(n)], SMALL_DIM)
    )
    assert stream.failures == []
    bound = ahead_bound(batch_size, concurrency)
    assert ahead[0] < bound  # the first row came out long before the input was read
    assert max(ahead) < bound  # and the input never ran more than a few batches ahead
    assert taken_at_request[0] < bound  # batches went out while the generator was still being read
    assert len(server.received) == math.ceil(n / batch_size)
    assert sorted(server.inputs(TEXT)) == sorted(f"streamed text {i}" for i in range(n))  # each once


async def test_iter_embed_images_streams_a_generator_in_order_with_bounded_memory(
    make: Make, server: ServingServer
) -> None:
    n, batch_size, concurrency = 240, 8, 2
    source = Counted(n, ready_image)
    taken_at_request: list[int] = []
    server.model = model_of(SMALL_DIM, lambda kind, inputs: taken_at_request.append(source.taken))
    client = make(batch_size=batch_size, max_concurrency=concurrency)
    ahead: list[int] = []

    stream = client.client.iter_embed_images(iter(source))
    rows = await drain(stream, lambda index: ahead.append(source.taken - index))

    assert [i for i, _ in rows] == list(range(n))
    expected = np.stack([expected_vector("image", ready_image(i), SMALL_DIM) for i in range(n)])
    np.testing.assert_array_equal(np.stack([v for _, v in rows]), expected)
    # images are also decoded a bounded number ahead, in a thread pool
    bound = ahead_bound(batch_size, concurrency) + max(2 * _PREP_WORKERS, batch_size)
    assert max(ahead) < bound < n
    assert taken_at_request[0] < bound
    assert len(server.received) == n // batch_size


async def test_iter_embed_marks_a_bad_image_in_the_middle_of_a_stream(
    make: Make, server: ServingServer
) -> None:
    images: list[Any] = [ready_image(i) for i in range(10)]
    images[6] = b"not an image"
    stream = make(batch_size=3).client.iter_embed_images(iter(images), on_error="mark")

    rows = await drain(stream)

    assert [i for i, _ in rows] == list(range(10))
    assert np.isnan(rows[6][1]).all()
    for i, vector in rows:
        if i != 6:
            np.testing.assert_array_equal(vector, expected_vector("image", images[i]))
    assert [(f.index, type(f.error)) for f in stream.failures] == [(6, ImageDecodeError)]
    assert len(server.inputs(IMAGE)) == 9


async def test_iter_embed_raise_mode_stops_at_the_bad_input(make: Make, server: ServingServer) -> None:
    texts: list[Any] = [f"t{i}" for i in range(10)]
    texts[7] = None
    stream = make(batch_size=2).client.iter_embed_texts(iter(texts))
    seen: list[int] = []
    with pytest.raises(InvalidInputError) as info:
        await drain(stream, seen.append)
    assert info.value.index == 7
    assert seen == list(range(len(seen)))  # whatever came out before it came out in order
    assert "t7" not in server.inputs(TEXT)
    assert len(server.inputs(TEXT)) <= 7


async def test_closing_a_stream_early_stops_reading_and_sending(make: Make, server: ServingServer) -> None:
    n, batch_size, concurrency = 5000, 8, 2
    source = Counted(n, lambda i: f"early {i}")
    server.latency = 0.01
    client = make(batch_size=batch_size, max_concurrency=concurrency)

    stream = client.client.iter_embed_texts(iter(source))
    got: list[int] = []
    if isinstance(stream, EmbeddingStream):
        with stream:
            for index, _ in stream:
                got.append(index)
                if index == 20:
                    break
    else:
        async with stream:
            async for index, _ in stream:
                got.append(index)
                if index == 20:
                    break
    taken_at_close, posts_at_close = source.taken, server.posts()

    assert got == list(range(21))
    assert await wait_until(lambda: server.in_flight == 0)
    await asyncio.sleep(0.2)  # room for any straggler the client might still send
    assert source.taken == taken_at_close  # the generator is not read any further
    assert taken_at_close < ahead_bound(batch_size, concurrency) + 21
    assert server.posts() <= posts_at_close + concurrency  # at most the requests already under way
    assert server.posts() <= math.ceil(taken_at_close / batch_size)

    # the client is still fine
    server.latency = 0
    np.testing.assert_array_equal(
        await client.embed_texts(["after", "closing"]), text_rows(["after", "closing"])
    )


# --------------------------------------------------------------------------------------------------
# 3. Partial failure through the server: a 400 about one input


def refuse_poison(kind: str, inputs: list[str]) -> None:
    if "poison" in inputs:
        raise ValueError("cannot embed 'poison'")


async def test_mark_mode_isolates_the_input_a_400_was_about(make: Make, server: ServingServer) -> None:
    server.model = model_of(768, refuse_poison)
    texts = [f"fine {i}" for i in range(10)]
    texts[6] = "poison"
    client = make(batch_size=4)

    result = await client.embed_texts(texts, on_error="mark")

    assert [f.index for f in result.failures] == [6]
    error = result.failures[0].error
    assert isinstance(error, BadRequestError)
    assert error.index == 6
    assert error.status_code == 400
    assert "poison" in str(error)
    assert "input 6" in str(error)
    assert result.ok.tolist() == [i != 6 for i in range(10)]
    assert np.isnan(result.embeddings[6]).all()
    ok = result.ok
    np.testing.assert_array_equal(result.embeddings[ok], text_rows([t for t in texts if t != "poison"]))
    # batch [4..7] was refused; its halves, then [6, 7]'s halves, isolated input 6
    assert client.stats.splits == 2
    assert sorted(server.inputs(TEXT)) == sorted(t for t in texts if t != "poison")
    assert server.posts() == 3 + 2 + 2  # 3 batches, then 2 halves, then 2 quarters

    with pytest.raises(BadRequestError, match="poison") as info:
        result.raise_for_failures()
    assert info.value is error


async def test_raise_mode_raises_the_400(make: Make, server: ServingServer) -> None:
    server.model = model_of(768, refuse_poison)
    texts = ["a", "b", "poison", "c"]
    client = make(batch_size=4, max_retries=3)

    with pytest.raises(BadRequestError, match="poison") as info:
        await client.embed_texts(texts)

    assert info.value.status_code == 400
    assert info.value.attempts == 1  # a 400 is not retried
    assert server.posts() == 1
    assert client.stats.splits == 0


async def test_a_one_off_400_in_mark_mode_is_split_and_every_row_comes_back(
    make: Make, server: ServingServer
) -> None:
    server.script = [Reply(400, {"error_code": "BAD_REQUEST", "message": "transient"})]
    texts = ["a", "b", "c", "d"]
    result = await make().embed_texts(texts, on_error="mark")
    assert result.failures == []
    assert result.ok.all()
    np.testing.assert_array_equal(result.raise_for_failures(), text_rows(texts))
    assert server.posts() == 3


async def test_raise_for_failures_notes_how_many_others_failed(make: Make) -> None:
    result = await make().embed_texts(["a", None, "b", 4, None], on_error="mark")
    assert result.ok.tolist() == [True, False, True, False, False]
    with pytest.raises(InvalidInputError) as info:
        result.raise_for_failures()
    assert info.value.index == 1
    assert "2 other input(s) failed too" in "".join(traceback.format_exception(info.value))


# --------------------------------------------------------------------------------------------------
# 4. Deadlines


async def test_deadline_bounds_a_slow_call(make: Make, server: ServingServer) -> None:
    server.script = [Reply(delay=2.0)]
    client = make(max_retries=5)

    with pytest.raises(APITimeoutError, match="deadline") as info:
        await client.embed_texts(["a", "b"], deadline=0.5)
    assert info.value.endpoint == TEXT
    assert "0.5" in str(info.value)


async def test_deadline_in_mark_mode_marks_the_rows(make: Make, server: ServingServer) -> None:
    server.script = [Reply(delay=2.0)]
    result = await make().embed_texts(["a", "b"], deadline=0.5, on_error="mark")
    assert np.isnan(result.embeddings).all()
    assert result.embeddings.shape == (2, 768)
    assert [f.index for f in result.failures] == [0, 1]
    assert all(isinstance(f.error, APITimeoutError) for f in result.failures)
    assert "deadline" in str(result.failures[0].error)


async def test_generous_deadline_succeeds(make: Make, server: ServingServer) -> None:
    server.script = [Reply(503, {"error_code": "TEMPORARILY_UNAVAILABLE", "message": "scaling"})]
    server.latency = 0.1
    out = await make().embed_texts(["a", "b"], deadline=30)
    np.testing.assert_array_equal(out, text_rows(["a", "b"]))
    assert server.posts() == 2


@pytest.mark.timeout(20)
async def test_deadline_cuts_short_a_long_retry_after(make: Make, server: ServingServer) -> None:
    server.script = [
        Reply(429, {"error_code": "REQUEST_LIMIT_EXCEEDED", "message": "wait"}, {"Retry-After": "60"})
    ]
    client = make(max_retries=5)
    # The deadline must leave room for the first attempt to reach the server even on a loaded
    # machine (at 0.5 s it once ran out before the POST arrived); it stays far below the 60 s wait.
    with pytest.raises(APITimeoutError, match=r"deadline of 5(\.0)?s"):
        await client.embed_texts(["a"], deadline=5.0)
    assert server.posts() == 1  # the wait for Retry-After ended at the deadline, not after 60 s
    np.testing.assert_array_equal(await client.embed_texts(["a"]), text_rows(["a"]))


# --------------------------------------------------------------------------------------------------
# 5. Cancellation: Ctrl-C and task cancellation stop the call and leave the client usable


@contextlib.contextmanager
def no_gc_callbacks() -> Iterator[None]:
    """The garbage collector off for the block. A SIGINT whose handler runs while the main thread is
    inside a gc callback (hypothesis installs one to time collections) raises its KeyboardInterrupt
    there, where Python prints it as "Exception ignored" and drops it: the Ctrl-C of a test would
    then be lost at random (it was, once, on a loaded machine). With no collection, no callback."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def test_keyboard_interrupt_stops_the_call_and_the_client_stays_usable(server: ServingServer) -> None:
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        pytest.skip("SIGINT is not handled by Python's default handler here")
    server.latency = 1.0
    texts = [f"slow {i}" for i in range(40)]
    concurrency = 2
    main = threading.main_thread().ident
    assert main == threading.get_ident()

    def interrupt_once_requests_are_in_flight() -> None:
        end = time.monotonic() + 10
        while server.posts() == 0 and time.monotonic() < end:
            time.sleep(0.005)
        assert main is not None
        signal.pthread_kill(main, signal.SIGINT)  # what Ctrl-C does: the main thread gets SIGINT

    with ClipClient(**server.client_kwargs(batch_size=4, max_concurrency=concurrency)) as client:
        interrupter = threading.Thread(target=interrupt_once_requests_are_in_flight)
        interrupter.start()
        try:
            with no_gc_callbacks(), pytest.raises(KeyboardInterrupt):
                client.embed_texts(texts)
        finally:
            interrupter.join()

        # the requests already under way are abandoned; no further batch is sent
        end = time.monotonic() + 10
        while server.in_flight and time.monotonic() < end:
            time.sleep(0.01)
        time.sleep(0.2)
        assert 1 <= server.posts() <= concurrency  # 10 batches were planned

        server.latency = 0
        np.testing.assert_array_equal(client.embed_texts(["after", "ctrl-c"]), text_rows(["after", "ctrl-c"]))
        assert server.inputs(TEXT)[-2:] == ["after", "ctrl-c"]


_INTERRUPTED_SCRIPT = """
import sys
from clip_client import ClipClient
with ClipClient(host=sys.argv[1], token=sys.argv[2], timeout=600, max_retries=0, batch_size=2,
                max_concurrency=2) as client:
    client.embed_texts([f"t{i}" for i in range(8)])
"""


@pytest.mark.timeout(120)
def test_a_process_interrupted_while_its_requests_wait_for_answers_exits_at_once(
    server: ServingServer,
) -> None:
    """Ctrl-C in a script whose requests wait on an endpoint that takes minutes to answer: the
    process ends at once. Without the cancellation reaching the worker threads' sockets, Python's
    exit would join those threads (`concurrent.futures` does) and wait the minutes out."""
    import subprocess
    import sys

    server.script = [Reply(delay=600, answer=True)] * 4  # answers nobody will wait for
    proc = subprocess.Popen(
        [sys.executable, "-c", _INTERRUPTED_SCRIPT, server.url, TOKEN],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        end = time.monotonic() + 60
        while server.posts() < 2 and time.monotonic() < end and proc.poll() is None:
            time.sleep(0.01)
        assert server.posts() == 2, proc.stderr.read().decode() if proc.poll() is not None else ""
        proc.send_signal(signal.SIGINT)
        try:
            _, err = proc.communicate(timeout=60)  # a bound on a hang, well short of the 600 s
        except subprocess.TimeoutExpired:
            pytest.fail("the interrupted process did not exit: its threads still wait for answers")
        assert proc.returncode != 0
        assert b"KeyboardInterrupt" in err
        assert server.posts() == 2  # nothing was retried or sent after the interrupt
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


OVERLOADED_FOR_A_MINUTE = Reply(
    503, {"error_code": "TEMPORARILY_UNAVAILABLE", "message": "scaling from zero"}, {"Retry-After": "60"}
)


@pytest.mark.timeout(30)
def test_keyboard_interrupt_wakes_requests_waiting_to_retry(server: ServingServer) -> None:
    """Ctrl-C while the call's requests sleep before a retry: they wake at once, so the next call
    does not queue behind them for the minute the server asked to wait."""
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        pytest.skip("SIGINT is not handled by Python's default handler here")
    server.script = [OVERLOADED_FOR_A_MINUTE] * 2
    main = threading.main_thread().ident
    assert main == threading.get_ident()

    def interrupt_once_both_wait() -> None:
        end = time.monotonic() + 10
        while server.posts() < 2 and time.monotonic() < end:
            time.sleep(0.005)
        time.sleep(0.1)  # both requests are now in their retry wait
        assert main is not None
        signal.pthread_kill(main, signal.SIGINT)

    with ClipClient(**server.client_kwargs(batch_size=2, max_concurrency=2, max_retries=3)) as client:
        interrupter = threading.Thread(target=interrupt_once_both_wait)
        interrupter.start()
        try:
            with no_gc_callbacks(), pytest.raises(KeyboardInterrupt):
                client.embed_texts([f"t{i}" for i in range(4)])
        finally:
            interrupter.join()

        texts = ["after", "the interrupt"]
        np.testing.assert_array_equal(client.embed_texts(texts), text_rows(texts))
        assert server.posts() == 3  # the two overloaded requests were never retried


@pytest.mark.timeout(30)
async def test_task_cancellation_wakes_requests_waiting_to_retry(server: ServingServer) -> None:
    server.script = [OVERLOADED_FOR_A_MINUTE] * 2
    async with AsyncClipClient(
        **server.client_kwargs(batch_size=2, max_concurrency=2, max_retries=3)
    ) as client:
        task = asyncio.create_task(client.embed_texts([f"t{i}" for i in range(4)]))
        assert await wait_until(lambda: server.posts() >= 2)
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

        texts = ["after", "the cancel"]
        np.testing.assert_array_equal(await client.embed_texts(texts), text_rows(texts))
        assert server.posts() == 3


async def test_task_cancellation_stops_the_call_and_the_client_stays_usable(server: ServingServer) -> None:
    server.latency = 1.0
    concurrency = 2
    texts = [f"slow {i}" for i in range(40)]
    async with AsyncClipClient(**server.client_kwargs(batch_size=4, max_concurrency=concurrency)) as client:
        task = asyncio.create_task(client.embed_texts(texts))
        assert await wait_until(lambda: server.posts() > 0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

        await asyncio.sleep(0.2)
        assert 1 <= server.posts() <= concurrency

        server.latency = 0
        np.testing.assert_array_equal(
            await client.embed_texts(["after", "cancel"]), text_rows(["after", "cancel"])
        )
        assert client.stats.concurrency_limit == concurrency  # cancelled requests released their slots


async def test_cancelling_a_stream_consumer_task_stops_the_stream(server: ServingServer) -> None:
    server.latency = 0.5
    async with AsyncClipClient(**server.client_kwargs(batch_size=4, max_concurrency=2)) as client:
        source = Counted(1000, lambda i: f"s{i}")

        async def consume() -> None:
            async with client.iter_embed_texts(iter(source)) as stream:
                async for _ in stream:
                    pass

        task = asyncio.create_task(consume())
        assert await wait_until(lambda: server.posts() > 0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        taken = source.taken
        await asyncio.sleep(0.2)
        assert source.taken == taken < 1000
        assert server.posts() <= 2

        server.latency = 0
        np.testing.assert_array_equal(await client.embed_texts(["ok"]), text_rows(["ok"]))


# --------------------------------------------------------------------------------------------------
# 6. Safety: TLS is verified, plain http only to loopback, pixel limit (token secrecy: test_secrets)


def _self_signed_certificate(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 that no CA signed, and its key."""
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
    except ImportError:
        import shutil
        import subprocess

        if shutil.which("openssl") is None:
            pytest.skip("neither the cryptography package nor openssl is available to make a certificate")
        cert, key = folder / "cert.pem", folder / "key.pem"
        subprocess.run(
            [
                *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
                *("-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"),
                *("-keyout", str(key), "-out", str(cert)),
            ],
            check=True,
            capture_output=True,
        )
        return cert, key
    import ipaddress

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


class SelfSignedTLSServer:
    """Accepts TCP connections on 127.0.0.1 and offers a self-signed certificate; counts connections."""

    def __init__(self, cert: Path, key: Path) -> None:
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(cert, key)
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.05)  # accept() wakes up now and then to see whether to stop
        self.stopping = threading.Event()
        self.connections = 0
        self.handshake_errors: list[str] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.sock.getsockname()[1]}"

    def _serve(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            conn.settimeout(5)
            try:
                with self.context.wrap_socket(conn, server_side=True) as tls:
                    tls.recv(1)
            except (ssl.SSLError, OSError) as exc:
                self.handshake_errors.append(str(exc))
            finally:
                conn.close()

    def __enter__(self) -> SelfSignedTLSServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self._thread.join(timeout=5)
        self.sock.close()


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[SelfSignedTLSServer]:
    cert, key = _self_signed_certificate(tmp_path)
    with SelfSignedTLSServer(cert, key) as started:
        yield started


@pytest.mark.parametrize("kind", KINDS)
async def test_tls_certificate_is_verified_and_a_failure_is_not_retried(
    tls_server: SelfSignedTLSServer, kind: str
) -> None:
    options: dict[str, Any] = {"host": tls_server.url, "token": TOKEN, "max_retries": 3, "retry_backoff": 0}
    async with clients_of(kind, **options) as make_client:
        client = make_client()
        with pytest.raises(APIConnectionError, match="certificate verification") as info:
            await client.embed_texts(["a"])
        stats = client.stats
    assert not isinstance(info.value, APITimeoutError)
    assert info.value.attempts == 1
    assert stats.requests == 1
    assert stats.retries == 0
    assert tls_server.connections == 2  # the endpoint state's GET (refused alike), then the one POST
    assert TOKEN not in rendered(info.value)


class SplittingProxy:
    """A TCP proxy on 127.0.0.1 that hands the server's bytes on in halves, pausing `pause` seconds
    between the two: every TLS record of an answer reaches the client cut in the middle, with the
    wait longer than the read's cancellation poll (`timeouts.CANCEL_POLL`)."""

    def __init__(self, upstream: tuple[str, int], pause: float) -> None:
        self.upstream = upstream
        self.pause = pause
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.splits = 0
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            up = socket.create_connection(self.upstream)
            threading.Thread(target=self._pipe, args=(conn, up, False), daemon=True).start()
            threading.Thread(target=self._pipe, args=(up, conn, True), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, split: bool) -> None:
        try:
            while chunk := src.recv(65536):
                if split and len(chunk) > 1:
                    half = len(chunk) // 2
                    dst.sendall(chunk[:half])
                    self.splits += 1
                    time.sleep(self.pause)
                    chunk = chunk[half:]
                dst.sendall(chunk)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.sock.close()


def test_tls_answers_cut_mid_record_arrive_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Over HTTPS, a read that waits on the socket looks at the call's cancellation flag every
    quarter second, retrying the read in between; a TLS record that arrives in two halves, the second
    after such a retry, still gives the right bytes (OpenSSL keeps the half it has)."""
    cert, key = _self_signed_certificate(tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # httpx trusts it (trust_env)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server = ServingServer()
    server._server.socket = context.wrap_socket(server._server.socket, server_side=True)
    with server:
        proxy = SplittingProxy(server._server.server_address[:2], pause=0.4)
        try:
            host = f"https://127.0.0.1:{proxy.port}"
            with ClipClient(host=host, token=TOKEN, retry_backoff=0, max_retries=0) as client:
                texts = ["cut", "in", "half"]
                np.testing.assert_array_equal(client.embed_texts(texts), text_rows(texts))
        finally:
            proxy.close()
    assert proxy.splits >= 2  # the handshake's and the answer's bytes were both cut


def test_host_without_scheme_gets_https() -> None:
    with ClipClient(host="example.com", token="t") as client:
        assert client.backend.workspace.host == "https://example.com"  # type: ignore[attr-defined]
    with ClipClient(host="example.com/", token="t") as client:
        assert client.backend.workspace.host == "https://example.com"  # type: ignore[attr-defined]


@pytest.mark.parametrize("cls", [ClipClient, AsyncClipClient])
def test_plain_http_to_a_remote_host_is_refused(cls: type[ClipClient] | type[AsyncClipClient]) -> None:
    with pytest.raises(ValueError, match="clear text"):
        cls(host="http://example.com", token=TOKEN)
    with pytest.raises(ValueError, match="clear text") as info:
        cls(host="http://10.0.0.1:8080", token=TOKEN)
    assert TOKEN not in rendered(info.value)


@pytest.mark.parametrize("host", ["http://127.0.0.1:8080", "http://localhost:8080", "http://[::1]:8080"])
def test_plain_http_to_loopback_is_allowed(host: str) -> None:
    with ClipClient(host=host, token="t") as client:
        assert client.backend.workspace.host == host  # type: ignore[attr-defined]


async def test_max_image_pixels_is_configurable(make: Make, server: ServingServer) -> None:
    image = png(np.full((100, 100, 3), 120, dtype=np.uint8))
    strict = make(max_image_pixels=5000)
    with pytest.raises(ImageDecodeError, match="max_image_pixels=5,000") as info:
        await strict.embed_images([png(np.zeros((50, 50, 3), dtype=np.uint8)), image])
    assert info.value.index == 1
    assert "100x100" in str(info.value)
    with pytest.raises(ImageDecodeError, match="max_image_pixels=5,000") as single:
        await strict.embed_image(image)
    assert single.value.index is None
    assert server.posts() == 0

    out = await make(max_image_pixels=10_000).embed_image(image)  # exactly at the limit is fine
    assert out.shape == (768,)
    assert server.posts() == 1


# --------------------------------------------------------------------------------------------------
# 7. Stats and adaptive concurrency


async def test_stats_count_a_503_then_success(make: Make, server: ServingServer) -> None:
    server.script = [Reply(503, {"error_code": "TEMPORARILY_UNAVAILABLE", "message": "scaling from zero"})]
    client = make(max_concurrency=4, max_retries=2)
    assert client.stats == ClientStats(0, 0, 0, 0, 4, 4)

    np.testing.assert_array_equal(await client.embed_texts(["a", "b"]), text_rows(["a", "b"]))

    stats = client.stats
    assert (stats.requests, stats.retries, stats.overloads, stats.splits) == (2, 1, 1, 0)
    assert stats.max_concurrency == 4
    assert stats.concurrency_limit == 2  # halved by the 503; one success adds only half a slot


async def test_concurrency_limit_drops_on_overload_and_recovers(make: Make, server: ServingServer) -> None:
    overloaded = {"error_code": "REQUEST_LIMIT_EXCEEDED", "message": "slow down"}
    client = make(max_concurrency=4, max_retries=5)

    for _ in range(3):  # three overloads in a row, each sent after the previous decrease
        server.script = [Reply(429, overloaded, {"Retry-After": "0"})]
        await client.embed_texts(["x"])
    assert client.stats.concurrency_limit == 2  # 4 -> 2 (+1/2) -> 1.25 (+0.8) -> 1.02 (+0.98) = 2.0
    assert client.stats.overloads == 3

    limits = []
    for i in range(12):
        await client.embed_texts([f"recover {i}"])
        limits.append(client.stats.concurrency_limit)
    assert limits == sorted(limits)  # successes only ever raise it...
    assert limits[-1] == 4  # ...back to the maximum (2.0 -> 4 takes six successes)...
    assert max(limits) <= 4  # ...and never beyond it
    assert client.stats.max_concurrency == 4


def test_aimd_halves_once_per_window_of_overloads() -> None:
    limit = AIMDLimit(8)
    burst = [limit.start() for _ in range(4)]  # four requests in flight when the endpoint overloads
    for slot in burst:
        slot.overloaded = True
        limit.finish(slot)
    assert limit.limit == 4.0  # the burst counts once
    assert limit.decreases == 1

    later = limit.start()  # sent after the decrease: its overload counts again
    later.overloaded = True
    limit.finish(later)
    assert limit.limit == 2.0
    assert limit.current == 2
    assert limit.decreases == 2
    assert limit.in_flight == 0


def test_aimd_grows_by_one_over_the_limit_per_success_up_to_the_maximum() -> None:
    limit = AIMDLimit(4)
    slot = limit.start()
    slot.overloaded = True
    limit.finish(slot)
    assert limit.limit == 2.0

    expected = 2.0
    seen = []
    while limit.current < 4:
        slot = limit.start()
        slot.succeeded = True
        limit.finish(slot)
        expected = min(4.0, expected + 1.0 / expected)
        assert limit.limit == pytest.approx(expected)
        seen.append(limit.current)
    assert seen == [2, 2, 3, 3, 3, 4]  # 2.5, 2.9, 3.24, 3.55, 3.83, then 4.09 capped at 4

    for _ in range(10):  # never above the maximum
        slot = limit.start()
        slot.succeeded = True
        limit.finish(slot)
    assert limit.limit == 4.0
    assert limit.current == 4

    neither = limit.start()  # a request that failed otherwise (a 500) changes nothing
    limit.finish(neither)
    assert limit.limit == 4.0


def test_aimd_never_below_one_and_admits_by_the_current_limit() -> None:
    limit = AIMDLimit(5)
    for _ in range(20):
        slot = limit.start()
        slot.overloaded = True
        limit.finish(slot)
    assert limit.limit == 1.0
    assert limit.current == 1

    first = limit.start()
    assert not limit.can_start()  # one in flight is all a limit of 1 admits
    first.succeeded = True
    limit.finish(first)
    assert limit.can_start()
    assert limit.limit == 2.0  # 1 + 1/1

    with pytest.raises(ValueError):
        AIMDLimit(0)
    with pytest.raises(ValueError):
        AIMDLimit(3, minimum=4)
