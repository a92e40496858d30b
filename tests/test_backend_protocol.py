"""A backend written by a third party, against the public names alone, runs end to end.

``Toy`` below imports nothing but ``clip_client``'s public surface. It embeds texts and images with
a deterministic function of each input, counts its requests through the ``CallContext``, refuses
batches that are too large and inputs it cannot take, so the clients' batching, splitting, ordering,
``on_error="mark"``, normalisation, ``stats`` and deadlines are all exercised through it.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import re
import threading
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import pytest
from PIL import Image

import clip_client
from clip_client import (
    AsyncClipClient,
    Backend,
    BackendError,
    BadRequestError,
    CallContext,
    ClipClient,
    EmbeddingArray,
    InputKind,
    PayloadTooLargeError,
    PreparedImage,
    ResponseFormatError,
)

DIM = 6


def vector(kind: str, data: bytes) -> np.ndarray:
    seed = int.from_bytes(hashlib.sha256(kind.encode() + data).digest()[:8], "little")
    return np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)


class Toy:
    """A backend in the shape any user would write: only public names, no base class."""

    def __init__(self, image_input: Literal["encoded", "pixels"] = "pixels", max_items: int = 1000) -> None:
        self.image_input: Literal["encoded", "pixels"] = image_input
        self.max_request_bytes: int | None = None
        self.batch_size: int | None = 4
        self.image_size: int | None = 32
        self.dim: int | None = DIM
        self.max_items = max_items
        self.batches: list[int] = []  # every batch asked for, refused ones included
        self.answered: list[int] = []
        self.closed = 0
        self._lock = threading.Lock()

    def endpoint(self, kind: InputKind) -> str | None:
        return f"toy-{kind}"

    def payload(self, kind: InputKind, item: str | PreparedImage) -> tuple[Any, int]:
        if isinstance(item, str):
            return item.encode(), 0
        if self.image_input == "pixels":
            assert item.pixels is not None
            assert item.pixels.shape == (32, 32, 3)  # the backend's image_size reached the client
            return item.pixels.tobytes(), 0
        assert item.encoded is not None
        return item.encoded, 0

    def embed(self, kind: InputKind, payloads: Sequence[Any], ctx: CallContext) -> EmbeddingArray:
        ctx.check(self.endpoint(kind))
        ctx.attempted()
        with self._lock:
            self.batches.append(len(payloads))
        if len(payloads) > self.max_items:
            raise PayloadTooLargeError("too many", status_code=413, endpoint=self.endpoint(kind))
        if any(p == b"refuse me" for p in payloads):
            raise BadRequestError("cannot embed that", status_code=400, endpoint=self.endpoint(kind))
        with self._lock:
            self.answered.append(len(payloads))
        return np.stack([vector(kind, p) for p in payloads])

    async def aembed(self, kind: InputKind, payloads: Sequence[Any], ctx: CallContext) -> EmbeddingArray:
        await asyncio.sleep(0)
        return self.embed(kind, payloads, ctx)

    def concurrency_limit(self) -> int | None:
        return None

    def close(self) -> None:
        self.closed += 1

    async def aclose(self) -> None:
        self.close()


def rows(kind: str, payloads: list[bytes]) -> np.ndarray:
    return np.stack([vector(kind, p) for p in payloads])


def test_the_toy_satisfies_the_protocol_with_public_names_only() -> None:
    backend: Backend = Toy()  # mypy checks the structure; the runtime check agrees
    assert isinstance(backend, Backend)
    assert {"Backend", "CallContext", "PreparedImage", "InputKind", "EmbeddingArray"} <= set(
        clip_client.__all__
    )
    assert "RemoteBackend" not in clip_client.__all__  # users cannot build one: not exported


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_a_third_party_backend_runs_end_to_end(kind: str) -> None:
    toy = Toy(max_items=3)
    texts = [f"text {i}" for i in range(10)] + [""]
    pictures = [np.full((40 + i, 50, 3), 20 * i, dtype=np.uint8) for i in range(5)]
    cls = ClipClient if kind == "sync" else AsyncClipClient

    client = cls(backend=toy, normalize=False)

    async def call(name: str, *args: Any, **kwargs: Any) -> Any:
        result = getattr(client, name)(*args, **kwargs)
        return await result if inspect.isawaitable(result) else result

    assert client.settings.batch_size == 4  # the backend's preference filled the unset keyword
    assert client.settings.image_size == 32
    got = await call("embed_texts", texts)
    np.testing.assert_array_equal(got, rows("text", [t.encode() for t in texts]))
    assert 4 in toy.batches  # the client's batches of 4 were refused as too large ...
    assert max(toy.answered) <= 3  # ... and split
    assert sum(toy.answered) == len(texts)
    assert client.stats.splits >= 1
    assert client.stats.requests == len(toy.batches)
    assert client.stats.concurrency_limit == client.settings.max_concurrency

    images = await call("embed_images", pictures)
    assert images.shape == (5, DIM)
    one = await call("embed_image", pictures[2])
    np.testing.assert_array_equal(one, images[2])

    mixed = await call("embed_texts", ["fine", "refuse me", "also fine"], on_error="mark")
    assert [f.index for f in mixed.failures] == [1]
    assert isinstance(mixed.failures[0].error, BadRequestError)
    assert mixed.failures[0].error.endpoint == "toy-text"
    np.testing.assert_array_equal(mixed.embeddings[[0, 2]], rows("text", [b"fine", b"also fine"]))

    empty = await call("embed_texts", [])
    assert empty.shape == (0, DIM)  # the backend's dim
    await call("close")
    assert toy.closed == 1


def test_encoded_images_reach_a_backend_that_asks_for_files() -> None:
    toy = Toy(image_input="encoded")
    with ClipClient(backend=toy, image_size=32) as client:
        client.embed_images([np.zeros((64, 48, 3), dtype=np.uint8)])
    # what the backend got was a 32x32 PNG file
    assert toy.batches == [1]


def test_a_backend_sees_the_call_deadline_through_its_context() -> None:
    seen: list[float | None] = []

    class Recording(Toy):
        def embed(self, kind: InputKind, payloads: Sequence[Any], ctx: CallContext) -> EmbeddingArray:
            seen.append(ctx.remaining())
            return super().embed(kind, payloads, ctx)

    with ClipClient(backend=Recording()) as client:
        client.embed_texts(["a"], deadline=30)
        client.embed_texts(["b"])
    assert seen[0] is not None
    assert 0 < seen[0] <= 30
    assert seen[1] is None


def test_backend_and_workspace_options_exclude_each_other() -> None:
    with pytest.raises(ValueError, match="either backend="):
        ClipClient(backend=Toy(), host="https://example.cloud.databricks.com", token="t" * 10)


def test_prepared_image_documents_what_a_backend_receives() -> None:
    img = Image.new("RGB", (32, 32), "red")
    prepared = PreparedImage(pixels=np.asarray(img))
    assert prepared.encoded is None
    with pytest.raises(ValueError, match="prepared as pixels"):
        prepared.b64()


class Misbehaving(Toy):
    """A backend whose answers are wrong in one of the ways a hand-written backend gets them wrong."""

    def __init__(self, answer: Any) -> None:
        super().__init__()
        self.answer = answer

    def embed(self, kind: InputKind, payloads: Sequence[Any], ctx: CallContext) -> EmbeddingArray:
        ctx.attempted()
        if isinstance(self.answer, BaseException):
            raise self.answer
        return self.answer(len(payloads))  # type: ignore[no-any-return]


MISBEHAVIOURS = {
    "one row short": (lambda n: np.zeros((n - 1, DIM), np.float32), ResponseFormatError, "shape"),
    "NaN rows": (lambda n: np.full((n, DIM), np.nan, np.float32), ResponseFormatError, "NaN"),
    "wrong width": (lambda n: np.zeros((n, DIM + 1), np.float32), ResponseFormatError, "declares dim=6"),
    "a list": (lambda n: [[0.0] * DIM] * n, ResponseFormatError, "answered a list"),
    "None": (lambda n: None, ResponseFormatError, "answered a NoneType"),
    "strings": (lambda n: np.full((n, DIM), "x"), ResponseFormatError, "not numbers"),
    "its own exception": (
        RuntimeError("CUDA out of memory"),
        BackendError,
        "RuntimeError: CUDA out of memory",
    ),
    "a KeyError": (KeyError("missing"), BackendError, "KeyError"),
}


@pytest.mark.parametrize("case", list(MISBEHAVIOURS))
@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_a_misbehaving_backend_gives_typed_errors_that_mark_contains(kind: str, case: str) -> None:
    answer, error, fragment = MISBEHAVIOURS[case]
    cls = ClipClient if kind == "sync" else AsyncClipClient
    client = cls(backend=Misbehaving(answer))

    async def call(*args: Any, **kwargs: Any) -> Any:
        result = client.embed_texts(*args, **kwargs)
        return await result if inspect.isawaitable(result) else result

    with pytest.raises(error, match=re.escape(fragment)) as info:
        await call(["a", "b", "c"])
    assert isinstance(info.value, clip_client.ClipClientError)
    if error is BackendError:
        assert info.value.__cause__ is answer  # the backend's own exception, chained
    else:
        assert "A Backend's embed()/aembed() must return" in str(info.value)  # not the remote hint
    result = await call(["a", "b", "c"], on_error="mark")
    assert [f.index for f in result.failures] == [0, 1, 2]
    assert all(isinstance(f.error, error) for f in result.failures)
    assert np.isnan(result.embeddings).all()
