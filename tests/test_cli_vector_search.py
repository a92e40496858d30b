"""`clip-client search catalog.schema.index` and `clip-client index create|sync|status`, in this process
(typer's CliRunner), against the loopback Vector Search fake, found through DATABRICKS_HOST/TOKEN."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner
from vector_search_server import VectorSearchServer

from clip_client import ClipClient, cosine_topk
from clip_client._cli import app
from clip_client._cli.vector_search import is_index_name, parse_filters

DIM = 16
INDEX = "main.photos.clip_index"
TABLE = "main.photos.embedded"
TOKEN = "dapi-CLI-VS-SECRET-1a2b3c4d"


@pytest.fixture
def vs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[VectorSearchServer]:
    with VectorSearchServer(dim=DIM) as server:
        server.add_endpoint("clip-vs")
        monkeypatch.chdir(tmp_path)
        for name in list(os.environ):
            if name.startswith(("DATABRICKS_", "ARM_", "AZURE_", "GOOGLE_")):
                monkeypatch.delenv(name)
        monkeypatch.setenv("DATABRICKS_HOST", server.url)
        monkeypatch.setenv("DATABRICKS_TOKEN", TOKEN)
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
        yield server


def _cli(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args), env={"COLUMNS": "200"})
    return result.exit_code, result.stdout, result.stderr


def _table(vs: VectorSearchServer, n: int = 60, *, cdf: bool = True) -> np.ndarray:
    rng = np.random.default_rng(1)
    matrix = rng.standard_normal((n, DIM)).astype(np.float32)
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    rows = [
        {
            "path": f"/Volumes/p/{i}.jpg",
            "embedding": matrix[i].tolist(),
            "folder": "maize" if i % 2 else "wheat",
        }
        for i in range(n)
    ]
    vs.add_table(TABLE, rows, cdf=cdf)
    return matrix


def test_index_create_status_sync_then_search_with_filters(vs: VectorSearchServer) -> None:
    matrix = _table(vs)
    code, out, err = _cli(
        "index", "create", INDEX, "--source-table", TABLE, "--endpoint", "clip-vs", "--timeout", "30"
    )
    assert code == 0, err
    assert "online after" in err

    code, out, _ = _cli("index", "status", INDEX)
    assert code == 0
    assert "DELTA_SYNC" in out
    assert f"embedding ({DIM}-d)" in out
    assert "ready         yes" in out

    code, _, err = _cli("index", "sync", INDEX)
    assert code == 0, err
    assert len(vs.posted(f"/indexes/{INDEX}/sync")) == 1

    code, out, err = _cli("search", INDEX, "a red car", "-k", "3", "--filter", "folder=maize", "--no-cache")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["rank", "score", "path"]
    with ClipClient(host=vs.url, token=TOKEN) as client:
        query = client.embed_text("a red car")
    odd = list(range(1, 60, 2))
    top = cosine_topk(query, matrix[odd], 3)
    assert [line.split()[2] for line in lines[1:]] == [f"/Volumes/p/{odd[i]}.jpg" for i in top.indices[0]]
    assert [float(line.split()[1]) for line in lines[1:]] == pytest.approx(top.scores[0].tolist(), abs=1e-4)
    sent = json.loads(vs.posted("/query")[-1])
    assert json.loads(sent["filters_json"]) == {"folder": "maize"}

    code, out, _ = _cli("search", INDEX, "a red car", "-k", "2", "--json", "--no-cache")
    assert code == 0
    first = json.loads(out.splitlines()[0])
    assert set(first) == {"rank", "score", "path"}


def test_index_create_with_change_data_feed_off_prints_the_statement(vs: VectorSearchServer) -> None:
    _table(vs, cdf=False)
    code, _, err = _cli("index", "create", INDEX, "--source-table", TABLE, "--endpoint", "clip-vs")
    assert code == 1
    assert "ALTER TABLE main.photos.embedded SET TBLPROPERTIES (delta.enableChangeDataFeed = true)" in err
    assert TOKEN not in err


def test_search_of_a_missing_index_is_one_line_without_the_token(vs: VectorSearchServer) -> None:
    code, _, err = _cli("search", "main.photos.nope", "a dog", "--no-cache")
    assert code == 1
    assert "main.photos.nope" in err
    assert "404" in err
    assert TOKEN not in err


def test_filter_on_a_file_is_a_usage_error(vs: VectorSearchServer, tmp_path: Path) -> None:
    (tmp_path / "e.npy").write_bytes(b"")
    code, _, err = _cli("search", "e.npy", "a dog", "--filter", "a=b")
    assert code == 2
    assert "--filter" in err


def test_filters_parse_as_json_scalars_else_strings() -> None:
    assert parse_filters([]) is None
    assert parse_filters(["folder=maize", "n=5", "ok=true", "x=null", 'q=say "hi"', 's="5"']) == {
        "folder": "maize",
        "n": 5,
        "ok": True,
        "x": None,
        "q": 'say "hi"',
        "s": "5",
    }
    assert parse_filters(["id<5", "id >= 2.5", "folder NOT=maize", "path=a<b"]) == {
        "id <": 5,
        "id >=": 2.5,
        "folder NOT": "maize",
        "path": "a<b",
    }
    assert parse_filters(["folder=a", "folder=b", "folder=c"]) == {"folder": ["a", "b", "c"]}
    assert parse_filters(["tags=[1, 2]"]) == {"tags": "[1, 2]"}


def test_what_counts_as_an_index_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert is_index_name("main.photos.clip_index")
    assert not is_index_name("photos.v2.parquet")
    assert not is_index_name("photos.npy")
    assert not is_index_name("dir/a.b.c")
    (tmp_path / "a.b.c").write_text("")
    assert not is_index_name("a.b.c")


def test_search_an_index_with_an_image(vs: VectorSearchServer, tmp_path: Path) -> None:
    from PIL import Image

    matrix = _table(vs)
    assert _cli("index", "create", INDEX, "--source-table", TABLE, "--endpoint", "clip-vs")[0] == 0
    Image.new("RGB", (50, 40), (10, 200, 30)).save(tmp_path / "q.png")
    code, out, err = _cli("search", INDEX, "--image", "q.png", "-k", "4", "--no-cache")
    assert code == 0, err
    with ClipClient(host=vs.url, token=TOKEN) as client:
        query = client.embed_image(tmp_path / "q.png")
    top = cosine_topk(query, matrix, 4)
    assert [line.split()[2] for line in out.splitlines()[1:]] == [
        f"/Volumes/p/{i}.jpg" for i in top.indices[0]
    ]


# -- Advice in option names, usage errors, names, Direct Access sync -----------------------------------


def test_index_create_advice_names_the_options(vs: VectorSearchServer) -> None:
    _table(vs)
    code, _, err = _cli(
        "index", "create", INDEX, "--source-table", TABLE, "--endpoint", "clip-vs", "--primary-key", "nope"
    )
    assert code == 1
    assert "--primary-key/--embedding-column naming its columns" in err
    assert "primary_key=" not in err
    assert "ValueError" not in err

    code, _, err = _cli("index", "create", INDEX, "--source-table", TABLE, "--endpoint", "nope")
    assert code == 1
    assert "Pass --create-endpoint to create it" in err
    assert "create_endpoint=" not in err
    assert vs.indexes == {}


def test_k_over_the_service_cap_is_a_usage_error(vs: VectorSearchServer) -> None:
    code, _, err = _cli("search", INDEX, "a dog", "-k", "10001", "--no-cache")
    assert code == 2
    assert "-k" in err
    assert "10,000" in err
    assert "--filter" in err
    assert "ValueError" not in err
    assert "filters=" not in err
    assert vs.vs_requests == []


@pytest.mark.parametrize(
    "args",
    [
        ("index", "create", "a.b", "--source-table", TABLE, "--endpoint", "clip-vs"),
        ("index", "status", "main.photos.c1/sync"),
        ("index", "status", "main.photos.c1?x=1"),
        ("index", "status", " main.photos.c1"),
        ("index", "sync", "main.photos.c1#x"),
        ("search", "main.photos.c1?x=1", "a dog", "--no-cache"),
    ],
)
def test_a_bad_index_name_is_a_usage_error_naming_the_argument(
    vs: VectorSearchServer, args: tuple[str, ...]
) -> None:
    vs.indexes["main.photos.c1"] = {}  # what a name with a suffix must not reach
    code, out, err = _cli(*args)
    assert code == 2, (out, err)
    assert "NAME" in err or "INDEX" in err
    assert "not a Unity Catalog name" in err
    assert "ValueError" not in err
    assert "ready" not in out
    assert vs.vs_requests == []


def test_a_bad_source_table_is_a_usage_error_naming_the_option(vs: VectorSearchServer) -> None:
    code, _, err = _cli("index", "create", INDEX, "--source-table", "main.t", "--endpoint", "clip-vs")
    assert code == 2
    assert "--source-table" in err
    assert "ValueError" not in err


def test_index_sync_of_a_direct_access_index_is_refused(vs: VectorSearchServer) -> None:
    from clip_client.vector_search import create_direct_index

    with ClipClient(host=vs.url, token=TOKEN) as client:
        create_direct_index(INDEX, endpoint="clip-vs", client=client, poll_interval=0)
    code, out, err = _cli("index", "sync", INDEX)
    assert code == 1
    assert "Direct Access index, which has no sync" in err
    assert "online" not in err + out
    assert vs.posted("/sync") == []
