"""clip_client.vector_search end to end: real databricks-sdk calls over HTTP to a loopback fake of
Vector Search and Unity Catalog (``vector_search_server.VectorSearchServer``), whose queries are exact
L2 over what was upserted or synced. Results are checked against ``cosine_topk`` over the same vectors."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from PIL import Image
from vector_search_server import VectorSearchServer

from clip_client import (
    AsyncClipClient,
    ClipClient,
    DimensionMismatchError,
    IndexNotReadyError,
    IndexSpecMismatchError,
    SourceTableError,
    UpsertFailedError,
    VectorSearchError,
    VectorSearchNotFoundError,
    VectorSearchPermissionError,
    cosine_topk,
)
from clip_client.vector_search import (
    MAX_RESULTS,
    AsyncVectorIndex,
    VectorIndex,
    create_direct_index,
    create_index,
    plan_deletes,
    plan_upserts,
)

DIM = 16
INDEX = "main.photos.clip_index"
TABLE = "main.photos.embedded"
TOKEN = "dapi-VS-SECRET-9f8e7d6c5b4a"


@pytest.fixture
def vs() -> Iterator[VectorSearchServer]:
    with VectorSearchServer(dim=DIM) as server:
        server.add_endpoint("clip-vs")
        yield server


@pytest.fixture
def client(vs: VectorSearchServer) -> Iterator[ClipClient]:
    with ClipClient(**vs.client_kwargs(token=TOKEN)) as c:
        yield c


def _vectors(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)


def _unit(m: np.ndarray) -> np.ndarray:
    return (m / np.linalg.norm(m, axis=-1, keepdims=True)).astype(np.float32)


def _direct(
    vs: VectorSearchServer, client: ClipClient, n: int = 300, seed: int = 0
) -> tuple[VectorIndex, np.ndarray]:
    index = create_direct_index(
        INDEX, endpoint="clip-vs", client=client, columns={"folder": "string", "n": "long"}, poll_interval=0
    )
    matrix = _vectors(n, seed)
    folders = ["maize" if i % 3 == 0 else 'say "hi"' if i % 3 == 1 else "wheat" for i in range(n)]
    index.upsert([f"k{i}" for i in range(n)], matrix, columns={"folder": folders, "n": list(range(n))})
    return index, matrix


def _same_as_topk(result: Any, query: np.ndarray, matrix: np.ndarray, k: int, keys: list[str]) -> None:
    top = cosine_topk(query, matrix, k)
    assert list(result.keys[0]) == [keys[i] for i in top.indices[0]]
    np.testing.assert_allclose(result.scores, top.scores, atol=2e-5)
    assert result.scores.dtype == np.float32
    assert result.scores.shape == top.scores.shape


# -- Direct Access: create, upsert, search, delete ------------------------------------------------------


def test_text_vector_and_image_queries_equal_cosine_topk_over_the_upserted_vectors(
    vs: VectorSearchServer, client: ClipClient
) -> None:
    index, matrix = _direct(vs, client)
    keys = [f"k{i}" for i in range(len(matrix))]
    result = index.search("a red car", k=7, columns=["folder"])
    _same_as_topk(result, client.embed_text("a red car"), matrix, 7, keys)
    assert len(result.columns["folder"]) == 7
    frame = result.to_pandas()
    assert list(frame.columns) == ["id", "score", "folder"]
    assert len(frame) == 7

    query = _vectors(1, seed=9)[0] * 3.5  # any length: the search normalises
    _same_as_topk(index.search(query, k=5), query, matrix, 5, keys)
    _same_as_topk(index.search(vector=query.tolist(), k=5), query, matrix, 5, keys)

    buf = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 10, 10)).save(buf, format="PNG")
    image_query = client.embed_image(buf.getvalue())
    _same_as_topk(index.search(image=buf.getvalue(), k=4), image_query, matrix, 4, keys)
    _same_as_topk(index.search(Image.open(io.BytesIO(buf.getvalue())), k=4), image_query, matrix, 4, keys)


def test_a_query_is_exactly_one_of_query_text_image_vector(
    vs: VectorSearchServer, client: ClipClient
) -> None:
    index, _ = _direct(vs, client, n=10)
    with pytest.raises(TypeError, match="exactly one"):
        index.search("a", vector=[1.0] * DIM)
    with pytest.raises(TypeError, match="exactly one"):
        index.search()


def test_results_past_one_page_are_fetched_with_page_tokens(
    vs: VectorSearchServer, client: ClipClient
) -> None:
    index, matrix = _direct(vs, client, n=2600)
    query = _vectors(1, seed=3)[0]
    result = index.search(query, k=2100)
    assert len(result) == 2100
    _same_as_topk(result, query, matrix, 2100, [f"k{i}" for i in range(len(matrix))])
    assert len(vs.posted("/query-next-page")) == 2


def test_k_over_the_service_cap_is_refused_before_any_request(
    vs: VectorSearchServer, client: ClipClient
) -> None:
    index, _ = _direct(vs, client, n=5)
    before = len(vs.vs_requests)
    with pytest.raises(ValueError, match="10,000"):
        index.search([1.0] * DIM, k=MAX_RESULTS + 1)
    assert len(vs.vs_requests) == before
    assert len(index.search([1.0] * DIM, k=MAX_RESULTS)) == 5


def test_filters_are_sent_as_json_and_applied(vs: VectorSearchServer, client: ClipClient) -> None:
    index, matrix = _direct(vs, client, n=90)
    filters = {"folder": 'say "hi"', "n <": 60}
    query = _vectors(1, seed=4)[0]
    result = index.search(query, k=8, filters=filters, columns=["folder", "n"])
    sent = json.loads(vs.posted("/query")[-1])
    assert sent["filters_json"] == json.dumps(filters)
    assert json.loads(sent["filters_json"]) == filters
    chosen = [i for i in range(90) if i % 3 == 1 and i < 60]
    _same_as_topk(result, query, matrix[chosen], 8, [f"k{i}" for i in chosen])
    assert set(result.columns["folder"]) == {'say "hi"'}


def test_delete_removes_rows(vs: VectorSearchServer, client: ClipClient) -> None:
    index, matrix = _direct(vs, client, n=50)
    query = matrix[7]
    assert index.search(query, k=1).keys[0, 0] == "k7"
    assert index.delete(["k7", "k8"]) == 2
    assert "k7" not in list(index.search(query, k=50).keys[0])


def test_upserts_are_split_by_bytes_under_the_limit(vs: VectorSearchServer, client: ClipClient) -> None:
    index = create_direct_index(INDEX, endpoint="clip-vs", client=client, poll_interval=0)
    limit = 6_000
    vs.upsert_limit = limit  # the fake refuses anything larger, as the service would
    matrix = _vectors(120, seed=5)
    assert index.upsert([f"row-{i}" for i in range(120)], matrix, max_request_bytes=limit) == 120
    bodies = vs.posted("/upsert-data")
    assert len(bodies) > 3
    assert all(len(b) <= limit for b in bodies)
    rows = [r for b in bodies for r in json.loads(json.loads(b)["inputs_json"])]
    assert [r["id"] for r in rows] == [f"row-{i}" for i in range(120)]
    np.testing.assert_allclose(np.array([r["embedding"] for r in rows]), _unit(matrix), atol=1e-6)


def test_the_upsert_plan_measures_the_body_databricks_sdk_sends_exactly() -> None:
    rows = [
        {"id": f"k{i}", "embedding": [0.5] * (i % 7 + 1), "caption": 'a "quoted" \\ caption é'}
        for i in range(60)
    ]
    for limit in (300, 700, 2_000):
        runs = plan_upserts(rows, limit)
        assert [i for run in runs for i in run] == list(range(60))
        for at, run in enumerate(runs):
            body = json.dumps({"inputs_json": json.dumps([rows[i] for i in run])}).encode()
            assert len(body) <= limit
            if at + 1 < len(runs):  # greedy: the next row would not have fitted
                grown = json.dumps({"inputs_json": json.dumps([rows[i] for i in [*run, runs[at + 1][0]]])})
                assert len(grown.encode()) > limit
    with pytest.raises(ValueError, match="row 0 alone"):
        plan_upserts(rows, 50)


def test_deletes_are_split_under_the_query_string_bound() -> None:
    keys = [f"key-{i:05d}" for i in range(2000)]
    runs = plan_deletes(keys, 1000)
    assert [k for run in runs for k in run] == keys
    assert all(len("&".join(f"primary_keys={k}" for k in run)) <= 1000 for run in runs)


def test_a_partial_upsert_failure_names_every_key_not_written(
    vs: VectorSearchServer, client: ClipClient
) -> None:
    index = create_direct_index(INDEX, endpoint="clip-vs", client=client, poll_interval=0)
    vs.fail_keys = {"k3", "k5"}
    matrix = _vectors(40, seed=6)
    with pytest.raises(UpsertFailedError) as caught:
        index.upsert([f"k{i}" for i in range(40)], matrix, max_request_bytes=2_500)
    error = caught.value
    first_run = json.loads(json.loads(vs.posted("/upsert-data")[0])["inputs_json"])
    sent_first = [r["id"] for r in first_run]
    assert error.failed_keys[:2] == ["k3", "k5"]
    assert error.failed_keys[2:] == [f"k{i}" for i in range(len(sent_first), 40)]
    assert error.written == len(sent_first) - 2
    assert "'k3', 'k5'" in str(error)


def test_a_refused_upsert_request_is_a_typed_error_with_its_keys(
    vs: VectorSearchServer, client: ClipClient
) -> None:
    index = create_direct_index(INDEX, endpoint="clip-vs", client=client, poll_interval=0)
    vs.refusals["/upsert-data"] = (403, "PERMISSION_DENIED", "no MODIFY")
    with pytest.raises(UpsertFailedError) as caught:
        index.upsert(["a", "b"], _vectors(2))
    assert caught.value.failed_keys == ["a", "b"]
    assert caught.value.written == 0
    assert caught.value.status_code == 403
    assert "MODIFY on the index" in str(caught.value)


# -- Checks before a query ----------------------------------------------------------------------------


def test_a_dimension_mismatch_is_refused_before_any_query(vs: VectorSearchServer) -> None:
    with ClipClient(**vs.client_kwargs(token=TOKEN)) as wide:
        create_direct_index(INDEX, endpoint="clip-vs", client=wide, poll_interval=0)
    vs.dim = 24  # the client's model now embeds 24-d vectors
    with ClipClient(**vs.client_kwargs(token=TOKEN)) as other:
        index = VectorIndex(INDEX, client=other)
        with pytest.raises(DimensionMismatchError) as caught:
            index.search("a dog")
    assert (caught.value.index_dim, caught.value.client_dim) == (DIM, 24)
    assert "16-d" in str(caught.value)
    assert "24-d" in str(caught.value)
    assert vs.posted("/query") == []


def test_an_index_that_is_not_online_is_a_typed_error(vs: VectorSearchServer, client: ClipClient) -> None:
    vs.provision_polls = 5
    create_direct_index(INDEX, endpoint="clip-vs", client=client, wait=False)
    with pytest.raises(IndexNotReadyError, match="not online"):
        VectorIndex(INDEX, client=client).search([1.0] * DIM)


def test_404_and_403_name_the_index_and_the_privileges(vs: VectorSearchServer, client: ClipClient) -> None:
    with pytest.raises(VectorSearchNotFoundError) as missing:
        VectorIndex("main.photos.nope", client=client).search([1.0] * DIM)
    assert missing.value.status_code == 404
    assert "'main.photos.nope'" in str(missing.value)
    _direct(vs, client, n=5)
    vs.refusals["/query"] = (403, "PERMISSION_DENIED", "User does not have SELECT on Table")
    with pytest.raises(VectorSearchPermissionError) as refused:
        VectorIndex(INDEX, client=client).search([1.0] * DIM)
    text = str(refused.value)
    for needed in (
        "SELECT on the index main.photos.clip_index",
        "USE CATALOG on main",
        "USE SCHEMA on main.photos",
    ):
        assert needed in text
    assert "CAN USE" in text
    assert refused.value.error_code == "PERMISSION_DENIED"


def test_no_token_in_any_error_repr_or_log(
    vs: VectorSearchServer, client: ClipClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    _direct(vs, client, n=5)
    vs.refusals["/query"] = (403, "PERMISSION_DENIED", f"token {TOKEN} may not read this (Bearer {TOKEN})")
    with pytest.raises(VectorSearchPermissionError) as caught:
        VectorIndex(INDEX, client=client).search([1.0] * DIM)
    seen = str(caught.value) + repr(caught.value) + "\n".join(r.getMessage() for r in caplog.records)
    assert "may not read this" in str(caught.value)
    assert TOKEN not in seen
    assert TOKEN not in repr(VectorIndex(INDEX, client=client))


# -- Delta Sync: create_index -------------------------------------------------------------------------


def _table(vs: VectorSearchServer, n: int = 200, *, cdf: bool = True) -> np.ndarray:
    matrix = _unit(_vectors(n, seed=11))  # embed_table(..., normalize=True)
    vs.add_table(
        TABLE, [{"path": f"/Volumes/p/{i}.jpg", "embedding": matrix[i].tolist()} for i in range(n)], cdf=cdf
    )
    return matrix


def test_create_index_from_an_embedded_table_then_search(vs: VectorSearchServer, client: ClipClient) -> None:
    matrix = _table(vs)
    vs.provision_polls = 3
    lines: list[str] = []
    index = create_index(
        INDEX, source_table=TABLE, endpoint="clip-vs", client=client, poll_interval=0, progress=lines.append
    )
    body = json.loads(vs.posted("/api/2.0/vector-search/indexes")[0])
    assert body["index_type"] == "DELTA_SYNC"
    assert body["primary_key"] == "path"
    assert body["delta_sync_index_spec"]["embedding_vector_columns"] == [
        {"name": "embedding", "embedding_dimension": DIM}
    ]
    assert body["delta_sync_index_spec"]["pipeline_type"] == "TRIGGERED"
    assert any("PROVISIONING_INITIAL_SNAPSHOT" in line for line in lines)
    assert "online after" in lines[-1]
    result = index.search("a red car", k=6)
    _same_as_topk(
        result, client.embed_text("a red car"), matrix, 6, [f"/Volumes/p/{i}.jpg" for i in range(200)]
    )
    assert list(result.to_pandas().columns) == ["path", "score"]


def test_change_data_feed_off_gives_the_alter_table_statement(
    vs: VectorSearchServer, client: ClipClient
) -> None:
    _table(vs, cdf=False)
    with pytest.raises(SourceTableError) as caught:
        create_index(INDEX, source_table=TABLE, endpoint="clip-vs", client=client, poll_interval=0)
    statement = f"ALTER TABLE {TABLE} SET TBLPROPERTIES (delta.enableChangeDataFeed = true)"
    assert caught.value.statement == statement
    assert statement in str(caught.value)
    assert vs.indexes == {}


def test_a_missing_column_or_table_is_refused_before_creating(
    vs: VectorSearchServer, client: ClipClient
) -> None:
    _table(vs)
    with pytest.raises(SourceTableError, match="no column 'vec'"):
        create_index(INDEX, source_table=TABLE, endpoint="clip-vs", client=client, embedding_column="vec")
    with pytest.raises(VectorSearchNotFoundError, match=r"main\.photos\.other"):
        create_index(INDEX, source_table="main.photos.other", endpoint="clip-vs", client=client)
    assert vs.indexes == {}


def test_a_missing_endpoint_is_an_error_unless_create_endpoint(
    vs: VectorSearchServer, client: ClipClient
) -> None:
    _table(vs)
    with pytest.raises(VectorSearchNotFoundError, match="create_endpoint=True"):
        create_index(INDEX, source_table=TABLE, endpoint="new-vs", client=client)
    assert vs.indexes == {}
    create_index(
        INDEX, source_table=TABLE, endpoint="new-vs", client=client, create_endpoint=True, poll_interval=0
    )
    assert vs.vs_endpoints["new-vs"]["endpoint_status"]["state"] == "ONLINE"
    assert vs.indexes[INDEX]["endpoint_name"] == "new-vs"


def test_an_existing_index_with_the_same_spec_is_synced_and_another_spec_refused(
    vs: VectorSearchServer, client: ClipClient
) -> None:
    _table(vs)
    create_index(INDEX, source_table=TABLE, endpoint="clip-vs", client=client, poll_interval=0)
    extra = {"path": "/Volumes/p/new.jpg", "embedding": _unit(_vectors(1, seed=99))[0].tolist()}
    vs.tables[TABLE]["rows"].append(extra)
    index = create_index(INDEX, source_table=TABLE, endpoint="clip-vs", client=client, poll_interval=0)
    assert len(vs.posted(f"/indexes/{INDEX}/sync")) == 1
    created = [p for m, p, _ in vs.vs_requests if (m, p) == ("POST", "/api/2.0/vector-search/indexes")]
    assert len(created) == 1
    assert index.search(extra["embedding"], k=1).keys[0, 0] == "/Volumes/p/new.jpg"
    with pytest.raises(IndexSpecMismatchError) as caught:
        create_index(INDEX, source_table=TABLE, endpoint="clip-vs", client=client, pipeline="CONTINUOUS")
    assert caught.value.differences == {"pipeline_type": ("TRIGGERED", "CONTINUOUS")}
    assert "pipeline_type: the index has 'TRIGGERED', asked 'CONTINUOUS'" in str(caught.value)


def test_a_failed_sync_reports_the_index_status_message(vs: VectorSearchServer, client: ClipClient) -> None:
    _table(vs)
    vs.fail_sync = "Pipeline failed: column `embedding` was dropped from the source table"
    with pytest.raises(IndexNotReadyError) as caught:
        create_index(INDEX, source_table=TABLE, endpoint="clip-vs", client=client, poll_interval=0)
    assert caught.value.state == "OFFLINE_FAILED"
    assert caught.value.status_message == vs.fail_sync
    assert vs.fail_sync in str(caught.value)
    assert "sync again" in str(caught.value)


def test_waiting_is_bounded_by_the_timeout(vs: VectorSearchServer, client: ClipClient) -> None:
    _table(vs)
    vs.provision_polls = 10_000
    with pytest.raises(IndexNotReadyError, match=r"timeout=0\.05"):
        create_index(
            INDEX, source_table=TABLE, endpoint="clip-vs", client=client, timeout=0.05, poll_interval=0.01
        )


def test_errors_are_vector_search_errors_of_the_package_tree() -> None:
    from clip_client import ClipClientError

    for cls in (DimensionMismatchError, IndexNotReadyError, SourceTableError, UpsertFailedError):
        assert issubclass(cls, VectorSearchError)
        assert issubclass(cls, ClipClientError)


# -- async --------------------------------------------------------------------------------------------


def test_the_async_index_answers_as_the_sync_one(vs: VectorSearchServer, client: ClipClient) -> None:
    index, _matrix = _direct(vs, client, n=120)
    expected = index.search("a dog", k=9, columns=["folder"], filters={"folder": "maize"})

    async def run() -> Any:
        async with AsyncClipClient(**vs.client_kwargs(token=TOKEN)) as aclient:
            aindex = AsyncVectorIndex(INDEX, client=aclient)
            found = await aindex.search("a dog", k=9, columns=["folder"], filters={"folder": "maize"})
            await aindex.upsert(["extra"], _vectors(1, seed=42))
            await aindex.delete(["extra"])
            return found

    found = asyncio.run(run())
    assert list(found.keys[0]) == list(expected.keys[0])
    np.testing.assert_array_equal(found.scores, expected.scores)
    assert found.columns == expected.columns


def test_errors_pickle_with_their_fields() -> None:
    import pickle

    error = UpsertFailedError("boom", failed_keys=["a"], written=3, index=INDEX, status_code=403)
    back = pickle.loads(pickle.dumps(error))
    assert (type(back), str(back), back.failed_keys, back.written, back.index, back.status_code) == (
        UpsertFailedError,
        "boom",
        ["a"],
        3,
        INDEX,
        403,
    )
    mismatch = pickle.loads(pickle.dumps(DimensionMismatchError("x", index_dim=512, client_dim=768)))
    assert (mismatch.index_dim, mismatch.client_dim) == (512, 768)


def test_upserting_vectors_of_another_width_is_refused(vs: VectorSearchServer, client: ClipClient) -> None:
    index = create_direct_index(INDEX, endpoint="clip-vs", client=client, poll_interval=0)
    with pytest.raises(DimensionMismatchError):
        index.upsert(["a"], np.ones((1, DIM + 1), dtype=np.float32))
    assert vs.posted("/upsert-data") == []


def test_a_403_on_the_source_table_names_its_privileges(vs: VectorSearchServer, client: ClipClient) -> None:
    _table(vs)
    vs.refusals["/unity-catalog/tables/"] = (403, "PERMISSION_DENIED", "User does not have SELECT")
    with pytest.raises(VectorSearchPermissionError) as caught:
        create_index(INDEX, source_table=TABLE, endpoint="clip-vs", client=client)
    assert f"SELECT on the source table {TABLE}" in str(caught.value)
    assert vs.indexes == {}


def test_a_local_client_searches_with_its_own_model_and_width(
    vs: VectorSearchServer, tiny_checkpoint: Any
) -> None:
    """The in-process model knows its width before any answer (no probe request), embeds the query,
    and the service is reached through `workspace=`."""
    from databricks.sdk import WorkspaceClient

    workspace = WorkspaceClient(host=vs.url, token=TOKEN)
    with ClipClient.local(str(tiny_checkpoint), device="cpu") as local:
        width = local.backend.dim
        assert width is not None
        index = create_direct_index(
            INDEX, endpoint="clip-vs", client=local, poll_interval=0, workspace=workspace
        )
        assert vs.indexes[INDEX]["spec"]["embedding_vector_columns"][0]["embedding_dimension"] == width
        matrix = np.random.default_rng(7).standard_normal((40, width)).astype(np.float32)
        index.upsert([f"k{i}" for i in range(40)], matrix)
        result = index.search("a photo of a cat", k=5)
        _same_as_topk(result, local.embed_text("a photo of a cat"), matrix, 5, [f"k{i}" for i in range(40)])
    assert vs.inputs() == []  # no serving endpoint was asked anything


def test_integer_keys_read_as_topk_indices(vs: VectorSearchServer, client: ClipClient) -> None:
    """Rows keyed by their row number: `indices` is what `cosine_topk` gives for the same matrix."""
    index = create_direct_index(
        INDEX, endpoint="clip-vs", client=client, primary_key="row", primary_key_type="long", poll_interval=0
    )
    matrix = _vectors(200, seed=12)
    index.upsert(list(range(200)), matrix)
    query = _vectors(1, seed=13)[0]
    result = index.search(query, k=8)
    top = cosine_topk(query, matrix, 8)
    np.testing.assert_array_equal(result.indices, top.indices)
    assert result.indices.dtype == np.int64
    with pytest.raises(TypeError, match="not an integer"):
        _ = _index_with_text_keys(vs, client).search(query, k=2).indices


def _index_with_text_keys(vs: VectorSearchServer, client: ClipClient) -> VectorIndex:
    index = create_direct_index("main.photos.by_name", endpoint="clip-vs", client=client, poll_interval=0)
    index.upsert(["a", "b", "c"], _vectors(3, seed=14))
    return index


# -- Keys, names, rate limits, clients (defects found by a first user) --------------------------------


def _upserts(vs: VectorSearchServer) -> int:
    return len(vs.posted("/upsert-data"))


def test_upsert_of_one_str_is_a_type_error_not_its_characters(
    vs: VectorSearchServer, client: ClipClient
) -> None:
    index, _ = _direct(vs, client, n=5)
    vectors = _vectors(4, seed=21)
    before = _upserts(vs)
    with pytest.raises(TypeError, match="takes a list of keys, not a str"):
        index.upsert("ab", vectors[2:4])
    with pytest.raises(TypeError, match="takes a list of keys, not a bytes"):
        index.upsert(b"ab", vectors[2:4])

    async def run() -> None:
        async with AsyncClipClient(**vs.client_kwargs(token=TOKEN)) as aclient:
            aindex = AsyncVectorIndex(INDEX, client=aclient)
            with pytest.raises(TypeError, match="takes a list of keys, not a str"):
                await aindex.upsert("ab", vectors[2:4])

    asyncio.run(run())
    assert _upserts(vs) == before
    assert "a" not in vs.indexes[INDEX]["rows"]
    assert "b" not in vs.indexes[INDEX]["rows"]


def test_upsert_checks_every_key_against_the_primary_key_type(
    vs: VectorSearchServer, client: ClipClient
) -> None:
    index = create_direct_index(INDEX, endpoint="clip-vs", client=client, poll_interval=0)
    two = _vectors(2, seed=22)
    for keys, where in (
        ([None, "x"], r"key 0 is None \(a NoneType\)"),
        (["m1", 2], r"key 1 is 2 \(a int\)"),
        (["m1", 1.5], r"key 1 is 1.5 \(a float\)"),
        ([True, "x"], r"key 0 is True \(a bool\)"),
        (["x", b"y"], r"key 1 is b'y' \(a bytes\)"),
    ):
        with pytest.raises(TypeError, match=where) as caught:
            index.upsert(keys, two)
        assert "'string'" in str(caught.value)
    with pytest.raises(ValueError, match="key 1 is an empty string"):
        index.upsert(["x", ""], two)
    assert _upserts(vs) == 0
    assert index.upsert([np.str_("s0"), "s1"], two) == 2
    assert json.loads(json.loads(vs.posted("/upsert-data")[-1])["inputs_json"])[0]["id"] == "s0"

    longs = create_direct_index(
        "main.photos.by_row",
        endpoint="clip-vs",
        client=client,
        primary_key="row",
        primary_key_type="long",
        poll_interval=0,
    )
    sent = _upserts(vs)
    for keys, where in (
        (["a", 1], r"key 0 is 'a' \(a str\)"),
        ([1, True], r"key 1 is True \(a bool\)"),
        ([1, np.float64(2.0)], r"key 1 is 2.0 \(a float\)"),
    ):
        with pytest.raises(TypeError, match=where) as caught:
            longs.upsert(keys, two)
        assert "'long'" in str(caught.value)
    assert _upserts(vs) == sent
    assert longs.upsert(np.array([7, 8], dtype=np.int64), two) == 2
    rows = json.loads(json.loads(vs.posted("/upsert-data")[-1])["inputs_json"])
    assert [r["row"] for r in rows] == [7, 8]
    assert longs.describe().primary_key_type == "long"


def test_filters_with_numpy_scalars_are_sent_as_plain_json(
    vs: VectorSearchServer, client: ClipClient
) -> None:
    index, matrix = _direct(vs, client, n=30)
    query = _vectors(1, seed=23)[0]
    result = index.search(query, k=3, filters={"n <": np.int64(9), "folder": np.str_("maize")})
    sent = json.loads(vs.posted("/query")[-1])
    assert json.loads(sent["filters_json"]) == {"n <": 9, "folder": "maize"}
    chosen = [i for i in range(9) if i % 3 == 0]
    _same_as_topk(result, query, matrix[chosen], 3, [f"k{i}" for i in chosen])
    with pytest.raises(TypeError, match="JSON values"):
        index.search(query, k=3, filters={"n": object()})


def _impatient(vs: VectorSearchServer) -> Any:
    """A WorkspaceClient whose databricks-sdk retries of a 429/503 give up after about a second."""
    from databricks.sdk import WorkspaceClient
    from databricks.sdk.core import Config

    return WorkspaceClient(config=Config(host=vs.url, token=TOKEN, retry_timeout_seconds=1))


@pytest.mark.parametrize(
    ("status", "code", "words"),
    [
        (429, "REQUEST_LIMIT_EXCEEDED", "rate-limiting"),
        (503, "TEMPORARILY_UNAVAILABLE", "temporarily unavailable"),
    ],
)
def test_a_persistent_429_or_503_names_the_refusal_and_keeps_its_cause(
    vs: VectorSearchServer, client: ClipClient, status: int, code: str, words: str
) -> None:
    from databricks.sdk.errors.base import DatabricksError

    _direct(vs, client, n=5)
    vs.refusals["/query"] = (status, code, "Too many requests to index main.photos.clip_index")
    index = VectorIndex(INDEX, client=client, workspace=_impatient(vs))
    with pytest.raises(VectorSearchError) as caught:
        index.search([1.0] * DIM)
    error = caught.value
    text = str(error)
    assert (error.status_code, error.error_code) == (status, code)
    assert f"HTTP {status} {code}" in text
    assert "Too many requests to index" in text
    assert words in text
    assert "retry" in text
    assert "Check the workspace host and the network" not in text
    assert isinstance(error.__cause__, DatabricksError)
    assert TOKEN not in text


def test_a_429_on_delete_is_worded_for_deletes(vs: VectorSearchServer, client: ClipClient) -> None:
    _direct(vs, client, n=5)
    vs.refusals["/delete-data"] = (429, "REQUEST_LIMIT_EXCEEDED", "slow down")
    index = VectorIndex(INDEX, client=client, workspace=_impatient(vs))
    with pytest.raises(UpsertFailedError) as caught:
        index.delete(["k1"])
    text = str(caught.value)
    assert "delete of 1 keys from index" in text
    assert "0 keys were deleted" in text
    assert "keys not deleted: 'k1'" in text
    assert "into index" not in text
    assert "written" not in text
    assert "rate-limiting" in text
    assert caught.value.status_code == 429
    assert caught.value.__cause__ is not None


@pytest.mark.parametrize(
    "name",
    [
        "a.b.c?x=1",
        "a.b.c/d",
        " a.b.c",
        "a.b.c ",
        "a.b.c#x",
        "a.b.c%2Fd",
        "a.b\tx.c",
        "a.b.c\x00",
        "a.b",
        "a..c",
    ],
)
def test_index_names_are_checked_strictly_before_any_request(
    vs: VectorSearchServer, client: ClipClient, name: str
) -> None:
    _direct(vs, client, n=3)
    vs.indexes["a.b.c"] = vs.indexes[INDEX]  # an index that a name with a suffix must not reach
    before = len(vs.vs_requests)
    with pytest.raises(ValueError, match="is not a Unity Catalog name") as caught:
        VectorIndex(name, client=client).describe()
    assert repr(name) in str(caught.value)
    with pytest.raises(ValueError, match="is not a Unity Catalog name"):
        create_direct_index(name, endpoint="clip-vs", client=client, poll_interval=0)
    with pytest.raises(ValueError, match="source_table="):
        create_index(INDEX, source_table=name, endpoint="clip-vs", client=client)
    assert len(vs.vs_requests) == before


def test_a_name_with_hyphens_and_letters_beyond_ascii_reaches_its_own_index(
    vs: VectorSearchServer, client: ClipClient
) -> None:
    name = "main.photos-2.clip-índex"
    index = create_direct_index(name, endpoint="clip-vs", client=client, poll_interval=0)
    assert index.describe().ready
    index.upsert(["a"], _vectors(1))
    assert list(index.search(_vectors(1)[0], k=1).keys[0]) == ["a"]
    gets = [path for method, path, _ in vs.vs_requests if method == "GET" and "/indexes/" in path]
    assert any("clip-%C3%ADndex" in path for path in gets)


def test_a_client_of_the_other_kind_is_refused_at_construction(
    vs: VectorSearchServer, client: ClipClient
) -> None:
    async def run() -> None:
        async with AsyncClipClient(**vs.client_kwargs(token=TOKEN)) as aclient:
            with pytest.raises(TypeError, match="use AsyncVectorIndex"):
                VectorIndex(INDEX, client=aclient)  # type: ignore[arg-type]
            with pytest.raises(TypeError, match="use AsyncVectorIndex"):
                create_direct_index(INDEX, endpoint="clip-vs", client=aclient)  # type: ignore[arg-type]

    asyncio.run(run())
    with pytest.raises(TypeError, match="use VectorIndex with a ClipClient"):
        AsyncVectorIndex(INDEX, client=client)  # type: ignore[arg-type]
    assert vs.vs_requests == []


def test_direct_index_columns_may_not_name_the_key_or_the_embedding(
    vs: VectorSearchServer, client: ClipClient
) -> None:
    with pytest.raises(ValueError, match="'id', which is the index's primary key"):
        create_direct_index(INDEX, endpoint="clip-vs", client=client, columns={"id": "string"})
    with pytest.raises(ValueError, match="'embedding', which is the index's embedding column"):
        create_direct_index(INDEX, endpoint="clip-vs", client=client, columns={"embedding": "string"})
    with pytest.raises(ValueError, match="another column than primary_key"):
        create_direct_index(INDEX, endpoint="clip-vs", client=client, embedding_column="id")
    assert vs.indexes == {}


def test_sync_of_a_direct_access_index_is_refused(vs: VectorSearchServer, client: ClipClient) -> None:
    index, _ = _direct(vs, client, n=3)
    with pytest.raises(VectorSearchError, match="Direct Access index, which has no sync") as caught:
        index.sync(poll_interval=0)
    assert "upsert" in str(caught.value)
    assert vs.posted("/sync") == []


def test_a_filter_matching_nothing_returns_an_empty_result(
    vs: VectorSearchServer, client: ClipClient
) -> None:
    index, _ = _direct(vs, client, n=10)
    result = index.search(_vectors(1, seed=24)[0], k=5, filters={"folder": "none such"}, columns=["folder"])
    assert result.keys.shape == (1, 0)
    assert result.scores.shape == (1, 0)
    assert result.scores.dtype == np.float32
    assert result.columns == {"folder": []}
    assert len(result.to_pandas()) == 0
