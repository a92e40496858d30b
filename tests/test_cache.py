"""The embedding cache (``cache=``): a second call costs no request and returns the same bits.

Every test uses a real SQLite file in ``tmp_path`` (or the memory LRU), the loopback
``ServingServer`` (``server.posts()`` counts the requests) or the tiny local checkpoint, and runs
for both clients where it goes through ``make``.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from harness import TEXT, Make, embed_in_threads, text_rows
from image_factory import noise
from serving_server import Reply, ServingServer, endpoint_state, expected_vector

from clip_client import ClipClient
from clip_client.cache import DEFAULT_MEMORY_ENTRIES, MemoryCache, SQLiteCache, open_cache

TEXTS = ["a red car", "a dog", "", "a photo of a cat", "a dog"]  # a repeat: one input, twice
IMAGES = [noise(40 + 7 * i, 30 + 5 * i, seed=i) for i in range(4)]


def same_bits(a: np.ndarray, b: np.ndarray) -> None:
    assert a.dtype == b.dtype == np.float32
    assert a.shape == b.shape
    assert a.tobytes() == b.tobytes()


def cache_warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.name == "clip_client" and r.levelno == logging.WARNING and "embedding cache" in r.getMessage()
    ]


# --------------------------------------------------------------------------------------------------
# Hits cost nothing, and change nothing


@pytest.mark.parametrize("normalize", [False, True])
async def test_second_call_sends_no_request_and_returns_the_same_bits(
    make: Make, server: ServingServer, tmp_path: Path, normalize: bool
) -> None:
    path = tmp_path / "cache.sqlite"
    uncached = make(normalize=normalize)
    want_texts = await uncached.embed_texts(TEXTS)
    want_images = await uncached.embed_images(IMAGES)
    sent = server.posts()

    client = make(cache=str(path), normalize=normalize, batch_size=2)
    same_bits(await client.embed_texts(TEXTS), want_texts)
    same_bits(await client.embed_images(IMAGES), want_images)
    first = server.posts() - sent
    assert first > 0
    assert path.is_file()
    assert client.stats.cache_hits == 0
    assert client.stats.cache_misses == len(TEXTS) + len(IMAGES)

    same_bits(await client.embed_texts(TEXTS), want_texts)
    same_bits(await client.embed_images(IMAGES), want_images)
    assert server.posts() - sent == first  # not one more request
    assert client.stats.cache_hits == len(TEXTS) + len(IMAGES)

    # Another client (another run) on the same file: every input found, in order.
    again = make(cache=path, normalize=normalize)
    mixed = [TEXTS[3], "never seen", TEXTS[0]]
    out = await again.embed_texts(mixed)
    assert server.posts() - sent == first + 1  # only the new text
    assert server.inputs(TEXT)[-1:] == ["never seen"]
    same_bits(out[[0, 2]], want_texts[[3, 0]])
    assert (again.stats.cache_hits, again.stats.cache_misses) == (2, 1)


async def test_raw_rows_are_stored_and_normalised_on_the_way_out(
    make: Make, server: ServingServer, tmp_path: Path
) -> None:
    path = tmp_path / "cache.sqlite"
    await make(cache=path).embed_texts(["raw"])
    with sqlite3.connect(path) as db:
        (blob,) = db.execute("SELECT row FROM embeddings").fetchone()
    same_bits(np.frombuffer(blob, dtype="<f4").astype(np.float32), expected_vector("text", "raw"))
    row = await make(cache=path, normalize=True).embed_text("raw")
    np.testing.assert_allclose(np.linalg.norm(row), 1.0, rtol=1e-6)


async def test_streams_hand_hits_over_in_input_order(make: Make, server: ServingServer) -> None:
    client = make(cache="memory", batch_size=3)
    texts = [f"t{i}" for i in range(10)]
    await client.embed_texts(texts[::2])  # every other one cached
    sent = server.posts()
    stream = client.client.iter_embed_texts(texts)
    rows = [item async for item in stream] if hasattr(stream, "__aiter__") else list(stream)
    assert [i for i, _ in rows] == list(range(10))
    same_bits(np.stack([r for _, r in rows]), text_rows(texts))
    assert sorted(server.inputs(TEXT)[-5:]) == texts[1::2]  # only the misses went out
    assert server.posts() - sent == 2  # 5 misses in batches of 3


async def test_memory_cache_serves_the_second_call(make: Make, server: ServingServer) -> None:
    client = make(cache="memory")
    first = await client.embed_images(IMAGES)
    sent = server.posts()
    same_bits(await client.embed_images(IMAGES), first)
    assert server.posts() == sent
    assert client.stats.cache_hits == len(IMAGES)


def test_memory_lru_drops_the_least_recently_used_beyond_its_bound() -> None:
    default = open_cache("memory")
    assert isinstance(default, MemoryCache)
    assert default.max_entries == DEFAULT_MEMORY_ENTRIES
    cache = MemoryCache(max_entries=3)
    rows = {bytes([i]): np.full(4, i, dtype=np.float32) for i in range(5)}
    cache.put_many("ns", [(k, rows[k]) for k in (b"\0", b"\1", b"\2")])
    assert cache.get("ns", b"\0") is not None  # now the most recently used
    cache.put_many("ns", [(b"\3", rows[b"\3"])])  # evicts b"\1", the least recently used
    assert len(cache) == 3
    assert cache.get("ns", b"\1") is None
    for k in (b"\0", b"\2", b"\3"):
        same_bits(cache.get("ns", k), rows[k])  # type: ignore[arg-type]
    got = cache.get("ns", b"\0")
    assert got is not None
    got[:] = 99  # a copy: the cached row is not the caller's
    same_bits(cache.get("ns", b"\0"), rows[b"\0"])  # type: ignore[arg-type]


async def test_a_client_with_a_bounded_memory_cache_sends_what_was_evicted(
    make: Make, server: ServingServer
) -> None:
    client = make(cache=MemoryCache(max_entries=2))
    await client.embed_texts(["a", "b", "c"])  # "a" evicted
    sent = server.posts()
    same_bits(await client.embed_texts(["b", "c", "a"]), text_rows(["b", "c", "a"]))
    assert server.posts() == sent + 1
    assert server.inputs(TEXT)[-1:] == ["a"]


# --------------------------------------------------------------------------------------------------
# The key


async def test_other_preparation_settings_miss(make: Make, server: ServingServer, tmp_path: Path) -> None:
    path = tmp_path / "cache.sqlite"
    await make(cache=path).embed_images(IMAGES)
    sent = server.posts()
    jpeg = make(cache=path, image_format="jpeg")
    await jpeg.embed_images(IMAGES)
    assert server.posts() > sent
    assert (jpeg.stats.cache_hits, jpeg.stats.cache_misses) == (0, len(IMAGES))
    # Texts are not shaped by image settings: they hit.
    await make(cache=path).embed_texts(["shared"])
    sent = server.posts()
    same_bits(await make(cache=path, image_format="jpeg").embed_texts(["shared"]), text_rows(["shared"]))
    assert server.posts() == sent


async def test_a_new_served_model_version_misses(make: Make, server: ServingServer, tmp_path: Path) -> None:
    path = tmp_path / "cache.sqlite"
    await make(cache=path).embed_texts(["a"])  # served: version 1
    sent = server.posts()
    await make(cache=path).embed_texts(["a"])
    assert server.posts() == sent
    server.states[TEXT] = endpoint_state(TEXT, entities=2)  # now versions 1 and 2
    await make(cache=path).embed_texts(["a"])
    assert server.posts() == sent + 1


async def test_on_error_mark_failures_are_not_cached(
    make: Make, server: ServingServer, tmp_path: Path
) -> None:
    path = tmp_path / "cache.sqlite"
    texts = ["first", "second"]
    server.script = [Reply(400, {"error_code": "BAD_REQUEST", "message": "refused"})]
    result = await make(cache=path, batch_size=1).embed_texts(texts, on_error="mark")
    assert len(result.failures) == 1
    failed = result.failures[0].index
    sent = server.posts()

    client = make(cache=path, batch_size=1)
    same_bits(await client.embed_texts(texts), text_rows(texts))
    assert server.posts() == sent + 1  # only the failed one is sent again
    assert server.inputs(TEXT)[-1] == texts[failed]
    assert (client.stats.cache_hits, client.stats.cache_misses) == (1, 1)


async def test_clear_cache_empties_the_file(make: Make, server: ServingServer, tmp_path: Path) -> None:
    path = tmp_path / "cache.sqlite"
    client = make(cache=path)
    await client.embed_texts(TEXTS)
    sent = server.posts()
    await client.embed_texts(TEXTS)
    assert server.posts() == sent
    client.client.clear_cache()  # synchronous on both clients
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT count(*) FROM embeddings").fetchone() == (0,)
    same_bits(await client.embed_texts(TEXTS), text_rows(TEXTS))
    assert server.posts() > sent
    make().client.clear_cache()  # no cache: nothing to do, no error


# --------------------------------------------------------------------------------------------------
# Shared by threads and processes


def test_threads_share_one_file(server: ServingServer, tmp_path: Path) -> None:
    path = tmp_path / "cache.sqlite"
    lists = [
        [f"shared {i}" for i in range(20)] + [f"thread {t} item {i}" for i in range(20)] for t in range(6)
    ]
    with ClipClient(**server.client_kwargs(cache=path, batch_size=4, max_concurrency=4)) as client:
        results = embed_in_threads(client, lists)
    for t, texts in enumerate(lists):
        same_bits(results[t], text_rows(texts))
    everything = sorted({x for texts in lists for x in texts})
    sent = server.posts()
    with ClipClient(**server.client_kwargs(cache=path)) as client:
        same_bits(client.embed_texts(everything), text_rows(everything))
        assert client.stats.cache_hits == len(everything)
    assert server.posts() == sent


_WORKER = """
import json, sys
from clip_client import ClipClient
kwargs, texts = json.loads(sys.argv[1])
with ClipClient(**kwargs) as client:
    for _ in range(2):
        client.embed_texts(texts)
    print(json.dumps([client.stats.cache_hits, client.stats.cache_misses]))
"""


def test_processes_write_one_file_at_once(server: ServingServer, tmp_path: Path) -> None:
    path = tmp_path / "sub" / "cache.sqlite"  # the folder is created too
    kwargs = server.client_kwargs(cache=str(path), batch_size=3, max_concurrency=2)
    lists = [
        [f"shared {i}" for i in range(15)] + [f"process {p} item {i}" for i in range(30)] for p in range(4)
    ]
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", _WORKER, json.dumps([kwargs, texts])],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for texts in lists
    ]
    for worker in workers:
        out, err = worker.communicate(timeout=240)
        assert worker.returncode == 0, err
        hits, misses = json.loads(out)
        assert hits >= 45
        assert misses <= 45
        assert "embedding cache" not in err  # no process found the file unusable
    everything = sorted({x for texts in lists for x in texts})
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert db.execute("SELECT count(*) FROM embeddings").fetchone() == (len(everything),)
    sent = server.posts()
    with ClipClient(**server.client_kwargs(cache=path)) as client:
        same_bits(client.embed_texts(everything), text_rows(everything))
    assert server.posts() == sent


# --------------------------------------------------------------------------------------------------
# A broken cache never fails a call


async def test_a_corrupt_file_is_logged_once_and_the_call_goes_on(
    make: Make, server: ServingServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="clip_client")
    path = tmp_path / "cache.sqlite"
    client = make(cache=path)
    await client.embed_texts(["before"])  # a real cache file, then overwritten with garbage
    await client.close()
    path.write_bytes(b"this is not an SQLite database, " * 256)
    for name in ("cache.sqlite-wal", "cache.sqlite-shm"):
        (tmp_path / name).unlink(missing_ok=True)

    want_images = await make().embed_images(IMAGES[:1])
    client = make(cache=path)
    sent = server.posts()
    for _ in range(2):
        same_bits(await client.embed_texts(TEXTS), text_rows(TEXTS))
        same_bits(await client.embed_images(IMAGES[:1]), want_images)
    assert server.posts() == sent + 4  # every call sent its inputs
    warnings = cache_warnings(caplog)
    assert len(warnings) == 1
    assert str(path) in warnings[0].getMessage()
    client.client.clear_cache()  # no error either


@pytest.fixture
def locked(tmp_path: Path) -> Iterator[Path]:
    """A cache file another connection holds in an exclusive transaction."""
    path = tmp_path / "locked.sqlite"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("CREATE TABLE other (x)")
    holder.execute("BEGIN EXCLUSIVE")
    holder.execute("INSERT INTO other VALUES (1)")
    try:
        yield path
    finally:
        holder.execute("ROLLBACK")
        holder.close()


async def test_a_locked_file_is_logged_once_and_the_call_goes_on(
    make: Make, server: ServingServer, locked: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="clip_client")
    client = make(cache=SQLiteCache(locked, busy_timeout=0.05))
    sent = server.posts()
    for _ in range(2):
        same_bits(await client.embed_texts(TEXTS), text_rows(TEXTS))
    assert server.posts() == sent + 2
    warnings = cache_warnings(caplog)
    assert len(warnings) == 1
    assert "locked" in warnings[0].getMessage()
    assert client.stats.cache_hits == 0


def test_a_lock_released_in_time_is_waited_for(server: ServingServer, tmp_path: Path) -> None:
    """A writer that holds the lock briefly only makes the cache wait (busy timeout), not give up."""
    path = tmp_path / "cache.sqlite"
    with ClipClient(**server.client_kwargs(cache=path)) as client:
        client.embed_texts(["a"])
        holder = sqlite3.connect(path, isolation_level=None, timeout=5)
        holder.execute("BEGIN IMMEDIATE")  # WAL: readers go on, writers wait
        try:
            sent = server.posts()
            client.embed_texts(["a"])  # a read: no wait, a hit
            assert server.posts() == sent
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        client.embed_texts(["b"])
        assert client.stats.cache_hits == 1
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT count(*) FROM embeddings").fetchone() == (2,)


# --------------------------------------------------------------------------------------------------
# Local mode: keyed by model and dtype


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from tiny_clip import write_tiny_clip

    return write_tiny_clip(tmp_path_factory.mktemp("tiny-clip"))


def test_local_mode_is_keyed_by_model_and_dtype(tiny: Path, tmp_path: Path) -> None:
    path = tmp_path / "cache.sqlite"
    texts = ["a photo of a cat", "a dog"]

    def run(**options: Any) -> tuple[np.ndarray, np.ndarray, int, str]:
        with ClipClient.local(tiny, device="cpu", cache=path, **options) as client:
            rows = client.embed_texts(texts)
            pics = client.embed_images(IMAGES)
            identity = client.backend.cache_identity("text")  # type: ignore[attr-defined]
            return rows, pics, client.stats.requests, identity

    rows, pics, requests, identity = run(dtype="float32")
    assert requests > 0
    from clip_client.local import checkpoint_sha256

    assert identity == f"local sha256:{checkpoint_sha256(tiny)} torch.float32"  # the content, not the path
    assert str(tiny.resolve()) not in identity
    again, again_pics, requests, _ = run(dtype="float32")
    assert requests == 0  # no forward pass at all
    same_bits(again, rows)
    same_bits(again_pics, pics)
    _, _, requests, identity = run(dtype="bfloat16")
    assert requests > 0  # another dtype: computed afresh
    assert "bfloat16" in identity


def test_a_checkpoint_rewritten_in_place_misses_and_a_copy_of_it_hits(tmp_path: Path) -> None:
    """The local cache knows a folder by its content: other weights saved into the same folder
    are computed afresh (the rows of the model that was there before are not served), and a copy
    of the folder elsewhere finds the rows its original stored."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    import shutil

    from tiny_clip import write_tiny_clip

    folder, path, texts = tmp_path / "m", tmp_path / "c.sqlite", ["alpha", "beta"]

    def embed(model: Path, **options: Any) -> tuple[np.ndarray, int, int]:
        with ClipClient.local(model, device="cpu", dtype="float32", **options) as client:
            rows = client.embed_texts(texts)
            return rows, client.stats.cache_hits, client.stats.requests

    write_tiny_clip(folder, seed=1)
    first, hits, _ = embed(folder, cache=path)
    assert hits == 0
    write_tiny_clip(folder, seed=2)  # the same folder, other weights
    second, hits, requests = embed(folder, cache=path)
    assert (hits, requests) == (0, 1)  # misses: computed by the model now in the folder
    fresh, _, _ = embed(folder)  # that model, without a cache
    same_bits(second, fresh)
    assert not np.allclose(second, first)

    shutil.copytree(folder, tmp_path / "copy")
    again, hits, requests = embed(tmp_path / "copy", cache=path)
    assert (hits, requests) == (len(texts), 0)  # the same checkpoint elsewhere: all hits
    same_bits(again, second)
    shutil.move(folder, tmp_path / "moved")
    _, hits, requests = embed(tmp_path / "moved", cache=path)
    assert (hits, requests) == (len(texts), 0)


def test_a_checkpoint_changed_after_load_is_not_taken_for_the_one_in_memory(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The digest is computed on the first cache use, not at load: a folder rewritten in between
    holds another model than the one in memory, so the rows are kept apart from both."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from tiny_clip import write_tiny_clip

    from clip_client.local import checkpoint_sha256

    folder, path = tmp_path / "m", tmp_path / "c.sqlite"
    write_tiny_clip(folder, seed=1)
    with ClipClient.local(folder, device="cpu", dtype="float32", cache=path) as old:
        write_tiny_clip(folder, seed=2)
        with caplog.at_level(logging.WARNING, logger="clip_client"):
            old.embed_texts(["alpha"])
        identity = old.backend.cache_identity("text")  # type: ignore[attr-defined]
    assert f"sha256:{checkpoint_sha256(folder)}" not in identity
    assert any("changed since the model was loaded" in r.getMessage() for r in caplog.records)
    with ClipClient.local(folder, device="cpu", dtype="float32", cache=path) as new:
        new.embed_texts(["alpha"])
        assert new.stats.cache_hits == 0  # the old model's row is not served for the new one


def test_a_cache_option_of_another_type_is_refused(server: ServingServer) -> None:
    with pytest.raises(TypeError, match="cache="):
        ClipClient(**server.client_kwargs(cache=42))


@pytest.mark.parametrize("empty", ["", "  "])
def test_an_empty_cache_path_is_refused(server: ServingServer, empty: object) -> None:
    """``cache=''`` names no file: refused, not opened as the current folder and then disabled."""
    with pytest.raises(ValueError, match="empty path"):
        ClipClient(**server.client_kwargs(cache=empty))


# --------------------------------------------------------------------------------------------------
# Rows damaged in the file, and rows of another model (issue 19: field faults 5 and 6)


def _damage(path: Path, how: str) -> int:
    """Damage every stored row in place, as a disk, a copy tool or a hand-edit would; how many."""
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT id, row FROM embeddings").fetchall()
        for rowid, blob in rows:
            data = bytearray(blob)
            if how == "nan":
                data[0:4] = np.array([np.nan], dtype="<f4").tobytes()
            elif how == "bit":
                data[len(data) // 2] ^= 0x01  # one bit of one float: still finite, still plausible
            else:
                data = data[:-4]  # a row cut short by a whole float
            db.execute("UPDATE embeddings SET row = ? WHERE id = ?", (bytes(data), rowid))
    return len(rows)


@pytest.mark.parametrize("how", ["nan", "bit", "short"])
async def test_a_row_damaged_in_the_file_is_dropped_counted_and_recomputed(
    make: Make, server: ServingServer, tmp_path: Path, how: str, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "cache.sqlite"
    texts = ["a red car", "a dog", "a cat"]
    want = await make().embed_texts(texts)
    await make(cache=path).embed_texts(texts)
    assert _damage(path, how) == len(texts)

    sent = server.posts()
    client = make(cache=path)
    with caplog.at_level(logging.WARNING, logger="clip_client"):
        out = await client.embed_texts(texts)
    same_bits(out, want)  # the correct rows, not the damaged ones
    assert server.posts() > sent  # recomputed
    stats = client.stats
    assert (stats.cache_hits, stats.cache_rejected) == (0, len(texts))
    assert any("checksum" in r.getMessage() for r in cache_warnings(caplog))

    # Dropped and replaced: a third client finds good rows and sends nothing.
    sent = server.posts()
    third = make(cache=path)
    same_bits(await third.embed_texts(texts), want)
    assert server.posts() == sent
    assert (third.stats.cache_hits, third.stats.cache_rejected) == (len(texts), 0)


async def test_a_cache_file_of_an_older_clip_client_is_recomputed_once(
    make: Make, server: ServingServer, tmp_path: Path
) -> None:
    path = tmp_path / "cache.sqlite"
    want = expected_vector("text", "old")
    with sqlite3.connect(path) as db:  # the layout before rows carried a checksum
        db.execute(
            "CREATE TABLE embeddings (namespace TEXT NOT NULL, digest BLOB NOT NULL, row BLOB NOT NULL,"
            " PRIMARY KEY (namespace, digest)) WITHOUT ROWID"
        )
        db.execute("INSERT INTO embeddings VALUES ('x', x'00', ?)", (np.zeros(4, "<f4").tobytes(),))
    sent = server.posts()
    client = make(cache=path)
    same_bits((await client.embed_texts(["old"]))[0], want)
    assert server.posts() == sent + 1
    same_bits((await make(cache=path).embed_texts(["old"]))[0], want)
    assert server.posts() == sent + 1  # stored in the new layout
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT count(*) FROM embeddings").fetchone() == (1,)
        assert db.execute("PRAGMA user_version").fetchone() == (3,)  # layout 3: issue 20


class _PlainStore:
    """A store of one's own with no checksum (``EmbeddingCache`` only): rows are checked by value."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, bytes], np.ndarray] = {}

    def get(self, namespace: str, digest: bytes) -> np.ndarray | None:
        return self.rows.get((namespace, digest))

    def put_many(self, namespace: str, rows: Any) -> None:
        for digest, row in rows:
            self.rows[(namespace, digest)] = np.array(row, dtype=np.float32)

    def clear(self) -> None:
        self.rows.clear()

    def close(self) -> None:
        pass


async def test_a_store_of_ones_own_is_checked_like_an_answer(make: Make, server: ServingServer) -> None:
    store = _PlainStore()
    texts = ["a", "b"]
    want = await make().embed_texts(texts)
    await make(cache=store).embed_texts(texts)
    for key in store.rows:
        store.rows[key][3] = np.inf
    client = make(cache=store)
    same_bits(await client.embed_texts(texts), want)
    assert client.stats.cache_rejected == 2


@pytest.mark.parametrize("mixed", [False, True])
async def test_an_unreadable_state_never_serves_rows_of_the_previous_model(
    make: Make, server: ServingServer, tmp_path: Path, mixed: bool
) -> None:
    """The token can query but not read the endpoint (a 403 on the state GET), so the cache key is
    the URL alone; the cache holds the endpoint's previous 512-d model's rows. No call fails and
    none returns an old row: the first answer fixes the width, and the old rows are ignored."""
    path = tmp_path / "cache.sqlite"
    server.states["clip-text-embedding"] = Reply(403, {"error_code": "PERMISSION_DENIED", "message": "no"})
    texts = ["a red car", "a dog", "a cat", "a boat"]
    server.dim = 512
    await make(cache=path, batch_size=2).embed_texts(texts)
    server.dim = 768  # a new model behind the same URL
    want = await make(batch_size=2).embed_texts([*texts, "new"] if mixed else texts)
    assert want.shape[1] == 768

    client = make(cache=path, batch_size=2)
    out = await client.embed_texts([*texts, "new"] if mixed else texts)
    same_bits(out, want)
    assert client.stats.cache_hits == 0
    assert client.stats.cache_rejected >= 1

    # The answers replaced the old rows: now every row is found, the width confirmed first.
    sent = server.posts()
    again = make(cache=path, batch_size=2)
    same_bits(await again.embed_texts(texts), want[: len(texts)])
    assert again.stats.cache_rejected == 0
    assert server.posts() - sent <= 1  # at most the one request that confirms the width


async def test_a_readable_state_trusts_the_cache_from_the_first_row(
    make: Make, server: ServingServer, tmp_path: Path
) -> None:
    path = tmp_path / "cache.sqlite"
    texts = ["a red car", "a dog"]
    await make(cache=path).embed_texts(texts)
    sent = server.posts()
    client = make(cache=path)
    await client.embed_texts(texts)
    assert server.posts() == sent  # the served model version is in the key: no confirmation needed
    assert client.stats.cache_hits == 2


async def test_a_namespace_of_ones_own_separates_rows_and_needs_no_confirmation(
    make: Make, server: ServingServer, tmp_path: Path
) -> None:
    path = tmp_path / "cache.sqlite"
    server.states["clip-text-embedding"] = Reply(403, {"error_code": "PERMISSION_DENIED", "message": "no"})
    texts = ["a red car", "a dog"]
    await make(cache=path, cache_namespace="v1").embed_texts(texts)
    sent = server.posts()
    same = make(cache=path, cache_namespace="v1")
    await same.embed_texts(texts)
    assert server.posts() == sent  # the caller named the model: no request to confirm the width
    assert same.stats.cache_hits == 2
    other = make(cache=path, cache_namespace="v2")
    await other.embed_texts(texts)
    assert server.posts() > sent  # another name: nothing reused
    assert (other.stats.cache_hits, other.stats.cache_misses) == (0, 2)
