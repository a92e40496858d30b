"""The SQLite cache's file (issue 20): a compact layout, an older layout converted, and the
background writer that keeps commits off the caller's thread.

Every test uses a real SQLite file in ``tmp_path``; client-level tests talk to the loopback
``ServingServer`` (``server.posts()`` counts the requests).
"""

from __future__ import annotations

import hashlib
import logging
import os
import sqlite3
import subprocess
import sys
import threading
import zlib
from contextlib import closing
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from serving_server import ServingServer, expected_vector

import clip_client.cache as cache_module
from clip_client import ClipClient
from clip_client.cache import SQLiteCache

NS = '{"backend": "tests", "kind": "text", "settings": {}}'
WIDTH = 768
VECTOR_BYTES = WIDTH * 4


def digest(i: int) -> bytes:
    return hashlib.sha256(f"input {i}".encode()).digest()


def rows_of(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, WIDTH)).astype(np.float32)


def same_row(got: np.ndarray | None, want: np.ndarray) -> None:
    assert got is not None
    assert got.dtype == np.float32
    assert got.tobytes() == want.tobytes()


def stored_count(path: Path) -> int:
    with sqlite3.connect(path) as db:
        (count,) = db.execute("SELECT count(*) FROM embeddings").fetchone()
    return int(count)


def v2_crc(namespace: str, key: bytes, blob: bytes) -> int:
    """The checksum layout 2 stored (layout 3 keeps the same one)."""
    return zlib.crc32(blob, zlib.crc32(key, zlib.crc32(namespace.encode("utf-8", "surrogatepass"))))


# --------------------------------------------------------------------------------------------------
# The compact layout


def test_rows_round_trip_bit_for_bit(tmp_path: Path) -> None:
    path = tmp_path / "cache.sqlite"
    rows = rows_of(300)
    rows[0, :4] = [-0.0, np.finfo(np.float32).tiny / 2, np.finfo(np.float32).max, 1e-45]  # odd bits
    store = SQLiteCache(path)
    store.put_many(NS, [(digest(i), rows[i]) for i in range(len(rows))])
    store.close()

    again = SQLiteCache(path)
    for i in range(len(rows)):
        row, damaged = again.get_checked(NS, digest(i))
        assert not damaged
        same_row(row, rows[i])
    many = again.get_many_checked(NS, [digest(i) for i in range(len(rows))] + [digest(-1)])
    assert many[digest(-1)] == (None, False)  # every digest asked is answered, a miss too
    for i in range(len(rows)):
        got = many[digest(i)][0]
        same_row(got, rows[i])
    assert again.get(NS + " other", digest(0)) is None  # another namespace: another key
    again.close()


def test_disk_per_row_is_within_1_3x_the_vector(tmp_path: Path) -> None:
    """3,000 rows of 768 float32: the file, checkpointed at close, holds at most 1.3x their bytes
    (layout 2 took 4.4 KB a row, 1.43x; layout 3 about 1.08x)."""
    path = tmp_path / "cache.sqlite"
    n = 3000
    rows = rows_of(n)
    store = SQLiteCache(path)
    for start in range(0, n, 32):  # as a call stores them: one batch at a time
        store.put_many(NS, [(digest(i), rows[i]) for i in range(start, min(n, start + 32))])
    store.close()
    wal = Path(f"{path}-wal")
    on_disk = path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)
    assert on_disk / n <= 1.3 * VECTOR_BYTES, on_disk / n
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone() == (3,)
        assert db.execute("PRAGMA page_size").fetchone() == (16384,)
        assert db.execute("SELECT count(*) FROM namespaces").fetchone() == (1,)  # once, not per row
    assert stored_count(path) == n


# --------------------------------------------------------------------------------------------------
# The background writer: nothing lost, nothing duplicated, queued rows visible


def test_queued_rows_are_served_before_they_are_written(tmp_path: Path) -> None:
    """While another connection holds the write lock, rows wait in the queue: `get` serves them
    from there, and they are in the file once the lock is released and the store flushed."""
    path = tmp_path / "cache.sqlite"
    store = SQLiteCache(path, busy_timeout=30)
    store.put_many(NS, [(digest(0), rows_of(1)[0])])
    store.flush()
    holder = sqlite3.connect(path, isolation_level=None, timeout=30)
    holder.execute("BEGIN IMMEDIATE")
    try:
        rows = rows_of(5, seed=1)
        store.put_many(NS, [(digest(i), rows[i]) for i in range(1, 5)])
        for i in range(1, 5):
            got = store.get(NS, digest(i))
            same_row(got, rows[i])
        assert stored_count(path) == 1  # not written yet: the lock is held
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    store.flush()
    assert stored_count(path) == 5
    store.close()


def test_threads_storing_at_once_lose_and_duplicate_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Eight threads store overlapping keys through a queue of 64 rows (so they wait for the
    writer) while reading; every distinct key is in the file once, with its exact row."""
    monkeypatch.setattr(cache_module, "_WRITE_QUEUE_ROWS", 64)
    monkeypatch.setattr(cache_module, "_WRITE_CHUNK_ROWS", 16)
    path = tmp_path / "cache.sqlite"
    store = SQLiteCache(path)
    rows = rows_of(1200)
    errors: list[BaseException] = []

    def work(t: int) -> None:
        try:
            keys = range(t * 100, t * 100 + 400)  # each key stored by up to four threads
            for start in range(keys.start, keys.stop, 7):
                part = range(start, min(keys.stop, start + 7))
                store.put_many(NS, [(digest(i), rows[i]) for i in part])
                got = store.get(NS, digest(part.start))
                same_row(got, rows[part.start])
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    store.close()
    with sqlite3.connect(path) as db:
        stored = db.execute("SELECT digest, row FROM embeddings").fetchall()
    assert len(stored) == 1100 == len({d for d, _ in stored})  # keys 0..1099, once each
    by_digest = dict(stored)
    for i in range(1100):
        assert by_digest[digest(i)] == rows[i].tobytes()


_EXIT_WITHOUT_CLOSE = """
import hashlib, sys
import numpy as np
from clip_client.cache import SQLiteCache
store = SQLiteCache(sys.argv[1])
rows = np.arange(50 * 768, dtype=np.float32).reshape(50, 768)
store.put_many("ns", [(hashlib.sha256(bytes([i])).digest(), rows[i]) for i in range(50)])
# no flush, no close: the interpreter ends with the rows queued
"""


def test_a_process_that_exits_without_closing_writes_its_queued_rows(tmp_path: Path) -> None:
    path = tmp_path / "cache.sqlite"
    done = subprocess.run(
        [sys.executable, "-c", _EXIT_WITHOUT_CLOSE, str(path)],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert stored_count(path) == 50


def test_a_call_returns_with_its_rows_in_the_file(server: ServingServer, tmp_path: Path) -> None:
    """Another process (here: a plain sqlite3 connection) finds a call's rows once it returns,
    with the client still open."""
    path = tmp_path / "cache.sqlite"
    texts = [f"text {i}" for i in range(70)]
    with ClipClient(**server.client_kwargs(cache=path, batch_size=8)) as client:
        client.embed_texts(texts)
        assert stored_count(path) == 70
        with client.iter_embed_texts(iter([*texts[:3], "new"])) as stream:
            assert [vector.tobytes() for _, vector in stream] == [
                expected_vector("text", t).tobytes() for t in [*texts[:3], "new"]
            ]
        assert stored_count(path) == 71


# --------------------------------------------------------------------------------------------------
# Files of other layouts


def _write_layout_2(path: Path, rows: list[tuple[str, bytes, bytes]]) -> None:
    """A cache file exactly as clip_client wrote it before issue 20: 4 KB pages, a WITHOUT ROWID
    table keyed by the namespace's JSON and the digest, a checksum per row, user_version 2."""
    with closing(sqlite3.connect(path)) as db, db:
        db.execute("PRAGMA journal_mode = WAL")
        db.execute(
            "CREATE TABLE embeddings (namespace TEXT NOT NULL, digest BLOB NOT NULL, row BLOB NOT NULL,"
            " crc INTEGER NOT NULL, PRIMARY KEY (namespace, digest)) WITHOUT ROWID"
        )
        db.executemany(
            "INSERT INTO embeddings VALUES (?, ?, ?, ?)", [(ns, d, b, v2_crc(ns, d, b)) for ns, d, b in rows]
        )
        db.execute("PRAGMA user_version = 2")


def test_a_layout_2_file_is_converted_keeping_its_rows(
    server: ServingServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The rows of an older clip_client's file answer without a request after the conversion, the
    file is rewritten at 16 KB pages, and a row damaged before it is still caught."""
    texts = [f"kept {i}" for i in range(40)]
    fresh = tmp_path / "fresh.sqlite"
    with ClipClient(**server.client_kwargs(cache=fresh)) as client:
        client.embed_texts(texts)
    with sqlite3.connect(fresh) as db:  # the namespace and digests this client uses
        rows = db.execute(
            "SELECT n.name, e.digest, e.row FROM embeddings e JOIN namespaces n ON n.id = e.ns"
        ).fetchall()
    old = tmp_path / "old.sqlite"
    _write_layout_2(old, rows)
    with closing(sqlite3.connect(old)) as db, db:  # one bit of one row flipped, its checksum kept
        damaged = bytearray(rows[0][2])
        damaged[100] ^= 0x04
        db.execute("UPDATE embeddings SET row = ? WHERE digest = ?", (bytes(damaged), rows[0][1]))
    size_before = old.stat().st_size

    sent = server.posts()
    with caplog.at_level(logging.WARNING, logger="clip_client"):
        with ClipClient(**server.client_kwargs(cache=old)) as client:
            out = client.embed_texts(texts)
            assert (client.stats.cache_hits, client.stats.cache_rejected) == (39, 1)
    assert server.posts() == sent + 1  # the damaged row alone was recomputed
    assert [r.tobytes() for r in out] == [expected_vector("text", t).tobytes() for t in texts]
    assert any("converted 40 rows" in r.getMessage() for r in caplog.records)
    with sqlite3.connect(old) as db:
        assert db.execute("PRAGMA user_version").fetchone() == (3,)
        assert db.execute("PRAGMA page_size").fetchone() == (16384,)
        assert db.execute("SELECT name FROM sqlite_master WHERE name = 'embeddings_v2'").fetchone() is None
    assert stored_count(old) == 40
    assert old.stat().st_size <= size_before * 1.5  # rewritten, not grown by a copy beside the old rows


def test_a_file_of_a_newer_clip_client_is_left_alone(
    server: ServingServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "cache.sqlite"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE embeddings (anything)")
        db.execute("INSERT INTO embeddings VALUES ('theirs')")
        db.execute("PRAGMA user_version = 9")
    sent = server.posts()
    with caplog.at_level(logging.WARNING, logger="clip_client"):
        with ClipClient(**server.client_kwargs(cache=path)) as client:
            for _ in range(2):
                client.embed_texts(["a", "b"])
    assert server.posts() == sent + 2  # no cache: every call sent
    messages = [r.getMessage() for r in caplog.records if "embedding cache" in r.getMessage()]
    assert len(messages) == 1
    assert "newer clip_client" in messages[0]
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT * FROM embeddings").fetchall() == [("theirs",)]
        assert db.execute("PRAGMA user_version").fetchone() == (9,)


def test_a_converted_file_another_connection_holds_is_kept_at_its_page_size(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Rewriting the file needs it to itself: with another connection open, the rows are still
    converted and served, and the message says how to reclaim the space later."""
    path = tmp_path / "cache.sqlite"
    rows = rows_of(3)
    _write_layout_2(path, [(NS, digest(i), rows[i].tobytes()) for i in range(3)])
    other = sqlite3.connect(path)
    other.execute("SELECT count(*) FROM embeddings").fetchone()  # holds the file open in WAL mode
    try:
        with caplog.at_level(logging.WARNING, logger="clip_client"):
            store = SQLiteCache(path, busy_timeout=0.2)
            for i in range(3):
                got = store.get(NS, digest(i))
                same_row(got, rows[i])
            store.close()
    finally:
        other.close()
    assert any("not rewritten" in r.getMessage() and "VACUUM" in r.getMessage() for r in caplog.records)
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone() == (3,)
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_the_file_stays_usable_by_several_stores_at_once(tmp_path: Path) -> None:
    """Two stores (as two processes would) on one new file: each sees the other's rows once
    flushed."""
    path = tmp_path / "cache.sqlite"
    a, b = SQLiteCache(path), SQLiteCache(path)
    rows = rows_of(2)
    a.put_many(NS, [(digest(0), rows[0])])
    b.put_many(NS, [(digest(1), rows[1])])
    a.flush()
    b.flush()
    for store in (a, b):
        for i in range(2):
            got = store.get(NS, digest(i))
            same_row(got, rows[i])
    a.close()
    b.close()
    assert os.path.getsize(path) > 0


@pytest.mark.parametrize("stream", [False, True])
def test_hits_and_misses_read_ahead_keep_input_order(
    server: ServingServer, tmp_path: Path, stream: bool
) -> None:
    """Inputs are looked up a batch at a time: with every other one cached, duplicates and a group
    cut short by the input's end, rows still come out in input order, each hit counted once."""
    path = tmp_path / "cache.sqlite"
    texts = [f"text {i}" for i in range(53)] + ["text 0", "text 1"]
    with ClipClient(**server.client_kwargs(cache=path, batch_size=8)) as client:
        client.embed_texts(texts[::2])  # 28 of the 53 distinct texts: 28 misses
        sent = server.posts()
        if stream:
            with client.iter_embed_texts(iter(texts)) as rows:
                out = [vector for _, vector in rows]
        else:
            out = list(client.embed_texts(texts))
        assert [r.tobytes() for r in out] == [expected_vector("text", t).tobytes() for t in texts]
        # Cached: the 27 even texts of the 53 and "text 1" (the last input); so hits are those 28
        # plus the repeat of "text 0" and "text 1" again at the end; the 25 others were misses.
        assert (client.stats.cache_hits, client.stats.cache_misses) == (30, 28 + 25)
        assert server.posts() > sent


class _CountingCache(SQLiteCache):
    """The real store, counting how it is asked."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.single = self.many = 0

    def get_checked(self, namespace: str, digest: bytes) -> tuple[np.ndarray | None, bool]:
        self.single += 1
        return super().get_checked(namespace, digest)

    def get_many_checked(self, namespace: str, digests: Any) -> dict[bytes, tuple[np.ndarray | None, bool]]:
        self.many += 1
        return super().get_many_checked(namespace, digests)


def test_lookups_take_one_query_per_batch(server: ServingServer, tmp_path: Path) -> None:
    """64 inputs at batch_size 32: two lookups of 32, none of one (one SQLite call per input gave
    up the GIL to the request threads once per input: issue 20's profile)."""
    store = _CountingCache(tmp_path / "cache.sqlite")
    texts = [f"text {i}" for i in range(64)]
    with ClipClient(**server.client_kwargs(cache=store, batch_size=32)) as client:
        client.embed_texts(texts)
        assert (store.many, store.single) == (2, 0)
        sent = server.posts()
        with client.iter_embed_texts(iter(texts)) as rows:
            assert sum(1 for _ in rows) == 64
        assert (store.many, store.single) == (4, 0)
        assert server.posts() == sent
