"""Backends: whatever turns one batch of texts or prepared images into a float32 array.

The remote endpoints and the in-process model answer the same calls, so batching, ordering,
normalisation and progress sit above them in the client, written once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

from ._core.concurrency import CallContext
from ._core.images import PreparedImage
from .types import EmbeddingArray, InputKind

if TYPE_CHECKING:
    from ._remote.endpoint_state import EndpointState
    from ._remote.workspace import Workspace

__all__ = ["Backend", "CacheIdentity", "ControlPlane", "InProcessModel", "InWorkspace", "LogitScale"]


@runtime_checkable
class Backend(Protocol):
    """What a client needs from the thing that computes embeddings: the serving endpoints
    (`RemoteBackend`), the model in-process ([`LocalBackend`][clip_client.LocalBackend]), or your own.

    A client does everything above the backend, once for every backend: input checks, image
    preparation (decode, CLIP-exact resize and crop), batching by count and bytes, splitting refused
    batches, ordering, normalisation, progress and `client.stats`. A backend only turns one batch
    into rows. Pass one with `ClipClient(backend=...)`. Everything a backend needs is public:
    [`CallContext`][clip_client.CallContext], [`PreparedImage`][clip_client.PreparedImage] and
    [`InputKind`][clip_client.InputKind]. `tests/test_backend_protocol.py` runs a backend written against
    these names alone, end to end.

    Attributes:
        image_input: `"encoded"` to receive images as encoded files (PNG by default,
            `PreparedImage.encoded`), `"pixels"` for `(image_size, image_size, 3)` uint8 arrays
            (`PreparedImage.pixels`).
        max_request_bytes: the most bytes the payloads of one batch may add up to (the client packs
            batches under it and splits any the backend refuses with `PayloadTooLargeError`), or
            None when batches have no size limit.
        batch_size: the records per batch this backend prefers, used when the client is not given
            `batch_size=`; None for the client's default (32).
        image_size: the side, in pixels, of the square images the model takes, used when the client
            is not given `image_size=`; None for the client's default (224).
        dim: the embedding width when known before the first answer (the shape of an empty result,
            and of NaN rows in `on_error="mark"` results); None when only answers tell (768 until
            then).
    """

    # Read-only properties, so that a plain attribute of a narrower type (`dim: int`) satisfies them.
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
        """The name errors and logs give for where `kind` inputs go (a serving endpoint's name), or
        None when there is none to name."""
        ...

    def payload(self, kind: InputKind, item: str | PreparedImage) -> tuple[Any, int]:
        """One input as a batch carries it, and the bytes it adds to the batch (0 when batches have
        no size limit). `item` is the text, or the image prepared as
        [`image_input`][clip_client.Backend.image_input] asks. Raises `InvalidInputError` for an input the
        backend cannot take."""
        ...

    def embed(self, kind: InputKind, payloads: Sequence[Any], ctx: CallContext) -> EmbeddingArray:
        """One batch, blocking: float32 `(len(payloads), dim)`, rows in payload order. Called from
        several threads at once. `ctx` carries the call's deadline and cancellation (call
        `ctx.check()` before each request) and counts requests (`ctx.attempted(n)`). Raises
        `ClipClientError` subclasses: `PayloadTooLargeError` makes the client split the batch,
        `BadRequestError` (with `on_error="mark"`) isolate the input it was about."""
        ...

    async def aembed(self, kind: InputKind, payloads: Sequence[Any], ctx: CallContext) -> EmbeddingArray:
        """One batch, from an event loop; as [`embed`][clip_client.Backend.embed]. Called from several tasks
        at once."""
        ...

    def concurrency_limit(self) -> int | None:
        """Requests the backend admits at once right now, when it adapts that number itself (the
        remote backend halves it on 429/503); None when it does not."""
        ...

    def close(self) -> None:
        """Release what the backend holds (connections, threads). Idempotent."""
        ...

    async def aclose(self) -> None:
        """[`close`][clip_client.Backend.close], from an event loop."""
        ...


# --------------------------------------------------------------------------------------------------
# Optional abilities. A client asks whether its backend has one (`isinstance(backend, ControlPlane)`,
# once, when it is built) and never which class the backend is: a backend of your own may have any of
# them, and the remote and local backends are held to the same contracts.


@runtime_checkable
class ControlPlane(Protocol):
    """A backend that can ask the serving platform about its endpoints, as the serving endpoints'
    own backend does (`GET /api/2.0/serving-endpoints/{name}`).

    With one, a client prepares each endpoint before its first request to it (the ceiling of
    `max_concurrency="auto"`, a route-optimized endpoint's data-plane URL, waiting for an endpoint
    that is starting), reads the endpoint's state before a cached call (so that a new served model
    version never answers from old rows), and `check_endpoint` reports the states it reads. Without
    one, the client uses its settings as they are, and `check_endpoint` reports each state as "not a
    serving endpoint".
    """

    def prepare(self, kind: InputKind, ctx: CallContext | None = None) -> None:
        """Learn what the platform says about `kind`'s endpoint and act on it, once; later calls
        return at once. Best-effort: raises nothing, and waits no more than a share of `ctx`'s time
        left. Called before a call's first request."""
        ...

    async def aprepare(self, kind: InputKind, ctx: CallContext | None = None) -> None:
        """`prepare`, from an event loop (no blocking of the loop)."""
        ...

    def endpoint_state(
        self, kind: InputKind, *, refresh: bool = False, timeout: float = ...
    ) -> EndpointState:
        """`kind`'s endpoint as the platform describes it, read once (`refresh` reads it again) within
        `timeout` seconds. A state that cannot be read is returned marked unknown, with the reason.

        Raises:
            AuthenticationError: the credentials are wrong.
            EndpointNotFoundError: there is no such endpoint.
        """
        ...

    async def aendpoint_state(
        self, kind: InputKind, *, refresh: bool = False, timeout: float = ...
    ) -> EndpointState:
        """`endpoint_state`, from an event loop."""
        ...

    def invocations_url(self, kind: InputKind) -> str:
        """The URL `kind`'s requests are addressed to: what names the model before its state is
        read (the CLI's output files record it)."""
        ...

    def concurrency_ceiling(self) -> int:
        """The most requests to keep in flight, as preparing the endpoints resolved it (what
        `max_concurrency="auto"` chose, or the setting); the client sizes its thread pool and its
        window of batches by it."""
        ...


@runtime_checkable
class CacheIdentity(Protocol):
    """A backend that names who computes its rows, for the embedding cache's key: a model and its
    version (a serving endpoint's URL and the served model versions; a local checkpoint and its
    dtype). Without it, the key holds the backend's class and endpoint name, so a backend whose
    model can change under the same name should have one."""

    def cache_identity(self, kind: InputKind) -> str:
        """Who computes `kind`'s rows, as one string; no I/O. Rows cached under another string are
        not reused."""
        ...

    def cache_identity_confirmed(self, kind: InputKind) -> bool:
        """Whether `cache_identity(kind)` names the model itself, not only where it is served (a
        serving endpoint whose state could not be read is known by its URL alone). When not, the
        cache trusts no row of a call before the backend's first answer has fixed the width, so
        rows of a previous model of another width are never served; no I/O."""
        ...


@runtime_checkable
class LogitScale(Protocol):
    """A backend that knows its model's learned temperature (`exp(logit_scale)` of a CLIP
    checkpoint), which `classify` then uses by default instead of CLIP's 100."""

    @property
    def logit_scale(self) -> float:
        """The temperature multiplying cosines before the softmax, > 0."""
        ...


@runtime_checkable
class InProcessModel(Protocol):
    """A backend whose model runs in this process and says where it was loaded from
    ([`LocalBackend.location`][clip_client.LocalBackend.location]): no endpoint, no endpoint state."""

    @property
    def location(self) -> str:
        """`local <folder or hub id> <dtype>`."""
        ...


@runtime_checkable
class InWorkspace(Protocol):
    """A backend that talks to a Databricks workspace and says which: its `workspace` (host and
    credentials, resolved once), which the client's other services of that workspace use with the
    same identity (Unity Catalog volumes read through the Files API, Vector Search indexes). A
    backend without it (the local model) leaves them to databricks-sdk's default chain."""

    @property
    def workspace(self) -> Workspace:
        """The workspace this backend's requests go to."""
        ...
