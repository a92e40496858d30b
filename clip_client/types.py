"""Public types: what an image input may be, the client's settings, and the wire payloads."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Literal, Union

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from . import _constants as C
from ._core.secrets import mentions_a_secret, redact

if TYPE_CHECKING:
    from PIL import Image

__all__ = [
    "ClientStats",
    "EmbeddingArray",
    "EmbeddingFailure",
    "EmbeddingResult",
    "HighBitDepth",
    "ImageFormat",
    "ImageInput",
    "ImagePreparation",
    "InputKind",
    "MaxConcurrency",
    "OnError",
    "ServingErrorBody",
    "Settings",
]

ImageInput = Union[
    str,
    "os.PathLike[str]",
    bytes,
    bytearray,
    memoryview,
    "Image.Image",
    "npt.NDArray[np.uint8]",
]
"""Anything `embed_image(s)` accepts: a file path (`str` or `os.PathLike`), a
`data:image/...;base64,` URI, encoded file bytes, a PIL image, or a uint8 array (HxW, HxWx1/3/4).
"""

EmbeddingArray = npt.NDArray[np.float32]
"""The result of every embed call: float32, one row per input, in input order."""

ImageFormat = Literal["png", "bmp", "jpeg"]
"""How prepared images travel: "png" (lossless, the default), "bmp" (lossless and uncompressed: the
least client CPU, about 50% more bytes) or "jpeg" (smallest, but changes the pixels slightly).
"""

HighBitDepth = Literal["clip", "scale"]
"""What happens to integer images deeper than 8 bits (16-bit PNG/TIFF, 32-bit "I"): "clip" (the
default) keeps values above 255 at 255, which is what Pillow's `convert("RGB")` and therefore the
served `CLIPImageProcessor` do with the same file, so the embedding matches the endpoint's;
"scale" maps 0..65535 onto 0..255 (opt-in: more useful for full-range data, but a different
embedding from the one the endpoint computes from the file, and 12-bit camera frames come out dark).
"""

ImagePreparation = Literal["client", "server"]
"""Who prepares images: "client" (the default) decodes, resizes and crops here, exactly as the served
`CLIPImageProcessor` would, and sends the 224x224 crop losslessly; "server" sends each file as
given (in-memory images as lossless PNGs at their own size) and lets the endpoint prepare it: for
an endpoint whose preprocessing the client cannot match, or a client short of CPU with small files.
"""

MaxConcurrency = Annotated[int, Field(ge=1, le=C.MAX_CONCURRENCY)] | Literal["auto"]
"""`max_concurrency`: a number of requests, or "auto": the ceiling the endpoint itself can serve
(its served entities' provisioned concurrency, plus one queued), read from
`GET /api/2.0/serving-endpoints/{name}` on the client's first call to it.
"""

InputKind = Literal["text", "image"]
"""What an input is: a text, or an image. Backends receive it with each batch."""

OnError = Literal["raise", "mark"]
"""What a call does when an input or a batch fails: stop with the error ("raise"), or embed
everything else and report the failures ("mark", which returns an
[`EmbeddingResult`][clip_client.EmbeddingResult]).
"""


_ENDPOINT_NAME = re.compile(C.ENDPOINT_NAME_PATTERN)


class Settings(BaseModel):
    """Everything that shapes a client's behaviour, validated once at construction (`client.settings`
    shows the values in force). The one source of every setting's default, valid range and meaning:
    the clients' docstrings and docs/configuration.md are checked against it (tests/test_surface.py).

    Per-call overrides (`batch_size`, `normalize`, `progress`) go through
    [`merged`][clip_client.Settings.merged], so a bad override fails with the same message as a bad
    constructor argument. A bad value raises `pydantic.ValidationError` (a `ValueError`) naming the field.
    """

    # defer_build: the validator is built when the first client is, not by `import clip_client`.
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, defer_build=True)

    text_endpoint: str = Field(
        default=C.DEFAULT_TEXT_ENDPOINT, min_length=1, description="Serving endpoint for texts."
    )
    image_endpoint: str = Field(
        default=C.DEFAULT_IMAGE_ENDPOINT, min_length=1, description="Serving endpoint for images."
    )
    text_url: str | None = Field(
        default=None,
        description="Invocations URL of any MLflow scoring server for texts, instead of a workspace "
        "(with image_url; no auth header unless token is given).",
    )
    image_url: str | None = Field(
        default=None,
        description="Invocations URL of any MLflow scoring server for images, instead of a workspace "
        "(with text_url).",
    )
    batch_size: int = Field(default=C.DEFAULT_BATCH_SIZE, ge=1, description="Most records in one request.")
    max_request_bytes: int = Field(
        default=C.DEFAULT_MAX_REQUEST_BYTES,
        ge=1024,
        description="Most bytes in one request body (serving refuses bodies over 16 MB).",
    )
    max_concurrency: MaxConcurrency = Field(
        default=C.DEFAULT_MAX_CONCURRENCY,
        description="Most requests in flight per client, across all its threads and tasks; the live "
        'limit adapts below it on 429/503. "auto": what the endpoint serves at once plus one, read '
        "from its state on the first call (the default when unreadable).",
    )
    max_retries: int = Field(
        default=C.DEFAULT_MAX_RETRIES, ge=0, description="Retries after the first attempt, per batch."
    )
    retry_deadline: float = Field(
        default=C.DEFAULT_RETRY_DEADLINE,
        gt=0,
        description="Seconds one batch may spend, from its first attempt, before no further retry starts.",
    )
    retry_backoff: float = Field(
        default=C.RETRY_INITIAL_WAIT, ge=0, description="Backoff ceiling before the first retry, seconds."
    )
    retry_backoff_max: float = Field(
        default=C.RETRY_MAX_WAIT, ge=0, description="Largest backoff ceiling, seconds."
    )
    timeout: float = Field(
        default=C.DEFAULT_TIMEOUT,
        gt=0,
        description="Most seconds one attempt may take as a whole, however slowly its answer arrives "
        "(connecting: at most 10 s). Not applied to your own http_client.",
    )
    image_size: int = Field(
        default=C.DEFAULT_IMAGE_SIZE, ge=1, le=2048, description="Side of the square crop sent, pixels."
    )
    image_format: ImageFormat = Field(
        default=C.DEFAULT_IMAGE_FORMAT,
        description='Encoding of prepared images: "png" (lossless), "bmp" (lossless, least CPU) or '
        '"jpeg" (smallest, not exact).',
    )
    jpeg_quality: int = Field(
        default=C.DEFAULT_JPEG_QUALITY, ge=1, le=100, description='JPEG quality when image_format="jpeg".'
    )
    max_image_pixels: int = Field(
        default=C.DEFAULT_MAX_IMAGE_PIXELS,
        ge=1,
        description="Images with more pixels are refused before decoding (decompression-bomb guard).",
    )
    fast_decode: bool = Field(
        default=C.DEFAULT_FAST_DECODE,
        description="Let libjpeg decode large JPEGs at a reduced scale before the exact resize (faster, "
        "not bit-exact).",
    )
    high_bit_depth: HighBitDepth = Field(
        default=C.DEFAULT_HIGH_BIT_DEPTH,
        description='16- and 32-bit integer images: "clip" at 255 as the served processor does, or '
        '"scale" 0..65535 onto 0..255.',
    )
    image_preparation: ImagePreparation = Field(
        default=C.DEFAULT_IMAGE_PREPARATION,
        description='Who prepares images: "client" resizes and crops exactly here and sends 224x224; '
        '"server" sends each file as given (PIL images and arrays as lossless PNGs at their own size) '
        "for the endpoint to prepare. No effect in local mode.",
    )
    normalize: bool = Field(default=C.DEFAULT_NORMALIZE, description="L2-normalise every returned row.")
    progress: bool = Field(default=C.DEFAULT_PROGRESS, description="Show a tqdm progress bar per call.")
    cache_namespace: str | None = Field(
        default=None,
        min_length=1,
        description="A name of your own in the embedding cache's key (the served model's version, say): rows "
        "cached under another name are not reused, and the cache needs no answer to confirm the width.",
    )

    @field_validator("text_endpoint", "image_endpoint")
    @classmethod
    def _endpoint_name(cls, value: str) -> str:
        # Databricks serving endpoint names: letters, digits, dashes and underscores. Anything else
        # would change the URL the request (and the token) goes to ("a?b", "a#b", "..").
        if not _ENDPOINT_NAME.fullmatch(value):
            raise ValueError(
                f"{value[:80]!r} is not a serving endpoint name (letters, digits, '-' and '_' only)"
            )
        return value

    @field_validator("max_concurrency", mode="before")
    @classmethod
    def _lower_auto(cls, value: object) -> object:
        return "auto" if isinstance(value, str) and value.strip().lower() == "auto" else value

    @field_validator("image_format", mode="before")
    @classmethod
    def _lower_format(cls, value: object) -> object:
        if isinstance(value, str):
            value = value.lower()
            return "jpeg" if value == "jpg" else value
        return value

    def merged(self, **overrides: object) -> Settings:
        """A copy with the non-None overrides applied and validated.

        Raises:
            pydantic.ValidationError: a value out of range or of the wrong type, shown in the
                message; ValueError instead, with the value masked, when the value is a registered
                credential (a token passed to the wrong option).
        """
        changes = {k: v for k, v in overrides.items() if v is not None}
        if not changes:
            return self
        try:
            return type(self).model_validate({**self.model_dump(), **changes})
        except ValidationError as exc:
            if mentions_a_secret(exc):  # pydantic quotes the input value: never a credential
                raise ValueError(redact(str(exc))) from None
            raise


class ServingErrorBody(BaseModel):
    """The JSON error body of Databricks Model Serving and MLflow's scoring server."""

    model_config = ConfigDict(extra="allow", defer_build=True)

    error_code: str | None = None
    message: str | None = None


@dataclass(frozen=True)
class EmbeddingFailure:
    """One input that could not be embedded, and why."""

    index: int
    error: BaseException


@dataclass
class EmbeddingResult:
    """What `embed_*(..., on_error="mark")` returns: every row, failures marked rather than raised.

    `embeddings` has one float32 row per input, in input order; the rows of failed inputs are NaN.
    `failures` lists each failed input's index and error, in index order.
    """

    embeddings: EmbeddingArray
    failures: list[EmbeddingFailure] = field(default_factory=list)

    @property
    def ok(self) -> npt.NDArray[np.bool_]:
        """True for each row that holds a real embedding."""
        mask = np.ones(len(self.embeddings), dtype=bool)
        mask[[f.index for f in self.failures]] = False
        return mask

    def __len__(self) -> int:
        return len(self.embeddings)

    def raise_for_failures(self) -> EmbeddingArray:
        """The embeddings, or the first failure's error (with the count of others in a note)."""
        if not self.failures:
            return self.embeddings
        first = self.failures[0].error
        note = f"{len(self.failures) - 1} other input(s) failed too"
        if (
            len(self.failures) > 1
            and hasattr(first, "add_note")
            and note not in getattr(first, "__notes__", ())
        ):
            first.add_note(note)  # once, however often this is called
        raise first


@dataclass(frozen=True)
class ClientStats:
    """Counters of one client since it was created (`client.stats`)."""

    requests: int
    """HTTP attempts sent (or forward passes run, in local mode)."""
    retries: int
    """Attempts that were retries of a failed attempt."""
    overloads: int
    """429 and 503 answers, which lower the concurrency limit."""
    splits: int
    """Batches split in half after the endpoint refused them as too large (or, with
    `on_error="mark"`, to isolate the input a 400 was about)."""
    concurrency_limit: int
    """Requests the client allows in flight right now (adaptive, at most `max_concurrency`)."""
    max_concurrency: int
    """The ceiling of that limit: the `max_concurrency` setting, or with `"auto"` the number the
    endpoint's state gave (the largest of the endpoints called so far; 5 until the first call, and
    when the state cannot be read)."""
    cache_hits: int = 0
    """Inputs found in the embedding cache (`cache=`): they cost no request."""
    cache_misses: int = 0
    """Inputs looked up in the cache and not found (sent, then stored once embedded). Both stay 0
    without a cache."""
    cache_rejected: int = 0
    """Cached rows refused and recomputed (counted among the misses too): bytes damaged in the file
    (their checksum fails), values that are not finite, or a width other than the backend's answers
    (rows of an endpoint's previous model). docs/caching.md says when each happens."""
