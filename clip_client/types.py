"""Public types: what an image input may be, the client's settings, and the wire payloads."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Literal, Union

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, field_validator

from . import _constants as C

if TYPE_CHECKING:
    from PIL import Image

__all__ = [
    "EmbeddingArray",
    "ImageFormat",
    "ImageInput",
    "InvocationRecord",
    "InvocationRequest",
    "InvocationResponse",
    "ServingErrorBody",
    "Settings",
]

#: Anything ``embed_image(s)`` accepts: a file path (``str`` or ``os.PathLike``), a
#: ``data:image/...;base64,`` URI, encoded file bytes, a PIL image, or a uint8 array (HxW, HxWx1/3/4).
ImageInput = Union[
    str,
    "os.PathLike[str]",
    bytes,
    bytearray,
    memoryview,
    "Image.Image",
    "npt.NDArray[np.uint8]",
]

#: The result of every embed call: float32, one row per input, in input order.
EmbeddingArray = npt.NDArray[np.float32]

ImageFormat = Literal["png", "jpeg"]


class Settings(BaseModel):
    """Everything that shapes a client's behaviour, validated once at construction.

    Per-call overrides (``batch_size``, ``normalize``, ``progress``) go through :meth:`merged`, so a
    bad override fails with the same message as a bad constructor argument.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    text_endpoint: str = Field(default=C.DEFAULT_TEXT_ENDPOINT, min_length=1)
    image_endpoint: str = Field(default=C.DEFAULT_IMAGE_ENDPOINT, min_length=1)
    batch_size: int = Field(default=C.DEFAULT_BATCH_SIZE, ge=1)
    max_request_bytes: int = Field(default=C.DEFAULT_MAX_REQUEST_BYTES, ge=1024)
    max_concurrency: int = Field(default=C.DEFAULT_MAX_CONCURRENCY, ge=1, le=256)
    max_retries: int = Field(default=C.DEFAULT_MAX_RETRIES, ge=0)
    retry_deadline: float = Field(default=C.DEFAULT_RETRY_DEADLINE, gt=0)
    retry_backoff: float = Field(default=C.RETRY_INITIAL_WAIT, ge=0)
    retry_backoff_max: float = Field(default=C.RETRY_MAX_WAIT, ge=0)
    timeout: float = Field(default=C.DEFAULT_TIMEOUT, gt=0)
    image_size: int = Field(default=C.DEFAULT_IMAGE_SIZE, ge=1)
    image_format: ImageFormat = "png"
    jpeg_quality: int = Field(default=C.DEFAULT_JPEG_QUALITY, ge=1, le=100)
    max_image_pixels: int = Field(default=C.DEFAULT_MAX_IMAGE_PIXELS, ge=1)
    normalize: bool = False
    progress: bool = False

    @field_validator("text_endpoint", "image_endpoint")
    @classmethod
    def _endpoint_name(cls, value: str) -> str:
        if "/" in value or value != value.strip():
            raise ValueError(f"{value!r} is not a serving endpoint name (no slashes or surrounding spaces)")
        return value

    @field_validator("image_format", mode="before")
    @classmethod
    def _lower_format(cls, value: object) -> object:
        if isinstance(value, str):
            value = value.lower()
            return "jpeg" if value == "jpg" else value
        return value

    def merged(self, **overrides: object) -> Settings:
        """A copy with the non-None overrides applied and validated."""
        changes = {k: v for k, v in overrides.items() if v is not None}
        if not changes:
            return self
        return type(self).model_validate({**self.model_dump(), **changes})


class InvocationRecord(BaseModel):
    """One row of ``dataframe_records``: a text, or the base64 of an encoded image."""

    model_config = ConfigDict(extra="forbid")

    input: str


class InvocationRequest(BaseModel):
    """The body POSTed to ``/serving-endpoints/{name}/invocations``."""

    model_config = ConfigDict(extra="forbid")

    dataframe_records: list[InvocationRecord]


class InvocationResponse(BaseModel):
    """The body a serving endpoint answers with: one embedding row per record, in order."""

    predictions: list[list[float]]


class ServingErrorBody(BaseModel):
    """The JSON error body of Databricks Model Serving and MLflow's scoring server."""

    model_config = ConfigDict(extra="allow")

    error_code: str | None = None
    message: str | None = None
