"""`LocalBackend`: the served CLIP model, in-process on CUDA or CPU.

It answers the same two calls as the serving endpoints (a batch of texts, a batch of prepared
224x224 RGB images -> float32 rows), so the client's input handling, batching, ordering and
normalisation are the very code the remote path runs, and both paths see identical pixels.

Needs the `local` extra: `pip install -e ".[local]"` from a checkout (`pip install
"clip-serving-client[local]"` once the package is on an index).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

import numpy as np

from ._constants import DEFAULT_LOCAL_MODEL, LOGGER_NAME
from ._core.concurrency import CallContext
from ._core.images import PreparedImage
from .errors import ConfigurationError, ModelLoadError
from .types import EmbeddingArray, InputKind

if TYPE_CHECKING:
    import torch

__all__ = ["DEFAULT_LOCAL_MODEL", "LocalBackend", "ModelLoadError", "checkpoint_sha256"]

logger = logging.getLogger(LOGGER_NAME)

TEXT_CONTEXT = 77
"""CLIP's text context: every text is truncated to this many tokens (never an error for long text)."""
# Without compile, a batch is padded to its longest text only: CLIP's causal text tower gives the
# same features whatever the padding, and short captions then do not pay for 77 positions
# (padding to 77 made them 2.2x slower, a bucket of 8 tokens still 15%: benchmarks/local_gpu.py).
# With compile=True every batch is padded to exactly TEXT_CONTEXT: one shape, one graph.
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
            f"local mode needs PyTorch and transformers ({exc.name} is missing): install the local extra, "
            "pip install 'clip-serving-client[local]' (from a checkout: pip install -e '.[local]'); on a "
            "machine without a GPU install a CPU build of torch first, or pip fetches a multi-GB CUDA build"
        ) from exc
    return torch, transformers


class LocalBackend:
    """CLIP (`transformers.CLIPModel`) in this process.

    Args:
        model: a hub id, loaded from the Hugging Face cache without the hub when it is there, else
            downloaded into it (an offline machine fails in seconds, saying what to do); or a local
            folder in the same layout (`config.json`, weights, tokenizer files).
        device: `"cuda"`, `"cuda:1"`, `"cpu"`...; None picks CUDA when available, else CPU.
        dtype: `"float16"`, `"bfloat16"`, `"float32"` or a `torch.dtype`; None picks float16 on
            CUDA and float32 on CPU.
        batch_size: most inputs per forward pass (default 128 on CUDA, 32 on CPU); larger batches
            from the client are split.
        compile: wrap the two towers in `torch.compile`; batches are then padded to `batch_size`
            so the compiled graphs see one shape.
        onednn: on CPU, run every `Linear` layer (about 90% of ViT-L/14's FLOPs) through oneDNN
            with its weights packed once at load, instead of PyTorch's default BLAS call. None
            (the default) does so on CPU in float32/bfloat16 when this torch build has oneDNN and a
            probe at load agrees with the default path; False never does. Measured on this
            project's 2-core AMD EPYC development machine, in a one-off microbenchmark of single
            layers (min of 5 calls, float32): 104-107 GFLOP/s against 70 for the default (MKL) on
            ViT-L/14's MLP layer at a batch of 16, 216 against 83 on its 1024 x 1024 projections at
            a batch of 8; `benchmarks/pipeline_peer.py` measures the whole model. The rows are not
            bit-identical to the default path's (another summation order: a relative difference of
            4e-7 on that layer's output), as two BLAS libraries never are; the tests hold the two
            within 1e-5 of each other. The MLP blocks' activation (QuickGELU or exact GELU) then
            runs inside the first layer's kernel as a oneDNN post-op, once one block is checked
            against its own forward at load: ViT-L/14 alone went from 1.80 to 2.40 images/s on
            that machine (batch 8, float32), with rows equal to 1 - cosine of about 1e-7.
        progress: show transformers' "Loading weights" bar while the checkpoint loads (off by
            default). A first download from the hub shows huggingface_hub's download bars either
            way; `HF_HUB_DISABLE_PROGRESS_BARS`, when set, has priority over this argument.
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
        progress: bool = False,
        onednn: bool | None = None,
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
        folder = Path(self.model_name).expanduser()
        self._folder: Path | None = folder.resolve() if folder.is_dir() else None
        # What the folder's identity files are before they are read (a stat each): a folder
        # rewritten from now until the first cache use is not taken for the checkpoint in memory.
        self._loaded_stamps = _identity_stamps(self._folder) if self._folder is not None else None
        self._model, self._tokenizer, self._snapshot = _load(
            transformers, self.model_name, self.device, self.dtype, progress=progress
        )
        self.onednn: bool = False
        """Whether the `Linear` layers run through oneDNN with packed weights (see `onednn`)."""
        if onednn is not False and self.device.type == "cpu" and not compile:
            from ._onednn import pack_linears

            self.onednn = pack_linears(self._model, self.dtype)
        self._identity: str | None = None  # cache_identity, computed on first use
        self._identity_lock = threading.Lock()
        vision = self._model.config.vision_config
        self.image_size: int = int(vision.image_size)
        # Width of an embedding row (what an empty input returns, too).
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

    def __repr__(self) -> str:
        return f"LocalBackend(model={self.model_name!r}, device='{self.device}', dtype={self.dtype})"

    @property
    def logit_scale(self) -> float:
        """CLIP's learned temperature, `exp(logit_scale)` of the loaded checkpoint (100.0 for
        openai/clip-vit-large-patch14): what `classify` multiplies cosines by before the softmax,
        as `CLIPModel.forward` does for `logits_per_image`. Read-only."""
        return float(self._model.logit_scale.detach().float().exp().item())

    # -- Backend protocol ----------------------------------------------------------------------------

    def payload(self, kind: InputKind, item: str | PreparedImage) -> tuple[Any, int]:
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

    @property
    def location(self) -> str:
        """`local <model> <dtype>`: the model named by where it was loaded from (a folder's absolute
        path, or the hub id), which the `clip-client` command records in its output files to load
        it again for a query. The cache keys by content instead (`cache_identity`)."""
        return f"local {self._folder or self.model_name} {self.dtype}"

    def cache_identity(self, kind: InputKind) -> str:
        """Who computes the rows, for the embedding cache: the checkpoint by content, and the dtype
        it runs in.

        A folder is known by `clip_client.local.checkpoint_sha256` (its
        `config.json` and weights), not by its path: a copy or a move keeps its cached rows, and
        other weights saved into the same folder get none of the old ones. The digest is computed
        on the first cache use (reading the weights once per process), not at load. A hub id is
        known by the commit of the Hugging Face cache snapshot it was loaded from (by the id alone
        when that cannot be found)."""
        identity = self._identity
        if identity is None:
            with self._identity_lock:
                identity = self._identity
                if identity is None:
                    identity = self._identity = f"local {self._checkpoint_identity()} {self.dtype}"
        return identity

    def _checkpoint_identity(self) -> str:
        if self._folder is None:
            return self.model_name if self._snapshot is None else f"{self.model_name}@{self._snapshot}"
        digest = checkpoint_sha256(self._folder)
        if digest is not None and _identity_stamps(self._folder) == self._loaded_stamps:
            return f"sha256:{digest}"
        # Changed (or gone) since it was loaded: its files no longer say what is in memory, so this
        # backend's rows get a key of their own that no other load shares.
        logger.warning(
            "%s changed since the model was loaded from it: this client's rows are cached apart",
            self._folder,
        )
        return f"{self._folder} loaded-{id(self):x}-{time.time_ns()}"

    def cache_identity_confirmed(self, kind: InputKind) -> bool:
        """True: the model is in this process, named by its checkpoint and dtype."""
        return True

    def endpoint(self, kind: InputKind) -> str | None:
        """None: there is no endpoint to name in errors; the model is in this process."""
        return None

    def concurrency_limit(self) -> int | None:
        """None: the forward passes are serialised on the device; nothing adapts."""
        return None

    def embed(
        self, kind: InputKind, payloads: Sequence[Any], ctx: CallContext | None = None
    ) -> EmbeddingArray:
        """One batch through the text or image tower: float32 `(len(payloads), dim)`. Batches
        larger than [`batch_size`][clip_client.LocalBackend.batch_size] run as several forward passes; each
        checks `ctx` first (a cancelled call or a passed deadline stops between passes) and counts as one
        request."""
        parts = []
        for start in range(0, len(payloads), self.batch_size):
            if ctx is not None:
                ctx.check()
                ctx.attempted()
            parts.append(self._embed_chunk(kind, payloads[start : start + self.batch_size]))
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    async def aembed(
        self, kind: InputKind, payloads: Sequence[Any], ctx: CallContext | None = None
    ) -> EmbeddingArray:
        return await asyncio.to_thread(self.embed, kind, payloads, ctx)

    def close(self) -> None:
        pass

    async def aclose(self) -> None:
        pass

    # -- the model -----------------------------------------------------------------------------------

    def _embed_chunk(self, kind: InputKind, chunk: Sequence[Any]) -> EmbeddingArray:
        torch = self._torch
        n = len(chunk)
        pad = self.batch_size - n if self.compile else 0
        with torch.inference_mode():
            if kind == "text":
                inputs = self._tokenize(list(chunk) + [chunk[-1]] * pad)
                with self._device_lock:
                    out = self._text_tower(inputs["input_ids"], inputs["attention_mask"])
            else:
                pixels = self._to_device(np.stack(list(chunk) + [chunk[-1]] * pad))
                with self._device_lock:
                    out = self._image_tower(pixels)
            result: EmbeddingArray = out[:n].float().cpu().numpy()
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
        raise _device_error(device, "is not a torch device ('cuda', 'cuda:0', 'cpu'...)") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        raise _device_error(
            device,
            f"but no CUDA GPU is available to PyTorch {torch.__version__} ({build})",
            suggestion="cpu",
            advice="use {suggestion}, or install a CUDA build of torch on a GPU machine",
        )
    if resolved.type == "cuda" and resolved.index is not None and resolved.index >= torch.cuda.device_count():
        raise _device_error(device, f"but only {torch.cuda.device_count()} CUDA device(s) are visible")
    return resolved


def _device_error(
    device: object, problem: str, *, suggestion: str | None = None, advice: str | None = None
) -> ConfigurationError:
    """A `device` this machine cannot use: the message names `device=`, `reason` only the value."""
    return ConfigurationError(
        f"device={device!r} {problem}",
        setting="device",
        reason=f"{device!r} {problem}",
        suggestion=suggestion,
        advice=advice,
    )


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


_LOAD_LOCK = threading.Lock()
"""clip_client's own loads, one at a time: they switch transformers' process-wide progress bar."""


def _load(
    transformers: Any, model: str, device: Any, dtype: Any, *, progress: bool = False
) -> tuple[Any, Any, str | None]:
    """The model, its tokenizer and, for a hub id, the commit of the Hugging Face cache snapshot
    they were loaded from (None for a folder, or when it cannot be found). Loaded from the folder,
    or from the Hugging Face cache without asking the hub when they are there; only what is missing
    is fetched from the hub, after one quick check that the hub can serve it (offline, an
    unreachable hub or an unknown id fail in seconds, saying what to do). Held under `_LOAD_LOCK`
    with transformers' loading bar as `progress` says."""
    folder = Path(model).expanduser()
    is_folder = folder.is_dir()
    if is_folder:
        _check_checkpoint_folder(folder)
    elif folder.exists() or _looks_like_a_path(model):
        where = repr(str(folder.absolute()))
        what = f"{where} is a file, not a folder" if folder.exists() else f"there is no such folder {where}"
        raise ModelLoadError(
            f"could not load CLIP model {model!r}: {what}, and a path is not a hub id like "
            "'openai/clip-vit-large-patch14'.",
            setting="model",
            suggestion="path/to/folder",
            advice="Point {model=} at a folder holding config.json, the weights and the tokenizer files: "
            "{suggestion}",
        )
    loaders: list[Callable[..., Any]] = [
        lambda **kw: transformers.CLIPModel.from_pretrained(model, attn_implementation="sdpa", **kw),
        lambda **kw: transformers.AutoTokenizer.from_pretrained(model, **kw),
    ]
    loaded = []
    hub_checked = False
    with _LOAD_LOCK, _transformers_progress(transformers, progress):
        for load in loaders:
            try:
                try:
                    loaded.append(load(local_files_only=True))
                    continue
                except OSError:
                    if is_folder:
                        raise
                if not hub_checked:
                    _check_hub(model)
                    hub_checked = True
                logger.info("%s is not in the Hugging Face cache: downloading it from the hub", model)
                loaded.append(load())
            except ModelLoadError:
                raise
            except OSError as exc:
                if is_folder:
                    raise ModelLoadError(f"could not load folder {str(folder)!r}: {_one_line(exc)}") from exc
                raise _not_fetched(
                    f"could not download CLIP model {model!r}: {_one_line(exc)}.", model
                ) from exc
            except Exception as exc:  # corrupt/truncated weights (SafetensorError), shape mismatches...
                raise ModelLoadError(
                    f"could not load CLIP model {model!r}: its files are there but do not load "
                    f"({type(exc).__name__}: {_one_line(exc)}); a truncated download or a config.json that "
                    "does not match the weights does this: fetch the checkpoint again"
                ) from exc
        snapshot = None if is_folder else _hub_snapshot(model)
    clip, tokenizer = loaded
    logger.debug("loaded %s onto %s as %s (snapshot %s)", model, device, dtype, snapshot)
    return clip.to(device=device, dtype=dtype).eval(), tokenizer, snapshot


def _looks_like_a_path(model: str) -> bool:
    """Whether `model` names a folder rather than a hub id (`owner/name`): it starts with `.`, `~` or
    a path separator, ends with one, holds a backslash (or this system's separator), or has more
    than one `/`."""
    seps = tuple({"/", "\\", os.sep, os.altsep or "/"})
    inner = any(sep in model for sep in seps if sep != "/")
    return model.startswith((".", "~", *seps)) or model.endswith(seps) or inner or model.count("/") > 1


def _hub_snapshot(model: str) -> str | None:
    """The commit of the Hugging Face cache snapshot that `model` (a hub id) resolves to now: the
    one transformers has just loaded it from (its default revision, `refs/main`). None when the
    cache has no such snapshot (a custom `cache_dir`, a layout huggingface_hub does not know)."""
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(model, "config.json")
    except Exception:  # an id huggingface_hub refuses, an unreadable cache: no snapshot to name
        return None
    return Path(found).parent.name if isinstance(found, str) else None


def _check_hub(model: str) -> None:
    """Raise ModelLoadError at once when the hub cannot serve `model`: offline mode, no route to the
    hub, or no such repository. One HEAD request for its config.json, not retried, bounded by
    `HF_HUB_ETAG_TIMEOUT` (10 s unless set). Without it, huggingface_hub retries an unreachable hub
    with backoff for about half a minute (minutes where packets are dropped) before transformers
    gives up; when the hub answers, the download that follows keeps those retries."""
    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled, RepositoryNotFoundError

    is_offline = getattr(constants, "is_offline_mode", lambda: constants.HF_HUB_OFFLINE)
    cache = constants.HF_HUB_CACHE
    if is_offline():
        raise _not_fetched(
            f"could not load CLIP model {model!r}: it is not in the Hugging Face cache ({cache}) and "
            f"HF_HUB_OFFLINE is set, so the hub was not asked.",
            model,
        )
    try:
        get_hf_file_metadata(hf_hub_url(model, "config.json"), timeout=constants.HF_HUB_ETAG_TIMEOUT)
    except RepositoryNotFoundError as exc:  # also GatedRepoError
        raise _not_fetched(
            f"could not load CLIP model {model!r}: it is not in the Hugging Face cache ({cache}) and the "
            "hub has no such model that this machine may read: check the id, and for a private or gated "
            f"model log in first (`hf auth login`).",
            model,
        ) from exc
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else None
        if status is None or status == 429 or status >= 500:
            return  # the hub is there but busy: the download's own retries are for this
        raise _not_fetched(
            f"could not load CLIP model {model!r}: it is not in the Hugging Face cache ({cache}) and the "
            f"hub refused it (HTTP {status}: {_one_line(exc)}).",
            model,
        ) from exc
    except OfflineModeIsEnabled as exc:
        raise _not_fetched(
            f"could not load CLIP model {model!r}: it is not in the Hugging Face cache ({cache}) and "
            f"HF_HUB_OFFLINE is set, so the hub was not asked.",
            model,
        ) from exc
    except Exception as exc:  # no route, DNS, refused, timed out, TLS...
        raise _not_fetched(
            f"could not load CLIP model {model!r}: it is not in the Hugging Face cache ({cache}) and the "
            f"hub ({constants.ENDPOINT}) cannot be reached ({type(exc).__name__}: {_one_line(exc)}).",
            model,
        ) from exc


def _not_fetched(problem: str, model: str) -> ModelLoadError:
    """`problem` (a full sentence), then how to fetch `model` once, or which other `model`."""
    return ModelLoadError(
        f"{problem} Fetch it once where the hub is reachable: "
        f"`hf download {model} --include '*.json' --include '*.txt' --include '*.safetensors'` "
        "(huggingface_hub's command) puts it in the Hugging Face cache, from which it then loads "
        "without the hub; add `--local-dir FOLDER` to get a folder to copy here instead.",
        setting="model",
        suggestion="path/to/folder",
        advice="Or point {model=} at a folder holding config.json, the weights and the tokenizer files: "
        "{suggestion}",
    )


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= 300 else text[:297] + "..."


@contextlib.contextmanager
def _transformers_progress(transformers: Any, show: bool) -> Iterator[None]:
    """transformers' own progress bars ("Loading weights") on or off for one load, then as they were.

    The switch is process-wide: clip_client's loads hold `_LOAD_LOCK`, but another thread loading a
    transformers model at the same moment sees it too. huggingface_hub's download bars, which
    transformers' switch also flips, are put back at once: a first download shows them either way.
    `HF_HUB_DISABLE_PROGRESS_BARS`, when set, has priority (as it has in huggingface_hub)."""
    bars = transformers.utils.logging
    if os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS") is not None or bars.is_progress_bar_enabled() == show:
        yield
        return
    hub_states: dict[str, bool] | None = getattr(
        importlib.import_module("huggingface_hub.utils.tqdm"), "progress_bar_states", None
    )
    saved = dict(hub_states) if hub_states is not None else None

    def restore_hub() -> None:
        if hub_states is not None and saved is not None:
            hub_states.clear()
            hub_states.update(saved)

    (bars.enable_progress_bar if show else bars.disable_progress_bar)()
    restore_hub()
    try:
        yield
    finally:
        (bars.disable_progress_bar if show else bars.enable_progress_bar)()
        restore_hub()


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
    # Every weights file is opened here, before transformers: safetensors reports any file it cannot
    # open (permission denied included) as "No such file or directory", and transformers a folder
    # named model.safetensors as no weights at all.
    for name in sorted(names):
        if name in _WEIGHT_FILES or name.endswith((".safetensors", ".bin")):
            _check_readable(folder / name)


_WEIGHT_FILES = frozenset({"model.safetensors", "pytorch_model.bin", "model.safetensors.index.json"})


def _check_readable(path: Path) -> None:
    """A ModelLoadError naming `path` and why it cannot be read, for a file that is there."""
    try:
        with open(path, "rb") as f:
            f.read(1)
    except OSError as exc:
        if isinstance(exc, PermissionError):
            why = "permission denied (check the file's mode and owner)"
        elif isinstance(exc, IsADirectoryError):
            why = "it is a folder, not a file"
        else:
            why = (exc.strerror or type(exc).__name__).lower()
        raise ModelLoadError(
            f"the weights file {str(path)!r} exists but cannot be read: {why} ({_one_line(exc)})"
        ) from exc


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


# --------------------------------------------------------------------------------------------------
# Model identity by content

_IDENTITY_FILES = ("config.json", "*.safetensors", "*.bin")
"""The files of a checkpoint folder that decide its embeddings: the config and the weights."""
_FILE_DIGESTS: dict[tuple[str, int, int], str] = {}
"""Digests already computed in this process, by (absolute file path, size, mtime in ns)."""


def checkpoint_sha256(
    folder: str | os.PathLike[str], *, memo: str | os.PathLike[str] | None = None
) -> str | None:
    """What a checkpoint folder holds, as one sha256: over `config.json` and its weights files
    (`*.safetensors`, `*.bin`), by name and content. A copy of the folder, or the folder moved, has the
    same digest; another checkpoint, or the same one re-saved with other weights, has another.

    Each file is hashed once per (path, size, modification time): in this process, and across
    processes when `memo` names a JSON file to keep the digests in (it is created, and rewritten
    whole; an unreadable one is ignored). A 1.7 GB checkpoint is read once, not at every run.

    Args:
        folder: a checkpoint folder (a Hugging Face hub id, or anything that is not a folder, gives None).
        memo: optional JSON file of known file digests.

    Returns:
        the hex digest, or None when `folder` is not a folder or holds none of those files.
    """
    import hashlib
    import tempfile

    path = Path(folder).expanduser()
    if not path.is_dir():
        return None
    files = _identity_files(path)
    if not files:
        return None
    known: dict[str, list[Any]] = {}
    memo_path = Path(memo) if memo is not None else None
    if memo_path is not None:
        with contextlib.suppress(OSError, ValueError):
            loaded = json.loads(memo_path.read_text(encoding="utf-8"))
            if isinstance(loaded, dict):
                known = loaded
    learnt = False
    total = hashlib.sha256()
    for file in files:
        st = file.stat()
        name = str(file.resolve())
        key = (name, st.st_size, st.st_mtime_ns)
        digest = _FILE_DIGESTS.get(key)
        entry = known.get(name)
        if digest is None and isinstance(entry, list) and entry[:2] == [st.st_size, st.st_mtime_ns]:
            digest = str(entry[2])
        if digest is None:
            h = hashlib.sha256()
            with open(file, "rb") as f:
                for block in iter(lambda: f.read(1 << 22), b""):
                    h.update(block)
            digest = h.hexdigest()
        _FILE_DIGESTS[key] = digest
        if entry != [st.st_size, st.st_mtime_ns, digest]:
            known[name] = [st.st_size, st.st_mtime_ns, digest]
            learnt = True
        total.update(f"{file.name}\0{st.st_size}\0{digest}\n".encode())
    if memo_path is not None and learnt:
        # Renamed into place whole: two processes that learn at once leave one of their memos, never half.
        with contextlib.suppress(OSError):
            memo_path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{memo_path.name}.", dir=memo_path.parent)
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as out:
                    json.dump(known, out)
                os.replace(tmp, memo_path)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
    return total.hexdigest()


def _identity_files(folder: Path) -> list[Path]:
    """The files of `folder` that `checkpoint_sha256` reads, in order."""
    import fnmatch

    return sorted(
        entry
        for entry in folder.iterdir()
        if entry.is_file() and any(fnmatch.fnmatch(entry.name, p) for p in _IDENTITY_FILES)
    )


def _identity_stamps(folder: Path) -> tuple[tuple[str, int, int], ...] | None:
    """(name, size, mtime in ns) of each of `folder`'s identity files; None when it cannot be read."""
    try:
        return tuple(
            (file.name, (st := file.stat()).st_size, st.st_mtime_ns) for file in _identity_files(folder)
        )
    except OSError:
        return None
