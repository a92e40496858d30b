"""`check_endpoint()`: what the two endpoints are and what they do, measured rather than assumed.

The check is one sans-I/O flow (`check_flow`), a generator the sync and async clients drive
with `_core.drive` / `_core.adrive` exactly as they drive a batch: it yields a step, a
`ReadState` (the backend's control-plane GET) or a `Probe` (one batch through the
backend's normal embed path: retries, auth, time bounds, the adaptive limit), and is sent the answer
or thrown the error. Everything it decides (what to send, what a refusal means, the verdicts and the
advice) is written here once; the shells only do the I/O.

A check sends, when every answer is a success: one state GET per endpoint and one probe POST per
endpoint, 4 requests in all (a backend without a control plane: no GET, 2 requests or forward
passes). A probe pair the endpoint refuses (400) is split in half to tell which input it refused:
2 more requests for that endpoint. Retries add their own.
"""

from __future__ import annotations

import functools
import math
import textwrap
from collections.abc import Generator
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from .._backend import Backend
from .._remote.endpoint_state import EndpointState, unknown_state
from ..errors import (
    APIError,
    BadRequestError,
    ClipClientError,
    InvalidInputError,
    ResponseFormatError,
    Spelling,
    python_spelling,
    spell_advice,
)
from ..types import EmbeddingArray, InputKind, Settings
from .batching import Batch, BatchOutcome, BatchPlanner, batch_flow
from .concurrency import CallContext, Counters
from .images import ImageOptions, PreparedImage, prepare_image
from .png import png_rgb

__all__ = [
    "CLOSE_COSINE",
    "PROBE_IMAGE_SIZE",
    "CheckCounters",
    "EndpointCheck",
    "EndpointReport",
    "ImageParity",
    "ParityVerdict",
    "Probe",
    "ReadState",
    "TextTruncation",
    "TruncationVerdict",
    "check_flow",
    "probe_image",
]

ParityVerdict = Literal["exact", "close", "different", "insensitive"]
""""exact": the two embeddings are identical; "close": cosine >= `CLOSE_COSINE`; "different"."""
TruncationVerdict = Literal["truncates", "refuses"]
""""truncates": the endpoint embedded a text longer than CLIP's 77 tokens (HTTP 200); "refuses": it
answered 400.
"""

CLOSE_COSINE = 0.9999
"""The cosine similarity at and above which two embeddings of the same image are "close"."""
PROBE_IMAGE_SIZE = (640, 480)
"""(width, height) of the parity probe image: non-square, so the resize and the crop both matter."""
CLIP_CONTEXT = 77
"""CLIP's text context, in tokens (start and end tokens included)."""

# The width probe: a short caption every CLIP endpoint embeds.
SHORT_TEXT = "a photo of a cat"
_CAPTION = (
    "a photograph of a red bicycle leaning against a weathered blue wooden door on a quiet cobbled "
    "street in the late afternoon sun"
)
# The truncation probe: 5 x 23 = 115 words, so at least 117 CLIP tokens (every word is one token or
# more, plus the start and end tokens) whatever the tokenizer's vocabulary, well over 77.
LONG_TEXT = " ".join([_CAPTION] * 5)
LONG_TEXT_WORDS = len(LONG_TEXT.split())

_NOT_A_SERVING_ENDPOINT = "not a serving endpoint"
_LOCAL_MODEL = f"{_NOT_A_SERVING_ENDPOINT}: the local model, in this process (no endpoint state)"
_IGNORES_TEXT = (
    "the text endpoint answered the same embedding for two different texts: it does not embed the "
    "text it is sent (a stub, a model that ignores its input, or a wrong input column), so "
    "'truncates' says nothing. Check the served model before anything else"
)


# --------------------------------------------------------------------------------------------------
# The report


@dataclass(frozen=True)
class ImageParity:
    """Whether the image endpoint computes, from a whole image file, the embedding it computes from
    this client's prepared 224x224 crop of that file.

    Measured with `probe_image` (a 640x480 photo-like picture: colour gradients, hard-edged
    shapes, thin lines and texture at several scales, identical on every run), sent twice in one
    request: as the original PNG file, and as the client prepares it (its own resize, crop and
    `image_format`). Both rows go through the same model in the same batch, so any difference is
    the endpoint's preparation of the file against the client's.

    Attributes:
        verdict: `"exact"` (identical vectors: the client's preparation is the endpoint's, bit for
            bit), `"close"` (cosine >= 0.9999), `"different"`, or `"insensitive"`: the endpoint
            answered the same embedding for a different picture (the probe mirrored, sent in the
            same request as a control), so it does not embed what it is sent and parity means
            nothing.
        cosine: cosine similarity of the two embeddings (float64 arithmetic; 1.0 for identical ones).
        max_abs_diff: the largest absolute difference between the two embeddings, element by element,
            in the endpoint's own units (the rows as answered, not normalised); 0.0 when exact.
        probe: what was sent, e.g. `"640x480 PNG file (422,821 bytes) and the client's 224x224 png
            crop (98,765 bytes)"`.
        advice: what to do about the verdict; None when `"exact"`, and when the client already
            sends files as given (`image_preparation="server"`), since its embeddings are then the
            endpoint's own whatever the verdict.
    """

    verdict: ParityVerdict
    cosine: float
    max_abs_diff: float
    probe: str
    advice: str | None = None
    advice_template: str | None = field(default=None, repr=False, compare=False)
    """`advice` with the settings it names as placeholders (`clip_client.errors.spell_advice`),
    for a caller that names settings its own way (the command line's options).
    """

    def advice_in(self, spelling: Spelling) -> str | None:
        """`advice`, with the settings it names spelled by `spelling`."""
        if self.advice_template is None:
            return self.advice
        return spell_advice(self.advice_template, spelling)


@dataclass(frozen=True)
class TextTruncation:
    """What the text endpoint does with a text longer than CLIP's 77-token context.

    Attributes:
        verdict: `"truncates"` (it answered 200: the model cuts the text, as CLIP's tokenizer does
            with `truncation=True, max_length=77`) or `"refuses"` (it answered 400).
        probe_words: words in the probe text (at least that many tokens, plus 2, so over 77).
        refusal: the endpoint's error when it refused (status, error code, message); else None.
        advice: what to do when it refuses; None when it truncates.
    """

    verdict: TruncationVerdict
    probe_words: int
    refusal: str | None = None
    advice: str | None = None


@dataclass(frozen=True)
class EndpointReport:
    """One endpoint (text or image), as [`ClipClient.check_endpoint`][clip_client.ClipClient.check_endpoint]
    found it.

    Attributes:
        kind: `"text"` or `"image"`: which inputs this endpoint embeds.
        endpoint: the serving endpoint's name; None for a backend that has none (local mode).
        state: what `GET /api/2.0/serving-endpoints/{name}` said (ready, configuration update,
            served entities with workload size and type, scale to zero, route-optimized), as an
            [`EndpointState`][clip_client.EndpointState]. `state.known` is False, with `state.note` saying
            why, when the state could not be read (HTTP 403: the caller holds CAN QUERY but not CAN
            VIEW; a timeout of the GET) or there is none (`"not a serving endpoint"`: local mode).
        dim: the embedding width the endpoint answered, measured on the probe (768 for ViT-L/14).
        parity: the image endpoint's pixel parity ([`ImageParity`][clip_client.ImageParity]); None for the
            text endpoint, or when it could not be measured (`notes` says why).
        truncation: the text endpoint's handling of long texts
            ([`TextTruncation`][clip_client.TextTruncation]); None for the image endpoint.
        notes: anything else the check found worth saying about this endpoint.
    """

    kind: InputKind
    endpoint: str | None
    state: EndpointState
    dim: int
    parity: ImageParity | None = None
    truncation: TextTruncation | None = None
    notes: tuple[str, ...] = ()

    @property
    def advice(self) -> tuple[str, ...]:
        """Every piece of advice for this endpoint (empty when there is nothing to do)."""
        return self.advice_in(python_spelling)

    def advice_in(self, spelling: Spelling) -> tuple[str, ...]:
        """`advice`, with the settings it names spelled by `spelling`."""
        found = (
            self.parity.advice_in(spelling) if self.parity else None,
            self.truncation.advice if self.truncation else None,
        )
        return tuple(a for a in found if a)

    def __str__(self) -> str:
        return self.render(python_spelling)

    def render(self, spelling: Spelling) -> str:
        """`str(report)`, with the settings its advice names spelled by `spelling`."""
        name = f" {self.endpoint}" if self.endpoint else ""
        lines = [f"{self.kind} endpoint{name}", _field("state", _describe_state(self.state))]
        lines.append(_field("width", str(self.dim)))
        if self.truncation is not None:
            t = self.truncation
            said = "truncated by the endpoint" if t.verdict == "truncates" else f"REFUSED ({t.refusal})"
            if t.verdict == "truncates" and self.state.note == _LOCAL_MODEL:
                said = f"truncated by the local model's tokenizer at {CLIP_CONTEXT} tokens"
            lines.append(_field("long texts", f"{said} (probe of {t.probe_words} words, over 77 tokens)"))
        if self.parity is not None:
            p = self.parity
            lines.append(
                _field(
                    "parity",
                    f"{p.verdict}: cosine {_cosine(p.cosine)}, largest difference {p.max_abs_diff:.3g} "
                    f"({p.probe})",
                )
            )
        lines += [_field("advice", a) for a in self.advice_in(spelling)]
        lines += [_field("note", n) for n in self.notes]
        return "\n".join(lines)


@dataclass(frozen=True)
class EndpointCheck:
    """What [`ClipClient.check_endpoint`][clip_client.ClipClient.check_endpoint] found: one
    [`EndpointReport`][clip_client.EndpointReport] per endpoint.

    `str(check)` is a readable summary, one block per endpoint.

    Attributes:
        text: the text endpoint's report (its `truncation` is set).
        image: the image endpoint's report (its `parity` is set unless it could not be measured).
        requests: the requests the check sent: state GETs plus probe POST attempts, retries
            included (forward passes for a local backend). 4 when every answer is a success.
        notes: findings about the two endpoints together (e.g. they answer different widths).
    """

    text: EndpointReport
    image: EndpointReport
    requests: int
    notes: tuple[str, ...] = ()

    @property
    def advice(self) -> tuple[str, ...]:
        """Every piece of advice, text endpoint first; empty when there is nothing to do."""
        return self.text.advice + self.image.advice

    def __str__(self) -> str:
        return self.render(python_spelling)

    def render(self, spelling: Spelling) -> str:
        """`str(check)`, with the settings its advice names spelled by `spelling`."""
        lines = [self.text.render(spelling), self.image.render(spelling)]
        lines += [f"note: {n}" for n in self.notes]
        lines.append(f"({self.requests} request{'s' if self.requests != 1 else ''})")
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# The flow


@dataclass(frozen=True)
class ReadState:
    """Step: read the endpoint's state (`backend.endpoint_state(kind, refresh=True)`); send back
    the [`EndpointState`][clip_client.EndpointState], or throw the error (401, 404)."""

    kind: InputKind


@dataclass(frozen=True)
class Probe:
    """Step: embed `batch` on the `kind` endpoint through the backend's normal path; send back
    the rows, or throw the `ClipClientError`."""

    kind: InputKind
    batch: Batch


Step = ReadState | Probe


class CheckCounters(Counters):
    """The check's own count of requests, also counted in the client's (`client.stats`)."""

    def __init__(self, client: Counters) -> None:
        super().__init__()
        self._client = client

    def attempt(self, number: int = 1) -> None:
        super().attempt(number)
        self._client.attempt(number)

    def overload(self) -> None:
        super().overload()
        self._client.overload()

    def split(self) -> None:
        super().split()
        self._client.split()


def check_flow(
    backend: Backend, settings: Settings, ctx: CallContext, *, control_plane: bool
) -> Generator[Step, Any, EndpointCheck]:
    """The whole check, free of I/O: the states (when the backend has a `control_plane`), then
    the text probe, then the image probe. Errors that every embed call would meet (401, 403 on a
    probe, 404, credentials, a probe of the client's own kind of input failing after its retries)
    are raised; a refusal of a probe input the client never sends itself (the long text, the
    whole file) is a finding."""
    states: dict[InputKind, EndpointState] = {}
    gets = 0
    for kind in ("text", "image"):
        if control_plane:
            states[kind] = yield ReadState(kind)
            gets += 1
        else:
            name = backend.endpoint(kind) or type(backend).__name__
            why = f"{_NOT_A_SERVING_ENDPOINT}: {type(backend).__name__} has no control plane to ask"
            if _is_local(backend):
                why = _LOCAL_MODEL
            states[kind] = unknown_state(name, why)
    text = yield from _text_probe(backend, ctx, states["text"])
    image = yield from _image_probe(backend, settings, ctx, states["image"])
    notes: tuple[str, ...] = ()
    if text.dim != image.dim:
        notes = (
            (
                f"the text endpoint answers {text.dim}-wide embeddings and the image endpoint "
                f"{image.dim}-wide ones: they do not serve the same CLIP model, so texts and images "
                "cannot be compared"
            ),
        )
    return EndpointCheck(text=text, image=image, requests=gets + ctx.counters.requests, notes=notes)


def _text_probe(
    backend: Backend, ctx: CallContext, state: EndpointState
) -> Generator[Step, Any, EndpointReport]:
    results = yield from _send(backend, "text", [SHORT_TEXT, LONG_TEXT], ctx)
    short, long = results
    if isinstance(short, ClipClientError):
        raise short  # the endpoint cannot embed a short caption: every call would fail
    if isinstance(long, BadRequestError):
        code = f" {long.error_code}" if long.error_code else ""
        truncation = TextTruncation(
            "refuses",
            LONG_TEXT_WORDS,
            refusal=f"HTTP {long.status_code}{code}: {long.message}",
            advice=(
                f"the endpoint refuses texts longer than CLIP's {CLIP_CONTEXT} tokens. This client does "
                "not cut texts itself (an exact cut needs CLIP's tokenizer; a cut by characters or words "
                "would embed other texts than an endpoint that truncates), so embed_texts raises "
                "BadRequestError for such texts: shorten them before embedding (transformers' "
                "CLIPTokenizer: decode(tokenizer(text, truncation=True, max_length=77)['input_ids'], "
                "skip_special_tokens=True)), or redeploy the model with its tokenizer called with "
                "truncation=True, max_length=77 (docs/endpoints.md)"
            ),
        )
    elif isinstance(long, ClipClientError):
        raise long
    else:
        truncation = TextTruncation("truncates", LONG_TEXT_WORDS)
    notes: tuple[str, ...] = ()
    if not isinstance(long, ClipClientError) and _same(short, long):
        notes = (_IGNORES_TEXT,)
    return EndpointReport(
        "text", backend.endpoint("text"), state, dim=int(short.shape[0]), truncation=truncation, notes=notes
    )


def _image_probe(
    backend: Backend, settings: Settings, ctx: CallContext, state: EndpointState
) -> Generator[Step, Any, EndpointReport]:
    png = probe_image()
    opts = ImageOptions(
        size=settings.image_size,
        format=settings.image_format,
        jpeg_quality=settings.jpeg_quality,
        want=backend.image_input,
    )
    # The file as given (what image_preparation="server" sends), and the client's own preparation of
    # it. A backend that takes pixels has no preparation of its own: both are the client's.
    original = prepare_image(png, None, replace(opts, preparation="server"))
    crop = prepare_image(png, None, replace(opts, preparation="client"))
    # The control: another picture (the probe mirrored), prepared as the crop is. An endpoint that
    # answers it with the crop's embedding does not look at its input.
    control = prepare_image(mirrored_probe_image(), None, replace(opts, preparation="client"))
    width, height = PROBE_IMAGE_SIZE
    size = settings.image_size
    if original.encoded is not None and crop.encoded is not None:
        probe = (
            f"{width}x{height} PNG file ({len(original.encoded):,} bytes) and the client's {size}x{size} "
            f"{settings.image_format} crop ({len(crop.encoded):,} bytes)"
        )
    else:
        probe = f"{width}x{height} picture, prepared by the client to {size}x{size} pixels twice"
    results = yield from _send(backend, "image", [original, crop, control], ctx)
    whole, prepared, other = results
    if isinstance(prepared, ClipClientError):
        raise prepared  # the endpoint cannot embed what this client sends: every call would fail
    notes: tuple[str, ...] = ()
    parity = None
    if isinstance(whole, ClipClientError):
        notes = (
            (
                f"pixel parity not measured: the endpoint did not embed the whole {width}x{height} "
                f"probe file ({_said(whole)}); keep image_preparation='client', which sends "
                f"{size}x{size} crops"
            ),
        )
    elif not isinstance(other, ClipClientError) and _same(prepared, other):
        parity = ImageParity(
            "insensitive",
            1.0,
            0.0,
            probe,
            "the endpoint answered the same embedding for two different pictures (the probe and its "
            "mirror image): it does not embed the image it is sent (a stub, a model that ignores its "
            "input, or a wrong input column). Check the served model before anything else",
        )
    else:
        parity = _parity(whole, prepared, probe, settings)
    return EndpointReport(
        "image", backend.endpoint("image"), state, dim=int(prepared.shape[0]), parity=parity, notes=notes
    )


def _send(
    backend: Backend, kind: InputKind, items: list[str] | list[PreparedImage], ctx: CallContext
) -> Generator[Step, Any, list[EmbeddingArray | ClipClientError]]:
    """Send the probe's inputs, in one request when `max_request_bytes` allows, through
    `batch_flow` (`mark`): a 400 for the pair is split to find the
    input it was about. Returns one row, or one error (without an index: the probe's positions mean
    nothing to the caller), per input."""
    payloads = [backend.payload(kind, item) for item in items]
    planner = BatchPlanner(len(payloads), backend.max_request_bytes)
    results: list[EmbeddingArray | ClipClientError | None] = [None] * len(payloads)
    batches: list[Batch] = []
    for i, (payload, nbytes) in enumerate(payloads):
        try:
            closed = planner.add(i, payload, nbytes)
        except InvalidInputError as exc:  # alone over max_request_bytes
            results[i] = exc
            continue
        if closed is not None:
            batches.append(closed)
    if (last := planner.flush()) is not None:
        batches.append(last)
    for batch in batches:
        outcomes = yield from _probe(
            kind, backend.endpoint(kind), batch_flow(batch, mark=True, on_split=ctx.counters.split)
        )
        for part, outcome in outcomes:
            for position, i in enumerate(part.indices):
                results[i] = outcome if isinstance(outcome, ClipClientError) else outcome[position]
    for result in results:
        if isinstance(result, APIError):
            result.index = None
    assert all(r is not None for r in results)
    return [r for r in results if r is not None]


def _probe(
    kind: InputKind, endpoint: str | None, flow: Generator[Batch, EmbeddingArray, list[BatchOutcome]]
) -> Generator[Step, Any, list[BatchOutcome]]:
    """A `batch_flow`'s requests as `Probe` steps of `kind`; an answer that is not one
    row per input (a custom backend's) is thrown into the flow as a `ResponseFormatError`."""
    try:
        batch = next(flow)
        while True:
            try:
                rows = yield Probe(kind, batch)
            except ClipClientError as exc:
                batch = flow.throw(exc)
                continue
            if not (isinstance(rows, np.ndarray) and rows.ndim == 2 and rows.shape[0] == len(batch)):
                shape = getattr(rows, "shape", type(rows).__name__)
                error = ResponseFormatError(
                    f"sent {len(batch)} inputs but got {shape} back", endpoint=endpoint
                )
                batch = flow.throw(error)
            else:
                batch = flow.send(rows)
    except StopIteration as done:
        outcomes: list[BatchOutcome] = done.value
        return outcomes


def _said(error: ClipClientError) -> str:
    return error.reason if isinstance(error, InvalidInputError) else str(error)


def _same(a: EmbeddingArray, b: EmbeddingArray) -> bool:
    """Whether two embeddings are the same direction (identical, or cosine >= CLOSE_COSINE)."""
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    norms = float(np.linalg.norm(x) * np.linalg.norm(y))
    return bool(np.array_equal(a, b)) or (norms > 0 and float(x @ y) / norms >= CLOSE_COSINE)


def _parity(whole: EmbeddingArray, prepared: EmbeddingArray, probe: str, settings: Settings) -> ImageParity:
    a = np.asarray(whole, dtype=np.float64)
    b = np.asarray(prepared, dtype=np.float64)
    identical = bool(np.array_equal(whole, prepared))
    norms = float(np.linalg.norm(a) * np.linalg.norm(b))
    cosine = 1.0 if identical else (float(a @ b / norms) if norms > 0 else 0.0)
    max_abs_diff = float(np.max(np.abs(a - b))) if a.size else 0.0
    if identical:
        return ImageParity("exact", cosine, max_abs_diff, probe)
    verdict: ParityVerdict = "close" if cosine >= CLOSE_COSINE else "different"
    # Sending files as given already makes every embedding the endpoint's own: nothing to act on.
    if settings.image_preparation == "server":
        return ImageParity(verdict, cosine, max_abs_diff, probe)
    template = _parity_advice(verdict, cosine, settings)
    return ImageParity(verdict, cosine, max_abs_diff, probe, spell_advice(template), template)


def _parity_advice(verdict: ParityVerdict, cosine: float, settings: Settings) -> str:
    """The advice, as a template naming settings (`spell_advice`)."""
    if verdict == "close":
        text = (
            "the endpoint prepares images almost as this client does, but not exactly: most likely it "
            "resizes with another filter (transformers 5 with torchvision installed resizes with "
            "torchvision's antialiased bicubic). Embeddings of the same file from the endpoint and "
            f"from this client agree to cosine {_cosine(cosine)}: fine for search and deduplication. "
            "For identical embeddings, log the model with the PIL processor (CLIPImageProcessorPil, "
            "or AutoImageProcessor.from_pretrained(..., backend='pil')), or use "
            "{image_preparation='server'} so the endpoint prepares every image itself"
        )
    else:
        text = (
            "the endpoint does not resize and centre-crop images like CLIPImageProcessor (it may "
            "squash them to 224x224, crop elsewhere, or use another model): embeddings of the "
            f"client's crops and of the same files sent whole agree only to cosine {_cosine(cosine)}. "
            "Use {image_preparation='server'} so every image is prepared by the endpoint, or redeploy "
            "the model with CLIPImageProcessor's PIL path (docs/endpoints.md)"
        )
    if settings.image_format == "jpeg":
        text = (
            "first: this client sends its crops as JPEG ({image_format='jpeg'}), which changes their "
            "pixels; check again with {image_format='png'} before anything else. Then, if it persists: "
            + text
        )
    return text


# --------------------------------------------------------------------------------------------------
# The probe image


@functools.cache
def mirrored_probe_image() -> bytes:
    """The control picture of the parity probe: `probe_image` mirrored left to right."""
    width, height = PROBE_IMAGE_SIZE
    pixels = _decode_png_rgb(probe_image(), width, height)
    return png_rgb(np.ascontiguousarray(pixels[:, ::-1]))


def _decode_png_rgb(png: bytes, width: int, height: int) -> npt.NDArray[np.uint8]:
    from io import BytesIO

    from PIL import Image

    with Image.open(BytesIO(png)) as img:
        return np.asarray(img.convert("RGB"), dtype=np.uint8).reshape(height, width, 3)


@functools.cache
def probe_image() -> bytes:
    """The parity probe: a 640x480 RGB PNG, the same bytes on every run and machine (no random
    generator: closed-form gradients, shapes and hashed value noise). Photo-like where it matters:
    smooth colour gradients, hard-edged shapes and thin lines, and texture at 48, 12, 3 and 1 pixel
    scales, so that resize filters that differ give measurably different pixels."""
    width, height = PROBE_IMAGE_SIZE
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    ring = np.hypot(x - 0.6 * width, y - 0.4 * height)
    pixels = np.stack(
        [40 + 170 * x / width, 30 + 180 * y / height, 128 + 90 * np.sin(2 * np.pi * ring / 260)], axis=-1
    )
    for scale, (cell, amplitude) in enumerate(((48, 20), (12, 12), (3, 8), (1, 6))):
        for channel in range(3):
            pixels[..., channel] += amplitude * _value_noise(width, height, cell, 7 * scale + channel + 1)
    shapes: list[tuple[npt.NDArray[np.bool_], tuple[int, int, int]]] = [
        (np.hypot(x - 160, y - 150) <= 90, (220, 60, 40)),  # a disc
        ((x >= 380) & (x <= 560) & (y >= 250) & (y <= 420), (30, 70, 200)),  # a box
        (_triangle(x, y, (300, 40), (420, 200), (250, 180)), (250, 220, 60)),
        ((y >= 300) & ((x + 0.7 * y) % 23 < 2), (10, 10, 10)),  # thin diagonal lines
        (np.abs(np.hypot(x - 310, y - 330) - 29) <= 1.5, (255, 255, 255)),  # a thin ring
    ]
    for mask, colour in shapes:
        pixels[mask] = colour
    return png_rgb(np.clip(np.rint(pixels), 0, 255).astype(np.uint8))


def _triangle(
    x: npt.NDArray[np.float64], y: npt.NDArray[np.float64], *corners: tuple[float, float]
) -> npt.NDArray[np.bool_]:
    def side(p: tuple[float, float], q: tuple[float, float]) -> npt.NDArray[np.float64]:
        return (q[0] - p[0]) * (y - p[1]) - (q[1] - p[1]) * (x - p[0])

    a, b, c = corners
    sides = (side(a, b), side(b, c), side(c, a))
    inside: npt.NDArray[np.bool_] = ((sides[0] >= 0) & (sides[1] >= 0) & (sides[2] >= 0)) | (
        (sides[0] <= 0) & (sides[1] <= 0) & (sides[2] <= 0)
    )
    return inside


def _value_noise(width: int, height: int, cell: int, salt: int) -> npt.NDArray[np.float64]:
    """Smooth noise in [-1, 1] with features about `cell` pixels wide: hashed values on a lattice of
    that spacing, smoothstep-interpolated."""
    rows, cols = np.mgrid[0 : height // cell + 2, 0 : width // cell + 2]
    lattice = _hash(rows, cols, salt)
    gx, gy = np.arange(width) / cell, np.arange(height) / cell
    i, j = gx.astype(np.int64), gy.astype(np.int64)
    fx, fy = _smoothstep(gx - i), _smoothstep(gy - j)[:, None]
    rows0, rows1 = lattice[j], lattice[j + 1]
    top = rows0[:, i] * (1 - fx) + rows0[:, i + 1] * fx
    bottom = rows1[:, i] * (1 - fx) + rows1[:, i + 1] * fx
    noise: npt.NDArray[np.float64] = top * (1 - fy) + bottom * fy
    return noise


def _smoothstep(t: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    return t * t * (3 - 2 * t)


def _hash(rows: npt.NDArray[np.int64], cols: npt.NDArray[np.int64], salt: int) -> npt.NDArray[np.float64]:
    """A 32-bit integer hash of each (row, column, salt), as a float in [-1, 1)."""
    mask = np.uint64(0xFFFFFFFF)
    h = (
        rows.astype(np.uint64) * np.uint64(0x9E3779B1)
        ^ cols.astype(np.uint64) * np.uint64(0x85EBCA77)
        ^ np.uint64(salt * 0xC2B2AE3D)
    ) & mask
    for shift, multiplier in ((15, 0x2C1B3C6D), (12, 0x297A2D39)):
        h ^= h >> np.uint64(shift)
        h = (h * np.uint64(multiplier)) & mask
    h ^= h >> np.uint64(15)
    unit: npt.NDArray[np.float64] = h.astype(np.float64) / 2.0**31 - 1.0
    return unit


# --------------------------------------------------------------------------------------------------
# Formatting


def _field(label: str, text: str) -> str:
    """One labelled field of a report, wrapped to 100 columns under its label."""
    head = f"  {label + ':':<12}"
    return textwrap.fill(
        text, 100, initial_indent=head, subsequent_indent=" " * len(head), break_on_hyphens=False
    )


def _cosine(value: float) -> str:
    """A cosine close to 1 with enough digits to show how close (0.9999871, not 1.000)."""
    if value >= 1.0 or not math.isfinite(value):
        return f"{value:.7f}"
    digits = max(4, min(12, 2 - math.floor(math.log10(1.0 - value))))
    return f"{value:.{digits}f}"


def _is_local(backend: Backend) -> bool:
    """Whether `backend` runs its model in this process (`InProcessModel`: local mode)."""
    from .._backend import InProcessModel

    return isinstance(backend, InProcessModel)


def _describe_state(state: EndpointState) -> str:
    if not state.known:
        note = state.note or "no reason given"
        return note if note.startswith(_NOT_A_SERVING_ENDPOINT) else f"unknown ({note})"
    parts = ["ready" if state.ready else "NOT READY" if state.ready is False else "readiness unknown"]
    if state.config_update and state.config_update != "NOT_UPDATING":
        words = state.config_update.lower().replace("_", " ")
        parts.append(f"config {words}" if words.startswith("update") else f"config update {words}")
    if state.route_optimized:
        parts.append("route-optimized")
    for e in state.served_entities:
        model = f"{e.entity_name} v{e.entity_version}" if e.entity_name else (e.name or "an entity")
        size = e.workload_size or (
            f"{e.min_provisioned_concurrency or 0}-{e.max_provisioned_concurrency} concurrency"
            if e.max_provisioned_concurrency is not None
            else "size unknown"
        )
        details = [size, e.workload_type or "type unknown"]
        if e.max_concurrency is not None:
            details.append(f"up to {e.max_concurrency} requests at once")
        details.append("scales to zero" if e.scale_to_zero_enabled else "does not scale to zero")
        if e.deployment and e.deployment != "DEPLOYMENT_READY":
            details.append(e.deployment + (f": {e.deployment_message}" if e.deployment_message else ""))
        parts.append(f"serves {model} ({', '.join(details)})")
    return "; ".join(parts)
