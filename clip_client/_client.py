"""`ClipClient` and `AsyncClipClient`: thin shells around the shared core.

Everything that decides something (input checks, batch plans, splitting refused batches, ordering,
retries, response checks) lives in `_core` and `_remote`. Each public
method is one call into the shared `_BaseClient._plan`, then the shell runs the plan: the sync
client on a thread pool shared by all threads using it, the async client on the event loop. Every
call is a stream underneath: `embed_*` collects it into one array, `iter_embed_*` hands it over
row by row with memory bounded by a few batches.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Generator, Iterable, Iterator, Sequence, Sized
from concurrent.futures import FIRST_COMPLETED, CancelledError, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass
from types import TracebackType, UnionType
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union, get_args, get_origin, overload

import httpx
import numpy as np
import numpy.typing as npt
from pydantic.fields import FieldInfo

from . import _constants as C
from ._backend import Backend, ControlPlane, InWorkspace, LogitScale
from ._core.batching import Batch, BatchOutcome, BatchPlanner, Collector, EmbedJob, adrive, batch_flow, drive
from ._core.concurrency import CallContext, Counters
from ._core.endpoint_check import CheckCounters, EndpointCheck, ReadState, Step, check_flow, probe_image
from ._core.images import ImageOptions, PreparedImage
from ._core.inputs import (
    check_image_list,
    check_text,
    check_text_list,
    prepare_input,
    refuse_single_image,
    refuse_single_text,
)
from ._core.secrets import redact_library_logs, register, safe_cause
from ._core.streams import AsyncEmbeddingStream, EmbeddingStream, Row
from ._core.wire import BACKEND_HINT, empty_result
from ._core.zeroshot import DEFAULT_LOGIT_SCALE, LabelEmbeddings, ZeroShotResult, ZeroShotTask
from ._remote.backend import RemoteBackend
from ._remote.control_plane import state_timeout
from ._remote.volumes import volume_files, volume_path
from ._remote.workspace import resolve_workspace, scoring_server_workspace
from .cache import CacheOption, CacheView, EmbeddingCache, backend_identity, namespace, open_cache
from .errors import APIError, BackendError, ClipClientError, InvalidInputError
from .types import (
    ClientStats,
    EmbeddingArray,
    EmbeddingResult,
    HighBitDepth,
    ImageFormat,
    ImageInput,
    ImagePreparation,
    InputKind,
    MaxConcurrency,
    OnError,
    Settings,
)

if TYPE_CHECKING:
    import torch
    from databricks.sdk.core import Config
    from typing_extensions import Self

__all__ = ["AsyncClipClient", "ClipClient"]

_PREP_WORKERS = max(1, min(32, os.cpu_count() or 1))


@dataclass(frozen=True, slots=True)
class Prepared:
    """One input on its way to a batch: its payload and size, or the error that stopped it."""

    index: int
    payload: Any = None
    nbytes: int = 0
    error: ClipClientError | None = None


def _payload_of(item: Prepared) -> object:
    """What the cache looks up for an input: its payload, or None for one that failed."""
    return item.payload if item.error is None else None


@dataclass(frozen=True)
class _CallPlan:
    """One embed call, checked and planned before any I/O: what both shells run."""

    kind: InputKind
    # The inputs: a checked list (`embed_*`) or the caller's iterable, read lazily (`iter_embed_*`).
    inputs: Iterable[object]
    total: int | None
    settings: Settings
    on_error: OnError
    deadline: float | None
    # A stream (`iter_embed_*`) hands over every row before a bad input, then raises its error.
    stream: bool = False


def _settings_doc() -> str:
    """The Settings part of the clients' docstrings, from [`Settings`][clip_client.Settings] itself (its
    defaults, ranges and descriptions): one source for the docstrings, the signature and the validation."""
    lines = []
    for name, field in Settings.model_fields.items():
        valid = _valid_values(field.annotation, field.metadata)
        default = (
            f"{field.default:_}"
            if isinstance(field.default, int) and field.default > 9999
            else repr(field.default)
        )
        head = f"{name}: default `{default}`" + (f"; {valid}" if valid else "")
        lines.append(f"        {head}. {field.description}")
    return "\n".join(lines)


def _valid_values(annotation: Any, constraints: Iterable[Any]) -> str:
    """A setting's valid values as its type and constraints say: `'png' or 'bmp'`, `>= 1, <= 256`,
    `>= 1, <= 256 or 'auto'` (a union of both)."""
    origin = get_origin(annotation)
    if origin is Literal:
        return " or ".join(repr(c) for c in get_args(annotation))
    if origin is Annotated:
        inner, *extra = get_args(annotation)
        nested = [c for m in extra for c in (m.metadata if isinstance(m, FieldInfo) else [m])]
        return _valid_values(inner, [*constraints, *nested])
    if origin in (Union, UnionType):
        return " or ".join(v for arg in get_args(annotation) if (v := _valid_values(arg, ())))
    return ", ".join(
        f"{symbol} {getattr(m, attr)}"
        for m in constraints
        for attr, symbol in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<"))
        if getattr(m, attr, None) is not None
    )


class _BaseClient:
    """State, planning and everything else both clients share; no I/O of its own."""

    def __init__(
        self,
        *,
        host: str | None,
        token: str | None,
        profile: str | None,
        config: Config | None,
        backend: Backend | None,
        http_client: httpx.Client | httpx.AsyncClient | None,
        http_client_type: type[httpx.Client] | type[httpx.AsyncClient],
        cache: CacheOption = None,
        **settings: Any,
    ) -> None:
        if http_client is not None and not isinstance(http_client, http_client_type):
            wanted = f"{http_client_type.__module__}.{http_client_type.__name__}"
            hint = ""
            if isinstance(http_client, (httpx.Client, httpx.AsyncClient)):
                other = "AsyncClipClient" if isinstance(http_client, httpx.AsyncClient) else "ClipClient"
                hint = f"; {other} takes that one"
            raise TypeError(
                f"{type(self).__name__}(http_client=...) takes an {wanted}, got "
                f"{type(http_client).__name__}{hint}"
            )
        if backend is not None:
            _check_backend(backend)
            if host or token or profile or config or http_client or _scoring_urls(settings):
                raise ValueError(
                    "pass either backend= or workspace options "
                    "(host/token/profile/config/http_client/text_url/image_url)"
                )
            # The backend's own preferences fill what the caller left unset (a local model's batch
            # size and input resolution).
            for name, preferred in (("batch_size", backend.batch_size), ("image_size", backend.image_size)):
                if settings.get(name) is None and preferred is not None:
                    settings[name] = preferred
        register(token)  # before anything can quote it (a token passed to the wrong option too)
        redact_library_logs()  # httpx/httpcore DEBUG lines quote response headers; once per process
        self.settings: Settings = Settings().merged(**settings)
        takes = None if backend is None else backend.image_size
        if takes is not None and self.settings.image_size != takes:
            raise ValueError(
                f"image_size={self.settings.image_size}, but this backend's model takes {takes}x{takes} "
                f"images; leave image_size unset (or set it to {takes})"
            )
        if backend is None:
            if _scoring_urls(settings):  # any MLflow scoring server by URL: no workspace
                workspace = scoring_server_workspace(
                    self.settings.text_url,
                    self.settings.image_url,
                    token=token,
                    host=host,
                    profile=profile,
                    config=config,
                )
            else:
                workspace = resolve_workspace(host=host, token=token, profile=profile, config=config)
            backend = RemoteBackend(workspace, self.settings, http_client=http_client)
        self.backend: Backend = backend
        # The backend's control plane, when it has one (asked once: the backend never changes).
        self._control_plane: ControlPlane | None = backend if isinstance(backend, ControlPlane) else None
        self._cache: EmbeddingCache | None = open_cache(cache)
        self._counters = Counters()
        self._label_embeddings = LabelEmbeddings()  # classify: label sets already embedded
        self._pool_lock = threading.Lock()
        self._prep_pool: ThreadPoolExecutor | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"{type(self).__name__}(backend={self.backend!r})"

    def _closed_error(self) -> RuntimeError:
        """The one error a closed client raises (docs/errors.md): at a call's start, and in a stream
        that `close` overtook (whatever the closed thread pools or backend raised instead)."""
        return RuntimeError(f"this {type(self).__name__} is closed")

    def _check_open(self) -> None:
        if self._closed:
            raise self._closed_error()

    @classmethod
    def local(
        cls,
        model: str | os.PathLike[str] = C.DEFAULT_LOCAL_MODEL,
        *,
        device: str | None = None,
        dtype: str | torch.dtype | None = None,
        compile: bool = False,
        **client_options: Any,
    ) -> Self:
        """A client whose backend is the CLIP model in this process
        ([`LocalBackend`][clip_client.LocalBackend]): no workspace, the same code as the remote client above
        the backend, the same embeddings.

        Args:
            model: a Hugging Face hub id (from the local cache, downloaded on first use) or a folder
                holding `config.json`, the weights and the tokenizer files.
            device: `"cuda"`, `"cuda:1"`, `"cpu"`...; None picks CUDA when available, else CPU.
            dtype: `"float16"`, `"bfloat16"`, `"float32"` or a `torch.dtype`; None picks
                float16 on CUDA and float32 on CPU.
            compile: run both towers through `torch.compile` (every batch padded to one shape).
            **client_options: the client's keywords (`batch_size`, `normalize`, `progress`...).
                `max_concurrency` defaults to 2: one batch on the device while the next is
                tokenised or stacked and copied.

        Returns:
            a client of this class, whose backend is a [`LocalBackend`][clip_client.LocalBackend].

        Raises:
            ModelLoadError: the checkpoint is missing, not cached while offline, or does not load.
            ImportError: the `local` extra (torch, transformers) is not installed.
            TypeError: an unknown keyword in `client_options`, or a workspace keyword (`host`,
                `token`...): local mode needs none. Checked, with the values, before the model
                loads.

        ```python
        with ClipClient.local("openai/clip-vit-large-patch14", device="cpu") as client:
            client.embed_text("a photo of a cat").shape  # (768,)
        ```
        """
        from .local import LocalBackend

        # Every option is checked before the model loads: a typo must not cost a 1.7 GB load first.
        workspace = sorted(
            set(client_options)
            & {"host", "token", "profile", "config", "http_client", "backend", "text_url", "image_url"}
        )
        if workspace:
            raise TypeError(
                f"{cls.__name__}.local() runs the model in-process and takes no {', '.join(workspace)}"
            )
        unknown = sorted(set(client_options) - set(Settings.model_fields) - {"cache"})
        if unknown:
            raise TypeError(
                f"{cls.__name__}.local() got unexpected keyword argument(s) {', '.join(map(repr, unknown))}"
            )
        # the values too (pydantic.ValidationError)
        Settings().merged(**{k: v for k, v in client_options.items() if k != "cache"})
        backend = LocalBackend(
            model,
            device=device,
            dtype=dtype,
            batch_size=client_options.get("batch_size"),
            compile=compile,
            progress=bool(client_options.get("progress", False)),  # loading is quiet unless asked
        )
        client_options.setdefault("max_concurrency", 2)
        return cls(backend=backend, **client_options)

    @property
    def stats(self) -> ClientStats:
        """Counters since the client was created (requests, retries, overloads, splits) and the
        concurrency limit as it stands now; a fresh snapshot on each read."""
        c = self._counters
        maximum = self._concurrency()
        limit = self.backend.concurrency_limit()
        return ClientStats(
            requests=c.requests,
            retries=c.retries,
            overloads=c.overloads,
            splits=c.splits,
            concurrency_limit=maximum if limit is None else limit,
            max_concurrency=maximum,
            cache_hits=c.cache_hits,
            cache_misses=c.cache_misses,
            cache_rejected=c.cache_rejected,
        )

    def clear_cache(self) -> None:
        """Empty the embedding cache (`cache=`): every row of an SQLite file, whichever client or
        process wrote it; this client's rows with `"memory"`. Synchronous on both clients (the
        store is local). Does nothing without a cache; never raises for a cache file that is
        corrupt or locked (it is logged once, and the client goes on without it).

        Returns:
            None. Raises nothing of its own.

        ```python
        client.clear_cache()
        ```
        """
        if self._cache is not None:
            self._cache.clear()

    # -- check_endpoint: one flow (_core.endpoint_check), driven by each client's own I/O ---------------

    def _check_flow(
        self, deadline: float | None, *, control_plane: bool
    ) -> tuple[Generator[Step, Any, EndpointCheck], CallContext]:
        """The check's flow and the context its probes share (its deadline; its requests counted
        apart, and in `client.stats`)."""
        self._check_open()
        _check_deadline(deadline)
        ctx = CallContext(deadline, CheckCounters(self._counters))
        return check_flow(self.backend, self.settings, ctx, control_plane=control_plane), ctx

    # -- classify: one plan (clip_client._core.zeroshot), embedded by each client's own I/O ----------------

    def _zero_shot(
        self,
        images: object,
        labels: object,
        templates: object,
        logit_scale: object,
        on_error: OnError,
        deadline: float | None,
    ) -> tuple[ZeroShotTask, Sequence[object]]:
        """Check every argument of `classify` before any request (the images as `embed_images`
        checks them), and look the label set up among those this client embedded before. The default
        scale is the backend's own `logit_scale` when it has one (a local model), else CLIP's 100."""
        self._check_open()
        if on_error not in ("raise", "mark"):
            raise ValueError(f"on_error must be 'raise' or 'mark', got {on_error!r}")
        _check_deadline(deadline)
        checked_images = check_image_list(images)
        task = ZeroShotTask.plan(
            labels,
            templates,
            logit_scale,
            default_scale=_own_logit_scale(self.backend),
            on_error=on_error,
            deadline=deadline,
            memory=self._label_embeddings,
            identity=lambda: backend_identity(self.backend, "text")[0],
        )
        return task, checked_images

    # -- planning: the one step every public method starts with ---------------------------------------

    def _plan(
        self,
        kind: InputKind,
        inputs: object,
        *,
        batch_size: int | None,
        normalize: bool | None,
        progress: bool | None,
        on_error: OnError,
        deadline: float | None,
        collect: bool,
    ) -> _CallPlan:
        """Check one call's arguments before anything starts (streams included) and plan it.

        `collect` (`embed_*`): the inputs are read into a list; with `on_error="raise"` every
        text is checked before the first request (cheap, and a bad one then costs nothing). Otherwise
        (`iter_embed_*`) they are read lazily, a bounded number ahead."""
        self._check_open()
        if on_error not in ("raise", "mark"):
            raise ValueError(f"on_error must be 'raise' or 'mark', got {on_error!r}")
        _check_deadline(deadline)
        settings = self.settings.merged(batch_size=batch_size, normalize=normalize, progress=progress)
        source: Iterable[object]
        if kind == "text":
            if not collect:
                source = refuse_single_text(inputs)
            elif on_error == "raise":
                source = check_text_list(inputs)
            else:
                source = list(refuse_single_text(inputs))
        else:
            source = check_image_list(inputs) if collect else refuse_single_image(inputs)
        total = len(source) if isinstance(source, list) else _length(source)
        return _CallPlan(kind, source, total, settings, on_error, deadline, stream=not collect)

    def _collector(self, plan: _CallPlan) -> Collector:
        assert plan.total is not None
        return Collector(plan.total, mark=plan.on_error == "mark")

    def _new_job(self, plan: _CallPlan) -> EmbedJob:
        bar = None
        if plan.settings.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=plan.total, unit=plan.kind, desc=f"embedding {plan.kind}s")
        return EmbedJob(
            BatchPlanner(plan.settings.batch_size, self.backend.max_request_bytes),
            mark=plan.on_error == "mark",
            deliver_first=plan.stream,
            normalize=plan.settings.normalize,
            endpoint=self.backend.endpoint(plan.kind),
            progress=bar,
            dim_hint=self.backend.dim,
            window=self._window(),
            cache=self._cache_view(plan),
            # A serving endpoint's user wrote no Backend: advise about the endpoint, not the contract.
            answer_hint=None if self._control_plane is not None else BACKEND_HINT,
        )

    def _cache_view(self, plan: _CallPlan) -> CacheView | None:
        """This call's view of the cache: keyed by the backend (a remote endpoint's served model
        version is known once `_prepare_before_lookup` let the shell read its state), the kind and
        the settings that shape what is sent."""
        if self._cache is None:
            return None
        identity, confirmed = backend_identity(self.backend, plan.kind)
        return CacheView(
            self._cache,
            namespace(identity, plan.kind, plan.settings),
            self._counters,
            # A namespace of the caller's own names the model: nothing left to confirm.
            confirmed=confirmed or plan.settings.cache_namespace is not None,
        )

    def _prepare_before_lookup(self) -> ControlPlane | None:
        """The control plane the shell prepares before a call's first cache lookup, if any: the
        cache's key holds the served model version (read with the endpoint's state), so a new model
        version never answers from old rows."""
        return self._control_plane if self._cache is not None else None

    def _concurrency(self) -> int:
        """The most requests this client keeps in flight: the serving endpoints' ceiling
        (`max_concurrency`, or what `"auto"` resolved to once the endpoint was prepared), else
        the setting (the default for `"auto"`: other backends have no state to read)."""
        if self._control_plane is not None:
            return self._control_plane.concurrency_ceiling()
        value = self.settings.max_concurrency
        return value if isinstance(value, int) else C.DEFAULT_MAX_CONCURRENCY

    def _window(self) -> int:
        """Batches one call keeps in flight: enough to keep every slot busy, memory bounded."""
        return 2 * self._concurrency()

    def _context(self, plan: _CallPlan) -> CallContext:
        return CallContext(plan.deadline, self._counters)

    def _check_call(self, kind: InputKind, ctx: CallContext) -> None:
        """Before each (sub-)batch goes out: stop if the call was cancelled or its deadline passed.
        Raised inside the batch's flow, so with `on_error="mark"` a batch the deadline caught
        before it was sent is marked failed like any other, rather than sinking the whole call. A
        client closed meanwhile sends nothing more: its closed error ends the call."""
        self._check_open()
        ctx.check(self.backend.endpoint(kind))

    def _backend_failure(self, kind: InputKind, exc: Exception) -> BackendError:
        """A backend's own exception as a typed error (the shells chain the original)."""
        return BackendError(
            f"the backend {type(self.backend).__name__} raised {type(exc).__name__}: {exc}",
            endpoint=self.backend.endpoint(kind),
        )

    def _flow(self, batch: Batch, mark: bool) -> Generator[Batch, EmbeddingArray, list[BatchOutcome]]:
        return batch_flow(batch, mark=mark, on_split=self._counters.split)

    def _image_options(self) -> ImageOptions:
        s = self.settings
        return ImageOptions(
            size=s.image_size,
            format=s.image_format,
            jpeg_quality=s.jpeg_quality,
            max_pixels=s.max_image_pixels,
            fast_decode=s.fast_decode,
            high_bit_depth=s.high_bit_depth,
            want=self.backend.image_input,
            preparation=s.image_preparation,  # ignored by a backend that wants pixels (local mode)
        )

    def _text_items(self, texts: Iterable[object]) -> Generator[Prepared, None, None]:
        for i, text in enumerate(texts):
            try:
                payload, nbytes = self.backend.payload("text", check_text(text, i))
            except InvalidInputError as exc:
                yield Prepared(i, error=exc)
            else:
                yield Prepared(i, payload, nbytes)

    def _images_ahead(
        self, images: Iterable[object], settings: Settings
    ) -> Generator[tuple[int, Future[PreparedImage]], None, None]:
        """Images decoded and resized in a thread pool, a bounded number ahead of the consumer,
        yielded in input order. Pending work is cancelled if the consumer stops early."""
        pool = self._preparation_pool()
        opts = self._image_options()
        lookahead = max(2 * _PREP_WORKERS, settings.batch_size)
        ahead: deque[tuple[int, Future[PreparedImage]]] = deque()
        try:
            for i, image in enumerate(images):
                ahead.append((i, pool.submit(prepare_input, self._volume_source(image), i, opts)))
                if len(ahead) >= lookahead:
                    yield ahead.popleft()
            while ahead:
                yield ahead.popleft()
        finally:
            for _, fut in ahead:
                fut.cancel()

    def _volume_source(self, image: object) -> object:
        """`image` as it is, except a Unity Catalog volume path (`/Volumes/...`, `dbfs:/Volumes/...`):
        on a cluster, its FUSE mount's path; elsewhere, an item that reads it through the Files API
        of this client's workspace (the default chain's for a local model), named by the path."""
        if not isinstance(image, (str, os.PathLike)):
            return image
        try:
            spelled = os.fspath(image)
        except Exception:  # a path object that fails: reported by the preparation, as its input's failure
            return image
        if not isinstance(spelled, str) or not spelled.startswith(("/Volumes/", "dbfs:/")):
            return image
        from .sources import SourceItem, volume_item  # on first use: import cost

        if isinstance(image, SourceItem):
            return image
        path = volume_path(spelled)
        if path is None:
            return image
        if os.path.lexists(path):
            return path if path != spelled else image
        owner = self.backend.workspace if isinstance(self.backend, InWorkspace) else None
        return volume_item(spelled, path, lambda: volume_files(owner))

    def _image_item(self, index: int, prepared: PreparedImage) -> Prepared:
        payload, nbytes = self.backend.payload("image", prepared)
        return Prepared(index, payload, nbytes)

    def _empty(self, plan: _CallPlan) -> EmbeddingArray | EmbeddingResult:
        """`(0, dim)`: the backend's width when it knows it (a local model), else the default."""
        empty = empty_result(self.backend.dim)
        return EmbeddingResult(empty) if plan.on_error == "mark" else empty

    def _preparation_pool(self) -> ThreadPoolExecutor:
        with self._pool_lock:
            self._check_open()  # a closed client starts no new threads
            if self._prep_pool is None:
                self._prep_pool = ThreadPoolExecutor(_PREP_WORKERS, thread_name_prefix="clip-prep")
            return self._prep_pool

    def _shutdown_pools(self) -> None:
        """Close the thread pools, and the cache's connection."""
        self._closed = True
        if self._cache is not None:
            self._cache.close()
        with self._pool_lock:
            if self._prep_pool is not None:
                self._prep_pool.shutdown(wait=False, cancel_futures=True)
                self._prep_pool = None


def _scoring_urls(settings: dict[str, Any]) -> bool:
    """Whether the caller addressed a scoring server by URL (`text_url`/`image_url`)."""
    return bool(settings.get("text_url") or settings.get("image_url"))


def _check_deadline(deadline: object) -> None:
    """A call's `deadline`: None, or a number of seconds > 0 (not a bool, not NaN)."""
    if deadline is None:
        return
    if isinstance(deadline, bool) or not isinstance(deadline, (int, float)) or not deadline > 0:
        raise ValueError(f"deadline must be a number of seconds > 0, got {deadline!r}")


def _check_backend(backend: object) -> None:
    """A `TypeError` naming what is missing, for an object that is not a [`Backend`][clip_client.Backend]."""
    if isinstance(backend, Backend):
        return
    members = [
        m
        for m in (
            "image_input",
            "max_request_bytes",
            "batch_size",
            "image_size",
            "dim",
            "endpoint",
            "payload",
            "embed",
            "aembed",
            "concurrency_limit",
            "close",
            "aclose",
        )
        if not hasattr(backend, m)
    ]
    raise TypeError(
        f"backend= takes an object with the members of clip_client.Backend; {type(backend).__name__} "
        f"lacks {', '.join(members)} (see docs/configuration.md, Backends)"
    )


@contextmanager
def _one_input() -> Iterator[None]:
    """For `embed_text` / `embed_image`: the error of the one input, without an index (there is
    no list to index), chained to the same cause. Both methods, both clients, go through this."""
    try:
        yield
    except InvalidInputError as exc:
        raise exc._without_index() from exc.__cause__
    except APIError as exc:
        exc.index = None
        raise


def _length(items: Iterable[object]) -> int | None:
    return len(items) if isinstance(items, Sized) else None


def _own_logit_scale(backend: Backend) -> float:
    """The backend's own temperature for `classify` (a local model's) when it has one (checked like
    any other: 0 is refused, not replaced), else CLIP's 100."""
    return backend.logit_scale if isinstance(backend, LogitScale) else DEFAULT_LOGIT_SCALE


_CLIENT_DOC = """

    Args:
        host: the workspace URL (`https://` added when missing; plain `http://` only to loopback).
            With `token`, used as given and no databricks-sdk `Config` is built.
        token: a personal access token, sent as `Authorization: Bearer`. Never shown in a repr, an
            error or a log. Without `host`/`token`, databricks-sdk's chain resolves both
            (`DATABRICKS_HOST`/`DATABRICKS_TOKEN`, `~/.databrickscfg`, OAuth M2M, Azure, GCP).
        profile: a `~/.databrickscfg` profile name.
        config: a `databricks.sdk.core.Config`; not with `host`/`token`/`profile`.
        backend: any [`Backend`][clip_client.Backend] instead of a workspace (not with the above).
        http_client: {http_client}
        cache: an embedding cache, so that inputs embedded before cost no request: None (off, the
            default), `"memory"` (an LRU of this client, 10,000 rows), or a path (`str` or
            `os.PathLike`, `~` expanded) to an SQLite file that processes and threads share.
            Keyed by the backend (endpoint URL and served model version; local model and dtype),
            the settings that shape what is sent, and the sha256 of each item sent. A corrupt or
            locked file is logged once and the client goes on without it (docs/configuration.md,
            Caching).

    The settings are keywords too, all optional, validated by [`Settings`][clip_client.Settings]
    (docs/configuration.md).

    Other Parameters:
{settings}

    Raises:
        ValueError: no workspace resolves, the host is not a usable URL, or a setting is out of
            range (`pydantic.ValidationError`, a `ValueError` naming the field).
        TypeError: an unknown keyword, or an `http_client` of the other kind.
    """


class ClipClient(_BaseClient):
    """Embeds texts and images with CLIP ViT-L/14 on Databricks Model Serving (or in-process, with
    [`local`][clip_client.ClipClient.local]). Every result is float32, one row per input, in input order.

    One client is safe to share across threads; `max_concurrency` bounds the requests in flight
    across all of them. Use it as a context manager, or call [`close`][clip_client.ClipClient.close].

    ```python
    with ClipClient() as client:  # the workspace from databricks-sdk's config chain
        client.embed_texts(["a red car", "a dog"]).shape  # (2, 768)
    ```
    """

    def __init__(
        self,
        *,
        host: str | None = None,
        token: str | None = None,
        profile: str | None = None,
        config: Config | None = None,
        text_endpoint: str | None = None,
        image_endpoint: str | None = None,
        text_url: str | None = None,
        image_url: str | None = None,
        batch_size: int | None = None,
        max_request_bytes: int | None = None,
        max_concurrency: MaxConcurrency | None = None,
        max_retries: int | None = None,
        retry_deadline: float | None = None,
        retry_backoff: float | None = None,
        retry_backoff_max: float | None = None,
        timeout: float | None = None,
        image_size: int | None = None,
        image_format: ImageFormat | None = None,
        jpeg_quality: int | None = None,
        max_image_pixels: int | None = None,
        fast_decode: bool | None = None,
        high_bit_depth: HighBitDepth | None = None,
        image_preparation: ImagePreparation | None = None,
        normalize: bool | None = None,
        progress: bool | None = None,
        cache_namespace: str | None = None,
        backend: Backend | None = None,
        http_client: httpx.Client | None = None,
        cache: CacheOption = None,
    ) -> None:
        super().__init__(
            host=host,
            token=token,
            profile=profile,
            config=config,
            backend=backend,
            http_client=http_client,
            http_client_type=httpx.Client,
            cache=cache,
            text_endpoint=text_endpoint,
            image_endpoint=image_endpoint,
            text_url=text_url,
            image_url=image_url,
            batch_size=batch_size,
            max_request_bytes=max_request_bytes,
            max_concurrency=max_concurrency,
            max_retries=max_retries,
            retry_deadline=retry_deadline,
            retry_backoff=retry_backoff,
            retry_backoff_max=retry_backoff_max,
            timeout=timeout,
            image_size=image_size,
            image_format=image_format,
            jpeg_quality=jpeg_quality,
            max_image_pixels=max_image_pixels,
            fast_decode=fast_decode,
            high_bit_depth=high_bit_depth,
            image_preparation=image_preparation,
            normalize=normalize,
            progress=progress,
            cache_namespace=cache_namespace,
        )
        self._request_threads: ThreadPoolExecutor | None = None
        self._request_threads_size = 0
        self._retired_threads: list[ThreadPoolExecutor] = []

    # -- public API ----------------------------------------------------------------------------------

    @overload
    def embed_texts(
        self,
        texts: Iterable[str],
        *,
        batch_size: int | None = ...,
        normalize: bool | None = ...,
        progress: bool | None = ...,
        on_error: Literal["raise"] = ...,
        deadline: float | None = ...,
    ) -> EmbeddingArray: ...
    @overload
    def embed_texts(
        self,
        texts: Iterable[str],
        *,
        batch_size: int | None = ...,
        normalize: bool | None = ...,
        progress: bool | None = ...,
        on_error: Literal["mark"],
        deadline: float | None = ...,
    ) -> EmbeddingResult: ...
    def embed_texts(
        self,
        texts: Iterable[str],
        *,
        batch_size: int | None = None,
        normalize: bool | None = None,
        progress: bool | None = None,
        on_error: OnError = "raise",
        deadline: float | None = None,
    ) -> EmbeddingArray | EmbeddingResult:
        """Embed texts.

        Args:
            texts: a list (or any iterable) of `str`; `""` and whitespace embed as the model
                embeds them; texts over CLIP's 77 tokens are truncated by the model, never refused.
            batch_size: records per request for this call (default: the client's).
            normalize: L2-normalise the rows (default: the client's `normalize`).
            progress: show a tqdm bar for this call (default: the client's `progress`).
            on_error: `"raise"` stops at the first failure; `"mark"` embeds everything else and
                returns an [`EmbeddingResult`][clip_client.EmbeddingResult] whose failed rows are NaN.
            deadline: seconds; a wall-clock bound on the whole call, retries included.

        Returns:
            float32 array of shape `(len(texts), dim)` (`dim` 768 for ViT-L/14), rows in input
            order; `(0, dim)` for no texts. With `on_error="mark"`, an `EmbeddingResult`.

        Raises:
            TypeError: `texts` is a single `str` (use [`embed_text`][clip_client.ClipClient.embed_text]) or
                not iterable.
            InvalidInputError: a text is not a `str` or holds a lone surrogate (`.index`
                names it); raised before any request.
            APIError: a request failed after its retries (see docs/errors.md); with `deadline`,
                `APITimeoutError` once it passes.
            CredentialsError: databricks-sdk could not produce credentials.

        ```python
        client.embed_texts(["a red car", "a dog"], normalize=True).shape  # (2, 768)
        ```
        """
        plan = self._plan(
            "text", texts, batch_size=batch_size, normalize=normalize, progress=progress,
            on_error=on_error, deadline=deadline, collect=True,
        )  # fmt: skip
        return self._collect(plan)

    def embed_text(
        self, text: str, *, normalize: bool | None = None, deadline: float | None = None
    ) -> EmbeddingArray:
        """Embed one text.

        Args:
            text: a `str` (`""` included).
            normalize: L2-normalise the row (default: the client's `normalize`).
            deadline: seconds; a wall-clock bound on the call.

        Returns:
            float32 array of shape `(dim,)`.

        Raises:
            InvalidInputError: `text` is not a `str` (no `.index`: there is no list).
            APIError, CredentialsError: as [`embed_texts`][clip_client.ClipClient.embed_texts].

        ```python
        client.embed_text("a photo of a cat").shape  # (768,)
        ```
        """
        with _one_input():
            row: EmbeddingArray = self.embed_texts([text], normalize=normalize, deadline=deadline)[0]
        return row

    @overload
    def embed_images(
        self,
        images: Iterable[ImageInput] | npt.NDArray[np.uint8],
        *,
        batch_size: int | None = ...,
        normalize: bool | None = ...,
        progress: bool | None = ...,
        on_error: Literal["raise"] = ...,
        deadline: float | None = ...,
    ) -> EmbeddingArray: ...
    @overload
    def embed_images(
        self,
        images: Iterable[ImageInput] | npt.NDArray[np.uint8],
        *,
        batch_size: int | None = ...,
        normalize: bool | None = ...,
        progress: bool | None = ...,
        on_error: Literal["mark"],
        deadline: float | None = ...,
    ) -> EmbeddingResult: ...
    def embed_images(
        self,
        images: Iterable[ImageInput] | npt.NDArray[np.uint8],
        *,
        batch_size: int | None = None,
        normalize: bool | None = None,
        progress: bool | None = None,
        on_error: OnError = "raise",
        deadline: float | None = None,
    ) -> EmbeddingArray | EmbeddingResult:
        """Embed images, each decoded, oriented, converted to RGB, resized and centre-cropped to
        224x224 exactly as the served `CLIPImageProcessor` would (docs/images.md).

        Args:
            images: a list (or any iterable) of paths (`str`/`os.PathLike`, `~` expanded),
                `data:image/...;base64,` URIs, plain base64 strings of image files, encoded file
                bytes, PIL images, or uint8 arrays (HxW, HxWx1, HxWx3 RGB, HxWx4 RGBA); or one uint8
                array of shape `(N, H, W, C)`; or the [`SourceItem`][clip_client.SourceItem]s of
                [`iter_images`][clip_client.iter_images] (tar shards, object stores), read here,
                their errors naming their key as `.path`.
            batch_size, normalize, progress, on_error, deadline: as
                [`embed_texts`][clip_client.ClipClient.embed_texts].

        Returns:
            float32 array of shape `(len(images), dim)`, rows in input order; `(0, dim)` for no
            images. With `on_error="mark"`, an [`EmbeddingResult`][clip_client.EmbeddingResult].

        Raises:
            TypeError: `images` is a single image (use [`embed_image`][clip_client.ClipClient.embed_image]) or
                not iterable.
            InvalidInputError: an input of the wrong kind (a missing file, a URL, a float array...),
                with its `.index` and `.path`; `ImageDecodeError` for one that does not decode.
                Raised when the batch holding it is prepared: earlier batches may have been sent.
            APIError, CredentialsError: as [`embed_texts`][clip_client.ClipClient.embed_texts].

        ```python
        client.embed_images(["cat.jpg", Image.open("dog.png")]).shape  # (2, 768)
        ```
        """
        plan = self._plan(
            "image", images, batch_size=batch_size, normalize=normalize, progress=progress,
            on_error=on_error, deadline=deadline, collect=True,
        )  # fmt: skip
        return self._collect(plan)

    def embed_image(
        self, image: ImageInput, *, normalize: bool | None = None, deadline: float | None = None
    ) -> EmbeddingArray:
        """Embed one image (any input [`embed_images`][clip_client.ClipClient.embed_images] takes).

        Returns:
            float32 array of shape `(dim,)`.

        Raises:
            InvalidInputError, ImageDecodeError: the image cannot be used (no `.index`).
            APIError, CredentialsError: as [`embed_texts`][clip_client.ClipClient.embed_texts].

        ```python
        client.embed_image("cat.jpg").shape  # (768,)
        ```
        """
        with _one_input():
            row: EmbeddingArray = self.embed_images([image], normalize=normalize, deadline=deadline)[0]
        return row

    def classify(
        self,
        images: Iterable[ImageInput] | npt.NDArray[np.uint8],
        labels: Sequence[str],
        *,
        templates: Sequence[str] | None = None,
        logit_scale: float | None = None,
        on_error: OnError = "raise",
        batch_size: int | None = None,
        progress: bool | None = None,
        deadline: float | None = None,
    ) -> ZeroShotResult:
        """Zero-shot classification: the probability of each label for each image, CLIP's way.

        Each label is written into every template; the prompts are embedded, each prompt embedding
        L2-normalised, averaged per label and normalised again (Radford et al., 2021, "Learning
        Transferable Visual Models From Natural Language Supervision", section 3.1.4; the CLIP
        repository's `notebooks/Prompt_Engineering_for_ImageNet.ipynb`). Each image's
        probabilities are `softmax(logit_scale * cos(image, label))` over the labels. The label
        embeddings are remembered by the client (its last 32 label sets, keyed by the labels, the
        templates and the backend), so another call with the same labels sends no text request.

        Args:
            images: anything [`embed_images`][clip_client.ClipClient.embed_images] takes.
            labels: the classes, a non-empty list of distinct, non-blank `str` (`"cat"`,
                `"golden retriever"`); a label is inserted into the templates as it is.
            templates: prompt templates, each with exactly one `{}` where the label goes
                (`"a photo of a {}."`; `{{`/`}}` for literal braces). Default (None): the 7
                templates the CLIP authors selected for ImageNet in that notebook, such as
                `"itap of a {}."` and `"a origami {}."`; `["{}"]` uses the bare labels.
            logit_scale: the temperature multiplying the cosines, > 0. Default (None): the local
                model's own `exp(logit_scale)` in local mode
                ([`LocalBackend.logit_scale`][clip_client.LocalBackend.logit_scale]), else 100.0, the value of
                openai/clip-vit-large-patch14 (CLIP's training clips the scale at 100). Larger is more
                confident; it never changes the ranking.
            on_error: `"raise"` stops at the first image that fails, as
                [`embed_images`][clip_client.ClipClient.embed_images]; `"mark"` classifies the others, gives
                failed images NaN rows and lists them in `failures`. A failure to embed the prompts raises
                either way.
            batch_size: records per request for this call (default: the client's).
            progress: show tqdm bars, prompts then images (default: the client's `progress`).
            deadline: seconds; a wall-clock bound on the whole call (prompts and images), retries
                included.

        Returns:
            a [`ZeroShotResult`][clip_client.ZeroShotResult]: `labels` (a tuple), `probabilities` float32
            `(len(images), len(labels))` whose rows sum to 1, `failures`, `predictions` (the
            top label of each image) and `top(k)`.

        Raises:
            TypeError: `images` is a single image, `labels` or `templates` a single `str`
                (pass a list), or `logit_scale` not a number.
            InvalidInputError: no labels, or a label that is not a `str`, is blank or repeats
                another; no templates, or a template without exactly one `{}` or repeating another
                (`.index` names the label or template); raised before any request. An image that
                cannot be used, as [`embed_images`][clip_client.ClipClient.embed_images]
                (`ImageDecodeError`...).
            ValueError: `logit_scale` not finite and > 0; `on_error` or `deadline` invalid.
            ResponseFormatError: the text and image embeddings differ in width (the two endpoints
                serve different models).
            APIError, CredentialsError: as [`embed_texts`][clip_client.ClipClient.embed_texts].

        ```python
        result = client.classify(["cat.jpg", "dog.png"], ["cat", "dog", "car"])
        result.predictions  # ['cat', 'dog']
        ```
        """
        task, checked = self._zero_shot(images, labels, templates, logit_scale, on_error, deadline)
        if task.labels_embedded is None:
            texts = self.embed_texts(
                task.prompts, batch_size=batch_size, progress=progress, deadline=task.remaining()
            )
            task.accept_texts(texts)
        plan = self._plan(
            "image", checked, batch_size=batch_size, normalize=None, progress=progress,
            on_error=on_error, deadline=task.remaining(), collect=True,
        )  # fmt: skip
        return task.result(self._collect(plan))

    def iter_embed_texts(
        self,
        texts: Iterable[str],
        *,
        batch_size: int | None = None,
        normalize: bool | None = None,
        progress: bool | None = None,
        on_error: OnError = "raise",
        deadline: float | None = None,
    ) -> EmbeddingStream:
        """Embed an iterable of any length (a generator, a file read line by line).

        Args: as [`embed_texts`][clip_client.ClipClient.embed_texts]; `texts` is read lazily, a bounded number
        ahead.

        Returns:
            an [`EmbeddingStream`][clip_client.EmbeddingStream] of `(index, vector)`, `vector` float32
            `(dim,)`, in input order, with memory bounded by a few batches. Closing it (or leaving
            its `with` block) cancels the work in flight.

        Raises:
            TypeError: at once, for a single `str`. Other errors as
                [`embed_texts`][clip_client.ClipClient.embed_texts], raised by the stream when it reaches them
                (with `on_error="mark"`, listed in `stream.failures` instead).

        ```python
        with client.iter_embed_texts(open("captions.txt")) as stream:
            for index, vector in stream:
                sink.write(index, vector)
        ```
        """
        plan = self._plan(
            "text", texts, batch_size=batch_size, normalize=normalize, progress=progress,
            on_error=on_error, deadline=deadline, collect=False,
        )  # fmt: skip
        return EmbeddingStream(self._rows(plan))

    def iter_embed_images(
        self,
        images: Iterable[ImageInput],
        *,
        batch_size: int | None = None,
        normalize: bool | None = None,
        progress: bool | None = None,
        on_error: OnError = "raise",
        deadline: float | None = None,
    ) -> EmbeddingStream:
        """Embed an iterable of images of any length; images are read and prepared a bounded number
        ahead, so memory does not grow with the input.

        Args, Returns, Raises: as [`iter_embed_texts`][clip_client.ClipClient.iter_embed_texts], for the
        inputs [`embed_images`][clip_client.ClipClient.embed_images] takes.

        ```python
        photos = Path("photos").glob("*.jpg")
        with client.iter_embed_images(photos, on_error="mark") as stream:
            rows = dict(stream)
        ```
        """
        plan = self._plan(
            "image", images, batch_size=batch_size, normalize=normalize, progress=progress,
            on_error=on_error, deadline=deadline, collect=False,
        )  # fmt: skip
        return EmbeddingStream(self._rows(plan))

    def check_endpoint(self, *, deadline: float | None = None) -> EndpointCheck:
        """What the two endpoints are and do, measured rather than assumed.

        Per endpoint, text and image: its state from `GET /api/2.0/serving-endpoints/{name}`
        (ready, configuration update, served entities with workload size and type, scale to zero,
        route-optimized); the embedding width, from one probe; for the image endpoint, pixel parity
        (a 640x480 probe picture sent in one request both as the whole PNG file and as this client's
        prepared crop: cosine, largest difference and a verdict, `"exact"`, `"close"` or
        `"different"`, with what to do about the last two); for the text endpoint, whether a text
        over CLIP's 77 tokens is truncated or refused. Probes go through the normal embed path
        (retries, auth, the adaptive limit, `timeout`) and count in [`stats`][clip_client.ClipClient.stats].
        Fields and verdicts: docs/endpoints.md.

        Cost: 4 requests when every answer is a success (2 state GETs, 2 probe POSTs); a probe pair
        the endpoint refuses with 400 is split to tell which input it refused (2 more); retries add
        theirs. A backend without a control plane ([`local`][clip_client.ClipClient.local]) reports its state
        as "not a serving endpoint" and runs 2 forward passes.

        Args:
            deadline: seconds; a bound on the probes, retries included (each state GET is bounded by
                10 s on its own).

        Returns:
            an [`EndpointCheck`][clip_client.EndpointCheck] (frozen): `.text` and `.image`
            ([`EndpointReport`][clip_client.EndpointReport]), `.requests`, `.advice`; `str()` of it is a
            readable summary. A state that cannot be read (403: CAN QUERY without CAN VIEW; a failed
            GET) is reported unknown with its reason, not raised.

        Raises:
            EndpointNotFoundError: an endpoint does not exist (404); `.endpoint` names it.
            AuthenticationError: 401, the credentials are wrong.
            PermissionDeniedError: 403 on a probe: the caller may not query the endpoint.
            APIError: a probe of what the client itself sends (a short caption, its prepared crop)
                failed after its retries (a refusal of the long text or of the whole file is a
                finding, not an error); `APITimeoutError` once `deadline` passes.
            CredentialsError: databricks-sdk could not produce credentials.
            ValueError: `deadline` is not > 0.
            RuntimeError: the client is closed.

        ```python
        print(client.check_endpoint())
        ```
        """
        control = self._control_plane
        flow, ctx = self._check_flow(deadline, control_plane=control is not None)

        def step(s: Step) -> Any:
            if isinstance(s, ReadState):
                assert control is not None  # the flow reads states only from a control plane
                # Bounded by the check's deadline too: min(10 s, the time left).
                return control.endpoint_state(s.kind, refresh=True, timeout=state_timeout(ctx))
            self._check_call(s.kind, ctx)
            return self.backend.embed(s.kind, s.batch.payloads, ctx)

        return drive(flow, step)

    def close(self) -> None:
        """Release connections and threads (not an `http_client` you passed). Idempotent."""
        self._shutdown_pools()
        with self._pool_lock:
            for pool in [*self._retired_threads, self._request_threads]:
                if pool is not None:
                    pool.shutdown(wait=False, cancel_futures=True)
            self._request_threads = None
            self._retired_threads.clear()
        self.backend.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- scheduling ----------------------------------------------------------------------------------

    def _collect(self, plan: _CallPlan) -> EmbeddingArray | EmbeddingResult:
        if plan.total == 0:
            return self._empty(plan)
        out = self._collector(plan)
        for row in self._rows(plan):
            out.put(*row)
        return out.result(self.backend.dim)

    def _rows(self, plan: _CallPlan) -> Iterator[Row]:
        if plan.kind == "text":
            items = self._text_items(plan.inputs)
        else:
            items = self._image_items(plan.inputs, plan.settings)
        return self._stream(plan, items)

    def _image_items(self, images: Iterable[object], settings: Settings) -> Generator[Prepared, None, None]:
        for i, fut in self._images_ahead(images, settings):
            try:
                prepared = fut.result()
            except InvalidInputError as exc:
                yield Prepared(i, error=exc)
            else:
                yield self._image_item(i, prepared)

    def _stream(self, plan: _CallPlan, items: Generator[Prepared, None, None]) -> Iterator[Row]:
        self._check_open()  # a stream made before `close` and first read after it
        ctx = self._context(plan)
        control = self._control_plane
        if (first := self._prepare_before_lookup()) is not None:
            first.prepare(plan.kind, ctx)
        job = self._new_job(plan)
        if job.cache is not None:  # looked up a batch at a time, not one SQLite call per input
            items = job.cache.readahead(items, _payload_of, plan.settings.batch_size)
        pool: ThreadPoolExecutor | None = None
        pending: dict[Future[list[BatchOutcome]], Batch] = {}  # each batch in flight, by its future

        def submit(batch: Batch) -> None:
            nonlocal pool
            if pool is None:  # the call's first request: the backend knows its endpoint first
                if control is not None:
                    control.prepare(plan.kind, ctx)
                job.resize(self._window())
                pool = self._request_pool()
            pending[pool.submit(self._send, plan.kind, batch, ctx, job)] = batch

        def settle_some() -> None:
            done, _ = wait(pending, timeout=ctx.wait_limit(), return_when=FIRST_COMPLETED)
            if not done:  # the deadline passed and no worker could say so: one is stuck (DNS...)
                error = ctx.expired_error(job.endpoint, waiting="for a request that no time bound reaches")
                if not job.mark:
                    raise error
                job.settle([(batch, error) for batch in pending.values()])
                for fut in pending:
                    fut.cancel()
                pending.clear()
            for fut in done:
                del pending[fut]
                job.settle(fut.result())

        try:
            for item in items:
                if item.error is not None:
                    job.input_failed(item.index, item.error)
                    if job.halted:  # a stream's bad input: the rows before it first, then its error
                        break
                elif (batch := job.add(item.index, item.payload, item.nbytes)) is not None:
                    submit(batch)
                while job.must_wait(len(pending)):
                    settle_some()
                yield from job.ready()
            if (batch := job.flush()) is not None:
                submit(batch)
            while pending:
                settle_some()
                yield from job.ready()
            yield from job.ready(final=True)
        except BaseException as exc:  # an error, Ctrl-C, or the consumer closing the stream early
            ctx.cancelled.set()
            for fut in pending:
                fut.cancel()
            if self._closed and isinstance(exc, (RuntimeError, CancelledError)):
                # `close` (from this thread or another) shut the pools down under the stream: the
                # executor's "cannot schedule new futures" or a work item it cancelled.
                raise self._closed_error() from None
            raise
        finally:
            job.close()
            items.close()

    def _send(self, kind: InputKind, batch: Batch, ctx: CallContext, job: EmbedJob) -> list[BatchOutcome]:
        def send(b: Batch) -> EmbeddingArray:
            self._check_call(kind, ctx)
            try:
                rows = self.backend.embed(kind, b.payloads, ctx)
            except ClipClientError:
                raise
            except Exception as exc:
                if self._closed:  # the backend was closed under the request
                    raise self._closed_error() from None
                raise self._backend_failure(kind, exc) from safe_cause(exc)
            return job.accept(b, rows)

        return drive(self._flow(batch, job.mark), send)

    def _request_pool(self) -> ThreadPoolExecutor:
        """The thread pool requests are sent from: one per client, shared by every thread using it.
        Two threads more than the client's concurrency (`max_concurrency`, or what `"auto"`
        resolved to): the backend's limit caps what is on the wire, and the spare threads build the
        next bodies and parse answers while every slot stays busy. When `"auto"` resolves a higher
        ceiling for another endpoint, a larger pool replaces it (calls under way finish on the old
        one, which is shut down with the client)."""
        size = self._concurrency() + 2
        with self._pool_lock:
            self._check_open()  # a closed client starts no new threads
            if self._request_threads is None or self._request_threads_size < size:
                if self._request_threads is not None:
                    self._retired_threads.append(self._request_threads)
                self._request_threads = ThreadPoolExecutor(size, thread_name_prefix="clip-request")
                self._request_threads_size = size
            return self._request_threads


ClipClient.__doc__ = (ClipClient.__doc__ or "") + _CLIENT_DOC.format(
    http_client="your own `httpx.Client` to send through (its timeouts and limits apply, "
    "shortened only by a nearer `deadline`; left open on `close`). Default: one the client "
    "creates, with `timeout` bounding each attempt as a whole.",
    settings=_settings_doc(),
)


class AsyncClipClient(_BaseClient):
    """The asyncio twin of [`ClipClient`][clip_client.ClipClient]: the same keywords (`http_client` is an
    `httpx.AsyncClient`), the same results, awaitable.

    `max_concurrency` bounds the requests in flight across all tasks using the client. Image
    decoding runs in worker threads, and OAuth token refreshes off the event loop, so the loop stays
    responsive. A client may be used from several event loops in turn (each `asyncio.run` gets a
    fresh connection pool).

    ```python
    async with AsyncClipClient() as client:
        texts, images = await asyncio.gather(
            client.embed_texts(["a red car"]), client.embed_images(["car.jpg"])
        )
    ```
    """

    def __init__(
        self,
        *,
        host: str | None = None,
        token: str | None = None,
        profile: str | None = None,
        config: Config | None = None,
        text_endpoint: str | None = None,
        image_endpoint: str | None = None,
        text_url: str | None = None,
        image_url: str | None = None,
        batch_size: int | None = None,
        max_request_bytes: int | None = None,
        max_concurrency: MaxConcurrency | None = None,
        max_retries: int | None = None,
        retry_deadline: float | None = None,
        retry_backoff: float | None = None,
        retry_backoff_max: float | None = None,
        timeout: float | None = None,
        image_size: int | None = None,
        image_format: ImageFormat | None = None,
        jpeg_quality: int | None = None,
        max_image_pixels: int | None = None,
        fast_decode: bool | None = None,
        high_bit_depth: HighBitDepth | None = None,
        image_preparation: ImagePreparation | None = None,
        normalize: bool | None = None,
        progress: bool | None = None,
        cache_namespace: str | None = None,
        backend: Backend | None = None,
        http_client: httpx.AsyncClient | None = None,
        cache: CacheOption = None,
    ) -> None:
        super().__init__(
            host=host,
            token=token,
            profile=profile,
            config=config,
            backend=backend,
            http_client=http_client,
            http_client_type=httpx.AsyncClient,
            cache=cache,
            text_endpoint=text_endpoint,
            image_endpoint=image_endpoint,
            text_url=text_url,
            image_url=image_url,
            batch_size=batch_size,
            max_request_bytes=max_request_bytes,
            max_concurrency=max_concurrency,
            max_retries=max_retries,
            retry_deadline=retry_deadline,
            retry_backoff=retry_backoff,
            retry_backoff_max=retry_backoff_max,
            timeout=timeout,
            image_size=image_size,
            image_format=image_format,
            jpeg_quality=jpeg_quality,
            max_image_pixels=max_image_pixels,
            fast_decode=fast_decode,
            high_bit_depth=high_bit_depth,
            image_preparation=image_preparation,
            normalize=normalize,
            progress=progress,
            cache_namespace=cache_namespace,
        )

    # -- public API ----------------------------------------------------------------------------------

    @overload
    async def embed_texts(
        self,
        texts: Iterable[str],
        *,
        batch_size: int | None = ...,
        normalize: bool | None = ...,
        progress: bool | None = ...,
        on_error: Literal["raise"] = ...,
        deadline: float | None = ...,
    ) -> EmbeddingArray: ...
    @overload
    async def embed_texts(
        self,
        texts: Iterable[str],
        *,
        batch_size: int | None = ...,
        normalize: bool | None = ...,
        progress: bool | None = ...,
        on_error: Literal["mark"],
        deadline: float | None = ...,
    ) -> EmbeddingResult: ...
    async def embed_texts(
        self,
        texts: Iterable[str],
        *,
        batch_size: int | None = None,
        normalize: bool | None = None,
        progress: bool | None = None,
        on_error: OnError = "raise",
        deadline: float | None = None,
    ) -> EmbeddingArray | EmbeddingResult:
        """The async twin of [`ClipClient.embed_texts`][clip_client.ClipClient.embed_texts].

        The same arguments, checks, results and errors, awaited.

        Args, Returns, Raises: as [`ClipClient.embed_texts`][clip_client.ClipClient.embed_texts].

        ```python
        vectors = await client.embed_texts(["a red car", "a dog"], normalize=True)
        ```
        """
        plan = self._plan(
            "text", texts, batch_size=batch_size, normalize=normalize, progress=progress,
            on_error=on_error, deadline=deadline, collect=True,
        )  # fmt: skip
        return await self._collect(plan)

    async def embed_text(
        self, text: str, *, normalize: bool | None = None, deadline: float | None = None
    ) -> EmbeddingArray:
        """The async twin of [`ClipClient.embed_text`][clip_client.ClipClient.embed_text].

        Args, Returns, Raises: as [`ClipClient.embed_text`][clip_client.ClipClient.embed_text].

        ```python
        (await client.embed_text("a photo of a cat")).shape  # (768,)
        ```
        """
        with _one_input():
            row: EmbeddingArray = (await self.embed_texts([text], normalize=normalize, deadline=deadline))[0]
        return row

    @overload
    async def embed_images(
        self,
        images: Iterable[ImageInput] | npt.NDArray[np.uint8],
        *,
        batch_size: int | None = ...,
        normalize: bool | None = ...,
        progress: bool | None = ...,
        on_error: Literal["raise"] = ...,
        deadline: float | None = ...,
    ) -> EmbeddingArray: ...
    @overload
    async def embed_images(
        self,
        images: Iterable[ImageInput] | npt.NDArray[np.uint8],
        *,
        batch_size: int | None = ...,
        normalize: bool | None = ...,
        progress: bool | None = ...,
        on_error: Literal["mark"],
        deadline: float | None = ...,
    ) -> EmbeddingResult: ...
    async def embed_images(
        self,
        images: Iterable[ImageInput] | npt.NDArray[np.uint8],
        *,
        batch_size: int | None = None,
        normalize: bool | None = None,
        progress: bool | None = None,
        on_error: OnError = "raise",
        deadline: float | None = None,
    ) -> EmbeddingArray | EmbeddingResult:
        """The async twin of [`ClipClient.embed_images`][clip_client.ClipClient.embed_images].

        Decoding and resizing run in worker threads, off the event loop.

        Args, Returns, Raises: as [`ClipClient.embed_images`][clip_client.ClipClient.embed_images].

        ```python
        vectors = await client.embed_images(["cat.jpg", Image.open("dog.png")])
        ```
        """
        plan = self._plan(
            "image", images, batch_size=batch_size, normalize=normalize, progress=progress,
            on_error=on_error, deadline=deadline, collect=True,
        )  # fmt: skip
        return await self._collect(plan)

    async def embed_image(
        self, image: ImageInput, *, normalize: bool | None = None, deadline: float | None = None
    ) -> EmbeddingArray:
        """The async twin of [`ClipClient.embed_image`][clip_client.ClipClient.embed_image].

        Decoding and resizing run in a worker thread, off the event loop.

        Args, Returns, Raises: as [`ClipClient.embed_image`][clip_client.ClipClient.embed_image].

        ```python
        (await client.embed_image("cat.jpg")).shape  # (768,)
        ```
        """
        with _one_input():
            rows = await self.embed_images([image], normalize=normalize, deadline=deadline)
        row: EmbeddingArray = rows[0]
        return row

    async def classify(
        self,
        images: Iterable[ImageInput] | npt.NDArray[np.uint8],
        labels: Sequence[str],
        *,
        templates: Sequence[str] | None = None,
        logit_scale: float | None = None,
        on_error: OnError = "raise",
        batch_size: int | None = None,
        progress: bool | None = None,
        deadline: float | None = None,
    ) -> ZeroShotResult:
        """The async twin of [`ClipClient.classify`][clip_client.ClipClient.classify].

        It shares the client's memory of label embeddings with every other call.

        Args, Returns, Raises: as [`ClipClient.classify`][clip_client.ClipClient.classify].

        ```python
        (await client.classify(["cat.jpg"], ["cat", "dog"])).predictions  # ['cat']
        ```
        """
        task, checked = self._zero_shot(images, labels, templates, logit_scale, on_error, deadline)
        if task.labels_embedded is None:
            texts = await self.embed_texts(
                task.prompts, batch_size=batch_size, progress=progress, deadline=task.remaining()
            )
            task.accept_texts(texts)
        plan = self._plan(
            "image", checked, batch_size=batch_size, normalize=None, progress=progress,
            on_error=on_error, deadline=task.remaining(), collect=True,
        )  # fmt: skip
        return task.result(await self._collect(plan))

    def iter_embed_texts(
        self,
        texts: Iterable[str],
        *,
        batch_size: int | None = None,
        normalize: bool | None = None,
        progress: bool | None = None,
        on_error: OnError = "raise",
        deadline: float | None = None,
    ) -> AsyncEmbeddingStream:
        """The async twin of [`ClipClient.iter_embed_texts`][clip_client.ClipClient.iter_embed_texts].

        Args, Raises: as [`ClipClient.iter_embed_texts`][clip_client.ClipClient.iter_embed_texts].

        Returns:
            an [`AsyncEmbeddingStream`][clip_client.AsyncEmbeddingStream] of `(index, vector)` in
            input order, used with `async with` / `async for`; memory bounded by a few batches.

        ```python
        async with client.iter_embed_texts(lines) as stream:
            async for index, vector in stream:
                sink.write(index, vector)
        ```
        """
        plan = self._plan(
            "text", texts, batch_size=batch_size, normalize=normalize, progress=progress,
            on_error=on_error, deadline=deadline, collect=False,
        )  # fmt: skip
        return AsyncEmbeddingStream(self._rows(plan))

    def iter_embed_images(
        self,
        images: Iterable[ImageInput],
        *,
        batch_size: int | None = None,
        normalize: bool | None = None,
        progress: bool | None = None,
        on_error: OnError = "raise",
        deadline: float | None = None,
    ) -> AsyncEmbeddingStream:
        """The async twin of [`ClipClient.iter_embed_images`][clip_client.ClipClient.iter_embed_images].

        Args, Raises: as [`ClipClient.iter_embed_images`][clip_client.ClipClient.iter_embed_images].

        Returns:
            an [`AsyncEmbeddingStream`][clip_client.AsyncEmbeddingStream], as
            [`iter_embed_texts`][clip_client.AsyncClipClient.iter_embed_texts].

        ```python
        async with client.iter_embed_images(paths, on_error="mark") as stream:
            rows = {index: vector async for index, vector in stream}
        ```
        """
        plan = self._plan(
            "image", images, batch_size=batch_size, normalize=normalize, progress=progress,
            on_error=on_error, deadline=deadline, collect=False,
        )  # fmt: skip
        return AsyncEmbeddingStream(self._rows(plan))

    async def check_endpoint(self, *, deadline: float | None = None) -> EndpointCheck:
        """The async twin of [`ClipClient.check_endpoint`][clip_client.ClipClient.check_endpoint].

        The same probes, state reads, cost and report.

        Args, Returns, Raises: as [`ClipClient.check_endpoint`][clip_client.ClipClient.check_endpoint].

        ```python
        print(await client.check_endpoint())
        ```
        """
        control = self._control_plane
        flow, ctx = self._check_flow(deadline, control_plane=control is not None)
        await asyncio.to_thread(probe_image)  # drawn once per process: off the event loop

        async def step(s: Step) -> Any:
            if isinstance(s, ReadState):
                assert control is not None  # the flow reads states only from a control plane
                return await control.aendpoint_state(s.kind, refresh=True, timeout=state_timeout(ctx))
            self._check_call(s.kind, ctx)
            return await self.backend.aembed(s.kind, s.batch.payloads, ctx)

        return await adrive(flow, step)

    async def close(self) -> None:
        """The async twin of [`ClipClient.close`][clip_client.ClipClient.close].

        Releases connections and threads (not an `http_client` you passed). Idempotent.
        """
        self._shutdown_pools()
        await self.backend.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # -- scheduling ----------------------------------------------------------------------------------

    async def _collect(self, plan: _CallPlan) -> EmbeddingArray | EmbeddingResult:
        if plan.total == 0:
            return self._empty(plan)
        out = self._collector(plan)
        async for row in self._rows(plan):
            out.put(*row)
        return out.result(self.backend.dim)

    def _rows(self, plan: _CallPlan) -> AsyncIterator[Row]:
        if plan.kind == "text":
            items = _aiter(self._text_items(plan.inputs))
        else:
            items = self._image_items(plan.inputs, plan.settings)
        return self._stream(plan, items)

    async def _image_items(
        self, images: Iterable[object], settings: Settings
    ) -> AsyncGenerator[Prepared, None]:
        ahead = self._images_ahead(images, settings)
        try:
            for i, fut in ahead:
                # Waited for rather than awaited: a work item that `close` cancelled is then told
                # apart from this task being cancelled (which still cancels the work item).
                wrapped = asyncio.wrap_future(fut)
                try:
                    await asyncio.wait((wrapped,))
                except BaseException:
                    wrapped.cancel()
                    raise
                if wrapped.cancelled():  # only `close` cancels a work item still wanted
                    raise self._closed_error() if self._closed else asyncio.CancelledError()
                try:
                    prepared: PreparedImage = wrapped.result()
                except InvalidInputError as exc:
                    yield Prepared(i, error=exc)
                else:
                    yield self._image_item(i, prepared)
        finally:
            ahead.close()

    async def _stream(self, plan: _CallPlan, items: AsyncGenerator[Prepared, None]) -> AsyncIterator[Row]:
        self._check_open()  # a stream made before `close` and first read after it
        ctx = self._context(plan)
        control = self._control_plane
        if (first := self._prepare_before_lookup()) is not None:
            await first.aprepare(plan.kind, ctx)
        job = self._new_job(plan)
        if job.cache is not None:  # looked up a batch at a time, not one SQLite call per input
            items = job.cache.areadahead(items, _payload_of, plan.settings.batch_size)
        pending: set[asyncio.Future[list[BatchOutcome]]] = set()
        started = False

        async def submit(batch: Batch) -> None:
            nonlocal started
            if not started:  # the call's first request: the backend knows its endpoint first
                started = True
                if control is not None:
                    await control.aprepare(plan.kind, ctx)
                job.resize(self._window())
            pending.add(asyncio.ensure_future(self._send(plan.kind, batch, ctx, job)))

        async def settle_some() -> None:
            done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                pending.discard(task)
                job.settle(task.result())

        try:
            async for item in items:
                if item.error is not None:
                    job.input_failed(item.index, item.error)
                    if job.halted:  # a stream's bad input: the rows before it first, then its error
                        break
                elif (batch := job.add(item.index, item.payload, item.nbytes)) is not None:
                    await submit(batch)
                while job.must_wait(len(pending)):
                    await settle_some()
                for row in job.ready():
                    yield row
            if (batch := job.flush()) is not None:
                await submit(batch)
            while pending:
                await settle_some()
                for row in job.ready():
                    yield row
            for row in job.ready(final=True):
                yield row
        except BaseException as exc:  # an error, cancellation, or the consumer closing the stream early
            ctx.cancelled.set()
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            if self._closed and isinstance(exc, RuntimeError):  # the executor's, after `close`
                raise self._closed_error() from None
            raise
        finally:
            job.close()
            await items.aclose()

    async def _send(
        self, kind: InputKind, batch: Batch, ctx: CallContext, job: EmbedJob
    ) -> list[BatchOutcome]:
        async def send(b: Batch) -> EmbeddingArray:
            self._check_call(kind, ctx)
            try:
                rows = await self.backend.aembed(kind, b.payloads, ctx)
            except ClipClientError:
                raise
            except Exception as exc:
                if self._closed:  # the backend was closed under the request
                    raise self._closed_error() from None
                raise self._backend_failure(kind, exc) from safe_cause(exc)
            return job.accept(b, rows)

        return await adrive(self._flow(batch, job.mark), send)


AsyncClipClient.__doc__ = (AsyncClipClient.__doc__ or "") + _CLIENT_DOC.format(
    http_client="your own `httpx.AsyncClient` to send through (its timeouts and limits apply, "
    "shortened only by a nearer `deadline`; left open on `close`). Default: one the client "
    "creates, with `timeout` bounding each attempt as a whole.",
    settings=_settings_doc(),
)


async def _aiter(items: Iterator[Prepared]) -> AsyncGenerator[Prepared, None]:
    for item in items:
        yield item
