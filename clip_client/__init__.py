"""clip_client: CLIP ViT-L/14 text and image embeddings in one line, from Databricks Model Serving
or in-process.

>>> from clip_client import ClipClient
>>> with ClipClient() as client:
...     vectors = client.embed_texts(["a red car", "a dog"])
"""

from __future__ import annotations

from ._backend import Backend, RemoteBackend
from ._client import AsyncClipClient, ClipClient
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
from .types import EmbeddingArray, ImageInput, Settings

__all__ = [
    "APIConnectionError",
    "APIError",
    "APIStatusError",
    "APITimeoutError",
    "AsyncClipClient",
    "AuthenticationError",
    "Backend",
    "BadRequestError",
    "ClipClient",
    "ClipClientError",
    "CredentialsError",
    "EmbeddingArray",
    "EndpointNotFoundError",
    "ImageDecodeError",
    "ImageInput",
    "InvalidInputError",
    "LocalBackend",
    "ModelLoadError",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "RateLimitError",
    "RemoteBackend",
    "ResponseFormatError",
    "ServerError",
    "Settings",
    "__version__",
]
