"""Backends: whatever turns one batch of texts or prepared images into a float32 array.

The remote endpoints and the in-process model answer the same calls, so batching, ordering,
normalisation and progress sit above them in the client, written once.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Literal, Protocol, runtime_checkable

from . import _constants as C
from ._core.concurrency import CallContext
from ._core.images import PreparedImage
from .types import EmbeddingArray, InputKind

__all__ = ["Backend"]

logger = logging.getLogger(C.LOGGER_NAME)


@runtime_checkable
class Backend(Protocol):
    """What a client needs from the thing that computes embeddings: the serving endpoints
    (``RemoteBackend``), the model in-process (:class:`~clip_client.LocalBackend`), or your own.

    A client does everything above the backend, once for every backend: input checks, image
    preparation (decode, CLIP-exact resize and crop), batching by count and bytes, splitting refused
    batches, ordering, normalisation, progress and ``client.stats``. A backend only turns one batch
    into rows. Pass one with ``ClipClient(backend=...)``. Everything a backend needs is public:
    :class:`~clip_client.CallContext`, :class:`~clip_client.PreparedImage` and
    :data:`~clip_client.InputKind`. ``tests/test_backend_protocol.py`` runs a backend written against
    these names alone, end to end.

    Attributes:
        image_input: ``"encoded"`` to receive images as encoded files (PNG by default,
            ``PreparedImage.encoded``), ``"pixels"`` for ``(image_size, image_size, 3)`` uint8 arrays
            (``PreparedImage.pixels``).
        max_request_bytes: the most bytes the payloads of one batch may add up to (the client packs
            batches under it and splits any the backend refuses with ``PayloadTooLargeError``), or
            None when batches have no size limit.
        batch_size: the records per batch this backend prefers, used when the client is not given
            ``batch_size=``; None for the client's default (32).
        image_size: the side, in pixels, of the square images the model takes, used when the client
            is not given ``image_size=``; None for the client's default (224).
        dim: the embedding width when known before the first answer (the shape of an empty result,
            and of NaN rows in ``on_error="mark"`` results); None when only answers tell (768 until
            then).
    """

    # Read-only properties, so that a plain attribute of a narrower type (``dim: int``) satisfies them.
    @property
    def image_input(self) -> Literal["encoded", "pixels"]: ...
    @property
    def max_request_bytes(self) -> int | None: ...
    @property
    def batch_size(self) -> int | None: ...
    @property
    def image_size(self) -> int | None: ...
    @property
    def dim(self) -> int | None: ...

    def endpoint(self, kind: InputKind) -> str | None:
        """The name errors and logs give for where ``kind`` inputs go (a serving endpoint's name), or
        None when there is none to name."""
        ...

    def payload(self, kind: InputKind, item: str | PreparedImage) -> tuple[Any, int]:
        """One input as a batch carries it, and the bytes it adds to the batch (0 when batches have
        no size limit). ``item`` is the text, or the image prepared as :attr:`image_input` asks.
        Raises ``InvalidInputError`` for an input the backend cannot take."""
        ...

    def embed(self, kind: InputKind, payloads: Sequence[Any], ctx: CallContext) -> EmbeddingArray:
        """One batch, blocking: float32 ``(len(payloads), dim)``, rows in payload order. Called from
        several threads at once. ``ctx`` carries the call's deadline and cancellation (call
        ``ctx.check()`` before each request) and counts requests (``ctx.attempted(n)``). Raises
        ``ClipClientError`` subclasses: ``PayloadTooLargeError`` makes the client split the batch,
        ``BadRequestError`` (with ``on_error="mark"``) isolate the input it was about."""
        ...

    async def aembed(self, kind: InputKind, payloads: Sequence[Any], ctx: CallContext) -> EmbeddingArray:
        """One batch, from an event loop; as :meth:`embed`. Called from several tasks at once."""
        ...

    def concurrency_limit(self) -> int | None:
        """Requests the backend admits at once right now, when it adapts that number itself (the
        remote backend halves it on 429/503); None when it does not."""
        ...

    def close(self) -> None:
        """Release what the backend holds (connections, threads). Idempotent."""
        ...

    async def aclose(self) -> None:
        """:meth:`close`, from an event loop."""
        ...
