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
LRU, per client) and `SQLiteCache` (a file shared by processes and threads, in WAL mode). A store
may also offer `get_many_checked(namespace, digests)` (then a call looks its inputs up a batch at a
time: `CacheView.readahead`) and `flush()` (called at the end of each call).

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
import time
import zlib
from collections import OrderedDict, deque
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Generator, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, Union, runtime_checkable

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
_T = TypeVar("_T")


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


_PAGE_SIZE = 16384
"""Bytes per page of a new file. A 768-float row (3,072 bytes) plus its key is about 3.1 KB: five fit
in a 16 KB page (3,277 bytes a row), where a 4 KB page holds one (4,096) and a WITHOUT ROWID table
spills each row to overflow pages (4.4-4.7 KB a row in layout 2)."""
_WRITE_QUEUE_ROWS = 4096
"""Rows waiting for the background writer at most (12.6 MB of 768-wide float32): `put_many` waits
for it beyond that, so memory stays bounded whatever the input's length."""
_WRITE_CHUNK_ROWS = 2048
"""Rows the writer commits in one transaction at most."""
_WRITE_DELAY = 0.25
"""Seconds rows may wait for more to share their transaction (they are visible to `get` meanwhile,
and a call's end writes them at once)."""
_WRITER_LINGER = 1.0
"""Seconds an idle writer thread waits for more rows before it ends (a call's end ends it at once)."""


class SQLiteCache:
    """An SQLite file that several processes and threads share: WAL mode (readers never wait for a
    writer), a busy timeout for writers.

    Rows are written by a background thread, in one transaction per chunk of up to 2,048 rows, so
    that the caller's thread never waits for SQLite's commits and checkpoints (`put_many` only
    queues). Queued rows are visible to `get` at once; `flush` (called at the end of every embed
    call, and by `close`) returns once they are in the file, so another process sees them when the
    call that computed them has returned. At most 4,096 rows wait; `put_many` waits beyond that.
    The writer is not a daemon: an interpreter that exits with rows queued writes them first.

    The connections open on first use (and again in a forked child). Any SQLite or OS error (a
    corrupt file, a lock held past `busy_timeout` seconds, a path that cannot be created, a file of
    a newer clip_client) is logged once at WARNING and turns the cache off for this client: lookups
    miss, nothing is stored.

    Layout 3 (`PRAGMA user_version`): 16 KB pages; `namespaces(id, name)`, one row per namespace;
    `embeddings(id INTEGER PRIMARY KEY, ns, digest, row, crc)` with a unique index on
    `(ns, digest)`: rows are appended in insertion order, so pages fill completely (about 1.08x the
    vector's bytes on disk, `benchmarks/cache_overhead.py`). A file of layout 2 is converted in
    place on first use, its rows kept (their checksums still hold); one of layout 1 (no checksums)
    is emptied.
    """

    def __init__(
        self, path: str | os.PathLike[str], *, busy_timeout: float = DEFAULT_SQLITE_BUSY_TIMEOUT
    ) -> None:
        self.path = Path(os.path.expanduser(os.fspath(path)))
        self.busy_timeout = busy_timeout
        self._lock = threading.Lock()  # the reading connection
        self._conn: sqlite3.Connection | None = None
        self._read_ids: dict[str, int] = {}
        self._pid: int | None = None
        self._broken = False
        self._reset_writer()
        self.damaged_rows = 0
        """Rows found damaged (their checksum failed) and dropped, since this store was opened."""

    def _reset_writer(self) -> None:
        self._cond = threading.Condition()  # guards everything below
        self._queue: deque[tuple[str, bytes, bytes]] = deque()
        self._pending: dict[tuple[str, bytes], bytes] = {}  # queued or being written, by key
        self._writing = 0  # rows the writer has taken and not committed yet
        self._writer: threading.Thread | None = None
        self._quit = False  # end the writer as soon as it is idle
        self._wconn: sqlite3.Connection | None = None
        self._write_ids: dict[str, int] = {}
        self._writer_pid = os.getpid()

    def __repr__(self) -> str:
        return f"SQLiteCache({str(self.path)!r})"

    def get(self, namespace: str, digest: bytes) -> EmbeddingArray | None:
        return self.get_checked(namespace, digest)[0]

    def get_checked(self, namespace: str, digest: bytes) -> tuple[EmbeddingArray | None, bool]:
        self._after_fork()
        with self._cond:
            queued = self._pending.get((namespace, digest))
        if queued is not None:
            return np.frombuffer(queued, dtype="<f4").astype(np.float32), False
        found = self._run(lambda db: self._select(db, namespace, digest))
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

    def _select(self, db: sqlite3.Connection, namespace: str, digest: bytes | None) -> Any:
        """The row and checksum stored for `digest` (None when there is none); with no digest,
        whether the namespace has an id yet (its id, or None)."""
        ns = self._read_ids.get(namespace)
        if ns is None:
            found = db.execute("SELECT id FROM namespaces WHERE name = ?", (namespace,)).fetchone()
            if found is None:
                return None  # nothing stored under this namespace yet
            ns = self._read_ids[namespace] = found[0]
        if digest is None:
            return ns
        return db.execute(
            "SELECT row, crc FROM embeddings WHERE ns = ? AND digest = ?", (ns, digest)
        ).fetchone()

    def get_many_checked(
        self, namespace: str, digests: Sequence[bytes]
    ) -> dict[bytes, tuple[EmbeddingArray | None, bool]]:
        """`get_checked` for many digests in one query per 500 (what `CacheView.readahead` asks):
        every digest given is a key of the answer."""
        self._after_fork()
        found: dict[bytes, tuple[EmbeddingArray | None, bool]] = {}
        with self._cond:
            for digest in digests:
                queued = self._pending.get((namespace, digest))
                if queued is not None:
                    found[digest] = (np.frombuffer(queued, dtype="<f4").astype(np.float32), False)
        wanted = list(dict.fromkeys(d for d in digests if d not in found))
        stored: dict[bytes, tuple[object, object]] = {}
        for start in range(0, len(wanted), 500):
            part = wanted[start : start + 500]
            rows = self._run(lambda db, part=part: self._select_many(db, namespace, part))
            stored.update({digest: (blob, crc) for digest, blob, crc in rows or ()})
        for digest in wanted:
            if digest not in stored:
                found[digest] = (None, False)
                continue
            blob, crc = stored[digest]
            if (
                isinstance(blob, bytes)
                and blob
                and not len(blob) % 4
                and isinstance(crc, int)
                and crc == _row_check(namespace, digest, blob)
            ):
                found[digest] = (np.frombuffer(blob, dtype="<f4").astype(np.float32), False)
            else:
                self._drop_damaged(namespace, digest)
                found[digest] = (None, True)
        return found

    def _select_many(self, db: sqlite3.Connection, namespace: str, digests: list[bytes]) -> Any:
        if self._select(db, namespace, None) is None:
            return []
        marks = ",".join("?" * len(digests))
        return db.execute(
            f"SELECT digest, row, crc FROM embeddings WHERE ns = ? AND digest IN ({marks})",
            (self._read_ids[namespace], *digests),
        ).fetchall()

    def discard(self, namespace: str, digest: bytes) -> None:
        self.flush()  # a queued write of the same key must not land after the delete
        self._run(
            lambda db: db.execute(
                "DELETE FROM embeddings WHERE ns = (SELECT id FROM namespaces WHERE name = ?) AND digest = ?",
                (namespace, digest),
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
        """Queue rows for the background writer (visible to `get` at once); waits only while
        4,096 rows are queued already."""
        items = [
            (namespace, digest, np.ascontiguousarray(row, dtype="<f4").tobytes()) for digest, row in rows
        ]
        if not items or self._broken:
            return
        self._after_fork()
        with self._cond:
            for namespace_, digest, blob in items:
                self._pending[(namespace_, digest)] = blob
            self._queue.extend(items)
            self._quit = False  # more to come: gather rows again
            if self._writer is None:
                self._writer = threading.Thread(
                    target=self._write_loop, name=f"clip_client cache writer {self.path.name}"
                )
                self._writer.start()
            self._cond.notify_all()
            while len(self._queue) > _WRITE_QUEUE_ROWS and self._writer is not None:
                self._cond.wait()

    def flush(self) -> None:
        """Return once every queued row is in the file (or the cache has given up), and let the
        writer thread end."""
        self._after_fork()
        with self._cond:
            while True:
                self._quit = True  # write now, and end once idle (a `put_many` meanwhile undoes it)
                self._cond.notify_all()
                if not (self._queue or self._writing) or self._writer is None:
                    return
                self._cond.wait()

    def clear(self) -> None:
        """Remove every row of the file, whatever client or process wrote it."""
        self.flush()
        self._run(lambda db: db.execute("DELETE FROM embeddings"))

    def close(self) -> None:
        """Write the queued rows, end the writer thread, close both connections."""
        self.flush()
        with self._cond:
            writer = self._writer
        if writer is not None and writer is not threading.current_thread():
            writer.join(timeout=self.busy_timeout + 5.0)
        with self._cond:
            if self._wconn is not None and self._writer is None and self._writer_pid == os.getpid():
                self._wconn.close()
                self._wconn = None
        with self._lock:
            if self._conn is not None and self._pid == os.getpid():
                self._conn.close()
            self._conn = None

    def _after_fork(self) -> None:
        """In a forked child: none of the parent's threads, connections or queued rows (the
        parent writes those)."""
        if self._writer_pid != os.getpid():
            self._reset_writer()

    def _write_loop(self) -> None:
        try:
            while True:
                with self._cond:
                    chunk = self._next_chunk()
                    if chunk is None:
                        return
                    self._writing = len(chunk)
                    self._cond.notify_all()  # room in the queue
                try:
                    self._write(chunk)
                except Exception as exc:  # SQLite, the disk, or a bug: a cache never fails a call
                    self._give_up(exc)
                with self._cond:
                    for namespace, digest, blob in chunk:
                        if self._pending.get((namespace, digest)) is blob:  # not queued again since
                            del self._pending[(namespace, digest)]
                    self._writing = 0
                    self._cond.notify_all()
        finally:  # however it ends, no caller waits for it any more
            with self._cond:
                self._writer = None
                self._writing = 0
                self._cond.notify_all()

    def _next_chunk(self) -> list[tuple[str, bytes, bytes]] | None:
        """The rows of the next transaction (under `_cond`), None when the writer should end.

        Rows are gathered for up to `_WRITE_DELAY` seconds, or until a chunk is full or a `flush`
        waits: a commit of 2,048 rows costs about half the CPU per row of one of 32 (it rewrites
        each index page it touches once, not once per batch)."""
        since: float | None = None
        while True:
            if self._broken:
                return None
            if self._queue:
                now = time.monotonic()
                since = now if since is None else since
                if len(self._queue) >= _WRITE_CHUNK_ROWS or self._quit or now - since >= _WRITE_DELAY:
                    return [self._queue.popleft() for _ in range(min(len(self._queue), _WRITE_CHUNK_ROWS))]
                self._cond.wait(_WRITE_DELAY - (now - since))
            elif self._quit or not (self._cond.wait(_WRITER_LINGER) or self._queue):
                return None

    def _write(self, chunk: list[tuple[str, bytes, bytes]]) -> None:
        if self._broken:
            return
        if self._wconn is None:
            self._wconn = self._open()
        db = self._wconn
        db.execute("BEGIN IMMEDIATE")  # take the write lock now: no deadlock upgrading a read
        try:
            ids = dict(self._write_ids)
            for namespace in {namespace for namespace, _, _ in chunk} - ids.keys():
                db.execute("INSERT OR IGNORE INTO namespaces (name) VALUES (?)", (namespace,))
                (ids[namespace],) = db.execute(
                    "SELECT id FROM namespaces WHERE name = ?", (namespace,)
                ).fetchone()
            db.executemany(
                "INSERT OR REPLACE INTO embeddings (ns, digest, row, crc) VALUES (?, ?, ?, ?)",
                [(ids[ns], digest, blob, _row_check(ns, digest, blob)) for ns, digest, blob in chunk],
            )
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        self._write_ids = ids

    def _give_up(self, exc: BaseException) -> None:
        with self._cond:
            if self._broken:
                return
            self._broken = True
            self._queue.clear()
            self._pending.clear()
            self._cond.notify_all()
        logger.warning(
            "embedding cache %s is unusable (%s: %s); going on without it", self.path, type(exc).__name__, exc
        )

    def _run(self, work: Any) -> Any:
        with self._lock:
            if self._broken:
                return None
            try:
                if self._conn is None or self._pid != os.getpid():
                    self._conn, self._pid, self._read_ids = self._open(), os.getpid(), {}
                return work(self._conn)
            except (sqlite3.Error, OSError) as exc:
                self._give_up(exc)
                return None

    def _open(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(
            self.path, timeout=self.busy_timeout, isolation_level=None, check_same_thread=False
        )
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
            conn.execute(f"PRAGMA page_size = {_PAGE_SIZE}")  # a new, empty file only
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            _schema(conn, self.path)
        except BaseException:
            conn.close()
            raise
        return conn


_SCHEMA_VERSION = 3
"""The file's layout (`PRAGMA user_version`): 2 added the per-row checksum; 3 stores each namespace
once and appends rows to a rowid table of 16 KB pages (`SQLiteCache`)."""

_CREATE = (
    "CREATE TABLE IF NOT EXISTS namespaces (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE)",
    (
        "CREATE TABLE IF NOT EXISTS embeddings (id INTEGER PRIMARY KEY, ns INTEGER NOT NULL,"
        " digest BLOB NOT NULL, row BLOB NOT NULL, crc INTEGER NOT NULL)"
    ),
    "CREATE UNIQUE INDEX IF NOT EXISTS embeddings_key ON embeddings (ns, digest)",
)


class _NewerLayout(sqlite3.DatabaseError):
    """A file written by a newer clip_client: left as it is, the cache is off."""


def _schema(conn: sqlite3.Connection, path: Path) -> None:
    """Create the tables, or convert a file an older clip_client wrote, in one transaction (another
    process opening the file at the same time waits for it, then finds layout 3).

    Layout 2 (rows with a checksum, the namespace's JSON in every row) is converted: its rows are
    kept, as the checksum covers the namespace's text, not its id. Layout 1 (no checksum: its rows
    cannot be told from damaged ones) is dropped, recomputed once as on a first run. A converted
    file is then rewritten (VACUUM) at 16 KB pages when no other connection has it open.
    """
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    if version == _SCHEMA_VERSION:
        return
    if version > _SCHEMA_VERSION:
        raise _NewerLayout(
            f"layout {version} was written by a newer clip_client (this one reads {_SCHEMA_VERSION}): "
            "upgrade clip_client, or pass another cache path"
        )
    converted: int | None = None  # rows of layout 2 kept
    conn.execute("BEGIN IMMEDIATE")
    try:
        (version,) = conn.execute("PRAGMA user_version").fetchone()  # another process may have done it
        if version < _SCHEMA_VERSION:
            columns = {row[1] for row in conn.execute("PRAGMA table_info(embeddings)")}
            layout_2 = {"namespace", "crc"} <= columns
            if layout_2:
                conn.execute("ALTER TABLE embeddings RENAME TO embeddings_v2")
            elif columns:
                logger.info("embedding cache: rows written by an older clip_client are dropped (no checksum)")
                conn.execute("DROP TABLE embeddings")
            for statement in _CREATE:
                conn.execute(statement)
            if layout_2:
                conn.execute(
                    "INSERT OR IGNORE INTO namespaces (name) SELECT DISTINCT namespace FROM embeddings_v2"
                )
                converted = conn.execute(
                    "INSERT INTO embeddings (ns, digest, row, crc) SELECT n.id, o.digest, o.row, o.crc"
                    " FROM embeddings_v2 o JOIN namespaces n ON n.name = o.namespace"
                ).rowcount
                conn.execute("DROP TABLE embeddings_v2")
            conn.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    if converted is not None:
        _compact(conn, path, converted)


def _compact(conn: sqlite3.Connection, path: Path, rows: int) -> None:
    """Rewrite a converted file at `_PAGE_SIZE` pages, reclaiming the old layout's space. Needs the
    file to itself (leaving WAL mode does): when another connection has it open, it stays as it is
    (layout 3 at its old page size, correct but about 1.3x larger), and says so."""
    logger.warning(
        "embedding cache %s: converted %d rows written by an older clip_client to the compact layout; "
        "rewriting the file (once)",
        path,
        rows,
    )
    try:
        if conn.execute("PRAGMA journal_mode = DELETE").fetchone()[0] != "delete":
            raise sqlite3.OperationalError("another connection has the file open")
        conn.execute(f"PRAGMA page_size = {_PAGE_SIZE}")
        conn.execute("VACUUM")
    except sqlite3.OperationalError as exc:
        logger.warning(
            "embedding cache %s: not rewritten (%s); its rows are kept. To reclaim the space, run "
            "`sqlite3 %s 'PRAGMA journal_mode=DELETE; PRAGMA page_size=%d; VACUUM; PRAGMA journal_mode=WAL'` "
            "while no process uses it",
            path,
            exc,
            path,
            _PAGE_SIZE,
        )
    finally:
        conn.execute("PRAGMA journal_mode = WAL")


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
        # Asked once per call, not per input: a runtime Protocol check costs about 20 µs.
        self._checked_store = store if isinstance(store, CheckedCache) else None
        flush = getattr(store, "flush", None)
        self._flush = flush if callable(flush) else None
        many = getattr(store, "get_many_checked", None)
        self._get_many = many if callable(many) else None
        # Rows read ahead (`readahead`), by digest, until their input is looked up; and the digests
        # computed then, by the payload's id (with the payload, so that the id cannot be reused).
        self._ahead: dict[bytes, tuple[EmbeddingArray | None, bool]] = {}
        self._digests: dict[int, tuple[object, bytes | None]] = {}

    def readahead(
        self, items: Iterator[_T], payload_of: Callable[[_T], object], size: int
    ) -> Generator[_T, None, None]:
        """`items`, unchanged and in order, looked up `size` at a time in one query (a store with
        `get_many_checked`, such as `SQLiteCache`) before they are handed on: one SQLite call per
        `size` inputs instead of one per input, which on the planning thread would give up
        Python's GIL to the request threads once per input. `payload_of` gives an item's payload
        (None for an item with none). A stream hands over a hit once the group it was read in is
        complete (at most `size - 1` inputs later, or at the input's end): as a miss waits for its
        batch. Closing the generator closes `items`."""
        try:
            group: list[_T] = []
            for item in items:
                group.append(item)
                if len(group) >= size:
                    self._prefetch([payload_of(i) for i in group])
                    yield from group
                    group = []
            self._prefetch([payload_of(i) for i in group])
            yield from group
        finally:
            close = getattr(items, "close", None)
            if callable(close):
                close()

    async def areadahead(
        self, items: AsyncIterator[_T], payload_of: Callable[[_T], object], size: int
    ) -> AsyncGenerator[_T, None]:
        """`readahead` for an async iterator (the store is read on the event loop, as a lookup is)."""
        try:
            group: list[_T] = []
            async for item in items:
                group.append(item)
                if len(group) >= size:
                    self._prefetch([payload_of(i) for i in group])
                    for i in group:
                        yield i
                    group = []
            self._prefetch([payload_of(i) for i in group])
            for i in group:
                yield i
        finally:
            aclose = getattr(items, "aclose", None)
            if callable(aclose):
                await aclose()

    def _prefetch(self, payloads: list[object]) -> None:
        if self._get_many is None or not payloads:
            return
        digests = []
        for payload in payloads:
            digest = payload_digest(payload)
            if digest is not None:
                self._digests[id(payload)] = (payload, digest)
                digests.append(digest)
        if digests:
            self._ahead.update(self._get_many(self.namespace, digests))

    def _digest(self, payload: object) -> bytes | None:
        memo = self._digests.pop(id(payload), None)
        if memo is not None and memo[0] is payload:
            return memo[1]
        return payload_digest(payload)

    def lookup(
        self, payload: object, *, width: int | None = None, answered: bool = True
    ) -> tuple[bytes | None, EmbeddingArray | None]:
        """The payload's digest and its cached row: None on a miss, when it cannot be cached, and
        when the row is refused (damaged, not finite, or not `width` wide where the call's width
        is known). `answered`: the backend has answered this call already, so `width` is the
        backend's own; until then, a view whose identity is not confirmed trusts no row."""
        digest = self._digest(payload)
        row = None
        if digest is not None and (self.confirmed or answered):
            row = self._checked(digest, width)
        elif digest is not None:
            self._ahead.pop(digest, None)  # read ahead, and not trusted: looked up again next time
        self.counters.cache_lookup(hit=row is not None)
        return digest, row

    def _checked(self, digest: bytes, width: int | None) -> EmbeddingArray | None:
        if digest in self._ahead:
            row, damaged = self._ahead.pop(digest)
        elif self._checked_store is not None:
            row, damaged = self._checked_store.get_checked(self.namespace, digest)
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
            if self._checked_store is not None:
                self._checked_store.discard(self.namespace, digest)
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

    def finish(self) -> None:
        """The call is over: return once the rows it stored are in the store (`SQLiteCache.flush`),
        so another process finds them as soon as the call has returned."""
        if self._flush is not None:
            self._flush()
