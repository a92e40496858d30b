"""Local mode: the same CLIP model in-process, behind the same client (issue 3).

Everything runs through the real loading path on a tiny random CLIP checkpoint written once per
session (``tiny_clip.write_tiny_clip``), on CPU in float32. The reference for every embedding is
plain ``transformers``: ``CLIPTokenizer`` / ``CLIPImageProcessor`` on the *original* input, then
``get_text_features`` / ``get_image_features``, exactly as the served pyfunc computes it.
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from harness import TEXT, Serve, records
from image_factory import picture, write_images
from PIL import Image, ImageOps
from tiny_clip import write_tiny_clip

from clip_client import AsyncClipClient, ClipClient, InvalidInputError

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from clip_client.local import LocalBackend, ModelLoadError  # noqa: E402

DIM = 24  # the tiny checkpoint's projection_dim
ATOL = 1e-5
TESTS = Path(__file__).parent

TEXTS = [
    "a photo of a dog",
    "A RED CAR, parked.",
    "Ünïcödé: café, naïve, 東京の猫 🐱",
    "punctuation!?;:'\"()[]{}<>@#$%^&*-_=+~`|\\/",
    "x",
    "  leading and trailing spaces  ",
    "word " * 400,  # ~400 tokens: truncated to CLIP's 77, never an error
]

#: image_factory kinds used here: every mode and shape the reference processor sees the same way.
IMAGE_KINDS = [
    "rgb_jpeg",  # 640x480 RGB JPEG with noise
    "rgb_png",
    "rgba_png",  # partial alpha
    "la_png",
    "palette_gif",  # palette with a transparent index
    "palette_png",  # palette with per-entry alpha
    "cmyk_jpeg",
    "gray8_png",
    "bilevel_png",
    "webp",
    "bmp",
    "exif6_jpeg",
    "exif3_jpeg",
    "exif8_jpeg",
    "tiny_3x2_png",
    "tiny_1x1_png",
    "wide_jpeg",  # 2000x50
    "tall_png",  # 50x2000
    "exact224_png",
    "exact224_jpeg",
    "exact224_exif6_jpeg",
]


class Reference:
    """The tiny model run the plain transformers way, the served pyfunc's way."""

    def __init__(self, folder: Path) -> None:
        self.model = transformers.CLIPModel.from_pretrained(folder).eval()
        self.tokenizer = transformers.CLIPTokenizer.from_pretrained(folder)
        self.processor = transformers.CLIPImageProcessor.from_pretrained(folder)

    @staticmethod
    def _rows(out: Any) -> np.ndarray:
        out = out.pooler_output if hasattr(out, "pooler_output") else out  # transformers 5.x
        return np.asarray(out.detach().float().numpy(), dtype=np.float32)

    def texts(self, texts: list[str]) -> np.ndarray:
        enc = self.tokenizer(texts, padding=True, truncation=True, max_length=77, return_tensors="pt")
        with torch.inference_mode():
            return self._rows(self.model.get_text_features(**enc))

    def images(self, images: list[Image.Image]) -> np.ndarray:
        pixels = self.processor(images=images, return_tensors="pt")["pixel_values"]
        with torch.inference_mode():
            return self._rows(self.model.get_image_features(pixel_values=pixels))

    def image_file(self, path: Path) -> np.ndarray:
        with Image.open(path) as img:
            return self.images([ImageOps.exif_transpose(img)])[0]

    def served(self, kind: str, inputs: list[str]) -> list[list[float]]:
        """The served pyfunc's predict(): texts as they come, image records base64-decoded,
        opened with PIL and converted to RGB."""
        if kind == "text":
            return self.texts(inputs).tolist()
        images = [Image.open(io.BytesIO(base64.b64decode(x))).convert("RGB") for x in inputs]
        return self.images(images).tolist()


# --------------------------------------------------------------------------------------------------
# Fixtures: one checkpoint, one reference and one local client per session


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_clip(tmp_path_factory.mktemp("tiny-clip"))


@pytest.fixture(scope="session")
def ref(tiny: Path) -> Reference:
    return Reference(tiny)


@pytest.fixture(scope="session")
def local(tiny: Path) -> Iterator[ClipClient]:
    with ClipClient.local(tiny, device="cpu", dtype="float32") as client:
        yield client


@pytest.fixture(scope="session")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("images")
    paths = write_images(folder, [*IMAGE_KINDS, "gray16_png"])
    wide = folder / "wide_1500x40.png"
    Image.fromarray(picture(1500, 40, 3, seed=31), "RGB").save(wide)
    paths["wide_1500x40_png"] = wide
    return paths


# --------------------------------------------------------------------------------------------------
# 1. Texts


def test_text_embeddings_equal_transformers(local: ClipClient, ref: Reference) -> None:
    got = local.embed_texts(TEXTS)
    assert got.shape == (len(TEXTS), DIM)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, ref.texts(TEXTS), atol=ATOL)


def test_long_text_is_truncated_to_its_first_77_tokens(local: ClipClient, ref: Reference) -> None:
    long_text = "word " * 400
    assert len(ref.tokenizer(long_text)["input_ids"]) > 77  # really longer than CLIP's context
    first_77 = ref.tokenizer(long_text, truncation=True, max_length=77)["input_ids"]
    assert len(first_77) == 77
    # The text made of only what fits gives the same row: nothing past token 77 reaches the model.
    fits = ref.tokenizer.decode(first_77, skip_special_tokens=True)
    assert ref.tokenizer(fits)["input_ids"] == first_77
    assert len(fits) < len(long_text) / 2
    np.testing.assert_allclose(local.embed_text(long_text), local.embed_text(fits), atol=ATOL)
    np.testing.assert_allclose(local.embed_text(long_text), ref.texts([fits])[0], atol=ATOL)
    assert not np.allclose(local.embed_text(long_text), local.embed_text("word " * 10), atol=1e-3)


def test_embed_text_is_the_same_row_as_embed_texts(local: ClipClient) -> None:
    rows = local.embed_texts(TEXTS)
    for i, text in enumerate(TEXTS):
        single = local.embed_text(text)
        assert single.shape == (DIM,)
        np.testing.assert_allclose(single, rows[i], atol=ATOL)


# --------------------------------------------------------------------------------------------------
# 2. Images


@pytest.mark.parametrize("kind", [*IMAGE_KINDS, "wide_1500x40_png"])
def test_image_file_equals_processor_on_the_original(
    local: ClipClient, ref: Reference, images: dict[str, Path], kind: str
) -> None:
    got = local.embed_image(images[kind])
    assert got.shape == (DIM,)
    np.testing.assert_allclose(got, ref.image_file(images[kind]), atol=ATOL)


def test_many_image_kinds_in_one_call(local: ClipClient, ref: Reference, images: dict[str, Path]) -> None:
    paths = [images[k] for k in IMAGE_KINDS]
    got = local.embed_images(paths, batch_size=5)
    expected = np.stack([ref.image_file(p) for p in paths])
    np.testing.assert_allclose(got, expected, atol=ATOL)


def test_sixteen_bit_grey_embeds_as_the_processor_does(
    local: ClipClient, ref: Reference, images: dict[str, Path], tiny: Path
) -> None:
    """16-bit values above 255 clip, as Pillow's convert("RGB") in the processor clips them: the
    local embedding is the processor's, from the very file. ``high_bit_depth="scale"`` is the opt-in."""
    np.testing.assert_allclose(
        local.embed_image(images["gray16_png"]), ref.image_file(images["gray16_png"]), atol=ATOL
    )
    with Image.open(images["gray16_png"]) as img:
        wide = np.asarray(img, dtype=np.int64)
    eight = Image.fromarray(((wide * 255 + 32767) // 65535).astype(np.uint8), "L")
    with ClipClient.local(tiny, high_bit_depth="scale") as scaling:
        scaled = scaling.embed_image(images["gray16_png"])
    np.testing.assert_allclose(scaled, ref.images([eight])[0], atol=ATOL)
    assert not np.allclose(scaled, ref.image_file(images["gray16_png"]), atol=1e-3)


def test_pil_image_and_numpy_array_inputs(local: ClipClient, ref: Reference) -> None:
    arr = picture(333, 250, 3, seed=41)
    pil = Image.fromarray(picture(260, 300, 3, seed=42), "RGB")
    rgba = Image.fromarray(picture(300, 200, 4, seed=43), "RGBA")
    got = local.embed_images([pil, arr, rgba])
    expected = ref.images([pil, Image.fromarray(arr, "RGB"), rgba])
    np.testing.assert_allclose(got, expected, atol=ATOL)
    # A stack of arrays (N x H x W x 3) is a list of images too.
    stack = np.stack([picture(240, 230, 3, seed=s) for s in (44, 45)])
    np.testing.assert_allclose(
        local.embed_images(stack), ref.images([Image.fromarray(a, "RGB") for a in stack]), atol=ATOL
    )


def test_bytes_input_equals_path_input(local: ClipClient, images: dict[str, Path]) -> None:
    path = images["exif6_jpeg"]
    np.testing.assert_allclose(local.embed_image(path.read_bytes()), local.embed_image(path), atol=ATOL)
    np.testing.assert_allclose(local.embed_image(str(path)), local.embed_image(path), atol=ATOL)


# --------------------------------------------------------------------------------------------------
# 3. Remote and local give the same vectors

PARITY_KINDS = [
    "rgb_jpeg",
    "rgba_png",
    "palette_gif",
    "exif6_jpeg",
    "tiny_3x2_png",
    "wide_jpeg",
    "exact224_jpeg",
]


def _parity_images(images: dict[str, Path]) -> list[Any]:
    return [images[k] for k in PARITY_KINDS] + [
        Image.fromarray(picture(300, 310, 3, seed=51), "RGB"),
        picture(200, 500, 3, seed=52),
    ]


def test_remote_and_local_give_the_same_vectors(
    local: ClipClient, ref: Reference, images: dict[str, Path], serve: Serve
) -> None:
    inputs = _parity_images(images)
    server = serve(model=ref.served, dim=DIM)
    with ClipClient(host=server.url, token="t", retry_backoff=0, max_retries=0, timeout=60) as remote:
        remote_texts = remote.embed_texts(TEXTS, batch_size=3)
        remote_images = remote.embed_images(inputs, batch_size=4)
        assert len(server.inputs(TEXT)) == len(TEXTS)
        assert len(records(server)) == len(inputs)
    np.testing.assert_allclose(local.embed_texts(TEXTS), remote_texts, atol=ATOL)
    np.testing.assert_allclose(local.embed_images(inputs), remote_images, atol=ATOL)
    # ...and both are the processor's answer on the original files.
    np.testing.assert_allclose(remote_images[0], ref.image_file(images["rgb_jpeg"]), atol=ATOL)


async def test_async_remote_and_local_give_the_same_vectors(
    tiny: Path, ref: Reference, images: dict[str, Path], serve: Serve
) -> None:
    inputs = _parity_images(images)
    server = serve(model=ref.served, dim=DIM)
    async with (
        AsyncClipClient(host=server.url, token="t", retry_backoff=0, max_retries=0, timeout=60) as remote,
        AsyncClipClient.local(tiny, device="cpu") as alocal,
    ):
        assert isinstance(alocal.backend, LocalBackend)
        np.testing.assert_allclose(
            await alocal.embed_texts(TEXTS, batch_size=2), await remote.embed_texts(TEXTS), atol=ATOL
        )
        np.testing.assert_allclose(
            await alocal.embed_images(inputs, batch_size=3), await remote.embed_images(inputs), atol=ATOL
        )
        np.testing.assert_allclose(await alocal.embed_text(TEXTS[2]), ref.texts([TEXTS[2]])[0], atol=ATOL)
        assert (await alocal.embed_texts([])).shape == (0, DIM)


# --------------------------------------------------------------------------------------------------
# 4. Everything above the backend is the same code


def test_empty_lists_have_the_models_width(local: ClipClient) -> None:
    for empty in (local.embed_texts([]), local.embed_images([])):
        assert empty.shape == (0, DIM)
        assert empty.dtype == np.float32


def test_normalize_gives_unit_rows(local: ClipClient, images: dict[str, Path]) -> None:
    raw = local.embed_texts(TEXTS)
    unit = local.embed_texts(TEXTS, normalize=True)
    np.testing.assert_allclose(np.linalg.norm(unit, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(unit, raw / np.linalg.norm(raw, axis=1, keepdims=True), atol=1e-6)
    assert not np.allclose(np.linalg.norm(raw, axis=1), 1.0, atol=1e-2)  # the model itself does not normalise
    img = local.embed_images([images["rgb_jpeg"], images["rgba_png"]], normalize=True)
    np.testing.assert_allclose(np.linalg.norm(img, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(local.embed_text("a dog", normalize=True)), 1.0, atol=1e-5)


def test_order_is_preserved_across_small_batches(local: ClipClient) -> None:
    texts = [f"item {i}: {'abc'[i % 3] * (i % 11 + 1)} {i * 7919 % 1000}" for i in range(200)]
    rows = local.embed_texts(texts, batch_size=7)
    assert rows.shape == (200, DIM)
    singles = np.stack([local.embed_text(t) for t in texts])
    np.testing.assert_allclose(rows, singles, atol=ATOL)
    assert len({r.tobytes() for r in rows}) == 200  # distinct rows: a shuffle could not hide


def test_bad_inputs_name_their_index(local: ClipClient, images: dict[str, Path]) -> None:
    with pytest.raises(InvalidInputError) as caught:
        local.embed_images([images["rgb_jpeg"], images["rgb_png"], None])  # type: ignore[list-item]
    assert caught.value.index == 2
    assert isinstance(caught.value, ValueError)
    with pytest.raises(InvalidInputError) as caught:
        local.embed_texts(["a", 7, "b"])  # type: ignore[list-item]
    assert caught.value.index == 1
    assert "got int" in str(caught.value)
    with pytest.raises(InvalidInputError) as caught:
        local.embed_text(None)  # type: ignore[arg-type]
    assert caught.value.index is None


def test_empty_and_whitespace_texts_embed_as_the_model_does(local: ClipClient, ref: Reference) -> None:
    texts = ["a", "", "   ", "\n\t", "b"]
    got = local.embed_texts(texts)
    np.testing.assert_allclose(got, ref.texts(texts), atol=ATOL)
    assert ref.tokenizer("")["input_ids"] == [ref.tokenizer.bos_token_id, ref.tokenizer.eos_token_id]
    np.testing.assert_allclose(local.embed_text(""), got[1], atol=ATOL)
    assert not np.allclose(got[1], got[0], atol=1e-3)  # a real row of its own, not a copy of a neighbour


def test_progress_bar_counts_every_input(local: ClipClient, capsys: pytest.CaptureFixture[str]) -> None:
    local.embed_texts(TEXTS, batch_size=2, progress=True)
    err = capsys.readouterr().err
    assert "embedding texts" in err
    assert f"{len(TEXTS)}/{len(TEXTS)}" in err
    local.embed_texts(TEXTS)  # progress is per call; the default stays off
    assert "embedding texts" not in capsys.readouterr().err


def test_local_client_is_a_plain_client_with_a_local_backend(local: ClipClient, tiny: Path) -> None:
    assert isinstance(local.backend, LocalBackend)
    assert local.backend.device.type == "cpu"
    assert local.backend.dtype == torch.float32
    assert local.backend.dim == DIM
    assert local.backend.image_size == 224
    assert local.settings.image_size == 224
    assert str(tiny) in repr(local)


# --------------------------------------------------------------------------------------------------
# 5. Loading errors


def _copy_tokenizer(src: Path, dst: Path) -> None:
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json", "preprocessor_config.json"):
        shutil.copy(src / name, dst / name)


def test_empty_folder_is_not_a_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"not a CLIP checkpoint: it has no config\.json"):
        LocalBackend(tmp_path, device="cpu")


def test_folder_of_another_model_type(tmp_path: Path, tiny: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 32}))
    _copy_tokenizer(tiny, tmp_path)
    with pytest.raises(ModelLoadError, match="'bert' model, not a CLIP checkpoint"):
        LocalBackend(tmp_path, device="cpu")


def test_clip_config_without_weights(tmp_path: Path, tiny: Path) -> None:
    shutil.copy(tiny / "config.json", tmp_path / "config.json")
    _copy_tokenizer(tiny, tmp_path)
    with pytest.raises(ModelLoadError, match=r"CLIP config\.json but no model weights"):
        LocalBackend(tmp_path, device="cpu")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a file of mode 000: no permission is denied")
def test_weights_that_cannot_be_read_are_reported_as_such_not_as_missing(tmp_path: Path, tiny: Path) -> None:
    """safetensors reports a file it may not open as "No such file or directory"."""
    shutil.copytree(tiny, tmp_path / "ckpt")
    weights = tmp_path / "ckpt" / "model.safetensors"
    weights.chmod(0)
    try:
        with pytest.raises(ModelLoadError) as info:
            ClipClient.local(tmp_path / "ckpt", device="cpu")
    finally:
        weights.chmod(0o644)
    message = str(info.value)
    assert "permission denied" in message
    assert str(weights) in message
    assert "No such file" not in message


def test_a_folder_named_like_the_weights_is_reported_as_unreadable_not_missing(
    tmp_path: Path, tiny: Path
) -> None:
    """A weights path that is there but cannot be read as a file (here a folder, which fails to
    read whoever runs the test, root too): named, with the reason, not "no file named"."""
    shutil.copytree(tiny, tmp_path / "ckpt")
    weights = tmp_path / "ckpt" / "model.safetensors"
    weights.unlink()
    weights.mkdir()
    with pytest.raises(ModelLoadError) as info:
        ClipClient.local(tmp_path / "ckpt", device="cpu")
    message = str(info.value)
    assert f"the weights file {str(weights)!r} exists but cannot be read: it is a folder" in message
    assert "no file named" not in message


def test_clip_weights_without_tokenizer(tmp_path: Path, tiny: Path) -> None:
    for name in ("config.json", "model.safetensors"):
        shutil.copy(tiny / name, tmp_path / name)
    with pytest.raises(ModelLoadError, match="no CLIP tokenizer files"):
        LocalBackend(tmp_path, device="cpu")


def test_truncated_weights_are_a_load_error(tmp_path: Path, tiny: Path) -> None:
    shutil.copytree(tiny, tmp_path / "ckpt")
    weights = tmp_path / "ckpt" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # an interrupted download
    with pytest.raises(ModelLoadError, match="fetch the checkpoint again"):
        LocalBackend(tmp_path / "ckpt", device="cpu")


def test_missing_folder_is_not_taken_for_a_hub_id(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="no such folder"):
        LocalBackend(tmp_path / "does-not-exist", device="cpu")


def _run_python(code: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``code`` in a fresh interpreter (import-time state such as HF_HUB_OFFLINE, or a missing
    torch, cannot be faked in this one), with the tests folder importable."""
    full_env = {**os.environ, **(env or {})}
    full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS), full_env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=120,
        check=False,
    )


def test_uncached_hub_id_while_offline_says_how_to_fetch_it(tmp_path: Path) -> None:
    hf_home = tmp_path / "hf-home"
    hf_home.mkdir()
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(hf_home), "HF_HUB_CACHE": str(hf_home / "hub")}
    code = """
        from clip_client.local import DEFAULT_LOCAL_MODEL, LocalBackend, ModelLoadError
        try:
            LocalBackend(DEFAULT_LOCAL_MODEL, device="cpu")
        except ModelLoadError as exc:
            print("MODEL_LOAD_ERROR:", exc)
        else:
            print("LOADED")
    """
    done = _run_python(code, env)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "MODEL_LOAD_ERROR:" in out, out
    assert "openai/clip-vit-large-patch14" in out
    assert "HF_HUB_OFFLINE" in out  # says why
    assert "hf download openai/clip-vit-large-patch14" in out  # says how to fetch it, with today's CLI
    assert "model= at a folder" in out  # or where to point instead
    assert not any(hf_home.rglob("*.safetensors"))


def test_a_hub_id_is_cached_by_the_snapshot_it_was_loaded_from(tmp_path: Path) -> None:
    """A hub id's cache identity names the commit of the Hugging Face cache snapshot the model was
    loaded from: when the id's `refs/main` moves to another snapshot, the rows are keyed apart."""
    hub = tmp_path / "hf-home" / "hub"
    repo = hub / "models--tiny-org--tiny-clip"
    commits = {"1" * 40: 1, "2" * 40: 2}
    for commit, seed in commits.items():
        write_tiny_clip(repo / "snapshots" / commit, seed=seed)
    (repo / "refs").mkdir()
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(hub.parent), "HF_HUB_CACHE": str(hub)}
    code = f"""
        from pathlib import Path
        from clip_client import ClipClient
        for commit in {list(commits)!r}:
            Path({str(repo / "refs" / "main")!r}).write_text(commit)
            with ClipClient.local("tiny-org/tiny-clip", device="cpu", dtype="float32",
                                  cache={str(tmp_path / "c.sqlite")!r}) as client:
                client.embed_texts(["alpha"])
                print("IDENTITY", client.backend.cache_identity("text"), client.stats.cache_hits)
    """
    done = _run_python(code, env)
    assert done.returncode == 0, done.stderr
    lines = [line.split()[1:] for line in done.stdout.splitlines() if line.startswith("IDENTITY")]
    assert lines == [["local", f"tiny-org/tiny-clip@{commit}", "torch.float32", "0"] for commit in commits], (
        done.stdout
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_a_gpu_is_a_clear_error(tiny: Path) -> None:
    with pytest.raises(ValueError, match="CUDA"):
        LocalBackend(tiny, device="cuda")
    with pytest.raises(ValueError, match="CUDA"):
        ClipClient.local(tiny, device="cuda:0")


def test_bad_device_dtype_and_batch_size(tiny: Path) -> None:
    with pytest.raises(ValueError, match="dtype='int8'"):
        LocalBackend(tiny, device="cpu", dtype="int8")
    with pytest.raises(ValueError, match="not a torch device"):
        LocalBackend(tiny, device="tpu-ish")
    with pytest.raises(ValueError, match="batch_size"):
        LocalBackend(tiny, device="cpu", batch_size=0)


def test_a_device_this_machine_cannot_use_is_a_configuration_error_naming_the_setting(
    tiny: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bad ``device`` is a typed error, a ``ValueError`` too, that names the setting as a field
    (and the value to try), so other layers need not read its words; the fields survive pickling."""
    import pickle

    from clip_client import ConfigurationError

    with pytest.raises(ConfigurationError) as info:
        LocalBackend(tiny, device="tpu-ish")
    error = info.value
    assert isinstance(error, ValueError)
    assert error.setting == "device"
    assert error.suggestion is None
    assert str(error).startswith("device='tpu-ish' is not a torch device")
    assert error.reason.startswith("'tpu-ish' is not a torch device")  # without the setting's name

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigurationError) as info:
        ClipClient.local(tiny, device="cuda")
    error = info.value
    assert (error.setting, error.suggestion) == ("device", "cpu")
    assert "no CUDA GPU is available" in error.reason
    assert "use device='cpu', or install a CUDA build of torch" in str(error)
    assert error.advice() == "use device='cpu', or install a CUDA build of torch on a GPU machine"
    back = pickle.loads(pickle.dumps(error))
    assert type(back) is ConfigurationError
    assert (back.setting, back.suggestion, back.reason, str(back)) == (
        "device",
        "cpu",
        error.reason,
        str(error),
    )

    # A checkpoint that is not there names the model as the setting to change.
    with pytest.raises(ModelLoadError) as missing:
        LocalBackend(tiny.parent / "does-not-exist", device="cpu")
    assert missing.value.setting == "model"


def test_missing_torch_asks_for_the_local_extra(tiny: Path) -> None:
    code = f"""
        import sys
        sys.modules["torch"] = None
        from clip_client.local import LocalBackend
        from clip_client import ClipClient
        for make in (lambda: LocalBackend({str(tiny)!r}), lambda: ClipClient.local({str(tiny)!r})):
            try:
                make()
            except ImportError as exc:
                print("IMPORT_ERROR:", exc)
    """
    done = _run_python(code)
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stdout.splitlines() if line.startswith("IMPORT_ERROR:")]
    assert len(lines) == 2, done.stdout
    for line in lines:
        assert "torch is missing" in line
        assert "clip-serving-client[local]" in line


def test_remote_client_works_without_torch_or_transformers() -> None:
    code = """
        import sys
        sys.modules["torch"] = None
        sys.modules["transformers"] = None
        import numpy as np
        from PIL import Image
        import clip_client
        from clip_client import ClipClient
        from serving_server import ServingServer, expected_vector
        with ServingServer(dim=8) as server:
            with ClipClient(host=server.url, token="t", retry_backoff=0) as client:
                rows = client.embed_texts(["a dog", "a cat"])
                image = client.embed_image(Image.new("RGB", (300, 200), (10, 200, 30)))
        assert rows.shape == (2, 8), rows.shape
        assert np.array_equal(rows[1], expected_vector("text", "a cat", 8))
        assert image.shape == (8,)
        assert sys.modules["torch"] is None and sys.modules["transformers"] is None
        print("REMOTE_OK")
    """
    done = _run_python(code)
    assert done.returncode == 0, done.stderr
    assert "REMOTE_OK" in done.stdout


# --------------------------------------------------------------------------------------------------
# 6. dtypes, backend-side batching, compile


def test_bfloat16_is_close_to_float32_and_returns_float32(tiny: Path, local: ClipClient) -> None:
    with ClipClient.local(tiny, device="cpu", dtype="bfloat16") as bf16:
        assert isinstance(bf16.backend, LocalBackend)
        assert bf16.backend.dtype == torch.bfloat16
        texts = bf16.embed_texts(TEXTS)
        pics = bf16.embed_images([picture(300, 260, 3, seed=61), picture(224, 224, 3, seed=62)])
    reference_pics = local.embed_images([picture(300, 260, 3, seed=61), picture(224, 224, 3, seed=62)])
    for low, full in ((texts, local.embed_texts(TEXTS)), (pics, reference_pics)):
        assert low.dtype == np.float32
        assert not np.array_equal(low, full)  # it really ran in bfloat16
        cosine = np.sum(low * full, axis=1) / (np.linalg.norm(low, axis=1) * np.linalg.norm(full, axis=1))
        assert cosine.min() > 0.99, cosine


def test_backend_splits_batches_larger_than_its_own(tiny: Path, local: ClipClient) -> None:
    backend = LocalBackend(tiny, device="cpu", batch_size=3)
    texts = [f"text number {i}" for i in range(10)]
    pics = [picture(224, 224, 3, seed=70 + i) for i in range(10)]
    np.testing.assert_allclose(backend.embed("text", texts), local.embed_texts(texts), atol=ATOL)
    # Through a client that hands the backend all 10 at once.
    with ClipClient(backend=backend, batch_size=10) as client:
        np.testing.assert_allclose(client.embed_texts(texts), local.embed_texts(texts), atol=ATOL)
        np.testing.assert_allclose(client.embed_images(pics), local.embed_images(pics), atol=ATOL)


def test_compile_pads_every_batch_to_one_shape(
    tiny: Path, local: ClipClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """compile=True through real TorchDynamo graph capture, with a recording backend in place of
    Inductor (whose C++ code generation takes tens of seconds on two cores): every graph sees the
    static batch shape, and the padding is cut off again."""
    seen: list[tuple[int, ...]] = []

    def recording_backend(gm: Any, example_inputs: list[Any]) -> Any:
        placeholders = [n.name for n in gm.graph.nodes if n.op == "placeholder"]
        for name, x in zip(placeholders, example_inputs, strict=True):
            if any(arg in name for arg in ("input_ids", "attention_mask", "pixel_values")):
                seen.append(tuple(x.shape))
        return gm.forward

    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: real_compile(fn, backend=recording_backend, **kw))
    torch._dynamo.reset()
    backend = LocalBackend(tiny, device="cpu", batch_size=4, compile=True)
    texts = [f"compiled text {i}" for i in range(5)]  # chunks of 4 and 1 (padded to 4)
    pics = [picture(224, 224, 3, seed=80 + i) for i in range(6)]
    np.testing.assert_allclose(backend.embed("text", texts), local.embed_texts(texts), atol=ATOL)
    np.testing.assert_allclose(backend.embed("image", pics), local.embed_images(pics), atol=ATOL)
    assert seen, "nothing was compiled"
    assert (4, 77) in seen, seen  # the text tower, padded
    assert (4, 3, 224, 224) in seen, seen  # the image tower, padded
    assert {shape[0] for shape in seen} == {4}, seen  # and never another batch shape
    torch._dynamo.reset()


@pytest.mark.skipif(
    os.environ.get("CLIP_CLIENT_SLOW_TESTS") != "1",
    reason="torch.compile with Inductor takes ~30 s per tower on a 2-core CPU; set CLIP_CLIENT_SLOW_TESTS=1",
)
def test_compile_with_inductor(tiny: Path, local: ClipClient) -> None:
    with ClipClient.local(tiny, device="cpu", compile=True, batch_size=4) as compiled:
        texts = [f"compiled text {i}" for i in range(5)]
        np.testing.assert_allclose(compiled.embed_texts(texts), local.embed_texts(texts), atol=ATOL)
        pics = [picture(250, 230, 3, seed=90 + i) for i in range(3)]
        np.testing.assert_allclose(compiled.embed_images(pics), local.embed_images(pics), atol=ATOL)


def test_text_batches_are_padded_to_their_longest_text_or_77_when_compiled(local: ClipClient) -> None:
    backend = local.backend
    assert isinstance(backend, LocalBackend)
    reference = transformers.CLIPTokenizer.from_pretrained(backend.model_name)
    for texts in (["a"], ["a photo of the cat", "x"], ["word " * 50], ["word " * 400, "b"]):
        longest = max(len(reference(t, truncation=True, max_length=77)["input_ids"]) for t in texts)
        assert backend._tokenize(texts)["input_ids"].shape == (len(texts), longest)
    backend.compile = True  # compile=True pads every batch to one shape
    try:
        assert backend._tokenize(["a"])["input_ids"].shape == (1, 77)
    finally:
        backend.compile = False


# --------------------------------------------------------------------------------------------------
# What "the same vectors" means (docs/deploy.md): bit for bit at equal batches, close across sizes


def test_equal_batches_give_the_same_bits_and_other_batch_sizes_agree_within_float32_rounding(
    local: ClipClient, images: dict[str, Path]
) -> None:
    texts = [f"a photo of object number {i}" for i in range(12)]
    files = list(images.values())[:8]
    for embed, inputs in ((local.embed_texts, texts), (local.embed_images, files)):
        whole = embed(inputs, batch_size=len(inputs))
        assert embed(inputs, batch_size=len(inputs)).tobytes() == whole.tobytes()  # deterministic
        single = embed(inputs, batch_size=1)
        # Another batch size changes how the matrix kernels block their float32 sums: the rows
        # differ in the last bits only (ViT-L/14 on CPU: up to 8.3e-7 measured), never more.
        np.testing.assert_allclose(single, whole, rtol=0, atol=1e-5)
        cosine = np.sum(single * whole, axis=1) / (
            np.linalg.norm(single, axis=1) * np.linalg.norm(whole, axis=1)
        )
        assert np.all(cosine > 1 - 1e-6)
