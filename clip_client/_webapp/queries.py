"""How the app embeds what a user asks with: a text, an uploaded image, a set of labels."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np

if TYPE_CHECKING:
    from .._client import ClipClient
    from ..types import EmbeddingArray

LABEL_SETS_REMEMBERED = 8
"""Label sets whose predictions over the whole source are kept (each: 4 bytes per row)."""


class Queries(Protocol):
    """What embeds the user's queries: the model that computed the source's rows."""

    def text(self, query: str) -> EmbeddingArray: ...

    def image(self, data: bytes) -> EmbeddingArray: ...

    def labels(self, labels: Sequence[str]) -> tuple[EmbeddingArray, float]:
        """The labels' zero-shot embeddings `(n_labels, dim)` and the logit scale."""


class ClientQueries:
    """`Queries` through a `ClipClient`: its `classify` machinery gives the label embeddings (the
    default prompt templates, averaged per label) and remembers them (the client's label cache), so a
    label set already asked for sends no request."""

    def __init__(self, client: ClipClient) -> None:
        self.client = client

    def text(self, query: str) -> EmbeddingArray:
        return self.client.embed_text(query)

    def image(self, data: bytes) -> EmbeddingArray:
        return self.client.embed_image(data)

    def labels(self, labels: Sequence[str]) -> tuple[EmbeddingArray, float]:
        task, _ = self.client._zero_shot([], list(labels), None, None, "raise", None)
        if task.labels_embedded is None:
            task.accept_texts(self.client.embed_texts(task.prompts))
        assert task.labels_embedded is not None
        return task.labels_embedded, task.logit_scale


@dataclass(frozen=True)
class Predictions:
    """Each row's most likely label (its index) and that label's probability."""

    labels: tuple[str, ...]
    best: np.ndarray
    probability: np.ndarray

    def counts(self) -> dict[str, int]:
        found = np.bincount(self.best[self.best >= 0], minlength=len(self.labels))
        return {label: int(n) for label, n in zip(self.labels, found.tolist(), strict=True)}


def predict(
    rows: EmbeddingArray, label_rows: EmbeddingArray, scale: float, labels: Sequence[str]
) -> Predictions:
    """Zero-shot predictions for `rows` (the package's `probabilities`), a block at a time. A row
    that cannot be normalised (NaN, all zeros) gets label -1."""
    from .._core.zeroshot import probabilities

    n = len(rows)
    best = np.full(n, -1, dtype=np.int16)
    prob = np.zeros(n, dtype=np.float32)
    block = 65_536
    for start in range(0, n, block):
        chunk = np.asarray(rows[start : start + block], dtype=np.float32)
        norms = np.linalg.norm(chunk, axis=1)
        ok = np.flatnonzero(np.isfinite(norms) & (norms > 0))
        if not len(ok):
            continue
        p = probabilities(chunk[ok], label_rows, scale)
        best[start + ok] = p.argmax(axis=1)
        prob[start + ok] = p.max(axis=1)
    return Predictions(tuple(labels), best, prob)


class PredictionCache:
    """The predictions over the whole source of the last `LABEL_SETS_REMEMBERED` label sets."""

    def __init__(self, maxsize: int = LABEL_SETS_REMEMBERED) -> None:
        self.maxsize = maxsize
        self._items: OrderedDict[tuple[str, ...], Predictions] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, labels: tuple[str, ...]) -> Predictions | None:
        with self._lock:
            found = self._items.get(labels)
            if found is not None:
                self._items.move_to_end(labels)
            return found

    def put(self, found: Predictions) -> None:
        with self._lock:
            self._items[found.labels] = found
            self._items.move_to_end(found.labels)
            while len(self._items) > self.maxsize:
                self._items.popitem(last=False)
