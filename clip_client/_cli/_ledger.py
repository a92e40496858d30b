"""The ledger of an `images` run: what the run knows about each of its inputs and done rows, kept in
a temporary SQLite file rather than in memory, so that memory does not grow with the input count.

A run lists its inputs once into the ledger (`add_inputs`: de-duplicated by absolute path, a key
naming two images noted), matches them to the rows an earlier run finished (`index_done`,
`plan`), and reads them back in input order, a batch at a time (`pending`, `rows_in_order`).
Every key is stored as UTF-8 bytes with lone surrogates kept (`surrogatepass`), so a file name
that is not UTF-8 goes in and comes out as the same `str`.

The file lives in a folder of its own under the temporary folder (`$TMPDIR`, else the system's):
about 300 bytes a key, so 3 GB for 10,000,000 keys. It is deleted by `close` (a `with` block), or
when the ledger is garbage-collected or the interpreter exits; the folder of a run that was killed
is deleted by the next run (each run holds a lock on its own folder while it lives: a folder whose
lock is free, and that is a minute old, is left over).
"""

from __future__ import annotations

import itertools
import os
import shutil
import sqlite3
import tempfile
import threading
import time
import weakref
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

Stamp = tuple[int, int]
"""An image file's (size in bytes, st_mtime_ns)."""

BATCH = 4096
"""Rows written or read at a time."""

_TODO = 1
"""`inputs.state` of an input still to embed (0: done); 2 once it was handed to the embedder."""
_SENT = 2

VANISHED = "listed when the run started, but gone when it was read (removed or renamed during the run)"
"""Why an input that `Ledger.unsent` names could not be embedded."""


def _b(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


def _s(data: bytes) -> str:
    return data.decode("utf-8", "surrogatepass")


def _size(stamp: Stamp | None) -> int | None:
    return None if stamp is None else stamp[0]


def _mtime(stamp: Stamp | None) -> int | None:
    return None if stamp is None else stamp[1]


def _stamp(size: int | None, mtime: int | None) -> Stamp | None:
    return None if size is None or mtime is None else (size, mtime)


T = TypeVar("T")


def batched(items: Iterable[T], n: int = BATCH) -> Iterator[list[T]]:
    """`items` in lists of `n` (the last one shorter)."""
    it = iter(items)
    while chunk := list(itertools.islice(it, n)):
        yield chunk


_PREFIX = "clip-client-ledger-"
_LOCK = "lock"
_STALE_S = 60.0
"""A ledger folder younger than this is never taken for a killed run's (it may be starting)."""


def _close(db: sqlite3.Connection, folder: str, lock: int | None) -> None:
    try:
        db.close()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        if lock is not None:
            os.close(lock)


def _hold(folder: str) -> int | None:
    """A lock on `folder`'s lock file, held (by this process) until the descriptor is closed; None
    where the system has no `flock`, or the lock is held already."""
    try:
        import fcntl
    except ImportError:  # Windows: no sweep
        return None
    fd = os.open(os.path.join(folder, _LOCK), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def _sweep() -> None:
    """Delete the ledger folders that killed runs left in the temporary folder, a minute old at
    least: those with a lock file nobody holds, and those without one (a kill while it was deleted;
    a live ledger has its lock file from its first instant on)."""
    try:
        import fcntl  # noqa: F401 - where there is no flock, a live ledger cannot be told from a dead one
    except ImportError:
        return
    root = tempfile.gettempdir()
    try:
        entries = [e for e in os.scandir(root) if e.name.startswith(_PREFIX)]
    except OSError:
        return
    for entry in entries:
        try:
            if not entry.is_dir(follow_symlinks=False) or time.time() - entry.stat().st_mtime < _STALE_S:
                continue
            if not os.path.exists(os.path.join(entry.path, _LOCK)):  # half deleted when killed
                shutil.rmtree(entry.path, ignore_errors=True)
                continue
            fd = _hold(entry.path)
        except OSError:
            continue
        if fd is not None:
            shutil.rmtree(entry.path, ignore_errors=True)
            os.close(fd)


class KeyClash(Exception):
    """One key names two different images: `key`, the image it named first, the other one."""

    def __init__(self, key: str, first: str, other: str) -> None:
        super().__init__(key, first, other)
        self.key, self.first, self.other = key, first, other


class Ledger:
    """A run's inputs and done rows in a temporary SQLite file (see the module's notes).

    Tables: `inputs` (seq: input order; key as spelled; its absolute form; the image it names,
    when not that absolute path; its stamp; its state), `done` (key, absolute key, part, row,
    stamp), `probe` (a batch of keys being looked up).

    Raises:
        sqlite3.Error: the temporary folder cannot be written (no space...).
    """

    def __init__(self) -> None:
        _sweep()
        self.folder = tempfile.mkdtemp(prefix=_PREFIX)
        lock = _hold(self.folder)
        self.db = sqlite3.connect(
            os.path.join(self.folder, "ledger.sqlite"), isolation_level=None, check_same_thread=False
        )
        self._lock = threading.RLock()  # one statement or transaction at a time, whichever thread asks
        self._closer = weakref.finalize(self, _close, self.db, self.folder, lock)
        for pragma in ("journal_mode = OFF", "synchronous = OFF", "temp_store = FILE", "cache_size = -2000"):
            self.db.execute(f"PRAGMA {pragma}")
        self.db.executescript(
            """
            CREATE TABLE inputs (seq INTEGER PRIMARY KEY, key BLOB NOT NULL, abs BLOB NOT NULL UNIQUE,
                                 identity BLOB, size INTEGER, mtime INTEGER,
                                 state INTEGER NOT NULL DEFAULT 0);
            CREATE INDEX inputs_key ON inputs (key);
            CREATE TABLE done (key BLOB PRIMARY KEY, abs BLOB NOT NULL, part INTEGER NOT NULL,
                               row INTEGER NOT NULL, size INTEGER, mtime INTEGER);
            CREATE INDEX done_abs ON done (abs);
            CREATE TEMP TABLE probe (n INTEGER PRIMARY KEY, key BLOB NOT NULL);
            """
        )
        self.count = 0
        """How many inputs were added (each once)."""

    def close(self) -> None:
        """Delete the ledger (idempotent)."""
        self._closer()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- inputs --------------------------------------------------------------------------------

    def _probe(self, keys: Sequence[bytes]) -> None:
        self.db.execute("DELETE FROM probe")
        self.db.executemany("INSERT INTO probe (n, key) VALUES (?, ?)", enumerate(keys))

    def add_inputs(self, rows: Iterable[tuple[str, str, str, Stamp | None]]) -> int:
        """Add the inputs `(key, absolute key, identity, stamp)` in order, each absolute key once:
        a later one with the same absolute key and identity is a repeat, skipped; one with another
        identity is a clash, raised once every row is taken (so that a listing's own error wins).

        Returns:
            how many repeats were skipped.

        Raises:
            KeyClash: the first key met that names two images.
        """
        repeats = 0
        clash: KeyClash | None = None
        for batch in batched(rows):
            abses = [_b(row[1]) for row in batch]
            with self._lock:
                self._probe(abses)
                known = {
                    a: None if i is None else _s(i)
                    for a, i in self.db.execute(
                        "SELECT p.key, i.identity FROM probe p JOIN inputs i ON i.abs = p.key"
                    )
                }
            new = []
            for (key, row, identity, stamp), a in zip(batch, abses, strict=True):
                if a in known:
                    first = known[a] or row
                    if first != identity and clash is None:
                        clash = KeyClash(key, first, identity)
                    repeats += 1
                    continue
                known[a] = None if identity == row else identity
                new.append((_b(key), a, known[a] and _b(identity), _size(stamp), _mtime(stamp)))
            with self._lock:
                self.db.execute("BEGIN")
                self.db.executemany(
                    "INSERT INTO inputs (key, abs, identity, size, mtime) VALUES (?, ?, ?, ?, ?)", new
                )
                self.db.execute("COMMIT")
            self.count += len(new)
        if clash is not None:
            raise clash
        return repeats

    def inputs(self) -> Iterator[str]:
        """Every input key, in input order."""
        for (key,) in self._paged("SELECT seq, key FROM inputs WHERE seq > ? ORDER BY seq LIMIT ?"):
            yield _s(key)

    def _paged(self, query: str) -> Iterator[tuple[Any, ...]]:
        """The rows of `query` (its first column an increasing integer, the rest returned), a page
        at a time: no cursor stays open while the ledger is written."""
        last = -1
        while True:
            with self._lock:
                page = self.db.execute(query, (last, BATCH)).fetchall()
            for row in page:
                yield tuple(row[1:])
            if len(page) < BATCH:
                return
            last = page[-1][0]

    def pending(self, listing: Iterable[str]) -> Iterator[tuple[str, Stamp | None]]:
        """The items of `listing` (the inputs listed again, the same items in the same order) that
        are still to embed, each once, with its stamp: looked up a batch at a time."""
        for batch in batched(listing):
            keys = [_b(item) for item in batch]
            with self._lock:
                self._probe(keys)
                found = {
                    k: (seq, _stamp(size, mtime))
                    for k, seq, size, mtime in self.db.execute(
                        "SELECT i.key, i.seq, i.size, i.mtime FROM probe p JOIN inputs i ON i.key = p.key "
                        f"WHERE i.state = {_TODO}"
                    )
                }
            sent = []
            for item, key in zip(batch, keys, strict=True):
                if key in found:
                    seq, stamp = found.pop(key)
                    sent.append((seq,))
                    yield item, stamp
            with self._lock:
                self.db.executemany(f"UPDATE inputs SET state = {_SENT} WHERE seq = ?", sent)

    def unsent(self) -> Iterator[str]:
        """The inputs still to embed that `pending` never met, in input order: once the listing has
        been read to its end, those that were listed when the run started but were gone from the
        listing when it was read again (removed or renamed during the run)."""
        for (key,) in self._paged(
            f"SELECT seq, key FROM inputs WHERE state = {_TODO} AND seq > ? ORDER BY seq LIMIT ?"
        ):
            yield _s(key)

    # -- done rows ------------------------------------------------------------------------------

    def add_done(self, rows: Iterable[tuple[str, int, int, Stamp | None]]) -> None:
        """Record finished rows `(key, part, row, stamp)`; a later row for a key replaces its earlier one."""
        for batch in batched(rows):
            values = [
                (_b(key), _b(os.path.abspath(key)), part, row, _size(stamp), _mtime(stamp))
                for key, part, row, stamp in batch
            ]
            with self._lock:
                self.db.execute("BEGIN")
                self.db.executemany(
                    "INSERT OR REPLACE INTO done (key, abs, part, row, size, mtime) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    values,
                )
                self.db.execute("COMMIT")

    def done_count(self) -> int:
        """How many rows are done."""
        return self._scalar("SELECT count(*) FROM done")

    def done_keys(self) -> Iterator[str]:
        """The keys of the done rows (in no set order)."""
        for (key,) in self._paged("SELECT rowid, key FROM done WHERE rowid > ? ORDER BY rowid LIMIT ?"):
            yield _s(key)

    def forget(self, keys: Iterable[str]) -> None:
        """Remove the done rows of `keys` (a changed file that now fails keeps no stale row)."""
        for batch in batched(keys):
            with self._lock:
                self.db.executemany("DELETE FROM done WHERE key = ?", [(_b(k),) for k in batch])

    def plan(self) -> tuple[int, int]:
        """Match the done rows to the inputs: a done row whose key is spelled otherwise than an input
        without a row of its own, but has the same absolute path, is re-keyed to the input's spelling
        (the first such row); then the inputs without a row, and those whose stamp differs from their
        row's (a row without a stamp is never taken for changed), are marked to embed.

        Returns:
            how many inputs are to embed, and how many of them have a stale row.
        """
        with self._lock:
            return self._plan()

    def _plan(self) -> tuple[int, int]:
        db = self.db
        db.execute("BEGIN")
        db.execute(
            """
            UPDATE done SET key = (SELECT i.key FROM inputs i WHERE i.abs = done.abs)
            WHERE rowid IN (
                SELECT min(d.rowid) FROM done d JOIN inputs i ON i.abs = d.abs
                WHERE NOT EXISTS (SELECT 1 FROM done o WHERE o.key = i.key)
                GROUP BY i.abs)
            """
        )
        db.execute("UPDATE inputs SET state = 0 WHERE state != 0")
        missing = db.execute(
            f"UPDATE inputs SET state = {_TODO} "
            "WHERE NOT EXISTS (SELECT 1 FROM done d WHERE d.key = inputs.key)"
        ).rowcount
        changed = db.execute(
            f"""
            UPDATE inputs SET state = {_TODO} WHERE EXISTS (
                SELECT 1 FROM done d WHERE d.key = inputs.key AND d.size IS NOT NULL AND d.mtime IS NOT NULL
                AND (inputs.size IS NULL OR inputs.mtime IS NULL OR d.size != inputs.size
                     OR d.mtime != inputs.mtime))
            """
        ).rowcount
        db.execute("COMMIT")
        return missing + changed, changed

    def left_out(self) -> int:
        """How many done rows are of no input."""
        return self._scalar(
            "SELECT count(*) FROM done d WHERE NOT EXISTS (SELECT 1 FROM inputs i WHERE i.key = d.key)"
        )

    def rows_in_order(self) -> Iterator[tuple[str, int, int, Stamp | None]]:
        """`(key, part, row, stamp)` of each input that has a done row, in input order, read a
        page at a time."""
        for key, part, row, size, mtime in self._paged(
            "SELECT i.seq, i.key, d.part, d.row, d.size, d.mtime FROM inputs i JOIN done d ON d.key = i.key "
            "WHERE i.seq > ? ORDER BY i.seq LIMIT ?"
        ):
            yield _s(key), int(part), int(row), _stamp(size, mtime)

    def count_in_order(self) -> int:
        """How many inputs have a done row."""
        return self._scalar("SELECT count(*) FROM inputs i JOIN done d ON d.key = i.key")

    def _scalar(self, query: str) -> int:
        with self._lock:
            return int(self.db.execute(query).fetchone()[0])


def folder_of(ledger: Ledger) -> Path:
    """Where `ledger` keeps its file (for tests and messages)."""
    return Path(ledger.folder)
