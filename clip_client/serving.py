"""The two MLflow pyfunc models behind `clip-text-embedding` and `clip-image-embedding`.

Each model is [`LocalBackend`][clip_client.LocalBackend] (the very code of local mode) behind MLflow's
`predict`; the image model prepares images with the client's own preparation (decode, EXIF
orientation, Pillow-exact shortest-edge BICUBIC resize and floor-offset centre crop), so what it
computes does not depend on which transformers image processor the serving image happens to have.
The endpoint, the client pointed at it and local mode therefore agree to the bit on the same
hardware and dtype when the inputs travel in batches of the same size, and within float32 rounding
(up to 8.3e-7 per value measured on ViT-L/14 on CPU) across batch sizes: docs/deploy.md.

Wire format (what Databricks Model Serving and `mlflow models serve` pass to `predict`): a
DataFrame with one string column `input`: texts, or the base64 of encoded images (JPEG, PNG...).
The answer is float32 `(n, dim)`: 768 for `openai/clip-vit-large-patch14`, not normalised.

Needs the `mlflow` extra: `pip install "clip-serving-client[mlflow]"`. Logging, registering and
deploying: `clip_client.deploy`; the guide: docs/deploy.md.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import os
import re
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ._core.images import ImageOptions, prepare_image
from .errors import ClipClientError, ConfigurationError, InvalidInputError
from .types import EmbeddingArray, InputKind

INSTALL_HINT = 'pip install "clip-serving-client[mlflow]"'
"""The install hint of every ImportError about the extra."""

try:  # the pyfunc model subclasses MLflow's PythonModel: this module needs MLflow from the start
    import pandas as pd
    from mlflow.pyfunc.model import PythonModel, PythonModelContext
except ImportError as _missing:
    raise ImportError(
        f"clip_client.serving needs MLflow ({_missing.name} is missing): {INSTALL_HINT}"
    ) from _missing

if TYPE_CHECKING:
    from mlflow.models import ModelSignature

    from .local import LocalBackend

__all__ = [
    "ARTIFACT_KEY",
    "INPUT_COLUMN",
    "MODEL_CODE",
    "SERVING_DTYPES",
    "ClipEmbeddingModel",
    "EmbeddingPredictor",
    "check_serving_options",
    "log_model",
    "model_signature",
    "resolve_checkpoint",
    "save_model",
]

INPUT_COLUMN = "input"
"""The one input column of both models (the client sends `{"dataframe_records": [{"input": ...}]}`)."""
ARTIFACT_KEY = "clip"
"""The name of the checkpoint folder among the logged model's artifacts."""
MODEL_CODE = Path(__file__).with_name("_mlflow_model.py")
"""The models-from-code file that MLflow runs to build the model at load time (`set_model`)."""


def require_mlflow() -> Any:
    """The `mlflow` module, or an `ImportError` saying which extra to install."""
    try:
        import mlflow
    except ImportError as exc:
        raise ImportError(
            f"clip_client.serving and clip_client.deploy need MLflow ({exc.name} is missing): {INSTALL_HINT}"
        ) from exc
    return mlflow


class EmbeddingPredictor:
    """The body of both pyfunc models, free of MLflow: a batch of wire inputs -> float32 rows.

    Args:
        kind: `"text"` or `"image"`.
        backend: the loaded model ([`LocalBackend`][clip_client.LocalBackend]).
        max_image_pixels: images with more pixels are refused before decoding (the client's
            decompression-bomb guard, default 89,478,485 as Pillow's own).

    Texts are truncated to CLIP's 77 tokens by the tokenizer (never an error); an empty text embeds
    as the model embeds it (start and end tokens only). Images are decoded and prepared exactly as
    the client prepares them (`clip_client._core.images.prepare_image`), so a 224x224 crop the
    client sent and the whole file it was cut from give the same row.
    """

    def __init__(
        self, kind: InputKind, backend: LocalBackend, *, max_image_pixels: int | None = None
    ) -> None:
        if kind not in ("text", "image"):
            raise ValueError(f"kind must be 'text' or 'image', got {kind!r}")
        self.kind: InputKind = kind
        self.backend = backend
        options: dict[str, Any] = {"size": backend.image_size, "want": "pixels"}
        if max_image_pixels is not None:
            options["max_pixels"] = max_image_pixels
        self._image_options = ImageOptions(**options)

    def predict(self, model_input: Any) -> EmbeddingArray:
        """Embed one batch.

        Args:
            model_input: a `pandas.DataFrame` with an `input` column (or one unnamed column,
                what MLflow makes of a list), a `dict` with an `input` list, a
                list/tuple/`pandas.Series`/1-d `numpy` array of strings, or one string. Texts
                for the text model; for the image model the base64 of an encoded image (ASCII
                whitespace, as in MIME-wrapped base64, is ignored; a `data:image/...;base64,` URI
                works too).

        Returns:
            float32 `(n, dim)`, one row per input, in input order (`(0, dim)` for none).

        Raises:
            InvalidInputError: a DataFrame with named columns but no `input` one; an input
                that is not a string, or (image model) not base64 of an image that decodes
                (`ImageDecodeError`), or a `data:` URI whose media type is not `image/*`;
                the message starts `row {i}:` with the row's 0-based position in this batch.
                Serving answers it with HTTP 400.
        """
        values = _input_values(model_input)
        if not values:
            return np.zeros((0, self.backend.dim), dtype=np.float32)
        if self.kind == "text":
            payloads: list[Any] = [_text(v, i) for i, v in enumerate(values)]
        else:
            payloads = [self._pixels(v, i) for i, v in enumerate(values)]
        rows = self.backend.embed(self.kind, payloads)
        return np.ascontiguousarray(rows, dtype=np.float32)

    def _pixels(self, value: object, row: int) -> Any:
        if not isinstance(value, str):
            raise _row_error(row, f"images must be base64 strings, got {type(value).__name__}")
        # MIME base64 (`base64.encodebytes`, RFC 2045) wraps lines: ASCII whitespace is dropped
        # before the strict decode; any other character outside the alphabet is still an error.
        text = value.strip()
        head, comma, body = text.partition(",")
        is_uri = text[:5].lower() == "data:"
        if is_uri:
            media = head[5:].split(";")[0].strip().lower()
            if not comma or not media.startswith("image/"):
                raise _row_error(
                    row,
                    f"a data URI of media type {media or 'text/plain'!r} is not an image; send "
                    "'data:image/jpeg;base64,...' (or image/png...), or the bare base64 of the file",
                )
            text = f"{head},{_ASCII_WHITESPACE.sub('', body)}"
        else:
            text = _ASCII_WHITESPACE.sub("", text)
        try:
            data: str | bytes = text if is_uri else base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise _row_error(
                row, f"not valid base64 ({exc}); send the base64 of a JPEG or PNG file"
            ) from None
        if not data:
            raise _row_error(row, "empty image: send the base64 of a JPEG or PNG file")
        try:
            prepared = prepare_image(data, None, self._image_options)
        except ClipClientError as exc:
            reason = getattr(exc, "reason", str(exc))
            raise _row_error(row, reason) from exc
        return prepared.pixels


_ASCII_WHITESPACE = re.compile(r"[ \t\n\r\f\v]+")
"""The whitespace of MIME-wrapped base64 (spaces, tabs, line breaks); not Unicode's wider set."""


def _row_error(row: int, reason: str) -> InvalidInputError:
    error = InvalidInputError(f"row {row}: {reason}")
    error.index = row
    return error


def _text(value: object, row: int) -> str:
    if isinstance(value, str):
        return value
    raise _row_error(row, f"texts must be strings, got {type(value).__name__}")


def _input_values(model_input: Any) -> list[object]:
    """The inputs as a list, from any shape MLflow hands to `predict`."""
    if isinstance(model_input, str):
        return [model_input]
    if isinstance(model_input, dict):
        if INPUT_COLUMN not in model_input:
            raise InvalidInputError(f"expected a {INPUT_COLUMN!r} key, got {sorted(map(str, model_input))}")
        model_input = model_input[INPUT_COLUMN]
        if isinstance(model_input, str):
            return [model_input]
    columns = getattr(model_input, "columns", None)
    if columns is not None:  # a pandas DataFrame
        names = list(columns)
        if INPUT_COLUMN in names:
            return list(model_input[INPUT_COLUMN])
        if names == [0]:  # no name: a list, array or Series that MLflow turned into a DataFrame
            return list(model_input[0])
        raise InvalidInputError(
            f'expected a DataFrame with an {INPUT_COLUMN!r} column ({{"dataframe_records": '
            f'[{{"{INPUT_COLUMN}": ...}}]}}, as the only column: MLflow passes the model only the '
            f"first one), got columns {[str(n) for n in names]}"
        )
    if isinstance(model_input, np.ndarray):
        if model_input.ndim != 1:
            raise InvalidInputError(f"expected a 1-d array of strings, got shape {model_input.shape}")
        return list(model_input.tolist())
    if isinstance(model_input, Sequence) or hasattr(model_input, "tolist"):
        values = model_input.tolist() if hasattr(model_input, "tolist") else list(model_input)
        return [v[INPUT_COLUMN] if isinstance(v, dict) and INPUT_COLUMN in v else v for v in values]
    raise InvalidInputError(
        f"expected a DataFrame with an {INPUT_COLUMN!r} column or a list of strings, "
        f"got {type(model_input).__name__}"
    )


class ClipEmbeddingModel(PythonModel):
    """The MLflow pyfunc model of one endpoint: text or image, as its `model_config` says.

    Built by MLflow from `MODEL_CODE` (models from code) when the model loads; it reads
    `model_config`: `kind` (`"text"` or `"image"`), optionally `device` (default: CUDA
    when the serving machine has it, else CPU), `dtype` (default: float16 on CUDA, float32 on
    CPU) and `batch_size` (inputs per forward pass). The checkpoint is the `clip` artifact, so
    serving never asks the Hugging Face hub for anything.
    """

    def __init__(self) -> None:
        self.predictor: EmbeddingPredictor | None = None

    def load_context(self, context: PythonModelContext) -> None:
        """Load the checkpoint from the model's artifacts onto the serving machine's device.

        Raises:
            ValueError: `model_config` has no valid `kind`.
            ModelLoadError: the artifact folder is not a loadable CLIP checkpoint.
        """
        from .local import LocalBackend

        config = dict(context.model_config or {})
        kind = config.get("kind")
        if kind not in ("text", "image"):
            raise ValueError(f"model_config['kind'] must be 'text' or 'image', got {kind!r}")
        folder = context.artifacts[ARTIFACT_KEY]
        backend = LocalBackend(
            folder,
            device=config.get("device"),
            dtype=config.get("dtype"),
            batch_size=config.get("batch_size"),
        )
        self.predictor = EmbeddingPredictor(kind, backend, max_image_pixels=config.get("max_image_pixels"))

    def predict(
        self,
        context: PythonModelContext,
        model_input: pd.DataFrame,
        params: dict[str, Any] | None = None,
    ) -> EmbeddingArray:
        """Embed one batch: see [`EmbeddingPredictor.predict`][clip_client.serving.EmbeddingPredictor.predict]
        for every input shape taken (the annotation says DataFrame, what serving passes, and keeps MLflow from
        converting inputs).

        Returns:
            float32 `(n, dim)`.

        Raises:
            mlflow.exceptions.MlflowException: `INVALID_PARAMETER_VALUE` (HTTP 400 from a scoring
                server) for a bad input, its message naming the row; `RuntimeError` if the model
                was never loaded.
        """
        if self.predictor is None:
            raise RuntimeError("the model is not loaded: MLflow calls load_context() before predict()")
        try:
            return self.predictor.predict(model_input)
        except InvalidInputError as exc:
            from mlflow.exceptions import MlflowException
            from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

            raise MlflowException(str(exc), error_code=INVALID_PARAMETER_VALUE) from exc


def model_signature(dim: int) -> ModelSignature:
    """The logged signature of both models: one string column in, a float32 tensor of shape
    `(-1, dim)` out. Databricks SQL's `ai_query` reads it and returns `ARRAY<FLOAT>` without a
    `returnType` (docs/deploy.md).

    The input column is unnamed, so that MLflow's schema check lets through both the DataFrame of
    the wire protocol (its one column `input`) and a plain list of strings: a column named
    `input` makes MLflow refuse every list, array and `{"inputs": [...]}` body ("missing inputs
    ['input']"). The cost: MLflow checks an unnamed schema by position and hands the model only the
    first column of a DataFrame, so the model cannot see an `input` column that comes second; it
    refuses any first column named otherwise (HTTP 400), rather than embed the wrong one. MLflow
    also refuses an empty list before the model sees it ("missing inputs"); an empty DataFrame with
    an `input` column gives `(0, dim)`."""
    require_mlflow()
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema, TensorSpec

    return ModelSignature(
        inputs=Schema([ColSpec("string")]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, dim))]),
    )


def checkpoint_dim(folder: str | os.PathLike[str]) -> int:
    """The embedding width of a CLIP checkpoint folder (`projection_dim` of its config.json)."""
    config = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
    return int(config.get("projection_dim", 512))


_RUNTIME_DISTRIBUTIONS = (
    "mlflow",
    "torch",
    "transformers",
    "safetensors",
    "tokenizers",
    "numpy",
    "pillow",
    "httpx",
    "tenacity",
    "pydantic",
    "databricks-sdk",
    "tqdm",
)
"""The distributions the served models import, pinned to this environment's versions (public part:
`2.5.1+cpu` -> `2.5.1`, so that the serving image installs the build for its own hardware).
"""
_CHECKPOINT_FILES = ["*.json", "*.txt", "*.safetensors"]
"""The checkpoint files a model needs (what `hf download --include` fetches in docs/local.md)."""


def pip_requirements() -> list[str]:
    """The logged models' pip requirements: what clip_client needs at serving time (the package
    itself travels as code with the model, since it is not on every index), pinned to the
    versions installed here."""
    from importlib.metadata import PackageNotFoundError, version

    from packaging.version import Version

    pins = []
    for dist in _RUNTIME_DISTRIBUTIONS:
        try:
            pins.append(f"{dist}=={Version(version(dist)).public}")
        except PackageNotFoundError:
            pins.append(dist)
    return pins


def resolve_checkpoint(model: str | os.PathLike[str]) -> Path:
    """A local folder holding the CLIP checkpoint `model`: the folder itself, or the Hugging Face
    cache's snapshot of a hub id (downloaded once when it is not there; json, txt and safetensors
    files only).

    Raises:
        ModelLoadError: the folder is not a CLIP checkpoint, or the hub id cannot be fetched.
    """
    from .errors import ModelLoadError
    from .local import _check_checkpoint_folder

    folder = Path(model).expanduser()
    if not folder.is_dir():
        name = os.fspath(model)
        if name.startswith((".", "~", "/")) or name.count("/") > 1:
            raise ModelLoadError(
                f"model={name!r}: no such folder, and not a hub id like 'openai/clip-vit-large-patch14'"
            )
        from huggingface_hub import snapshot_download

        try:
            folder = Path(snapshot_download(name, allow_patterns=_CHECKPOINT_FILES))
        except Exception as exc:
            raise ModelLoadError(
                f"could not fetch CLIP model {name!r} from the Hugging Face hub "
                f"({type(exc).__name__}: {exc}); download it where the hub is reachable "
                "(`hf download ... --local-dir FOLDER`) and pass the folder"
            ) from exc
    _check_checkpoint_folder(folder)
    return folder


def _model_arguments(kind: InputKind, folder: Path, code_dir: Path, **config: Any) -> dict[str, Any]:
    """What `mlflow.pyfunc.save_model` / `log_model` take for one model, both calls alike."""
    import shutil

    package = Path(__file__).resolve().parent
    shutil.copytree(package, code_dir / "clip_client", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    model_config = {"kind": kind, **{k: v for k, v in config.items() if v is not None}}
    return {
        "python_model": str(MODEL_CODE),
        "artifacts": {ARTIFACT_KEY: str(folder)},
        "model_config": model_config,
        "signature": model_signature(checkpoint_dim(folder)),
        "code_paths": [str(code_dir / "clip_client")],
        "pip_requirements": pip_requirements(),
    }


SERVING_DTYPES = ("float32", "float16", "bfloat16")
"""The dtypes a served model takes (`model_config["dtype"]`), as local mode names them."""


def check_serving_options(device: object, dtype: object) -> tuple[str | None, str | None]:
    """`device` and `dtype` checked before a model is written or logged, as the served model
    reads them at load time: `(device, dtype)` normalised (`"CUDA:0"` -> `"cuda:0"`,
    `"fp16"` -> `"float16"`), None kept.

    The device is not looked for on this machine: a model exported on a laptop may serve on a GPU.

    Raises:
        ValueError: `device` is not a CPU or CUDA torch device string (`"cpu"`, `"cuda"`,
            `"cuda:1"`), or `dtype` not one of `SERVING_DTYPES` (or an alias local mode
            takes: `fp16`, `half`...).
    """
    if device is not None:
        import torch

        try:
            parsed = torch.device(str(device).strip().lower()) if isinstance(device, str) else None
        except (RuntimeError, TypeError, ValueError):
            parsed = None
        if parsed is None or parsed.type not in ("cpu", "cuda"):
            raise ConfigurationError(
                f"device={device!r} is not a serving device: 'cpu', 'cuda' or 'cuda:N'",
                setting="device",
                reason=f"{device!r} is not a serving device: 'cpu', 'cuda' or 'cuda:N'",
            )
        device = str(parsed)
    if dtype is not None:
        from .local import _DTYPES

        name = _DTYPES.get(dtype.strip().lower().removeprefix("torch.")) if isinstance(dtype, str) else None
        if name is None:
            raise ValueError(f"dtype={dtype!r} is not one of {', '.join(SERVING_DTYPES)}")
        dtype = name
    return device, dtype


@contextlib.contextmanager
def _quiet_mlflow() -> Iterator[None]:
    """MLflow's noise while a model is written: the "input example was not provided" warning (the
    signature is given; an example would cost a model load) and the artifact progress bars."""
    from mlflow.environment_variables import MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR

    key = MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR.name
    saved = os.environ.get(key)
    os.environ[key] = "false"
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"(?s).*[Ii]nput example was not provided")
            yield
    finally:
        if saved is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = saved


def _check_kind(kind: object) -> InputKind:
    if kind not in ("text", "image"):
        raise ValueError(f"kind must be 'text' or 'image', got {kind!r}")
    return kind


@contextlib.contextmanager
def _pyfunc_arguments(
    kind: object, model: str | os.PathLike[str], device: object, dtype: object
) -> Iterator[tuple[Any, dict[str, Any]]]:
    """What `save_model` and `log_model` both do first: check every argument (before
    anything is written or logged), then give MLflow and `mlflow.pyfunc`'s keyword arguments for
    the model, its code copied into a folder that lives for the block, MLflow kept quiet."""
    import tempfile

    mlflow = require_mlflow()
    checked_kind = _check_kind(kind)
    checked_device, checked_dtype = check_serving_options(device, dtype)
    folder = resolve_checkpoint(model)
    with tempfile.TemporaryDirectory(prefix="clip-client-code-") as code, _quiet_mlflow():
        yield (
            mlflow,
            _model_arguments(checked_kind, folder, Path(code), device=checked_device, dtype=checked_dtype),
        )


def save_model(
    kind: InputKind,
    model: str | os.PathLike[str],
    path: str | os.PathLike[str],
    *,
    device: str | None = None,
    dtype: str | None = None,
) -> Path:
    """Write one pyfunc model as an MLflow model folder, which `mlflow models serve -m PATH
    --env-manager local` serves and `mlflow.pyfunc.load_model(PATH)` loads.

    Args:
        kind: `"text"` or `"image"`.
        model: a CLIP checkpoint folder, or a hub id (fetched into the Hugging Face cache once).
            Its files are copied into the model folder: serving needs no hub.
        path: the folder to write; it must not exist, or be empty.
        device: the serving device (`"cuda"`, `"cpu"`); None picks CUDA when there is one.
        dtype: `"float32"`, `"float16"`...; None: float16 on CUDA, float32 on CPU.

    Returns:
        `path`, as a `Path`.

    Raises:
        ValueError: `kind` is neither `"text"` nor `"image"`, or a bad `device`/`dtype`
            (`check_serving_options`), before anything is written.
        ModelLoadError: `model` is not a CLIP checkpoint, or cannot be fetched.
        mlflow.exceptions.MlflowException: `path` exists and is not empty.
        ImportError: the `mlflow` extra is not installed.
    """
    with _pyfunc_arguments(kind, model, device, dtype) as (mlflow, arguments):
        mlflow.pyfunc.save_model(os.fspath(path), **arguments)
    return Path(path)


def log_model(
    kind: InputKind,
    model: str | os.PathLike[str],
    *,
    name: str | None = None,
    registered_model_name: str | None = None,
    device: str | None = None,
    dtype: str | None = None,
) -> Any:
    """Log one pyfunc model to the active MLflow run (one is started when none is), and register
    it when `registered_model_name` is given (in the registry that `mlflow.get_registry_uri()`
    names).

    Args:
        kind: `"text"` or `"image"`.
        model: a CLIP checkpoint folder or a hub id; its files are logged as the `clip` artifact.
        name: the logged model's name (default `clip_text_embedding` / `clip_image_embedding`).
        registered_model_name: register the model under this name (Unity Catalog:
            `catalog.schema.model`).
        device, dtype: as `save_model`.

    Returns:
        MLflow's `ModelInfo`: `model_uri`, `registered_model_version`...

    Raises:
        ValueError, ModelLoadError, ImportError: as `save_model`.
        mlflow.exceptions.MlflowException: the tracking server or registry refused the model.
    """
    with _pyfunc_arguments(kind, model, device, dtype) as (mlflow, arguments):
        return mlflow.pyfunc.log_model(
            name=name or f"clip_{_check_kind(kind)}_embedding",
            registered_model_name=registered_model_name,
            **arguments,
        )
