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


# --------------------------------------------------------------------------------------------------
# Optional abilities: small public protocols the clients ask for, never a concrete class


class Planned(Toy):
    """A third-party backend with a control plane, a cache identity and its own logit scale."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []
        self.model_version = "1"

    def prepare(self, kind: InputKind, ctx: CallContext | None = None) -> None:
        self.calls.append(f"prepare {kind} before {len(self.batches)} batches")

    async def aprepare(self, kind: InputKind, ctx: CallContext | None = None) -> None:
        self.prepare(kind, ctx)

    def endpoint_state(
        self, kind: InputKind, *, refresh: bool = False, timeout: float = 10.0
    ) -> clip_client.EndpointState:
        self.calls.append(f"state {kind} refresh={refresh}")
        assert 0 < timeout <= 10.0
        return clip_client.EndpointState(name=f"toy-{kind}", ready=True, config_update="NOT_UPDATING")

    async def aendpoint_state(
        self, kind: InputKind, *, refresh: bool = False, timeout: float = 10.0
    ) -> clip_client.EndpointState:
        return self.endpoint_state(kind, refresh=refresh, timeout=timeout)

    def invocations_url(self, kind: InputKind) -> str:
        return f"toy://{kind}"

    def concurrency_ceiling(self) -> int:
        return 3

    def cache_identity(self, kind: InputKind) -> str:
        return f"toy {kind} v{self.model_version}"

    def cache_identity_confirmed(self, kind: InputKind) -> bool:
        return True  # the version is in the identity: it names the model

    @property
    def logit_scale(self) -> float:
        return 1.0


def test_the_optional_abilities_are_public_protocols() -> None:
    from clip_client._remote.backend import RemoteBackend
    from clip_client._remote.workspace import resolve_workspace

    abilities = (clip_client.ControlPlane, clip_client.CacheIdentity, clip_client.LogitScale)
    assert {"ControlPlane", "CacheIdentity", "LogitScale"} <= set(clip_client.__all__)
    assert not any(isinstance(Toy(), ability) for ability in abilities)  # all optional
    assert all(isinstance(Planned(), ability) for ability in abilities)
    planned: clip_client.ControlPlane = Planned()  # mypy checks the structure too
    assert planned.concurrency_ceiling() == 3
    workspace = resolve_workspace(host="https://example.cloud.databricks.com", token="t" * 12)
    remote = RemoteBackend(workspace, clip_client.Settings())
    assert isinstance(remote, clip_client.ControlPlane)
    assert isinstance(remote, clip_client.CacheIdentity)
    assert not isinstance(remote, clip_client.LogitScale)
    assert remote.control.route("text").url == remote.invocations_url("text")


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_a_third_party_control_plane_is_prepared_read_and_trusted(kind: str) -> None:
    toy = Planned()
    cls = ClipClient if kind == "sync" else AsyncClipClient
    client = cls(backend=toy, normalize=False, cache="memory")

    async def call(name: str, *args: Any, **kwargs: Any) -> Any:
        result = getattr(client, name)(*args, **kwargs)
        return await result if inspect.isawaitable(result) else result

    await call("embed_texts", ["a", "b"])
    assert toy.calls[0] == "prepare text before 0 batches"  # before the first lookup and request
    assert client.stats.max_concurrency == 3  # the control plane's ceiling, not the setting's 5
    assert client.stats.concurrency_limit == 3

    await call("embed_texts", ["a", "b"])
    assert client.stats.cache_hits == 2  # the same identity: answered from the cache
    toy.model_version = "2"
    await call("embed_texts", ["a", "b"])
    assert client.stats.cache_misses == 4  # a new model version never answers from old rows

    toy.calls.clear()
    check = await call("check_endpoint")
    assert "state text refresh=True" in toy.calls
    assert "state image refresh=True" in toy.calls
    assert check.text.state == clip_client.EndpointState("toy-text", ready=True, config_update="NOT_UPDATING")
    assert check.image.state.known
    await call("close")


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_classify_defaults_to_the_backend_s_own_logit_scale(kind: str) -> None:
    cls = ClipClient if kind == "sync" else AsyncClipClient
    pictures = [np.full((40, 40, 3), 30 * i, dtype=np.uint8) for i in range(3)]

    async def classify(backend: Toy, **kwargs: Any) -> Any:
        client = cls(backend=backend)
        result = client.classify(pictures, ["x", "y", "z"], templates=["{}"], **kwargs)
        return await result if inspect.isawaitable(result) else result

    own = await classify(Planned())  # logit_scale 1.0, from the backend
    given = await classify(Toy(), logit_scale=1.0)
    default = await classify(Toy())  # CLIP's 100
    np.testing.assert_allclose(own.probabilities, given.probabilities, rtol=1e-6)
    assert not np.allclose(own.probabilities, default.probabilities)


def test_the_clients_never_test_for_a_concrete_backend_class() -> None:
    from pathlib import Path

    package = Path(clip_client.__file__).parent
    probes = re.compile(r"isinstance\([^)]*\b(RemoteBackend|LocalBackend)\b|getattr\((self\.)?backend\b")
    found = [
        f"{path.relative_to(package)}:{number}: {line.strip()}"
        for path in sorted(package.rglob("*.py"))
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if probes.search(line)
    ]
    assert found == []


# --------------------------------------------------------------------------------------------------
# What a fresh user tried: a huge deadline, a zero logit scale, a cache identity that fails


async def _done(result: Any) -> Any:
    """A sync client's result, or an async client's awaited."""
    return await result if inspect.isawaitable(result) else result


@pytest.mark.parametrize("deadline", [1e12, float("inf")])
@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_a_deadline_beyond_any_wait_bounds_nothing(kind: str, deadline: float) -> None:
    cls = ClipClient if kind == "sync" else AsyncClipClient
    client = cls(backend=Toy(), normalize=False)
    texts = [f"t{i}" for i in range(9)]
    out = await _done(client.embed_texts(texts, deadline=deadline))
    np.testing.assert_array_equal(out, np.stack([vector("text", t.encode()) for t in texts]))


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_a_backend_s_zero_logit_scale_is_refused_not_replaced(kind: str) -> None:
    class Cold(Toy):
        logit_scale = 0.0

    cls = ClipClient if kind == "sync" else AsyncClipClient
    client = cls(backend=Cold())
    with pytest.raises(ValueError, match="logit_scale"):
        await _done(client.classify([np.zeros((8, 8, 3), np.uint8)], ["x", "y"], templates=["{}"]))


class BrokenIdentity(Toy):
    def __init__(self, answer: Any) -> None:
        super().__init__()
        self.answer = answer

    def cache_identity(self, kind: InputKind) -> str:
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer  # type: ignore[no-any-return]

    def cache_identity_confirmed(self, kind: InputKind) -> bool:
        return True


@pytest.mark.parametrize("answer", [ZeroDivisionError("division by zero"), 5, ""])
@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_a_cache_identity_that_fails_is_a_backend_error(kind: str, answer: Any) -> None:
    cls = ClipClient if kind == "sync" else AsyncClipClient
    client = cls(backend=BrokenIdentity(answer), cache="memory")
    with pytest.raises(BackendError, match=r"BrokenIdentity's cache_identity\('text'\)"):
        await _done(client.embed_texts(["a"]))


@pytest.mark.parametrize("bad", [0, 6, 40, 150])
@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_a_stream_hands_over_every_row_before_a_bad_input_then_raises(kind: str, bad: int) -> None:
    """The read-ahead reaches a bad input before the consumer does: the rows before it, already
    computed or in flight, are still handed over, in order, and then its error is raised."""
    toy = Toy()
    cls = ClipClient if kind == "sync" else AsyncClipClient
    client = cls(backend=toy, normalize=False, batch_size=4)

    def inputs() -> Any:
        for i in range(200):
            yield 12345 if i == bad else f"t{i}"

    got: list[tuple[int, np.ndarray]] = []

    async def consume() -> None:
        stream = client.iter_embed_texts(inputs())
        if kind == "sync":
            got.extend(stream)
        else:
            async for item in stream:
                got.append(item)

    with pytest.raises(clip_client.InvalidInputError) as info:
        await consume()
    assert info.value.index == bad
    assert [i for i, _ in got] == list(range(bad))  # every row before it, in order
    if got:
        want = np.stack([vector("text", f"t{i}".encode()) for i in range(bad)])
        np.testing.assert_array_equal(np.stack([row for _, row in got]), want)
    assert sum(toy.answered) <= bad + 4  # nothing planned after the bad input


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_embed_texts_still_refuses_a_bad_input_before_any_request(kind: str) -> None:
    toy = Toy()
    cls = ClipClient if kind == "sync" else AsyncClipClient
    client = cls(backend=toy, batch_size=4)
    with pytest.raises(clip_client.InvalidInputError):
        await _done(client.embed_texts(["a", "b", 3]))  # type: ignore[list-item]
    assert toy.batches == []
