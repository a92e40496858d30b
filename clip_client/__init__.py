"""clip_client: CLIP ViT-L/14 text and image embeddings in one line, from Databricks Model Serving
or in-process.

```python
from clip_client import ClipClient
with ClipClient() as client:
    vectors = client.embed_texts(["a red car", "a dog"])
```
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._version import __version__

if TYPE_CHECKING:
    from ._backend import Backend, CacheIdentity, ControlPlane, LogitScale
    from ._client import AsyncClipClient, ClipClient
    from ._core.concurrency import CallContext
    from ._core.endpoint_check import (
        EndpointCheck,
        EndpointReport,
        ImageParity,
        ParityVerdict,
        TextTruncation,
        TruncationVerdict,
    )
    from ._core.images import PreparedImage
    from ._core.streams import AsyncEmbeddingStream, EmbeddingStream
    from ._core.zeroshot import ZeroShotResult
    from ._remote.endpoint_state import EndpointState, ServedEntity
    from .errors import (
        APIConnectionError,
        APIError,
        APIStatusError,
        APITimeoutError,
        AuthenticationError,
        BackendError,
        BadRequestError,
        ClipClientError,
        ConfigurationError,
        CredentialsError,
        DimensionMismatchError,
        EndpointNotFoundError,
        ImageDecodeError,
        IndexNotReadyError,
        IndexSpecMismatchError,
        InvalidInputError,
        ModelLoadError,
        PayloadTooLargeError,
        PermissionDeniedError,
        RateLimitError,
        ResponseFormatError,
        ServerError,
        SourceTableError,
        UpsertFailedError,
        VectorSearchError,
        VectorSearchNotFoundError,
        VectorSearchPermissionError,
    )
    from .local import LocalBackend
    from .search import DuplicateGroup, TopK, cosine_topk, find_duplicates
    from .sources import SourceItem, iter_images
    from .types import (
        ClientStats,
        EmbeddingArray,
        EmbeddingFailure,
        EmbeddingResult,
        HighBitDepth,
        ImageFormat,
        ImageInput,
        ImagePreparation,
        InputKind,
        OnError,
        Settings,
    )

# `import clip_client` loads none of the package's modules: a public name is loaded on first use
# (`__getattr__`), so `clip_client.errors`, `clip_client.types` and the `clip-client` command (its
# `--help` above all) do not pay for the clients. The first use of any name below loads them all,
# as a plain import did (and shows the classes of private modules at their public path, `_rehome`).
_HOMES: dict[str, str] = {
    "Backend": "_backend",
    "CacheIdentity": "_backend",
    "ControlPlane": "_backend",
    "LogitScale": "_backend",
    "AsyncClipClient": "_client",
    "ClipClient": "_client",
    "CallContext": "_core.concurrency",
    "EndpointCheck": "_core.endpoint_check",
    "EndpointReport": "_core.endpoint_check",
    "ImageParity": "_core.endpoint_check",
    "ParityVerdict": "_core.endpoint_check",
    "TextTruncation": "_core.endpoint_check",
    "TruncationVerdict": "_core.endpoint_check",
    "PreparedImage": "_core.images",
    "AsyncEmbeddingStream": "_core.streams",
    "EmbeddingStream": "_core.streams",
    "ZeroShotResult": "_core.zeroshot",
    "EndpointState": "_remote.endpoint_state",
    "ServedEntity": "_remote.endpoint_state",
    "APIConnectionError": "errors",
    "APIError": "errors",
    "APIStatusError": "errors",
    "APITimeoutError": "errors",
    "AuthenticationError": "errors",
    "BackendError": "errors",
    "BadRequestError": "errors",
    "ClipClientError": "errors",
    "ConfigurationError": "errors",
    "CredentialsError": "errors",
    "EndpointNotFoundError": "errors",
    "ImageDecodeError": "errors",
    "InvalidInputError": "errors",
    "ModelLoadError": "errors",
    "PayloadTooLargeError": "errors",
    "PermissionDeniedError": "errors",
    "RateLimitError": "errors",
    "ResponseFormatError": "errors",
    "ServerError": "errors",
    "DimensionMismatchError": "errors",
    "IndexNotReadyError": "errors",
    "IndexSpecMismatchError": "errors",
    "SourceTableError": "errors",
    "UpsertFailedError": "errors",
    "VectorSearchError": "errors",
    "VectorSearchNotFoundError": "errors",
    "VectorSearchPermissionError": "errors",
    "ClientStats": "types",
    "EmbeddingArray": "types",
    "EmbeddingFailure": "types",
    "EmbeddingResult": "types",
    "HighBitDepth": "types",
    "ImageFormat": "types",
    "ImageInput": "types",
    "ImagePreparation": "types",
    "InputKind": "types",
    "OnError": "types",
    "Settings": "types",
}
"""Each public name, by the module that defines it (relative to the package)."""
_ON_THEIR_OWN = {
    "LocalBackend": "local",
    "DuplicateGroup": "search",
    "TopK": "search",
    "cosine_topk": "search",
    "find_duplicates": "search",
    "SourceItem": "sources",
    "iter_images": "sources",
}
"""Public names of the modules that load only on their own first use: most programs need neither."""


def __getattr__(name: str) -> Any:
    import importlib

    if name in _ON_THEIR_OWN:
        value = getattr(importlib.import_module(f".{_ON_THEIR_OWN[name]}", __name__), name)
        globals()[name] = value
        return value
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    for public, module in _HOMES.items():
        globals()[public] = getattr(importlib.import_module(f".{module}", __name__), public)
    _rehome_all()
    return globals()[name]


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


__all__ = [
    "APIConnectionError",
    "APIError",
    "APIStatusError",
    "APITimeoutError",
    "AsyncClipClient",
    "AsyncEmbeddingStream",
    "AuthenticationError",
    "Backend",
    "BackendError",
    "BadRequestError",
    "CacheIdentity",
    "CallContext",
    "ClientStats",
    "ClipClient",
    "ClipClientError",
    "ConfigurationError",
    "ControlPlane",
    "CredentialsError",
    "DimensionMismatchError",
    "DuplicateGroup",
    "EmbeddingArray",
    "EmbeddingFailure",
    "EmbeddingResult",
    "EmbeddingStream",
    "EndpointCheck",
    "EndpointNotFoundError",
    "EndpointReport",
    "EndpointState",
    "HighBitDepth",
    "ImageDecodeError",
    "ImageFormat",
    "ImageInput",
    "ImageParity",
    "ImagePreparation",
    "IndexNotReadyError",
    "IndexSpecMismatchError",
    "InputKind",
    "InvalidInputError",
    "LocalBackend",
    "LogitScale",
    "ModelLoadError",
    "OnError",
    "ParityVerdict",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "PreparedImage",
    "RateLimitError",
    "ResponseFormatError",
    "ServedEntity",
    "ServerError",
    "Settings",
    "SourceItem",
    "SourceTableError",
    "TextTruncation",
    "TopK",
    "TruncationVerdict",
    "UpsertFailedError",
    "VectorSearchError",
    "VectorSearchNotFoundError",
    "VectorSearchPermissionError",
    "ZeroShotResult",
    "__version__",
    "cosine_topk",
    "find_duplicates",
    "iter_images",
]


def _rehome(cls: type) -> None:
    """Show `cls` (defined in a private module) at its public path, `clip_client.<name>`: in
    reprs, tracebacks and the API reference, as httpx and openai-python do; pickle finds it there
    too. Its own string annotations are resolved first, in the module that defined it, so that
    `typing.get_type_hints` (and pydantic, dataclass tools...) still resolve them afterwards."""
    import inspect

    own = inspect.get_annotations(cls)
    if own:
        import typing

        try:
            hints = typing.get_type_hints(cls, include_extras=True)
        except Exception:  # a name only imported for type checkers: left as it was
            pass
        else:
            cls.__annotations__ = {name: hints.get(name, value) for name, value in own.items()}
    cls.__module__ = __name__


def _rehome_all() -> None:
    """`_rehome` every class of a private module that `_HOMES` names. Names from the public modules
    (clip_client.errors, .types, .search, .local) keep those modules, their documented homes."""
    for name in _HOMES:
        value = globals().get(name)
        if isinstance(value, type) and value.__module__.startswith(f"{__name__}._"):
            _rehome(value)
