"""The embedding cache: re-runs cost no request.

A cached row is keyed by where it came from and exactly what was sent for it:

- the backend's identity (a serving endpoint's invocations URL and, when its state was readable, the
  registered model versions it serves; a local model's name and dtype; for any other backend, its
  type name and endpoint);
- the kind (text or image) and, for images, the preparation settings that change what is sent;
- the sha256 of the payload itself (the text, or the prepared image's bytes).

Rows are stored as the backend answered them, float32 before any normalisation, so a hit is
bit-identical to the row a request would have returned. Two stores: :class:`MemoryCache` (a bounded
LRU, per client) and :class:`SQLiteCache` (a file shared by processes and threads, in WAL mode).

A cache never fails a call: a file that is corrupt, locked past its busy timeout or unwritable is
logged once at WARNING on the ``clip_client`` logger, and the client carries on without the cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, Union, runtime_checkable

import numpy as np

from ._constants import LOGGER_NAME
from .types import EmbeddingArray

if TYPE_CHECKING:
    from ._core.concurrency import Counters
    from .types import InputKind, Settings

__all__ = [
    "DEFAULT_MEMORY_ENTRIES",
    "DEFAULT_SQLITE_BUSY_TIMEOUT",
    "CacheOption",
    "CacheView",
    "EmbeddingCache",
    "MemoryCache",
    "SQLiteCache",
    "open_cache",
]

logger = logging.getLogger(LOGGER_NAME)


#: Entries a ``cache="memory"`` holds before the least recently used is dropped: 10,000 rows of 768
#: float32 are about 31 MB.
DEFAULT_MEMORY_ENTRIES = 10_000
#: Seconds an SQLite cache waits for another process's or thread's write lock before giving up
#: (then the client goes on without the cache, and says so once).
DEFAULT_SQLITE_BUSY_TIMEOUT = 5.0

#: The settings that change what is sent for an image (and so its embedding).
_IMAGE_SETTINGS = (
    "image_size",
    "image_format",
    "jpeg_quality",
    "high_bit_depth",
    "image_preparation",
    "fast_decode",
)


@runtime_checkable
class EmbeddingCache(Protocol):
    """What a cache store does. ``namespace`` names the backend, kind and settings; ``digest`` is the
    sha256 of one payload. Implementations are thread-safe and never raise from these methods."""

    def get(self, namespace: str, digest: bytes) -> EmbeddingArray | None: ...

    def put_many(self, namespace: str, rows: Iterable[tuple[bytes, EmbeddingArray]]) -> None: ...

    def clear(self) -> None: ...

    def close(self) -> None: ...


#: What ``cache=`` takes: None (off), ``"memory"``, a path to an SQLite file, or a store of your own.
CacheOption = Union[str, "os.PathLike[str]", EmbeddingCache, None]


def open_cache(option: CacheOption) -> EmbeddingCache | None:
    """The store ``cache=`` asks for. ``"memory"`` is the in-process LRU; any other string or
    path-like is an SQLite file (``~`` expanded; opened on first use, so a bad path fails no call).

    Raises:
        TypeError: ``option`` is none of those.
        ValueError: an empty or blank path.
    """
    if option is None:
        return None
    if isinstance(option, str) and option == "memory":
        return MemoryCache()
    if isinstance(option, (str, os.PathLike)):
        if not os.fspath(option).strip():
            raise ValueError(
                "cache= is an empty path: pass a file such as 'embeddings.sqlite', 'memory' for an "
                "in-process cache, or None for none"
            )
        return SQLiteCache(option)
    if isinstance(option, EmbeddingCache):
        return option
    raise TypeError(
        f"cache= takes None, 'memory', a path to an SQLite file or an EmbeddingCache, "
        f"got {type(option).__name__}"
    )


class MemoryCache:
    """A bounded LRU in this process: ``max_entries`` rows (default :data:`DEFAULT_MEMORY_ENTRIES`)."""

    def __init__(self, max_entries: int = DEFAULT_MEMORY_ENTRIES) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be >= 1, got {max_entries}")
        self.max_entries = max_entries
        self._rows: OrderedDict[tuple[str, bytes], EmbeddingArray] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._rows)

    def get(self, namespace: str, digest: bytes) -> EmbeddingArray | None:
        with self._lock:
            row = self._rows.get((namespace, digest))
            if row is None:
                return None
            self._rows.move_to_end((namespace, digest))
        copy: EmbeddingArray = row.copy()  # the caller's to change
        return copy

    def put_many(self, namespace: str, rows: Iterable[tuple[bytes, EmbeddingArray]]) -> None:
        with self._lock:
            for digest, row in rows:
                self._rows[(namespace, digest)] = np.array(row, dtype=np.float32)
                self._rows.move_to_end((namespace, digest))
            while len(self._rows) > self.max_entries:
                self._rows.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._rows.clear()

    def close(self) -> None:
        self.clear()


class SQLiteCache:
    """An SQLite file that several processes and threads share: WAL mode (readers never wait for a
    writer), a busy timeout for writers, each batch's rows written in one transaction.

    The connection opens on first use (and again in a forked child). Any SQLite or OS error (a
    corrupt file, a lock held past ``busy_timeout`` seconds, a path that cannot be created) is
    logged once at WARNING and turns the cache off for this client: lookups miss, nothing is stored.
    """

    def __init__(
        self, path: str | os.PathLike[str], *, busy_timeout: float = DEFAULT_SQLITE_BUSY_TIMEOUT
    ) -> None:
        self.path = Path(os.path.expanduser(os.fspath(path)))
        self.busy_timeout = busy_timeout
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._pid: int | None = None
        self._broken = False

    def __repr__(self) -> str:
        return f"SQLiteCache({str(self.path)!r})"

    def get(self, namespace: str, digest: bytes) -> EmbeddingArray | None:
        found = self._run(
            lambda db: db.execute(
                "SELECT row FROM embeddings WHERE namespace = ? AND digest = ?", (namespace, digest)
            ).fetchone()
        )
        if not found:
            return None
        blob = found[0]
        if not isinstance(blob, bytes) or not blob or len(blob) % 4:
            return None  # not a row this module wrote: a miss, and the new answer replaces it
        return np.frombuffer(blob, dtype="<f4").astype(np.float32)  # a fresh, writable copy

    def put_many(self, namespace: str, rows: Iterable[tuple[bytes, EmbeddingArray]]) -> None:
        values = [
            (namespace, digest, np.ascontiguousarray(row, dtype="<f4").tobytes()) for digest, row in rows
        ]
        if not values:
            return

        def write(db: sqlite3.Connection) -> None:
            db.execute("BEGIN IMMEDIATE")  # take the write lock now: no deadlock upgrading a read
            try:
                db.executemany(
                    "INSERT OR REPLACE INTO embeddings (namespace, digest, row) VALUES (?, ?, ?)", values
                )
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

        self._run(write)

    def clear(self) -> None:
        """Remove every row of the file, whatever client or process wrote it."""
        self._run(lambda db: db.execute("DELETE FROM embeddings"))

    def close(self) -> None:
        with self._lock:
            if self._conn is not None and self._pid == os.getpid():
                self._conn.close()
            self._conn = None

    def _run(self, work: Any) -> Any:
        with self._lock:
            if self._broken:
                return None
            try:
                return work(self._connection())
            except (sqlite3.Error, OSError) as exc:
                self._broken = True
                logger.warning(
                    "embedding cache %s is unusable (%s: %s); going on without it",
                    self.path,
                    type(exc).__name__,
                    exc,
                )
                return None

    def _connection(self) -> sqlite3.Connection:
        if self._conn is not None and self._pid == os.getpid():
            return self._conn
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(
            self.path, timeout=self.busy_timeout, isolation_level=None, check_same_thread=False
        )
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute(
                "CREATE TABLE IF NOT EXISTS embeddings ("
                " namespace TEXT NOT NULL, digest BLOB NOT NULL, row BLOB NOT NULL,"
                " PRIMARY KEY (namespace, digest)) WITHOUT ROWID"
            )
        except BaseException:
            conn.close()
            raise
        self._conn, self._pid = conn, os.getpid()
        return conn


# --------------------------------------------------------------------------------------------------
# What one call looks up


def payload_digest(payload: object) -> bytes | None:
    """sha256 of exactly what is sent: a record's bytes, a text, or prepared pixels (with their shape
    and dtype). None for a payload of another type, which is then not cached."""
    if isinstance(payload, (bytes, bytearray, memoryview)):
        return hashlib.sha256(payload).digest()
    if isinstance(payload, str):
        return hashlib.sha256(payload.encode("utf-8", "surrogatepass")).digest()
    if isinstance(payload, np.ndarray):
        head = f"{payload.dtype.str}{payload.shape}".encode()
        return hashlib.sha256(head + np.ascontiguousarray(payload).tobytes()).digest()
    return None


def backend_identity(backend: object, kind: InputKind) -> str:
    """Who computes the rows: the backend's ``cache_identity(kind)`` when it has one, else its type
    name and endpoint."""
    own = getattr(backend, "cache_identity", None)
    if callable(own):
        return str(own(kind))
    endpoint = getattr(backend, "endpoint", None)
    name = endpoint(kind) if callable(endpoint) else None
    return f"{type(backend).__module__}.{type(backend).__qualname__}:{name}"


def preparation_settings(settings: Settings, kind: InputKind) -> dict[str, Any]:
    """The settings that change what is sent for an input of ``kind`` (and so its embedding): the
    image ones for an image, none for a text. Shared by the cache key and the CLI's output files."""
    return {name: getattr(settings, name) for name in _IMAGE_SETTINGS} if kind == "image" else {}


def namespace(identity: str, kind: InputKind, settings: Settings) -> str:
    """One string for the backend, the kind and the settings that change what is sent."""
    shaping = preparation_settings(settings, kind)
    return json.dumps({"backend": identity, "kind": kind, "settings": shaping}, sort_keys=True)


class CacheView:
    """One call's window on a store: its namespace, its counters. Called where items are planned
    (:class:`~clip_client._core.EmbedJob`), never from two threads at once."""

    def __init__(self, store: EmbeddingCache, namespace: str, counters: Counters) -> None:
        self.store = store
        self.namespace = namespace
        self.counters = counters

    def lookup(self, payload: object) -> tuple[bytes | None, EmbeddingArray | None]:
        """The payload's digest and its cached row (None on a miss, or when it cannot be cached)."""
        digest = payload_digest(payload)
        row = None if digest is None else self.store.get(self.namespace, digest)
        self.counters.cache_lookup(hit=row is not None)
        return digest, row

    def store_rows(self, digests: Sequence[bytes | None], rows: EmbeddingArray) -> None:
        """Rows a batch answered (raw, before normalisation), under their payloads' digests."""
        items = [(d, rows[i]) for i, d in enumerate(digests) if d is not None]
        if items:
            self.store.put_many(self.namespace, items)
