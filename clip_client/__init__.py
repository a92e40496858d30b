"""clip_client: CLIP ViT-L/14 text and image embeddings in one line, from Databricks Model Serving
or in-process.

>>> from clip_client import ClipClient
>>> with ClipClient() as client:
...     vectors = client.embed_texts(["a red car", "a dog"])
"""

from __future__ import annotations

from ._backend import Backend
from ._client import AsyncClipClient, ClipClient
from ._concurrency import CallContext
from ._images import PreparedImage
from ._streams import AsyncEmbeddingStream, EmbeddingStream
from ._version import __version__
from .errors import (
    APIConnectionError,
    APIError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
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
from .types import (
    ClientStats,
    EmbeddingArray,
    EmbeddingFailure,
    EmbeddingResult,
    HighBitDepth,
    ImageFormat,
    ImageInput,
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
    "BadRequestError",
    "CallContext",
    "ClientStats",
    "ClipClient",
    "ClipClientError",
    "CredentialsError",
    "EmbeddingArray",
    "EmbeddingFailure",
    "EmbeddingResult",
    "EmbeddingStream",
    "EndpointNotFoundError",
    "HighBitDepth",
    "ImageDecodeError",
    "ImageFormat",
    "ImageInput",
    "InputKind",
    "InvalidInputError",
    "LocalBackend",
    "ModelLoadError",
    "OnError",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "PreparedImage",
    "RateLimitError",
    "ResponseFormatError",
    "ServerError",
    "Settings",
    "__version__",
]
