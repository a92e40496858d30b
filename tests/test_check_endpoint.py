"""``check_endpoint()``: the report on both endpoints, its verdicts measured on real vectors (issue 11).

The loopback server's ``model=`` here is a fake CLIP that really prepares each image the way a
given endpoint would (the exact CLIP resize and crop, a squash to 224x224, or the same bicubic on
float pixels as torchvision's) and embeds the PIXELS: a fixed random projection of the 224x224x3
normalised pixels, so identical pixels give identical vectors and different pixels different ones.
Every verdict is then checked against the cosine the test computes itself from what the server
received.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import io
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import numpy as np
import pytest
from harness import IMAGE, KINDS, TEXT, Embedder, Make, clients_of, close_and_drain
from PIL import Image
from serving_server import Reply, ServingServer, endpoint_state, expected_vector

from clip_client import (
    APITimeoutError,
    AsyncClipClient,
    ClipClient,
    EndpointCheck,
    EndpointNotFoundError,
    EndpointReport,
    ImageParity,
    ResponseFormatError,
    TextTruncation,
)
from clip_client._core.endpoint_check import (
    CLOSE_COSINE,
    LONG_TEXT,
    PROBE_IMAGE_SIZE,
    SHORT_TEXT,
    probe_image,
)

#: Width of the fake model's embeddings.
WIDTH = 32
SIZE = 224
MEAN = np.array([0.48145466, 0.4578275, 0.40821073])
STD = np.array([0.26862954, 0.26130258, 0.27577711])

Prepare = Callable[[Image.Image], np.ndarray]


# --------------------------------------------------------------------------------------------------
# Fake endpoints: three ways to prepare an image, one model of the pixels


def _shortest_edge(width: int, height: int) -> tuple[int, int]:
    if width <= height:
        return SIZE, int(SIZE * height / width)
    return int(SIZE * width / height), SIZE


def _crop(pixels: np.ndarray) -> np.ndarray:
    height, width = pixels.shape[:2]
    top, left = (height - SIZE) // 2, (width - SIZE) // 2  # the floor offset, as CLIPImageProcessor
    return pixels[top : top + SIZE, left : left + SIZE]


def clip_exact(img: Image.Image) -> np.ndarray:
    """CLIPImageProcessor's PIL path: shortest edge to 224 with Pillow BICUBIC (long edge truncated),
    centre crop at the floor offset."""
    return _crop(
        np.asarray(img.resize(_shortest_edge(*img.size), Image.Resampling.BICUBIC), dtype=np.float64)
    )


def squash(img: Image.Image) -> np.ndarray:
    """A hand-built endpoint that squashes every image to 224x224, aspect ratio lost."""
    return np.asarray(img.resize((SIZE, SIZE), Image.Resampling.BICUBIC), dtype=np.float64)


def float_bicubic(img: Image.Image) -> np.ndarray:
    """The same antialiased bicubic on float pixels, as torchvision resizes float tensors: none of
    the uint8 path's rounding and clipping between its two passes (Pillow's mode "F" per channel)."""
    rgb = np.asarray(img, dtype=np.float32)
    size = _shortest_edge(*img.size)
    channels = [
        np.asarray(
            Image.fromarray(np.ascontiguousarray(rgb[..., c]), "F").resize(size, Image.Resampling.BICUBIC)
        )
        for c in range(3)
    ]
    return _crop(np.stack(channels, axis=-1).astype(np.float64))


@functools.cache
def projection() -> np.ndarray:
    """The fake model's weights: a fixed random projection of the normalised pixels."""
    return np.random.default_rng(20240611).standard_normal((SIZE * SIZE * 3, WIDTH))


def embed_pixels(pixels: np.ndarray) -> np.ndarray:
    assert pixels.shape == (SIZE, SIZE, 3)
    normalised = (pixels / 255.0 - MEAN) / STD
    return (normalised.reshape(-1) @ projection()).astype(np.float32)


def embed_record(record: str, prepare: Prepare) -> np.ndarray:
    with Image.open(io.BytesIO(base64.b64decode(record))) as img:
        return embed_pixels(prepare(img.convert("RGB")))


def pixel_model(
    prepare: Prepare, *, max_words: int | None = None, text_width: int = WIDTH
) -> Callable[[str, list[str]], list[list[float]]]:
    """A served model: images prepared by ``prepare`` and embedded from their pixels; texts
    embedded from their bytes, refused (an exception in predict: HTTP 400) over ``max_words``."""

    def model(kind: str, inputs: list[str]) -> list[list[float]]:
        if kind == "text":
            for text in inputs:
                if max_words is not None and len(text.split()) > max_words:
                    raise ValueError(
                        f"The size of tensor a ({len(text.split()) + 2}) must match the size of tensor b (77)"
                    )
            return [expected_vector("text", t, text_width).tolist() for t in inputs]
        return [embed_record(x, prepare).tolist() for x in inputs]

    return model


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def probe_records(server: ServingServer) -> list[str]:
    """The image records of the check's one image request: the whole file, then the client's crop
    (the third, the mirrored control picture, is left out)."""
    [request] = [r for r in server.received if r.endpoint == IMAGE]
    assert len(request.inputs) == 3
    return request.inputs[:2]


async def check(make: Make, **options: object) -> EndpointCheck:
    report = await make(**options).check_endpoint()
    assert isinstance(report, EndpointCheck)
    return report


# --------------------------------------------------------------------------------------------------
# Pixel parity: the three fake endpoints


async def test_an_endpoint_that_crops_exactly_is_exact(make: Make, server: ServingServer) -> None:
    server.model = pixel_model(clip_exact)
    report = await check(make)
    parity = report.image.parity
    assert parity is not None
    assert parity.verdict == "exact"
    assert parity.cosine == 1.0
    assert parity.max_abs_diff == 0.0
    assert parity.advice is None
    assert report.advice == ()
    # Sent once as the whole file, once as the client's crop, in one request.
    whole, crop = probe_records(server)
    assert base64.b64decode(whole) == probe_image()
    with (
        Image.open(io.BytesIO(base64.b64decode(whole))) as a,
        Image.open(io.BytesIO(base64.b64decode(crop))) as b,
    ):
        assert (a.size, b.size) == (PROBE_IMAGE_SIZE, (SIZE, SIZE))
        assert (a.format, b.format) == ("PNG", "PNG")
    np.testing.assert_array_equal(embed_record(whole, clip_exact), embed_record(crop, clip_exact))


async def test_an_endpoint_that_squashes_is_different(make: Make, server: ServingServer) -> None:
    server.model = pixel_model(squash)
    report = await check(make)
    parity = report.image.parity
    assert parity is not None
    whole, crop = probe_records(server)
    measured = cosine(embed_record(whole, squash), embed_record(crop, squash))
    assert parity.cosine == pytest.approx(measured, abs=1e-6)
    assert parity.cosine < CLOSE_COSINE  # about 0.44 with this model
    assert parity.verdict == "different"
    assert parity.max_abs_diff == pytest.approx(
        float(np.abs(embed_record(whole, squash) - embed_record(crop, squash)).max()), rel=1e-5
    )
    assert parity.advice is not None
    assert "image_preparation='server'" in parity.advice
    assert "centre-crop" in parity.advice
    assert report.advice == (parity.advice,)


async def test_an_endpoint_with_another_resize_filter_is_close(make: Make, server: ServingServer) -> None:
    server.model = pixel_model(float_bicubic)
    report = await check(make)
    parity = report.image.parity
    assert parity is not None
    whole, crop = probe_records(server)
    a, b = embed_record(whole, float_bicubic), embed_record(crop, float_bicubic)
    # The filter really differs on the probe (measurably), and only a little (1 - cosine ~ 2e-5).
    assert not np.array_equal(a, b)
    assert CLOSE_COSINE <= cosine(a, b) < 1.0 - 1e-7
    assert parity.cosine == pytest.approx(cosine(a, b), abs=1e-9)
    assert parity.max_abs_diff == pytest.approx(float(np.abs(a - b).max()), rel=1e-5)
    assert parity.max_abs_diff > 0
    assert parity.verdict == "close"
    assert parity.advice is not None
    assert "torchvision" in parity.advice
    assert "image_preparation='server'" in parity.advice
    assert f"{parity.cosine:.6f}"[:6] in parity.advice


async def test_jpeg_crops_are_named_in_the_advice(make: Make, server: ServingServer) -> None:
    """A client that sends JPEG crops changes the pixels itself: the verdict is what it measures, and
    the advice names the setting."""
    server.model = pixel_model(clip_exact)
    report = await check(make, image_format="jpeg")
    parity = report.image.parity
    assert parity is not None
    assert parity.verdict in ("close", "different")
    assert parity.cosine < 1.0
    assert parity.advice is not None
    assert "image_format='jpeg'" in parity.advice
    assert "jpeg crop" in parity.probe


async def test_an_endpoint_that_refuses_the_whole_file_leaves_parity_unmeasured(
    make: Make, server: ServingServer
) -> None:
    def only_224(img: Image.Image) -> np.ndarray:
        if img.size != (SIZE, SIZE):
            raise ValueError(f"expected a 224x224 image, got {img.size[0]}x{img.size[1]}")
        return np.asarray(img, dtype=np.float64)

    server.model = pixel_model(only_224)
    report = await check(make)
    assert report.image.parity is None
    assert report.image.dim == WIDTH
    [note] = report.image.notes
    assert "pixel parity not measured" in note
    assert "expected a 224x224 image" in note
    assert "input 0" not in note
    # The pair's 400 is split to tell which input it was about: 2 GETs, 1 text POST, 3 image POSTs.
    assert report.requests == len(server.requests) == 6


# --------------------------------------------------------------------------------------------------
# Text truncation


async def test_long_texts_truncated_by_the_endpoint(make: Make, server: ServingServer) -> None:
    server.model = pixel_model(clip_exact)
    report = await check(make)
    truncation = report.text.truncation
    assert truncation == TextTruncation("truncates", len(LONG_TEXT.split()))
    assert truncation.probe_words > 77
    assert report.text.parity is None
    assert report.image.truncation is None
    [request] = [r for r in server.received if r.endpoint == TEXT]
    assert request.inputs == [SHORT_TEXT, LONG_TEXT]  # the width probe and the long text, one request


async def test_an_endpoint_that_refuses_long_texts(make: Make, server: ServingServer) -> None:
    server.model = pixel_model(clip_exact, max_words=75)
    e = make()
    report = await e.check_endpoint()
    truncation = report.text.truncation
    assert truncation is not None
    assert truncation.verdict == "refuses"
    assert truncation.refusal is not None
    assert truncation.refusal.startswith("HTTP 400 BAD_REQUEST")
    assert "must match the size of tensor b (77)" in truncation.refusal
    assert truncation.advice is not None
    assert "shorten them" in truncation.advice
    assert "truncation=True, max_length=77" in truncation.advice
    assert report.advice[0] == truncation.advice
    assert report.text.dim == WIDTH  # the short caption still measured the width
    assert report.image.parity is not None
    assert report.image.parity.verdict == "exact"
    assert "REFUSED" in str(report)
    # The pair's 400 is split (1 + 2 text POSTs): 2 GETs + 3 + 1 image POST.
    assert report.requests == len(server.requests) == 6
    assert e.stats.splits == 1


# --------------------------------------------------------------------------------------------------
# State, width, cost


async def test_state_width_and_request_count(make: Make, server: ServingServer) -> None:
    server.model = pixel_model(clip_exact)
    server.states[TEXT] = endpoint_state(
        TEXT, ready=False, config_update="IN_PROGRESS", workload_size="Medium", scale_to_zero=True
    )
    server.states[IMAGE] = endpoint_state(
        IMAGE, workload_size="Large", workload_type="GPU_SMALL", route_optimized=False
    )
    e = make()
    report = await e.check_endpoint()
    text, image = report.text, report.image
    assert (text.kind, text.endpoint, image.kind, image.endpoint) == ("text", TEXT, "image", IMAGE)
    assert text.state.known
    assert text.state.ready is False
    assert text.state.config_update == "IN_PROGRESS"
    [entity] = text.state.served_entities
    assert (entity.workload_size, entity.workload_type, entity.scale_to_zero_enabled) == (
        "Medium",
        "CPU",
        True,
    )
    assert image.state.ready is True
    assert image.state.route_optimized is False
    assert image.state.served_entities[0].workload_type == "GPU_SMALL"
    assert text.dim == image.dim == WIDTH
    assert report.notes == ()
    # The documented cost: 2 state GETs and 2 probe POSTs; the POSTs count in client.stats.
    assert report.requests == 4
    assert sorted(m for m, _ in server.requests) == ["GET", "GET", "POST", "POST"]
    assert e.stats.requests == 2
    shown = str(report)
    for expected in (
        f"text endpoint {TEXT}",
        f"image endpoint {IMAGE}",
        "NOT READY",
        "config update in progress",
        "Medium, CPU, up to 16 requests at once, scales to zero",
        "Large, GPU_SMALL",
        f"width:      {WIDTH}",
        "long texts: truncated by the endpoint",
        "parity:     exact: cosine 1.0000000, largest difference 0",
        "(4 requests)",
    ):
        assert expected in shown, (expected, shown)


async def test_a_state_the_caller_may_not_read_is_unknown_not_an_error(
    make: Make, server: ServingServer
) -> None:
    server.model = pixel_model(clip_exact)
    server.states[IMAGE] = Reply(
        status=403,
        body={"error_code": "PERMISSION_DENIED", "message": "User does not have permission 'View'"},
    )
    report = await check(make)
    assert report.image.state.known is False
    assert report.image.state.note is not None
    assert "CAN VIEW" in report.image.state.note
    assert report.image.state.served_entities == ()
    # The rest of the report is all there.
    assert report.text.state.known is True
    assert report.image.dim == WIDTH
    assert report.image.parity is not None
    assert report.image.parity.verdict == "exact"
    assert report.text.truncation is not None
    assert "state:      unknown (reading the endpoint's configuration needs CAN VIEW" in str(report)


async def test_a_missing_endpoint_raises_naming_it(make: Make, server: ServingServer) -> None:
    server.model = pixel_model(clip_exact)
    with pytest.raises(EndpointNotFoundError) as caught:
        await make(image_endpoint="clip-image-missing").check_endpoint()
    assert caught.value.endpoint == "clip-image-missing"
    assert caught.value.status_code == 404
    assert "clip-image-missing" in str(caught.value)
    assert server.posts() == 0  # the states are read first: nothing was probed


async def test_endpoints_of_different_widths_are_noted(make: Make, server: ServingServer) -> None:
    server.model = pixel_model(clip_exact, text_width=16)
    report = await check(make)
    assert (report.text.dim, report.image.dim) == (16, WIDTH)
    [note] = report.notes
    assert "16-wide" in note
    assert f"{WIDTH}-wide" in note
    assert f"note: {note}" in str(report)


async def test_the_report_is_frozen(make: Make, server: ServingServer) -> None:
    server.model = pixel_model(clip_exact)
    report = await check(make)
    assert isinstance(report.text, EndpointReport)
    assert isinstance(report.image.parity, ImageParity)
    with pytest.raises(dataclasses.FrozenInstanceError):
        report.requests = 0  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        report.image.parity.verdict = "close"  # type: ignore[misc]


async def test_a_closed_client_and_a_bad_deadline_are_refused(make: Make) -> None:
    e = make()
    with pytest.raises(ValueError, match="deadline"):
        await e.check_endpoint(deadline=0)
    await e.close()
    with pytest.raises(RuntimeError, match="closed"):
        await e.check_endpoint()


def test_the_probe_image_is_the_same_every_time() -> None:
    png = probe_image()
    with Image.open(io.BytesIO(png)) as img:
        assert img.size == PROBE_IMAGE_SIZE
        assert img.mode == "RGB"
        pixels = np.asarray(img)
    # Textured: many distinct colours, detail at the finest scale (neighbouring pixels differ).
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50_000
    assert np.abs(np.diff(pixels.astype(np.int16), axis=1)).mean() > 3
    probe_image.cache_clear()
    assert probe_image() == png


# --------------------------------------------------------------------------------------------------
# Local mode: no control plane, the same probes through the in-process model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from tiny_clip import write_tiny_clip

    return write_tiny_clip(tmp_path_factory.mktemp("tiny-clip-check"))


@pytest.fixture(params=KINDS)
async def local(request: pytest.FixtureRequest, tiny: Path) -> AsyncIterator[Embedder]:
    cls = ClipClient if request.param == "sync" else AsyncClipClient
    client = cls.local(tiny, device="cpu", dtype="float32")
    yield Embedder(client)
    await close_and_drain(client)


async def test_a_local_client_checks_its_model(local: Embedder) -> None:
    report = await local.check_endpoint()
    for endpoint in (report.text, report.image):
        assert endpoint.endpoint is None
        assert endpoint.state.known is False
        assert endpoint.state.note is not None
        assert endpoint.state.note.startswith("not a serving endpoint")
        assert endpoint.dim == 24  # the tiny checkpoint's projection_dim
    parity = report.image.parity
    assert parity is not None
    assert (parity.verdict, parity.cosine, parity.max_abs_diff) == ("exact", 1.0, 0.0)
    assert report.text.truncation is not None
    assert report.text.truncation.verdict == "truncates"
    assert report.requests == 2  # one forward pass per tower
    assert local.stats.requests == 2
    assert "state:      not a serving endpoint" in str(report)


# --------------------------------------------------------------------------------------------------
# A backend of one's own: no control plane, and its answers checked


class Custom:
    """A third-party backend without ``endpoint_state``; ``short`` answers one row too few."""

    image_input = "pixels"
    max_request_bytes = None
    batch_size = None
    image_size = None
    dim = None

    def __init__(self, *, short: bool = False) -> None:
        self.short = short

    def endpoint(self, kind: str) -> str:
        return f"custom-{kind}"

    def payload(self, kind: str, item: object) -> tuple[object, int]:
        return (item if isinstance(item, str) else item.pixels), 0  # type: ignore[attr-defined]

    def embed(self, kind: str, payloads: list[object], ctx: object) -> np.ndarray:
        ctx.attempted()  # type: ignore[attr-defined]
        data = [p if isinstance(p, str) else p.tobytes() for p in payloads]  # type: ignore[attr-defined]
        rows = [expected_vector(kind, x, 8) for x in data]
        return np.stack(rows[:-1] if self.short else rows)

    async def aembed(self, kind: str, payloads: list[object], ctx: object) -> np.ndarray:
        return self.embed(kind, payloads, ctx)

    def concurrency_limit(self) -> None:
        return None

    def close(self) -> None:
        pass

    async def aclose(self) -> None:
        pass


@pytest.mark.parametrize("kind", KINDS)
async def test_a_backend_without_a_control_plane(kind: str) -> None:
    async with clients_of(kind, backend=Custom()) as make:
        report = await make().check_endpoint()
    assert report.text.state.name == "custom-text"
    assert report.text.state.known is False
    assert report.text.state.note == "not a serving endpoint: Custom has no control plane to ask"
    assert report.image.parity is not None
    assert report.image.parity.verdict == "exact"  # a pixel backend: the client's preparation is its own
    assert report.requests == 2


@pytest.mark.parametrize("kind", KINDS)
async def test_a_backend_answering_too_few_rows_is_a_typed_error(kind: str) -> None:
    async with clients_of(kind, backend=Custom(short=True)) as make:
        with pytest.raises(ResponseFormatError, match="sent 2 inputs but got") as caught:
            await make().check_endpoint()
    assert caught.value.endpoint == "custom-text"


# --------------------------------------------------------------------------------------------------
# Fresh-tester findings: an endpoint that ignores its input, the check's deadline, server mode


def constant_model(kind: str, inputs: list[str]) -> list[list[float]]:
    """An endpoint that answers the same vector whatever it is sent."""
    return [[1.0] * WIDTH for _ in inputs]


async def test_an_endpoint_that_ignores_its_input_is_not_called_exact(
    make: Make, server: ServingServer
) -> None:
    server.model = constant_model
    report = await check(make)
    parity = report.image.parity
    assert parity is not None
    assert parity.verdict == "insensitive"
    assert parity.advice is not None
    assert "does not embed the image" in parity.advice
    assert any("does not embed the text" in note for note in report.text.notes)
    assert report.advice  # something to act on


async def test_the_checks_deadline_bounds_its_state_reads(make: Make, server: ServingServer) -> None:
    """Both state reads hang (8 s each): with deadline=1.5 the check ends by its deadline, as embed
    calls do, instead of after both reads' own 10 s bounds."""
    server.model = pixel_model(clip_exact)
    server.states[TEXT] = Reply(200, endpoint_state(TEXT), delay=8.0)
    server.states[IMAGE] = Reply(200, endpoint_state(IMAGE), delay=8.0)
    started = time.monotonic()
    with pytest.raises(APITimeoutError):
        await make().check_endpoint(deadline=1.5)
    assert time.monotonic() - started < 1.5 + 1.5


async def test_a_client_that_sends_files_as_given_gets_no_advice_on_parity(
    make: Make, server: ServingServer
) -> None:
    server.model = pixel_model(squash)
    report = await check(make, image_preparation="server")
    parity = report.image.parity
    assert parity is not None
    assert parity.verdict == "different"  # still measured and reported ...
    assert parity.advice is None  # ... but its embeddings are the endpoint's own: nothing to do
    assert report.advice == ()
