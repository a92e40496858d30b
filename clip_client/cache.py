"""The embedding cache: re-runs cost no request.

A cached row is keyed by where it came from and exactly what was sent for it:

- the backend's identity (a serving endpoint's invocations URL and, when its state was readable, the
  registered model versions it serves; a local model's name and dtype; for any other backend, its
  type name and endpoint);
- the kind (text or image) and, for images, the preparation settings that change what is sent;
- the sha256 of the payload itself (the text, or the prepared image's bytes).

A cached row passes every check an answer from the backend passes before it is used: a 1-D row of
finite float32 values, as wide as the call's other rows. An SQLite row also carries a CRC-32 of its
key and bytes (zlib's, the checksum of gzip and PNG: it catches every flip of one to 32 adjacent
bits), so bytes damaged in the file are caught, not served. A refused row is dropped (damaged) or
ignored (another width), counted in `ClientStats.cache_rejected`, and recomputed.

When the backend's identity is not fully known (a serving endpoint whose state could not be read:
the key is then its URL alone), cached rows are trusted only once the backend's first answer of the
call has fixed the width, so rows of an endpoint's previous model of another width are never
served. A new model of the same width behind the same URL, with its state unreadable, cannot be
told apart: docs/caching.md says how to rule it out.

Rows are stored as the backend answered them, float32 before any normalisation, so a hit is
bit-identical to the row a request would have returned. Two stores: `MemoryCache` (a bounded
LRU, per client) and `SQLiteCache` (a file shared by processes and threads, in WAL mode).

A cache never fails a call: a file that is corrupt, locked past its busy timeout or unwritable is
logged once at WARNING on the `clip_client` logger, and the client carries on without the cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
import threading
import zlib
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, Union, runtime_checkable

import numpy as np

from ._constants import LOGGER_NAME
from .types import EmbeddingArray

if TYPE_CHECKING:
    from ._backend import Backend
    from ._core.concurrency import Counters
    from .types import InputKind, Settings

__all__ = [
    "DEFAULT_MEMORY_ENTRIES",
    "DEFAULT_SQLITE_BUSY_TIMEOUT",
    "CacheOption",
    "CacheView",
    "CheckedCache",
    "EmbeddingCache",
    "MemoryCache",
    "SQLiteCache",
    "open_cache",
]

logger = logging.getLogger(LOGGER_NAME)


DEFAULT_MEMORY_ENTRIES = 10_000
"""Entries a `cache="memory"` holds before the least recently used is dropped: 10,000 rows of 768
float32 are about 31 MB.
"""
DEFAULT_SQLITE_BUSY_TIMEOUT = 5.0
"""Seconds an SQLite cache waits for another process's or thread's write lock before giving up
(then the client goes on without the cache, and says so once).
"""

_IMAGE_SETTINGS = (
    "image_size",
    "image_format",
    "jpeg_quality",
    "high_bit_depth",
    "image_preparation",
    "fast_decode",
)
"""The settings that change what is sent for an image (and so its embedding)."""


@runtime_checkable
class EmbeddingCache(Protocol):
    """What a cache store does. `namespace` names the backend, kind and settings; `digest` is the
    sha256 of one payload. Implementations are thread-safe and never raise from these methods."""

    def get(self, namespace: str, digest: bytes) -> EmbeddingArray | None: ...

    def put_many(self, namespace: str, rows: Iterable[tuple[bytes, EmbeddingArray]]) -> None: ...

    def clear(self) -> None: ...

    def close(self) -> None: ...


@runtime_checkable
class CheckedCache(EmbeddingCache, Protocol):
    """A store that can tell a damaged row from a miss and drop a row on request: what the client
    uses when a store offers it (`SQLiteCache`, `MemoryCache`); a plain `EmbeddingCache` still works,
    its rows checked by value only."""

    def get_checked(self, namespace: str, digest: bytes) -> tuple[EmbeddingArray | None, bool]:
        """`(row, damaged)`: the row (None on a miss), and whether a stored row was found damaged
        (then dropped from the store, and the row is None)."""
        ...

    def discard(self, namespace: str, digest: bytes) -> None:
        """Drop one row (one the client refused); no error when it is not there."""
        ...


CacheOption = Union[str, "os.PathLike[str]", EmbeddingCache, None]
"""What `cache=` takes: None (off), `"memory"`, a path to an SQLite file, or a store of your own."""


def open_cache(option: CacheOption) -> EmbeddingCache | None:
    """The store `cache=` asks for. `"memory"` is the in-process LRU; any other string or
    path-like is an SQLite file (`~` expanded; opened on first use, so a bad path fails no call).

    Raises:
        TypeError: `option` is none of those.
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
    """A bounded LRU in this process: `max_entries` rows (default `DEFAULT_MEMORY_ENTRIES`)."""

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

    def get_checked(self, namespace: str, digest: bytes) -> tuple[EmbeddingArray | None, bool]:
        return self.get(namespace, digest), False  # rows in this process's memory are not damaged

    def discard(self, namespace: str, digest: bytes) -> None:
        with self._lock:
            self._rows.pop((namespace, digest), None)

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
    corrupt file, a lock held past `busy_timeout` seconds, a path that cannot be created) is
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
        self.damaged_rows = 0
        """Rows found damaged (their checksum failed) and dropped, since this store was opened."""

    def __repr__(self) -> str:
        return f"SQLiteCache({str(self.path)!r})"

    def get(self, namespace: str, digest: bytes) -> EmbeddingArray | None:
        return self.get_checked(namespace, digest)[0]

    def get_checked(self, namespace: str, digest: bytes) -> tuple[EmbeddingArray | None, bool]:
        found = self._run(
            lambda db: db.execute(
                "SELECT row, crc FROM embeddings WHERE namespace = ? AND digest = ?", (namespace, digest)
            ).fetchone()
        )
        if not found:
            return None, False
        blob, crc = found
        if (
            not isinstance(blob, bytes)
            or not blob
            or len(blob) % 4
            or not isinstance(crc, int)
            or crc != _row_check(namespace, digest, blob)
        ):
            self._drop_damaged(namespace, digest)
            return None, True
        return np.frombuffer(blob, dtype="<f4").astype(np.float32), False  # a fresh, writable copy

    def discard(self, namespace: str, digest: bytes) -> None:
        self._run(
            lambda db: db.execute(
                "DELETE FROM embeddings WHERE namespace = ? AND digest = ?", (namespace, digest)
            )
        )

    def _drop_damaged(self, namespace: str, digest: bytes) -> None:
        self.discard(namespace, digest)
        with self._lock:
            self.damaged_rows += 1
            first = self.damaged_rows == 1
        if first:
            logger.warning(
                "embedding cache %s: a stored row failed its checks (its checksum, or a length that is "
                "no float32 row: damaged in the file, or not written by clip_client); dropped and "
                "recomputed. Further such rows are dropped quietly (ClientStats.cache_rejected "
                "counts them)",
                self.path,
            )

    def put_many(self, namespace: str, rows: Iterable[tuple[bytes, EmbeddingArray]]) -> None:
        values = []
        for digest, row in rows:
            blob = np.ascontiguousarray(row, dtype="<f4").tobytes()
            values.append((namespace, digest, blob, _row_check(namespace, digest, blob)))
        if not values:
            return

        def write(db: sqlite3.Connection) -> None:
            db.execute("BEGIN IMMEDIATE")  # take the write lock now: no deadlock upgrading a read
            try:
                db.executemany(
                    "INSERT OR REPLACE INTO embeddings (namespace, digest, row, crc) VALUES (?, ?, ?, ?)",
                    values,
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
            _schema(conn)
        except BaseException:
            conn.close()
            raise
        self._conn, self._pid = conn, os.getpid()
        return conn


_SCHEMA_VERSION = 2
"""The file's layout (`PRAGMA user_version`): 2 added the per-row checksum."""


def _schema(conn: sqlite3.Connection) -> None:
    """Create the table, or replace one an older clip_client wrote (rows without a checksum cannot
    be told from damaged ones: they are recomputed once, as on a first run)."""
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    if version < _SCHEMA_VERSION:
        columns = {row[1] for row in conn.execute("PRAGMA table_info(embeddings)")}
        if columns and "crc" not in columns:
            logger.info("embedding cache: rows written by an older clip_client are dropped (no checksum)")
            conn.execute("DROP TABLE embeddings")
    conn.execute(
        "CREATE TABLE IF NOT EXISTS embeddings ("
        " namespace TEXT NOT NULL, digest BLOB NOT NULL, row BLOB NOT NULL, crc INTEGER NOT NULL,"
        " PRIMARY KEY (namespace, digest)) WITHOUT ROWID"
    )
    if version < _SCHEMA_VERSION:
        conn.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")


def _row_check(namespace: str, digest: bytes, blob: bytes) -> int:
    """CRC-32 of a row's key and bytes: a row damaged in place, or moved under another key, fails."""
    return zlib.crc32(blob, zlib.crc32(digest, zlib.crc32(namespace.encode("utf-8", "surrogatepass"))))


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


def backend_identity(backend: Backend, kind: InputKind) -> tuple[str, bool]:
    """Who computes the rows, and whether that names the model for sure: the backend's own
    `cache_identity(kind)` and `cache_identity_confirmed(kind)` when it has them (the
    `CacheIdentity` protocol), else its type name and endpoint, not confirmed (nothing says which
    model answers, so the call's first answer confirms the width before a cached row is used)."""
    from ._backend import CacheIdentity
    from .errors import BackendError, ClipClientError

    if not isinstance(backend, CacheIdentity):
        return f"{type(backend).__module__}.{type(backend).__qualname__}:{backend.endpoint(kind)}", False
    try:
        identity, confirmed = backend.cache_identity(kind), backend.cache_identity_confirmed(kind)
    except ClipClientError:
        raise
    except Exception as exc:  # a custom backend's own bug: typed, like a failure of its embed()
        raise BackendError(
            f"the backend {type(backend).__name__}'s cache_identity({kind!r}) raised "
            f"{type(exc).__name__}: {exc}",
            endpoint=backend.endpoint(kind),
        ) from exc
    if not isinstance(identity, str) or not identity:
        raise BackendError(
            f"the backend {type(backend).__name__}'s cache_identity({kind!r}) returned {identity!r}, not a "
            "non-empty str naming the model",
            endpoint=backend.endpoint(kind),
        )
    return identity, bool(confirmed)


def preparation_settings(settings: Settings, kind: InputKind) -> dict[str, Any]:
    """The settings that change what is sent for an input of `kind` (and so its embedding): the
    image ones for an image, none for a text. Shared by the cache key and the CLI's output files."""
    return {name: getattr(settings, name) for name in _IMAGE_SETTINGS} if kind == "image" else {}


def namespace(identity: str, kind: InputKind, settings: Settings) -> str:
    """One string for the backend, the kind and the settings that change what is sent."""
    shaping = preparation_settings(settings, kind)
    key: dict[str, Any] = {"backend": identity, "kind": kind, "settings": shaping}
    if settings.cache_namespace is not None:
        key["namespace"] = settings.cache_namespace
    return json.dumps(key, sort_keys=True)


class CacheView:
    """One call's window on a store: its namespace, its counters, and whether the backend's identity
    in the namespace is complete (`confirmed`). Called where items are planned (`EmbedJob`), never
    from two threads at once."""

    def __init__(
        self, store: EmbeddingCache, namespace: str, counters: Counters, *, confirmed: bool = True
    ) -> None:
        self.store = store
        self.namespace = namespace
        self.counters = counters
        self.confirmed = confirmed

    def lookup(
        self, payload: object, *, width: int | None = None, answered: bool = True
    ) -> tuple[bytes | None, EmbeddingArray | None]:
        """The payload's digest and its cached row: None on a miss, when it cannot be cached, and
        when the row is refused (damaged, not finite, or not `width` wide where the call's width
        is known). `answered`: the backend has answered this call already, so `width` is the
        backend's own; until then, a view whose identity is not confirmed trusts no row."""
        digest = payload_digest(payload)
        row = None
        if digest is not None and (self.confirmed or answered):
            row = self._checked(digest, width)
        self.counters.cache_lookup(hit=row is not None)
        return digest, row

    def _checked(self, digest: bytes, width: int | None) -> EmbeddingArray | None:
        if isinstance(self.store, CheckedCache):
            row, damaged = self.store.get_checked(self.namespace, digest)
        else:
            row, damaged = self.store.get(self.namespace, digest), False
        if damaged:
            self.counters.cache_reject()
            return None
        if row is None:
            return None
        if (
            not (isinstance(row, np.ndarray) and row.ndim == 1 and row.dtype == np.float32)
            or not np.isfinite(row).all()
        ):
            self.counters.cache_reject()  # what no backend answer is let through: drop it
            if isinstance(self.store, CheckedCache):
                self.store.discard(self.namespace, digest)
            return None
        if width is not None and row.shape[0] != width:
            self.counters.cache_reject()  # another model's row: ignored, replaced by the new answer
            return None
        return row

    def store_rows(self, digests: Sequence[bytes | None], rows: EmbeddingArray) -> None:
        """Rows a batch answered (raw, before normalisation), under their payloads' digests."""
        items = [(d, rows[i]) for i, d in enumerate(digests) if d is not None]
        if items:
            self.store.put_many(self.namespace, items)
