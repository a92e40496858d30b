"""``classify``: zero-shot probabilities, CLIP's way, on both clients.

Against the loopback server (each test once with a ``ClipClient``, once with an ``AsyncClipClient``),
the expected probabilities are computed here from the server's own rows (``harness.text_rows``) and
``embed_images``: the template ensemble of the CLIP notebook, then ``softmax(scale * cosine)``. In
local mode, on the tiny random checkpoint, the reference is transformers' ``CLIPModel`` forward pass
(``logits_per_image``) on the same checkpoint.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import transformers
from harness import IMAGE, TEXT, Make, text_rows
from image_factory import picture
from PIL import Image
from serving_server import Reply, ServingServer
from tiny_clip import write_tiny_clip

import clip_client
from clip_client import (
    APITimeoutError,
    AsyncClipClient,
    ClipClient,
    EmbeddingFailure,
    ImageDecodeError,
    InvalidInputError,
    ResponseFormatError,
    ZeroShotResult,
)

#: The CLIP notebook's 7 templates, written out here rather than read from the package.
NOTEBOOK_TEMPLATES = [
    "itap of a {}.",
    "a bad photo of the {}.",
    "a origami {}.",
    "a photo of the large {}.",
    "a {} in a video game.",
    "art of the {}.",
    "a photo of the small {}.",
]
LABELS = ["cat", "dog", "red sports car"]


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def expected_label_rows(rows: np.ndarray, n_labels: int) -> np.ndarray:
    """The notebook's zeroshot_classifier, one label at a time."""
    per = rows.reshape(n_labels, -1, rows.shape[-1])
    return np.stack([_unit(_unit(per[i]).mean(axis=0)) for i in range(n_labels)])


def softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def write_pngs(folder: Path, n: int, size: tuple[int, int] = (160, 120)) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / f"img{i}.png"
        Image.fromarray(picture(*size, seed=i)).save(path)
        paths.append(path)
    return paths


# --------------------------------------------------------------------------------------------------
# Against the loopback server, both clients


async def test_probabilities_are_the_template_ensemble_softmax(
    make: Make, server: ServingServer, tmp_path: Path
) -> None:
    paths = write_pngs(tmp_path, 4)
    client = make()

    result = await client.classify(paths, LABELS)

    prompts = [t.format(label) for label in LABELS for t in NOTEBOOK_TEMPLATES]
    assert server.inputs(TEXT) == prompts  # every label in every template, label-major
    images = await client.embed_images(paths)
    want = softmax(100.0 * _unit(images) @ expected_label_rows(text_rows(prompts), 3).T)
    assert isinstance(result, ZeroShotResult)
    assert result.labels == tuple(LABELS)
    assert result.probabilities.dtype == np.float32
    assert result.probabilities.shape == (4, 3)
    np.testing.assert_allclose(result.probabilities, want, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(result.probabilities.sum(axis=1), 1.0, atol=1e-6)
    assert result.failures == []
    assert len(result) == 4
    assert result.predictions == [LABELS[j] for j in want.argmax(axis=1)]


async def test_label_embeddings_are_the_ensemble_of_embed_texts(make: Make, server: ServingServer) -> None:
    """The same arithmetic checked through the client's own embed_texts, with a scale that makes
    the softmax an identity on the logits' ranking and a bare-label template set."""
    client = make()
    templates = ["a photo of a {}.", "{} in a painting", "a {{braced}} {}"]
    images = [picture(64, 48, seed=s) for s in range(3)]

    result = await client.classify(images, ["x", "y"], templates=templates, logit_scale=7.5)

    rows = await client.embed_texts([t.format(label) for label in ["x", "y"] for t in templates])
    assert "a {braced} x" in server.inputs(TEXT)
    label_rows = expected_label_rows(rows, 2)
    image_rows = await client.embed_images(images)
    want = softmax(7.5 * _unit(image_rows) @ label_rows.T)
    np.testing.assert_allclose(result.probabilities, want, rtol=1e-5, atol=1e-7)


async def test_a_second_call_with_the_same_labels_sends_no_text_request(
    make: Make, server: ServingServer, tmp_path: Path
) -> None:
    paths = write_pngs(tmp_path, 2)
    client = make()
    first = await client.classify(paths, LABELS)
    text_posts, image_posts = server.posts(TEXT), server.posts(IMAGE)
    assert text_posts >= 1

    again = await client.classify(paths[::-1], LABELS)

    assert server.posts(TEXT) == text_posts  # the label embeddings were remembered
    assert server.posts(IMAGE) > image_posts
    np.testing.assert_array_equal(again.probabilities, first.probabilities[::-1])

    await client.classify(paths, LABELS, templates=["a photo of a {}."])  # another template set
    assert server.inputs(TEXT)[-3:] == [f"a photo of a {label}." for label in LABELS]
    await client.classify(paths, [*LABELS, "bird"])  # another label set
    assert server.posts(TEXT) > text_posts + 1


async def test_the_memory_is_per_client(make: Make, server: ServingServer) -> None:
    await make().classify([picture(32, 32)], ["a", "b"])
    sent = server.posts(TEXT)
    await make().classify([picture(32, 32)], ["a", "b"])
    assert server.posts(TEXT) == 2 * sent


async def test_logit_scale_is_the_softmax_temperature(make: Make, server: ServingServer) -> None:
    client = make()
    images = [picture(50, 40, seed=s) for s in range(3)]
    default = await client.classify(images, LABELS, templates=["{}"])
    cool = await client.classify(images, LABELS, templates=["{}"], logit_scale=1)

    cos = _unit(await client.embed_images(images)) @ _unit(text_rows(LABELS)).T
    np.testing.assert_allclose(default.probabilities, softmax(100.0 * cos), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(cool.probabilities, softmax(cos), rtol=1e-5, atol=1e-7)
    assert default.predictions == cool.predictions  # the ranking does not depend on the scale


async def test_mark_gives_failed_images_nan_rows(make: Make, server: ServingServer, tmp_path: Path) -> None:
    paths: list[Any] = write_pngs(tmp_path, 3)
    missing = tmp_path / "missing.png"
    paths.insert(1, missing)
    paths.append(b"not an image")

    result = await make().classify(paths, LABELS, on_error="mark")

    assert result.probabilities.shape == (5, 3)
    assert [f.index for f in result.failures] == [1, 4]
    assert isinstance(result.failures[0].error, InvalidInputError)
    assert result.failures[0].error.path == str(missing)
    assert isinstance(result.failures[1].error, ImageDecodeError)
    assert np.isnan(result.probabilities[[1, 4]]).all()
    ok = result.probabilities[[0, 2, 3]]
    assert np.isfinite(ok).all()
    np.testing.assert_allclose(ok.sum(axis=1), 1.0, atol=1e-6)
    assert [p is None for p in result.predictions] == [False, True, False, False, True]
    top = result.top(2)
    assert top[1] == []
    assert top[4] == []
    assert len(top[0]) == 2


async def test_raise_stops_at_the_failed_image(make: Make, tmp_path: Path) -> None:
    paths: list[Any] = write_pngs(tmp_path, 2)
    paths.insert(1, tmp_path / "missing.png")
    with pytest.raises(InvalidInputError) as info:
        await make().classify(paths, LABELS)
    assert info.value.index == 1
    assert info.value.path == str(tmp_path / "missing.png")


async def test_the_deadline_bounds_the_whole_call(make: Make, server: ServingServer) -> None:
    client = make()
    await client.classify([picture(40, 30)], LABELS)  # the labels are remembered: no text request
    server.script = [Reply(answer=True, delay=3.0)]  # the image request
    with pytest.raises(APITimeoutError):
        await client.classify([picture(40, 30)], LABELS, deadline=0.3)


async def test_no_images_is_an_empty_result(make: Make) -> None:
    result = await make().classify([], LABELS)
    assert result.probabilities.shape == (0, 3)
    assert result.predictions == []
    assert result.top() == []


BAD_ARGUMENTS = [
    # (keyword arguments, error class, what the message says, the index it names)
    ({"labels": "cat"}, TypeError, "labels must be a list of str, not a single str: pass ['cat']", None),
    ({"labels": 3}, TypeError, "labels must be a list of str", None),
    ({"labels": []}, InvalidInputError, "labels is empty", None),
    ({"labels": ["cat", "dog", "cat"]}, InvalidInputError, "labels[2] 'cat' repeats labels[0]", 2),
    ({"labels": ["cat", ""]}, InvalidInputError, "labels[1] is '': a label must have some text", 1),
    ({"labels": ["cat", "  "]}, InvalidInputError, "labels[1] is '  '", 1),
    ({"labels": ["cat", None]}, InvalidInputError, "labels[1] is a NoneType, not a str", 1),
    ({"templates": "a photo of a {}."}, TypeError, "templates must be a list of str, not a single str", None),
    ({"templates": []}, InvalidInputError, "templates is empty", None),
    ({"templates": ["{}", "a photo"]}, InvalidInputError, "templates[1] 'a photo' has no '{}'", 1),
    ({"templates": ["{} and {}"]}, InvalidInputError, "templates[0] '{} and {}' has 2 fields", 0),
    ({"templates": ["{}", "a {label}"]}, InvalidInputError, "templates[1] 'a {label}' has a named", 1),
    ({"templates": ["a {0}"]}, InvalidInputError, "has a named, numbered or formatted field", 0),
    ({"templates": ["a {:>10}"]}, InvalidInputError, "has a named, numbered or formatted field", 0),
    ({"templates": ["{}", "a {} {"]}, InvalidInputError, "templates[1] 'a {} {' does not parse", 1),
    ({"templates": ["{}", "{}"]}, InvalidInputError, "templates[1] '{}' repeats templates[0]", 1),
    ({"templates": ["{}", 7]}, InvalidInputError, "templates[1] is an int, not a str", 1),
    ({"logit_scale": 0}, ValueError, "logit_scale must be a finite number > 0", None),
    ({"logit_scale": -3.0}, ValueError, "logit_scale must be a finite number > 0", None),
    ({"logit_scale": math.nan}, ValueError, "logit_scale must be a finite number > 0", None),
    ({"logit_scale": math.inf}, ValueError, "logit_scale must be a finite number > 0", None),
    ({"logit_scale": "100"}, TypeError, "logit_scale must be a number > 0; got str", None),
    ({"logit_scale": True}, TypeError, "logit_scale must be a number > 0; got bool", None),
    ({"on_error": "skip"}, ValueError, "on_error must be 'raise' or 'mark'", None),
    ({"deadline": 0}, ValueError, "deadline must be", None),
    ({"images": Path("one.png")}, TypeError, "", None),
]


@pytest.mark.parametrize(
    ("kwargs", "error", "says", "index"), BAD_ARGUMENTS, ids=[str(case[0]) for case in BAD_ARGUMENTS]
)
async def test_bad_arguments_are_refused_by_name_before_any_request(
    make: Make, server: ServingServer, kwargs: dict[str, Any], error: type, says: str, index: int | None
) -> None:
    call: dict[str, Any] = {"images": [picture(40, 30)], "labels": LABELS, **kwargs}
    with pytest.raises(error) as info:
        await make().classify(call.pop("images"), call.pop("labels"), **call)
    assert type(info.value) is error
    assert says in str(info.value)
    if isinstance(info.value, InvalidInputError):
        assert info.value.index == index
        # a label or template is named as such (labels[2]), never as "input 2" (an image's words)
        if "labels" in kwargs or "templates" in kwargs:
            assert not str(info.value).startswith("input "), str(info.value)
            assert info.value.argument in ("labels", "templates")
    assert server.posts() == 0


async def test_endpoints_of_different_widths_are_an_error(make: Make, server: ServingServer) -> None:
    server.model = lambda kind, inputs: [[1.0] * (8 if kind == "text" else 16) for _ in inputs]
    with pytest.raises(ResponseFormatError, match=r"16 wide but the label \(text\) embeddings 8"):
        await make().classify([picture(40, 30)], LABELS)


# --------------------------------------------------------------------------------------------------
# ZeroShotResult on its own


def test_top_and_predictions_order_and_ties() -> None:
    probs = np.array([[0.2, 0.5, 0.3], [0.4, 0.2, 0.4], [np.nan] * 3], dtype=np.float32)
    failure = EmbeddingFailure(2, InvalidInputError("bad", index=2))
    result = ZeroShotResult(("a", "b", "c"), probs, [failure])
    assert result.predictions == ["b", "a", None]
    assert result.top(2) == [
        [("b", pytest.approx(0.5)), ("c", pytest.approx(0.3))],
        [("a", pytest.approx(0.4)), ("c", pytest.approx(0.4))],  # a tie goes to label order
        [],
    ]
    assert [len(row) for row in result.top(10)] == [3, 3, 0]
    assert len(result) == 3
    with pytest.raises(ValueError, match="k must be >= 1; got 0"):
        result.top(0)
    with pytest.raises(TypeError, match="k must be an int"):
        result.top(1.5)  # type: ignore[arg-type]
    with pytest.raises(AttributeError):
        result.labels = ("x",)  # type: ignore[misc]


def test_zero_shot_result_is_public_and_documented() -> None:
    assert "ZeroShotResult" in clip_client.__all__
    assert clip_client.ZeroShotResult is ZeroShotResult
    for cls in (ClipClient, AsyncClipClient):
        doc = cls.classify.__doc__ or ""
        assert "Raises" in doc
        assert "```python" in doc  # an example, in a fenced code block


# --------------------------------------------------------------------------------------------------
# Local mode, against transformers' CLIPModel on the same tiny checkpoint


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_clip(tmp_path_factory.mktemp("tiny-clip"), seed=3)


def reference_probabilities(folder: Path, images: list[Image.Image], texts: list[str]) -> np.ndarray:
    """softmax(logits_per_image) of transformers' own forward pass."""
    model = transformers.CLIPModel.from_pretrained(folder).eval()
    tokenizer = transformers.CLIPTokenizer.from_pretrained(folder)
    processor = transformers.CLIPImageProcessor.from_pretrained(folder)
    enc = tokenizer(texts, padding=True, return_tensors="pt")
    pixels = processor(images=images, return_tensors="pt")["pixel_values"]
    with torch.inference_mode():
        out = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], pixel_values=pixels)
    return out.logits_per_image.softmax(dim=-1).numpy().astype(np.float64)


@pytest.mark.parametrize("cls", [ClipClient, AsyncClipClient])
async def test_local_mode_matches_clip_models_own_forward_pass(
    tiny: Path, cls: type[ClipClient] | type[AsyncClipClient]
) -> None:
    # 224x224 RGB: the processor's resize and crop leave them as they are, in any of its backends.
    images = [Image.fromarray(picture(224, 224, seed=s)) for s in range(3)]
    labels = ["the cat", "a dog", "red car", "tree"]
    want = reference_probabilities(tiny, images, labels)
    model = transformers.CLIPModel.from_pretrained(tiny)
    scale = float(model.logit_scale.detach().exp())

    client = cls.local(tiny, device="cpu", dtype="float32")
    try:
        assert client.backend.logit_scale == pytest.approx(scale)  # type: ignore[attr-defined]
        result = client.classify(images, labels, templates=["{}"])
        if isinstance(client, AsyncClipClient):
            result = await result  # type: ignore[misc]
    finally:
        closed = client.close()
        if closed is not None:
            await closed
    assert isinstance(result, ZeroShotResult)
    np.testing.assert_allclose(result.probabilities, want, atol=2e-5)
    assert result.predictions == [labels[j] for j in want.argmax(axis=1)]
