"""clip_client: CLIP ViT-L/14 text and image embeddings in one line, from Databricks Model Serving
or in-process.

>>> from clip_client import ClipClient
>>> with ClipClient() as client:
...     vectors = client.embed_texts(["a red car", "a dog"])
"""

from __future__ import annotations

from ._backend import Backend
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
from ._version import __version__
from .errors import (
    APIConnectionError,
    APIError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BackendError,
    BadRequestError,
    ClipClientError,
    CredentialsError,
    EndpointNotFoundError,
    ImageDecodeError,
    InvalidInputError,
    ModelLoadError,
    PayloadTooLargeError,
    PermissionDeniedError,
    RateLimitError,
    ResponseFormatError,
    ServerError,
)
from .local import LocalBackend
from .search import DuplicateGroup, TopK, cosine_topk, find_duplicates
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
    "CallContext",
    "ClientStats",
    "ClipClient",
    "ClipClientError",
    "CredentialsError",
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
    "InputKind",
    "InvalidInputError",
    "LocalBackend",
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
    "TextTruncation",
    "TopK",
    "TruncationVerdict",
    "ZeroShotResult",
    "__version__",
    "cosine_topk",
    "find_duplicates",
]
