"""Zero-shot classification with CLIP: the logic both clients' `classify` share, free of I/O.

The recipe is the CLIP authors' (Radford et al., 2021, "Learning Transferable Visual Models From
Natural Language Supervision", section 3.1.4, and the CLIP repository's notebook
`notebooks/Prompt_Engineering_for_ImageNet.ipynb`): each label is written into every prompt
template, the prompts are embedded by the text tower, each prompt embedding is L2-normalised, the
label's embedding is their mean, normalised again; an image's probabilities are
`softmax(logit_scale * cos(image, label))` over the labels.

The client shells do the embedding (`embed_texts` for the prompts, `embed_images` for the images);
everything that decides something lives here: checking labels and templates, writing the prompts,
averaging, the softmax, and the small per-client memory of label embeddings that spares a second call
with the same labels every text request.
"""

from __future__ import annotations

import math
import operator
import string
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from ..errors import InvalidInputError, ResponseFormatError
from ..types import EmbeddingArray, EmbeddingFailure, EmbeddingResult

__all__ = [
    "DEFAULT_LOGIT_SCALE",
    "DEFAULT_TEMPLATES",
    "LabelEmbeddings",
    "ZeroShotResult",
    "ZeroShotTask",
    "check_labels",
    "check_logit_scale",
    "check_templates",
    "label_embeddings",
    "probabilities",
    "prompts",
]

DEFAULT_TEMPLATES: tuple[str, ...] = (
    "itap of a {}.",
    "a bad photo of the {}.",
    "a origami {}.",
    "a photo of the large {}.",
    "a {} in a video game.",
    "art of the {}.",
    "a photo of the small {}.",
)
"""The 7 prompt templates the CLIP authors chose by sequential forward selection over their 80
ImageNet templates (CLIP repository, `notebooks/Prompt_Engineering_for_ImageNet.ipynb`, in the
order selected). The notebook reports that this subset "performs a bit better than the full 80
ensemble reported in the paper, especially for the smaller models".
"""

DEFAULT_LOGIT_SCALE = 100.0
"""CLIP's temperature for a remote endpoint, whose model cannot be asked: `exp(logit_scale)` of
the openai/clip-vit-large-patch14 checkpoint, 100.0. Training clips the learned scale at 100
(Radford et al., 2021, section 2.5), and the released ViT-L/14 sits at that ceiling; the prompt
engineering notebook uses the same `100. * image_features @ zeroshot_weights`.
"""

LABEL_CACHE_SIZE = 32
"""Label sets remembered per client (each a `(labels, dim)` float32 array)."""


@dataclass(frozen=True)
class ZeroShotResult:
    """What `classify` returns: one probability row per image, in input order.

    Attributes:
        labels: the labels, in the order given; column `j` of
            [`probabilities`][clip_client.ZeroShotResult.probabilities] is `labels[j]`.
        probabilities: float32, shape `(n_images, n_labels)`: `softmax(logit_scale * cosine)`
            over the labels, so each row sums to 1 (up to float32 rounding). The rows of images
            that failed (`on_error="mark"`) are NaN.
        failures: the images that could not be embedded, each with its index and error, in index
            order; empty unless `on_error="mark"`.

    ```python
    result = client.classify(["cat.jpg"], ["cat", "dog"])
    result.predictions, result.top(1)  # (['cat'], [[('cat', 0.97)]])
    ```
    """

    labels: tuple[str, ...]
    probabilities: npt.NDArray[np.float32]
    failures: list[EmbeddingFailure] = field(default_factory=list)

    @property
    def predictions(self) -> list[str | None]:
        """The most probable label of each image (the first in label order on an exact tie), None
        for an image that failed."""
        return [
            None if np.isnan(row).any() else self.labels[int(np.argmax(row))] for row in self.probabilities
        ]

    def top(self, k: int = 5) -> list[list[tuple[str, float]]]:
        """The `k` most probable labels of each image, best first (label order on exact ties).

        Args:
            k: labels per image, `>= 1`; more than there are labels gives them all.

        Returns:
            one list per image, in input order, of `(label, probability)` pairs; an empty list
            for an image that failed.

        Raises:
            TypeError: `k` is not an int.
            ValueError: `k < 1`.
        """
        if isinstance(k, bool):
            raise TypeError("k must be an int >= 1; got a bool")
        try:
            k = operator.index(k)
        except TypeError:
            raise TypeError(f"k must be an int >= 1; got {type(k).__name__}") from None
        if k < 1:
            raise ValueError(f"k must be >= 1; got {k}")
        out: list[list[tuple[str, float]]] = []
        for row in self.probabilities:
            if np.isnan(row).any():
                out.append([])
                continue
            order = np.argsort(-row, kind="stable")[:k]
            out.append([(self.labels[int(j)], float(row[j])) for j in order])
        return out

    def __len__(self) -> int:
        return len(self.probabilities)


# --------------------------------------------------------------------------------------------------
# Checks


def _a(noun: str) -> str:
    """`noun` with its indefinite article: "a str", "an int"."""
    return f"{'an' if noun[:1].lower() in 'aeiou' else 'a'} {noun}"


def check_labels(labels: object) -> tuple[str, ...]:
    """The labels as a tuple, or the error that names what is wrong.

    Raises:
        TypeError: `labels` is a single `str` (or `bytes`), or not iterable.
        InvalidInputError: no labels; a label that is not a `str`, is empty or blank, or repeats
            an earlier one (`.index` names it).
    """
    items = _sequence(labels, "labels", "['cat', 'dog']")
    if not items:
        raise InvalidInputError(
            "labels is empty: pass at least one label, e.g. ['cat', 'dog']", argument="labels"
        )
    seen: dict[str, int] = {}
    for i, label in enumerate(items):
        if not isinstance(label, str):
            raise InvalidInputError(
                f"labels[{i}] is {_a(type(label).__name__)}, not a str", index=i, argument="labels"
            )
        if not label.strip():
            raise InvalidInputError(
                f"labels[{i}] is {label!r}: a label must have some text", index=i, argument="labels"
            )
        if label in seen:
            raise InvalidInputError(
                f"labels[{i}] {label!r} repeats labels[{seen[label]}]: pass each label once",
                index=i,
                argument="labels",
            )
        seen[label] = i
    return tuple(items)  # type: ignore[arg-type]


def check_templates(templates: object) -> tuple[str, ...]:
    """The templates as a tuple (None: `DEFAULT_TEMPLATES`), each with exactly one `{}`.

    `{{` and `}}` are literal braces, as in `str.format`.

    Raises:
        TypeError: `templates` is a single `str`, or not iterable.
        InvalidInputError: no templates; a template that is not a `str`, has no `{}`, more than
            one, a named or numbered field (`{label}`, `{0}`), a format spec, an unmatched brace,
            or repeats an earlier one (`.index` names it).
    """
    if templates is None:
        return DEFAULT_TEMPLATES
    items = _sequence(templates, "templates", "['a photo of a {}.']")
    if not items:
        raise InvalidInputError(
            "templates is empty: pass at least one, e.g. ['a photo of a {}.'], or None for the default set",
            argument="templates",
        )
    seen: dict[str, int] = {}
    for i, template in enumerate(items):
        if not isinstance(template, str):
            raise InvalidInputError(
                f"templates[{i}] is {_a(type(template).__name__)}, not a str", index=i, argument="templates"
            )
        problem = _template_problem(template)
        if problem is not None:
            raise InvalidInputError(
                f"templates[{i}] {template!r} {problem}: each template needs exactly one '{{}}', where "
                "the label goes (write '{{' and '}}' for literal braces)",
                index=i,
                argument="templates",
            )
        if template in seen:
            raise InvalidInputError(
                f"templates[{i}] {template!r} repeats templates[{seen[template]}]: pass each template once",
                index=i,
                argument="templates",
            )
        seen[template] = i
    return tuple(items)  # type: ignore[arg-type]


def check_logit_scale(logit_scale: object) -> float:
    """`logit_scale` as a float: a finite number > 0.

    Raises:
        TypeError: not a number (or a bool).
        ValueError: not finite, or not > 0.
    """
    if isinstance(logit_scale, bool) or not isinstance(logit_scale, (int, float, np.integer, np.floating)):
        raise TypeError(f"logit_scale must be a number > 0; got {type(logit_scale).__name__}")
    value = float(logit_scale)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"logit_scale must be a finite number > 0 (CLIP's is 100.0); got {value}")
    return value


def _sequence(value: object, name: str, example: str) -> list[object]:
    if isinstance(value, (str, bytes)):
        raise TypeError(
            f"{name} must be a list of str, not a single {type(value).__name__}: pass [{value!r}]"
        )
    if not isinstance(value, Iterable):
        raise TypeError(f"{name} must be a list of str, e.g. {example}; got {type(value).__name__}")
    return list(value)


def _template_problem(template: str) -> str | None:
    """What is wrong with one template, or None."""
    try:
        fields = [
            (name, spec, conversion)
            for _, name, spec, conversion in string.Formatter().parse(template)
            if name is not None
        ]
    except ValueError as exc:  # an unmatched '{' or '}'
        return f"does not parse ({exc})"
    if not fields:
        return "has no '{}'"
    if len(fields) > 1:
        return f"has {len(fields)} fields"
    name, spec, conversion = fields[0]
    if name or spec or conversion:
        return "has a named, numbered or formatted field"
    return None


# --------------------------------------------------------------------------------------------------
# Arithmetic


def prompts(labels: tuple[str, ...], templates: tuple[str, ...]) -> list[str]:
    """Every label in every template, label-major: `templates[t].format(labels[l])` is at
    `l * len(templates) + t`. A label is inserted as it is, braces included."""
    return [template.format(label) for label in labels for template in templates]


def label_embeddings(rows: npt.NDArray[np.floating], n_labels: int) -> EmbeddingArray:
    """The prompt embeddings (`(n_labels * n_templates, dim)`, label-major as `prompts`)
    averaged per label: each row L2-normalised, the mean over the templates, normalised again
    (the CLIP notebook's `zeroshot_classifier`). Computed in float64, returned float32
    `(n_labels, dim)`.

    Raises:
        ResponseFormatError: a prompt embedded as all zeros, or a label's prompts cancel out, so its
            direction is undefined (no CLIP model does this).
    """
    per_label = np.asarray(rows, dtype=np.float64).reshape(n_labels, -1, rows.shape[-1])
    norms = np.linalg.norm(per_label, axis=-1, keepdims=True)
    if (norms == 0).any():
        raise ResponseFormatError("a prompt's text embedding is all zeros: its direction is undefined")
    mean = (per_label / norms).mean(axis=1)
    mean_norms = np.linalg.norm(mean, axis=-1, keepdims=True)
    if (mean_norms == 0).any():
        raise ResponseFormatError("a label's prompt embeddings average to zero: its direction is undefined")
    out: EmbeddingArray = (mean / mean_norms).astype(np.float32)
    return out


def probabilities(
    images: npt.NDArray[np.floating], labels: npt.NDArray[np.floating], logit_scale: float
) -> npt.NDArray[np.float32]:
    """`softmax(logit_scale * cos(image, label))` over the labels, one row per image, in float64
    then float32. Image rows holding NaN (failed inputs) give NaN rows.

    Raises:
        ResponseFormatError: an image embedding (not a failure) is all zeros, or the image and label
            embeddings differ in width (the two endpoints serve different models).
    """
    if images.shape[-1] != labels.shape[-1]:
        raise ResponseFormatError(
            f"the image embeddings are {images.shape[-1]} wide but the label (text) embeddings "
            f"{labels.shape[-1]}",
            hint="Point text_endpoint and image_endpoint at endpoints serving the same CLIP model",
        )
    img = np.asarray(images, dtype=np.float64)
    norms = np.linalg.norm(img, axis=-1, keepdims=True)
    zero = np.flatnonzero(norms[:, 0] == 0)
    if zero.size:
        raise ResponseFormatError(f"image {int(zero[0])} embedded as all zeros: its cosine is undefined")
    logits = logit_scale * (img / norms) @ np.asarray(labels, dtype=np.float64).T
    logits -= logits.max(axis=1, keepdims=True)
    weights = np.exp(logits)
    out: npt.NDArray[np.float32] = (weights / weights.sum(axis=1, keepdims=True)).astype(np.float32)
    return out


# --------------------------------------------------------------------------------------------------
# One call, planned; label embeddings remembered


class LabelEmbeddings:
    """A small LRU of label embeddings, keyed by (backend identity, labels, templates); safe to share
    across threads. Arrays are stored read-only."""

    def __init__(self, maxsize: int = LABEL_CACHE_SIZE) -> None:
        self.maxsize = maxsize
        self._rows: OrderedDict[tuple[str, tuple[str, ...], tuple[str, ...]], EmbeddingArray] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[str, tuple[str, ...], tuple[str, ...]]) -> EmbeddingArray | None:
        with self._lock:
            rows = self._rows.get(key)
            if rows is not None:
                self._rows.move_to_end(key)
            return rows

    def put(self, key: tuple[str, tuple[str, ...], tuple[str, ...]], rows: EmbeddingArray) -> None:
        rows.setflags(write=False)
        with self._lock:
            self._rows[key] = rows
            self._rows.move_to_end(key)
            while len(self._rows) > self.maxsize:
                self._rows.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._rows.clear()


@dataclass
class ZeroShotTask:
    """One `classify` call, checked before any I/O. The shell embeds `prompts` when
    `labels_embedded` is None (and hands the rows to `accept_texts`), then the images,
    and hands them to `result`."""

    labels: tuple[str, ...]
    templates: tuple[str, ...]
    logit_scale: float
    on_error: str
    memory: LabelEmbeddings
    identity: Callable[[], str]
    deadline_at: float | None = None
    labels_embedded: EmbeddingArray | None = None

    @classmethod
    def plan(
        cls,
        labels: object,
        templates: object,
        logit_scale: object,
        *,
        default_scale: float,
        on_error: str,
        deadline: float | None,
        memory: LabelEmbeddings,
        identity: Callable[[], str],
    ) -> ZeroShotTask:
        """Check every argument (labels, templates, scale) and look the label set up in `memory`
        under the backend's identity as it stands now."""
        checked_labels = check_labels(labels)
        checked_templates = check_templates(templates)
        scale = check_logit_scale(default_scale if logit_scale is None else logit_scale)
        task = cls(
            checked_labels,
            checked_templates,
            scale,
            on_error,
            memory,
            identity,
            None if deadline is None else time.monotonic() + deadline,
        )
        task.labels_embedded = memory.get(task._key())
        return task

    @property
    def prompts(self) -> list[str]:
        """The texts to embed: every label in every template, label-major."""
        return prompts(self.labels, self.templates)

    def remaining(self) -> float | None:
        """Seconds left of the call's `deadline` for its next embed call (None: no deadline). Once
        it has passed, a sliver: that call then fails with the deadline's own error."""
        if self.deadline_at is None:
            return None
        return max(self.deadline_at - time.monotonic(), 1e-9)

    def accept_texts(self, rows: EmbeddingArray) -> None:
        """The prompts' embeddings: averaged per label and remembered, under the backend's identity
        as it stands after the call (a remote endpoint's served model version is known by then)."""
        self.labels_embedded = label_embeddings(rows, len(self.labels))
        self.memory.put(self._key(), self.labels_embedded)

    def result(self, images: EmbeddingArray | EmbeddingResult) -> ZeroShotResult:
        """The images' embeddings (an `EmbeddingResult` with `on_error="mark"`) as probabilities."""
        assert self.labels_embedded is not None, "accept_texts() first"
        if isinstance(images, EmbeddingResult):
            rows, failures = images.embeddings, list(images.failures)
        else:
            rows, failures = images, []
        probs = probabilities(rows, self.labels_embedded, self.logit_scale)
        probs[[f.index for f in failures]] = np.nan
        return ZeroShotResult(self.labels, probs, failures)

    def _key(self) -> tuple[str, tuple[str, ...], tuple[str, ...]]:
        return (self.identity(), self.labels, self.templates)
