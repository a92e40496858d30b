"""``LocalBackend``: the served CLIP model, in-process on CUDA or CPU.

It answers the same two calls as the serving endpoints (a batch of texts, a batch of prepared
224x224 RGB images -> float32 rows), so the client's input handling, batching, ordering and
normalisation are the very code the remote path runs, and both paths see identical pixels.

Needs the ``local`` extra: ``pip install "clip-serving-client[local]"``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

import numpy as np

from ._concurrency import CallContext
from ._constants import LOGGER_NAME
from ._core import FloatArray, Kind
from ._images import PreparedImage
from .errors import ModelLoadError

if TYPE_CHECKING:
    import torch

__all__ = ["DEFAULT_LOCAL_MODEL", "LocalBackend", "ModelLoadError"]

logger = logging.getLogger(LOGGER_NAME)

DEFAULT_LOCAL_MODEL = "openai/clip-vit-large-patch14"
#: CLIP's text context: every text is truncated to this many tokens (never an error for long text).
TEXT_CONTEXT = 77
#: Without compile, a batch is padded to its longest text only: CLIP's causal text tower gives the
#: same features whatever the padding, and short captions then do not pay for 77 positions
#: (padding to 77 made them 2.2x slower, a bucket of 8 tokens still 15%: benchmarks/local_gpu.py).
#: With compile=True every batch is padded to exactly TEXT_CONTEXT: one shape, one graph.
_OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
_OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_DTYPES = {
    "float32": "float32",
    "fp32": "float32",
    "float16": "float16",
    "fp16": "float16",
    "half": "float16",
}
_DTYPES |= {"bfloat16": "bfloat16", "bf16": "bfloat16"}


def _require_torch() -> tuple[Any, Any]:
    try:
        import torch
        import transformers
    except ImportError as exc:
        raise ImportError(
            f"local mode needs PyTorch and transformers ({exc.name} is missing): "
            "pip install 'clip-serving-client[local]'"
        ) from exc
    return torch, transformers


class LocalBackend:
    """CLIP (``transformers.CLIPModel``) in this process.

    Args:
        model: a hub id, loaded through the normal Hugging Face cache (so ``HF_HUB_OFFLINE=1`` works
            once the weights are cached), or a local folder in the same layout.
        device: ``"cuda"``, ``"cuda:1"``, ``"cpu"``...; None picks CUDA when available, else CPU.
        dtype: ``"float16"``, ``"bfloat16"``, ``"float32"`` or a ``torch.dtype``; None picks float16 on
            CUDA and float32 on CPU.
        batch_size: most inputs per forward pass (default 128 on CUDA, 32 on CPU); larger batches
            from the client are split.
        compile: wrap the two towers in ``torch.compile``; batches are then padded to ``batch_size``
            so the compiled graphs see one shape.
    """

    image_input: Literal["encoded", "pixels"] = "pixels"
    max_request_bytes: int | None = None

    def __init__(
        self,
        model: str | os.PathLike[str] = DEFAULT_LOCAL_MODEL,
        *,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        batch_size: int | None = None,
        compile: bool = False,
    ) -> None:
        torch, transformers = _require_torch()
        self._torch = torch
        self.device = _resolve_device(device)
        self.dtype = _resolve_dtype(dtype, self.device)
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size or (128 if self.device.type == "cuda" else 32)
        self.model_name = os.fspath(model)
        self.compile = compile
        self._model, self._tokenizer = _load(transformers, self.model_name, self.device, self.dtype)
        vision = self._model.config.vision_config
        self.image_size: int = int(vision.image_size)
        #: Width of an embedding row (what an empty input returns, too).
        self.dim: int = int(self._model.config.projection_dim)
        mean, std = _normalization(self.model_name)
        shape = (1, 3, 1, 1)
        self._mean = torch.tensor(mean, dtype=torch.float32, device=self.device).view(shape)
        self._std = torch.tensor(std, dtype=torch.float32, device=self.device).view(shape)
        self._text_tower = self._text_features
        self._image_tower = self._image_features
        if compile:
            self._text_tower = torch.compile(self._text_features, dynamic=False)
            self._image_tower = torch.compile(self._image_features, dynamic=False)
        self._pin = self.device.type == "cuda"
        # One forward pass at a time on the device; tokenising, stacking and host-to-device copies of
        # the next batch happen outside the lock, overlapping the current one.
        self._device_lock = threading.Lock()
        self._passes = 0

    def __repr__(self) -> str:
        return f"LocalBackend(model={self.model_name!r}, device='{self.device}', dtype={self.dtype})"

    # -- Backend protocol ----------------------------------------------------------------------------

    def payload(self, kind: Kind, item: str | PreparedImage) -> tuple[Any, int]:
        if isinstance(item, str):
            return item, 0
        if item.pixels is None:
            raise ValueError("LocalBackend needs images prepared as pixels")
        if item.pixels.shape != (self.image_size, self.image_size, 3):
            raise ValueError(
                f"prepared image is {item.pixels.shape[1]}x{item.pixels.shape[0]} but the model takes "
                f"{self.image_size}x{self.image_size}; create the client with image_size={self.image_size}"
            )
        return item.pixels, 0

    def embed(self, kind: Kind, payloads: Sequence[Any], ctx: CallContext | None = None) -> FloatArray:
        parts = []
        for start in range(0, len(payloads), self.batch_size):
            if ctx is not None:
                ctx.check()
            parts.append(self._embed_chunk(kind, payloads[start : start + self.batch_size]))
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    async def aembed(self, kind: Kind, payloads: Sequence[Any], ctx: CallContext | None = None) -> FloatArray:
        return await asyncio.to_thread(self.embed, kind, payloads, ctx)

    def stats(self) -> dict[str, int]:
        """Forward passes run so far (``requests`` in ``client.stats``)."""
        return {"requests": self._passes}

    def close(self) -> None:
        pass

    async def aclose(self) -> None:
        pass

    # -- the model -----------------------------------------------------------------------------------

    def _embed_chunk(self, kind: Kind, chunk: Sequence[Any]) -> FloatArray:
        torch = self._torch
        n = len(chunk)
        pad = self.batch_size - n if self.compile else 0
        with torch.inference_mode():
            if kind == "text":
                inputs = self._tokenize(list(chunk) + [chunk[-1]] * pad)
                with self._device_lock:
                    out = self._text_tower(inputs["input_ids"], inputs["attention_mask"])
                    self._passes += 1
            else:
                pixels = self._to_device(np.stack(list(chunk) + [chunk[-1]] * pad))
                with self._device_lock:
                    out = self._image_tower(pixels)
                    self._passes += 1
            result: FloatArray = out[:n].float().cpu().numpy()
        return result

    def _tokenize(self, texts: list[str]) -> dict[str, Any]:
        enc = self._tokenizer(
            texts,
            truncation=True,
            max_length=TEXT_CONTEXT,
            padding="max_length" if self.compile else "longest",
            return_tensors="pt",
        )
        return {k: self._copy(v) for k, v in enc.items() if k in ("input_ids", "attention_mask")}

    def _to_device(self, stack: np.ndarray[Any, Any]) -> torch.Tensor:
        """uint8 NHWC on the host -> normalised NCHW in the model's dtype on the device, in one
        batched operation (the uint8 tensor, a quarter of float32's bytes, is what crosses the bus)."""
        pixels = self._copy(self._torch.from_numpy(stack))
        x = pixels.permute(0, 3, 1, 2).float().mul_(1.0 / 255.0)
        x = x.sub_(self._mean).div_(self._std)
        return x.to(self.dtype)

    def _copy(self, tensor: torch.Tensor) -> torch.Tensor:
        if self._pin:
            return tensor.pin_memory().to(self.device, non_blocking=True)
        return tensor.to(self.device)

    def _text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = self._model.get_text_features(input_ids=input_ids, attention_mask=attention_mask)
        return cast("torch.Tensor", _features(out))

    def _image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return cast("torch.Tensor", _features(self._model.get_image_features(pixel_values=pixel_values)))


def _features(out: Any) -> Any:
    """transformers 4.x returns the projected features; 5.x a BaseModelOutputWithPooling."""
    return out if not hasattr(out, "pooler_output") else out.pooler_output


# --------------------------------------------------------------------------------------------------
# Loading


def _resolve_device(device: Any) -> torch.device:
    import torch

    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device={device!r} is not a torch device ('cuda', 'cuda:0', 'cpu'...)") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        raise ValueError(
            f"device={device!r} but no CUDA GPU is available to PyTorch {torch.__version__} ({build}); "
            "use device='cpu', or install a CUDA build of torch on a GPU machine"
        )
    if resolved.type == "cuda" and resolved.index is not None and resolved.index >= torch.cuda.device_count():
        raise ValueError(f"device={device!r} but only {torch.cuda.device_count()} CUDA device(s) are visible")
    return resolved


def _resolve_dtype(dtype: Any, device: torch.device) -> torch.dtype:
    import torch

    if dtype is None:
        return torch.float16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    name = _DTYPES.get(str(dtype).lower().removeprefix("torch."))
    if name is None:
        raise ValueError(f"dtype={dtype!r} is not one of float32, float16, bfloat16")
    resolved: torch.dtype = getattr(torch, name)
    return resolved


def _load(transformers: Any, model: str, device: Any, dtype: Any) -> tuple[Any, Any]:
    folder = Path(model).expanduser()
    if folder.is_dir():
        _check_checkpoint_folder(folder)
    elif model.startswith((".", "~", "/")) or model.count("/") > 1:
        raise ModelLoadError(
            f"model={model!r}: no such folder, and it is not a hub id like 'openai/clip-vit-large-patch14'"
        )
    try:
        clip = transformers.CLIPModel.from_pretrained(model, attn_implementation="sdpa")
        tokenizer = transformers.AutoTokenizer.from_pretrained(model)
    except OSError as exc:
        offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0") or os.environ.get(
            "TRANSFORMERS_OFFLINE", ""
        ) not in ("", "0")
        how = (
            "It is not in the Hugging Face cache and the hub is offline (HF_HUB_OFFLINE is set). "
            if offline
            else "It could not be found locally or downloaded. "
        )
        raise ModelLoadError(
            f"could not load CLIP model {model!r}: {how}Fetch it once on a connected machine "
            f"(`huggingface-cli download {model}` or `CLIPModel.from_pretrained({model!r})`), or point "
            "model= at a folder holding config.json, the weights and the tokenizer files. "
            f"Cause: {exc}"
        ) from exc
    except Exception as exc:  # corrupt/truncated weights (SafetensorError), shape mismatches...
        raise ModelLoadError(
            f"could not load CLIP model {model!r}: its files are there but do not load "
            f"({type(exc).__name__}: {exc}); a truncated download or a config.json that does not "
            "match the weights does this: fetch the checkpoint again"
        ) from exc
    logger.debug("loaded %s onto %s as %s", model, device, dtype)
    return clip.to(device=device, dtype=dtype).eval(), tokenizer


def _check_checkpoint_folder(folder: Path) -> None:
    config = folder / "config.json"
    if not config.is_file():
        raise ModelLoadError(f"folder {str(folder)!r} is not a CLIP checkpoint: it has no config.json")
    try:
        model_type = json.loads(config.read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"folder {str(folder)!r}: config.json is unreadable ({exc})") from exc
    if model_type != "clip":
        raise ModelLoadError(
            f"folder {str(folder)!r} holds a {model_type!r} model, not a CLIP checkpoint (model_type 'clip')"
        )
    names = {p.name for p in folder.iterdir()}
    if not names & {"model.safetensors", "pytorch_model.bin", "model.safetensors.index.json"}:
        raise ModelLoadError(f"folder {str(folder)!r} has a CLIP config.json but no model weights")
    if not ({"vocab.json", "merges.txt"} <= names or "tokenizer.json" in names):
        raise ModelLoadError(
            f"folder {str(folder)!r} has no CLIP tokenizer files (vocab.json + merges.txt, or tokenizer.json)"
        )


def _normalization(model: str) -> tuple[Sequence[float], Sequence[float]]:
    """The checkpoint's own image mean/std when it ships a preprocessor_config.json, else OpenAI's."""
    path = Path(model).expanduser() / "preprocessor_config.json"
    if path.is_file():
        try:
            cfg = json.loads(path.read_text(encoding="utf-8"))
            return tuple(cfg["image_mean"]), tuple(cfg["image_std"])
        except (OSError, ValueError, KeyError):
            pass
    return _OPENAI_CLIP_MEAN, _OPENAI_CLIP_STD
