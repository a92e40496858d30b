"""`clip-client app`: its JSON API over real HTTP, against the real app on uvicorn.

A folder of real images (`app_harness.write_folder`) is embedded by the real `clip-client images`,
through the loopback serving server (`ServingServer`) and, in local mode, by the tiny checkpoint;
the app runs as `clip-client app FILE` in a subprocess on 127.0.0.1. Results are compared with
`cosine_topk` over the file's rows and with `ClipClient.classify`; the safety rules (ids only, no
path from a request, escaped text, bounded uploads, no credential anywhere) are tried from outside.
The error mapping and the thumbnail cache are also tested in this process (`create_app` on a
uvicorn thread).
"""

from __future__ import annotations

import io
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from app_harness import XSS_NAME, AppProcess, clip_client, workspace_env, write_folder
from image_factory import noise, picture
from PIL import Image
from serving_server import TOKEN, ServingServer

from clip_client import ClipClient, cosine_topk
from clip_client._cli.outputs import read_rows

pytest.importorskip("fastapi")
pytest.importorskip("multipart")

QUERIES = ["a red car", "maize in a field", "<img src=x onerror=alert(1)>"]


# --------------------------------------------------------------------------------------------------
# Fixtures: one workspace, folder, file and app per module


@pytest.fixture(scope="module")
def workspace() -> Iterator[ServingServer]:
    with ServingServer() as server:
        yield server


@pytest.fixture(scope="module")
def tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("app")


@pytest.fixture(scope="module")
def env(workspace: ServingServer, tmp: Path) -> dict[str, str]:
    return workspace_env(workspace.url, TOKEN, tmp)


@pytest.fixture(scope="module")
def photos(tmp: Path) -> dict[str, Path]:
    return write_folder(tmp / "photos")


@pytest.fixture(scope="module")
def embeddings(photos: dict[str, Path], env: dict[str, str], tmp: Path) -> Path:
    clip_client("images", "photos", "--out", "emb.parquet", env=env, cwd=tmp)
    return tmp / "emb.parquet"


@pytest.fixture(scope="module")
def app(embeddings: Path, env: dict[str, str], tmp: Path) -> Iterator[AppProcess]:
    running = AppProcess(
        embeddings, "--max-upload-mib", "1", "--max-image-pixels", "250000",
        "--thumbnail-cache", tmp / "thumbs", env=env, cwd=tmp,
    )  # fmt: skip
    yield running
    running.stop()
    # Nothing the app printed, in any test, shows the token.
    assert TOKEN not in running.log()


@pytest.fixture(scope="module")
def reference(workspace: ServingServer) -> Iterator[ClipClient]:
    with ClipClient(**workspace.client_kwargs()) as client:
        yield client


def ids(body: dict[str, Any]) -> list[int]:
    return [r["id"] for r in body["results"]]


def png_bytes(arr: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(arr).save(out, "PNG")
    return out.getvalue()


# --------------------------------------------------------------------------------------------------
# Search, image search, more like this: the order of cosine_topk over the file


def test_text_search_is_cosine_topk_over_the_file_in_pages(
    app: AppProcess, embeddings: Path, reference: ClipClient
) -> None:
    rows = read_rows(embeddings)
    for q in QUERIES:
        expected = cosine_topk(reference.embed_text(q), rows.embeddings, len(rows))
        want = expected.indices[0].tolist()
        full = app.get("/api/search", params={"q": q, "k": len(rows)}).json()
        assert ids(full) == want
        assert [r["score"] for r in full["results"]] == pytest.approx(expected.scores[0].tolist(), abs=1e-5)
        assert all(
            r["path"] == rows.keys[r["id"]] and r["thumbnail"] == f"/thumbnails/{r['id']}"
            for r in full["results"]
        )
        # Pages of 5, concatenated: the same order, and `more` until the last.
        paged: list[int] = []
        offset = 0
        while True:
            page = app.get("/api/search", params={"q": q, "k": 5, "offset": offset}).json()
            paged += ids(page)
            offset += 5
            if not page["more"]:
                break
        assert paged == want


def test_image_search_finds_the_image_and_its_copy_first(app: AppProcess, photos: dict[str, Path]) -> None:
    data = photos["img00.png"].read_bytes()
    body = app.post(
        "/api/search/image", files={"file": ("query.png", data, "image/png")}, params={"k": 3}
    ).json()
    top = body["results"]
    assert {r["path"] for r in top[:2]} == {"photos/img00.png", "photos/copy-of-img00.png"}
    assert top[0]["score"] == pytest.approx(1.0, abs=1e-5)


def test_more_like_this_is_cosine_topk_of_the_row_without_itself(app: AppProcess, embeddings: Path) -> None:
    rows = read_rows(embeddings)
    for row in (0, 5, len(rows) - 1):
        want = [
            i
            for i in cosine_topk(rows.embeddings[row], rows.embeddings, len(rows)).indices[0].tolist()
            if i != row
        ]
        assert ids(app.get(f"/api/similar/{row}", params={"k": 100}).json()) == want
    assert app.get(f"/api/similar/{len(rows)}").status_code == 404


def test_browse_lists_the_rows_in_file_order(app: AppProcess, embeddings: Path) -> None:
    rows = read_rows(embeddings)
    body = app.get("/api/browse", params={"k": 4, "offset": 2}).json()
    assert ids(body) == [2, 3, 4, 5]
    assert [r["path"] for r in body["results"]] == rows.keys[2:6]


# --------------------------------------------------------------------------------------------------
# Duplicates and labels


def test_duplicates_groups_the_copies_and_the_threshold_is_validated(app: AppProcess) -> None:
    body = app.get("/api/duplicates", params={"threshold": 0.95}).json()
    groups = [sorted(m["path"] for m in g["members"]) for g in body["groups"]]
    assert sorted(groups) == [
        ["photos/copy-of-img00.png", "photos/img00.png"],
        ["photos/copy-of-img01.jpg", "photos/img01.jpg"],
    ]
    assert all(g["keep"] == g["members"][0]["id"] for g in body["groups"])
    assert body["total"] == 2
    for bad in ("1.5", "-0.2", "0.1", "nan", "x"):
        r = app.get("/api/duplicates", params={"threshold": bad})
        assert r.status_code == 422, bad


def test_labels_are_the_zero_shot_predictions_of_classify(
    app: AppProcess, embeddings: Path, reference: ClipClient, tmp: Path
) -> None:
    rows = read_rows(embeddings)
    labels = ["maize", "wheat", "rice"]
    result = reference.classify([str(tmp / p) for p in rows.keys], labels)
    body = app.get(
        "/api/labels", params={"labels": "maize, wheat, rice", "ids": ",".join(map(str, range(len(rows))))}
    ).json()
    assert body["labels"] == labels
    assert [r["label"] for r in body["rows"]] == result.predictions
    assert [r["probability"] for r in body["rows"]] == pytest.approx(
        result.probabilities.max(axis=1).tolist(), abs=1e-5
    )
    assert body["counts"] == {lab: result.predictions.count(lab) for lab in labels}
    # Search results carry their label; label= keeps only that label's, in score order.
    q = "a field"
    every = app.get("/api/search", params={"q": q, "k": 100, "labels": "maize,wheat,rice"}).json()["results"]
    assert all(r["label"] == result.predictions[r["id"]] for r in every)
    for lab in labels:
        only = app.get(
            "/api/search", params={"q": q, "k": 100, "labels": "maize,wheat,rice", "label": lab}
        ).json()
        assert ids(only) == [r["id"] for r in every if r["label"] == lab]
    assert (
        app.get("/api/search", params={"q": q, "labels": "maize,wheat", "label": "rice"}).status_code == 422
    )
    assert app.get("/api/labels", params={"labels": "a," * 60}).status_code == 422


# --------------------------------------------------------------------------------------------------
# Parameters, thumbnails, safety


@pytest.mark.parametrize(
    "params",
    [
        {"q": "x", "k": 0},
        {"q": "x", "k": 201},
        {"q": "x", "offset": -1},
        {"q": "x", "offset": 10_001},
        {"q": ""},
        {},
    ],
)
def test_search_parameters_out_of_bounds_are_422(app: AppProcess, params: dict[str, Any]) -> None:
    assert app.get("/api/search", params=params).status_code == 422


def test_thumbnails_are_bounded_upright_jpegs(app: AppProcess, embeddings: Path) -> None:
    rows = read_rows(embeddings)
    for i, path in enumerate(rows.keys):
        r = app.get(f"/thumbnails/{i}")
        assert r.status_code == 200
        assert r.headers["content-type"] == "image/jpeg"
        with Image.open(io.BytesIO(r.content)) as img:
            assert max(img.size) <= 256
            if path.endswith("rotated.jpg"):
                assert img.size == (40, 80)  # stored 80x40, EXIF orientation 6: upright it is tall


@pytest.mark.parametrize(
    "path",
    [
        "/thumbnails/../../../../etc/passwd",
        "/thumbnails/..%2f..%2f..%2fetc%2fpasswd",
        "/thumbnails/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
        "/thumbnails/%2Fetc%2Fpasswd",
        "/thumbnails//etc/passwd",
        "/thumbnails/-1",
        "/thumbnails/1.0",
        "/thumbnails/0x1",
        "/thumbnails/99999",
        "/thumbnails/1%00",
        "/static/../../../../etc/passwd",
        "/static/%2e%2e/%2e%2e/server.py",
        "/static/..%2f__init__.py",
    ],
)
def test_no_path_from_a_request_is_ever_served(app: AppProcess, path: str) -> None:
    with httpx.Client() as c:
        r = c.send(httpx.Request("GET", app.url + path, extensions={}), follow_redirects=False)
    assert r.status_code == 404, (path, r.status_code, r.text[:200])
    assert b"root:" not in r.content
    assert b"import" not in r.content


def test_a_moved_file_or_a_symlink_out_of_the_folder_is_a_404_with_a_message(
    embeddings: Path, env: dict[str, str], tmp: Path
) -> None:
    # A copy of the folder and file, so that the module's app keeps its images.
    import shutil

    here = tmp / "moved"
    shutil.copytree(tmp / "photos", here / "photos")
    shutil.copyfile(embeddings, here / "emb.parquet")
    outside = tmp / "secret.png"
    outside.write_bytes(png_bytes(picture(32, 32, 3, seed=7)))
    rows = read_rows(embeddings)
    moved, linked = rows.keys.index("photos/img03.jpg"), rows.keys.index("photos/img04.png")
    (here / "photos/img03.jpg").rename(here / "img03-moved.jpg")
    (here / "photos/img04.png").unlink()
    (here / "photos/img04.png").symlink_to(outside)
    running = AppProcess(here / "emb.parquet", env=env, cwd=here)
    try:
        r = running.get(f"/thumbnails/{moved}")
        assert r.status_code == 404
        assert r.json()["error"] == (
            "photos/img03.jpg is not there any more (moved or deleted since it was embedded): "
            f"looked for {here.resolve() / 'photos/img03.jpg'}"
        )
        r = running.get(f"/thumbnails/{linked}")
        assert r.status_code == 404
        assert "outside the folder" in r.json()["error"]
        assert running.get("/thumbnails/0").status_code == 200
    finally:
        running.stop()


def test_text_is_escaped_in_the_page_and_the_api_is_json(app: AppProcess, photos: dict[str, Path]) -> None:
    page = app.get("/")
    assert page.status_code == 200
    assert "<img src=x" not in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["x-content-type-options"] == "nosniff"
    body = app.get("/api/search", params={"q": "<img src=x onerror=alert(1)>", "k": 100})
    assert body.headers["content-type"] == "application/json"
    assert f"photos/{XSS_NAME}" in [r["path"] for r in body.json()["results"]]
    # The script puts data into the page as text only.
    script = app.get("/static/app.js").text
    assert "innerHTML" not in script
    assert "insertAdjacentHTML" not in script
    assert "document.write" not in script


def test_uploads_over_the_byte_or_pixel_limit_are_413_and_non_images_400(app: AppProcess) -> None:
    big = png_bytes(noise(800, 800, seed=1))  # about 1.9 MB: over --max-upload-mib 1
    assert len(big) > 2**20
    r = app.post("/api/search/image", files={"file": ("big.png", big, "image/png")})
    assert r.status_code == 413
    assert "1 MiB" in r.json()["error"]
    # Declared length over the limit: refused before the body is read.
    r = app.post(
        "/api/search/image",
        content=b"x" * (3 * 2**20),
        headers={"content-type": "multipart/form-data; boundary=b"},
    )
    assert r.status_code == 413
    many = png_bytes(np.zeros((600, 600, 3), np.uint8))  # small file, 360,000 pixels > 250,000
    r = app.post("/api/search/image", files={"file": ("many.png", many, "image/png")})
    assert r.status_code == 413
    assert "250,000" in r.json()["error"]
    r = app.post("/api/search/image", files={"file": ("x.png", b"not an image", "image/png")})
    assert r.status_code == 400
    assert "not an image" in r.json()["error"]


def test_no_credential_reaches_the_page_the_api_or_the_logs(
    app: AppProcess, workspace: ServingServer
) -> None:
    seen = "".join(
        app.get(p).text
        for p in ("/", "/api/info", "/openapi.json", "/docs", "/api/search?q=x", "/static/app.js")
    )
    assert TOKEN not in seen
    assert TOKEN.split("-")[-1] not in seen
    assert TOKEN not in app.log()
    info = app.get("/api/info").json()
    assert info == {
        "source": "emb.parquet",
        "rows": 16,
        "model": info["model"],
        "approximate": False,
        "duplicates": True,
    }


def test_it_listens_on_loopback_only_by_default(app: AppProcess) -> None:
    # Another address of this machine does not reach it (where the machine has one).
    try:
        other = socket.gethostbyname(socket.gethostname())
    except OSError:
        pytest.skip("this machine has no address but loopback")
    if other.startswith("127."):
        pytest.skip("this machine's name resolves to loopback")
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://{other}:{app.port}/api/info", timeout=2)


def test_the_api_is_read_only(app: AppProcess) -> None:
    for method in ("PUT", "DELETE", "PATCH"):
        assert httpx.request(method, app.url + "/api/search?q=x").status_code == 405
    assert app.post("/api/search", params={"q": "x"}).status_code == 405


# --------------------------------------------------------------------------------------------------
# Local mode, the model check, the extra


def test_local_mode_on_the_tiny_checkpoint(
    tiny_checkpoint: Path, photos: dict[str, Path], env: dict[str, str], tmp: Path
) -> None:
    clip_client(
        "images", "photos", "--local", "--model", tiny_checkpoint, "--out", "local.parquet", env=env, cwd=tmp
    )
    rows = read_rows(tmp / "local.parquet")
    running = AppProcess(tmp / "local.parquet", env=env, cwd=tmp)  # the model comes from the file
    try:
        with ClipClient.local(str(tiny_checkpoint)) as local:
            for q in QUERIES[:2]:
                want = cosine_topk(local.embed_text(q), rows.embeddings, len(rows)).indices[0].tolist()
                assert ids(running.get("/api/search", params={"q": q, "k": 100}).json()) == want
            labels = ["maize", "wheat"]
            result = local.classify([str(tmp / p) for p in rows.keys], labels)
        got = running.get(
            "/api/labels", params={"labels": "maize,wheat", "ids": ",".join(map(str, range(len(rows))))}
        ).json()
        assert [r["label"] for r in got["rows"]] == result.predictions
        data = photos["img05.jpg"].read_bytes()
        top = running.post(
            "/api/search/image", files={"file": ("q.jpg", data, "image/jpeg")}, params={"k": 1}
        ).json()
        assert top["results"][0]["path"] == "photos/img05.jpg"
    finally:
        running.stop()


def test_another_model_than_the_files_is_refused(
    embeddings: Path, env: dict[str, str], tmp: Path, tiny_checkpoint: Path
) -> None:
    import subprocess

    done = subprocess.run(
        [sys.executable, "-m", "clip_client", "app", embeddings, "--local", "--model", tiny_checkpoint],
        env=env, cwd=tmp, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 1
    assert "scores across two models mean nothing" in done.stderr


def test_without_the_extra_the_command_says_how_to_install_it(
    embeddings: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    import clip_client._webapp as webapp
    from clip_client._cli import app as cli

    monkeypatch.setattr(webapp, "missing_modules", lambda: ["fastapi", "multipart"])
    result = CliRunner().invoke(cli, ["app", str(embeddings)])
    assert result.exit_code == 1
    assert 'needs fastapi, python-multipart: pip install "clip-serving-client[app]"' in result.stderr


def test_importing_the_command_line_loads_no_web_framework() -> None:
    import subprocess

    code = (
        "import sys, clip_client._cli\n"
        "print(sorted(m for m in ('fastapi', 'uvicorn', 'starlette', 'jinja2') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


# --------------------------------------------------------------------------------------------------
# Error mapping and the thumbnail cache, in this process (create_app on a uvicorn thread)


class _Cold:
    """`Queries` whose endpoint is scaling up from zero: every call raises the client's ServerError."""

    def text(self, query: str) -> Any:
        from clip_client.errors import ServerError

        raise ServerError("503 Service Unavailable: the endpoint is scaling up", status_code=503)

    image = text

    def labels(self, labels: Any) -> Any:
        return self.text("")


@pytest.fixture
def serve_app() -> Iterator[Any]:
    import uvicorn

    servers: list[tuple[Any, threading.Thread]] = []

    def start(web: Any) -> str:
        sock = socket.socket()
        # Accepted sockets inherit TCP_NODELAY: without it, a keep-alive answer written in two parts
        # (head, body) waits 40 ms for the client's delayed ACK (uvicorn.run(host=, port=) sets it itself).
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind(("127.0.0.1", 0))
        server = uvicorn.Server(uvicorn.Config(web, log_level="warning"))
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        while not server.started:  # the condition uvicorn sets once it accepts connections
            if not thread.is_alive():
                raise RuntimeError(
                    "uvicorn did not start"
                )  # the condition uvicorn sets once it accepts connections
            thread.join(0.02)
        servers.append((server, thread))
        return url

    yield start
    for server, thread in servers:
        server.should_exit = True
        thread.join(10)


def test_a_cold_endpoint_is_a_503_with_one_line(serve_app: Any, embeddings: Path, tmp: Path) -> None:
    from clip_client._webapp.server import create_app
    from clip_client._webapp.source import FileSource
    from clip_client._webapp.thumbnails import ThumbnailCache

    source = FileSource.open(embeddings, base=tmp)
    url = serve_app(create_app(source, _Cold(), thumbnails=ThumbnailCache(tmp / "t2")))
    r = httpx.get(f"{url}/api/search", params={"q": "x"})
    assert r.status_code == 503
    said = "the serving endpoint is not answering yet (it may be scaling up from zero): try again in a minute"
    assert r.json() == {"error": said}
    # What needs no query still answers.
    assert httpx.get(f"{url}/api/browse").status_code == 200
    assert httpx.get(f"{url}/thumbnails/0").status_code == 200


def test_the_error_mapping_of_the_clients_typed_errors() -> None:
    from clip_client._webapp.server import client_error
    from clip_client.errors import (
        APIConnectionError,
        EndpointNotFoundError,
        ImageDecodeError,
        PermissionDeniedError,
        RateLimitError,
    )

    assert client_error(RateLimitError("429", status_code=429))[0] == 429
    assert client_error(APIConnectionError("refused"))[0] == 503
    assert "CAN QUERY" in client_error(PermissionDeniedError("403", status_code=403))[1]
    assert client_error(EndpointNotFoundError("404", status_code=404))[0] == 502
    assert client_error(ImageDecodeError("bad image"))[0] == 400


def test_the_thumbnail_cache_is_bounded_by_count_and_bytes(tmp_path: Path) -> None:
    from clip_client._webapp.thumbnails import ThumbnailCache

    images = [png_bytes(picture(300, 200, 3, seed=s)) for s in range(6)]
    cache = ThumbnailCache(tmp_path / "t", max_files=3)
    for data in images:
        cache.get(data)
    assert len(cache) == 3
    assert len(list((tmp_path / "t").iterdir())) == 3
    cache.get(images[3])  # a hit: now the most recent
    cache.get(images[0])  # evicts images[4], the least recently used
    names = {p.name for p in (tmp_path / "t").iterdir()}
    assert len(names) == 3
    # Bytes: one thumbnail's worth keeps one.
    one = len(cache.get(images[1]))
    small = ThumbnailCache(tmp_path / "s", max_bytes=one + 10)
    for data in images:
        small.get(data)
    assert len(small) == 1
    assert small.total_bytes <= one + 10
    # A new cache on the folder picks up what is there, and keeps its bound.
    again = ThumbnailCache(tmp_path / "t", max_files=2)
    assert len(again) == 2
    assert len(list((tmp_path / "t").iterdir())) == 2


# --------------------------------------------------------------------------------------------------
# The Databricks App folder


def _photos_index(vs: Any, paths: list[str], embeddings: np.ndarray) -> np.ndarray:
    """`main.photos.clip_index` on the loopback Vector Search service `vs`: a Direct Access index
    keyed by path, holding `embeddings`; returns the embedding of the text "a red car"."""
    from clip_client.vector_search import create_direct_index

    vs.add_endpoint("clip-vs")
    with ClipClient(host=vs.url, token=TOKEN) as reference:
        index = create_direct_index(
            "main.photos.clip_index", endpoint="clip-vs", client=reference, primary_key="path",
            poll_interval=0,
        )  # fmt: skip
        index.upsert(paths, embeddings)
        return reference.embed_text("a red car")


def test_the_databricks_app_folder_deploys_and_its_entry_point_builds_the_app(
    embeddings: Path, env: dict[str, str], tmp: Path, monkeypatch: pytest.MonkeyPatch, serve_app: Any
) -> None:

    import yaml

    out = tmp / "dbapp"
    printed = clip_client(
        "app", "--databricks-app", out, "--source", "main.photos.clip_index", "--text-endpoint", "my-text",
        env=env, cwd=tmp,
    )  # fmt: skip
    assert sorted(p.name for p in out.iterdir()) == ["app.py", "app.yaml", "requirements.txt"]
    assert printed.split() == [str(out / n) for n in ("app.yaml", "requirements.txt", "app.py")]
    spec = yaml.safe_load((out / "app.yaml").read_text())
    assert spec["command"] == ["python", "app.py"]
    settings = {e["name"]: e["value"] for e in spec["env"]}
    assert settings["CLIP_APP_SOURCE"] == "main.photos.clip_index"
    assert settings["CLIP_APP_TEXT_ENDPOINT"] == "my-text"
    assert settings["CLIP_APP_IMAGE_ENDPOINT"] == "clip-image-embedding"
    assert (out / "requirements.txt").read_text().startswith("clip-serving-client[app]==")
    everything = "".join(p.read_text() for p in out.iterdir())
    assert TOKEN not in everything
    assert env["DATABRICKS_HOST"] not in everything

    # The entry point, imported as the App runs it: credentials from the environment (the SDK's
    # chain), the index through clip_client.vector_search, over a loopback Vector Search service
    # (which also serves the embedding endpoints), the images through the Files API reader.
    from vector_search_server import VectorSearchServer

    from clip_client._webapp import databricks

    rows = read_rows(embeddings)
    paths = [str(k) for k in rows.keys]
    with VectorSearchServer() as vs:
        query = _photos_index(vs, paths, rows.embeddings)
        vs_env = workspace_env(vs.url, TOKEN, tmp)
        for name, value in {**vs_env, **settings, "CLIP_APP_TEXT_ENDPOINT": "clip-text-embedding"}.items():
            if name.startswith(("DATABRICKS_", "CLIP_APP_")):
                monkeypatch.setenv(name, value)
        monkeypatch.setenv("CLIP_APP_THUMBNAILS", str(tmp / "db-thumbs"))
        read: list[str] = []

        def files_api(path: str, **_: Any) -> bytes:
            read.append(path)
            return (tmp / path).read_bytes()  # the volume's files are this test's folder

        monkeypatch.setattr(databricks, "read_volume_file", files_api)
        namespace: dict[str, Any] = {"__name__": "databricks_app"}
        exec(compile((out / "app.py").read_text(), str(out / "app.py"), "exec"), namespace)
        url = serve_app(namespace["app"])

        want = [paths[i] for i in cosine_topk(query, rows.embeddings, 5).indices[0].tolist()]
        body = httpx.get(f"{url}/api/search", params={"q": "a red car", "k": 5}).json()
        assert [r["path"] for r in body["results"]] == want
        np.testing.assert_allclose(
            [r["score"] for r in body["results"]], cosine_topk(query, rows.embeddings, 5).scores[0], atol=1e-4
        )
        # More like this: the row's vector read back from the index, the row itself left out.
        first = body["results"][0]
        row = paths.index(first["path"])
        top = cosine_topk(rows.embeddings[row], rows.embeddings, 5).indices[0].tolist()
        similar = httpx.get(f"{url}/api/similar/{first['id']}", params={"k": 4}).json()
        assert [r["path"] for r in similar["results"]] == [paths[i] for i in top if i != row][:4]
        thumb = httpx.get(f"{url}{first['thumbnail']}")
        assert thumb.status_code == 200, thumb.text
        assert thumb.headers["content-type"] == "image/jpeg"
        assert read == [first["path"]]
        # An id no search has returned is a 404, never a guess.
        assert httpx.get(f"{url}/thumbnails/4000").status_code == 404
        assert httpx.get(f"{url}/api/similar/4000").status_code == 404
        assert httpx.get(f"{url}/api/duplicates").status_code == 501  # needs every row: not offered


def test_the_command_serves_a_vector_search_index(embeddings: Path, tmp: Path) -> None:
    """`clip-client app catalog.schema.index`: the same page and API over a Vector Search index
    (the loopback service, which also serves the embedding endpoints), the images read from the
    paths the index lists; an index of another width is refused before serving."""
    from vector_search_server import VectorSearchServer

    rows = read_rows(embeddings)
    paths = [str((tmp / str(k)).resolve()) for k in rows.keys]  # as the index lists them
    with VectorSearchServer() as vs:
        query = _photos_index(vs, paths, rows.embeddings)
        # An index of 8-d vectors, made with databricks-sdk alone.
        from databricks.sdk import WorkspaceClient
        from databricks.sdk.service import vectorsearch as vsapi

        column = vsapi.EmbeddingVectorColumn(name="embedding", embedding_dimension=8)
        WorkspaceClient(host=vs.url, token=TOKEN).vector_search_indexes.create_index(
            name="main.photos.narrow", endpoint_name="clip-vs", primary_key="path",
            index_type=vsapi.VectorIndexType.DIRECT_ACCESS,
            direct_access_index_spec=vsapi.DirectAccessVectorIndexSpec(
                embedding_vector_columns=[column],
                schema_json='{"path": "string", "embedding": "array<float>"}',
            ),
        )  # fmt: skip
        env = workspace_env(vs.url, TOKEN, tmp)
        running = AppProcess(
            "main.photos.clip_index", "--thumbnail-cache", tmp / "vs-thumbs", env=env, cwd=tmp
        )
        try:
            top = cosine_topk(query, rows.embeddings, 6)
            body = running.get("/api/search", params={"q": "a red car", "k": 6}).json()
            assert [r["path"] for r in body["results"]] == [paths[i] for i in top.indices[0].tolist()]
            np.testing.assert_allclose([r["score"] for r in body["results"]], top.scores[0], atol=1e-4)
            thumb = running.get(body["results"][0]["thumbnail"])
            assert thumb.status_code == 200
            assert thumb.headers["content-type"] == "image/jpeg"
        finally:
            running.stop()
        assert TOKEN not in running.log()
        refused = subprocess.run(
            [sys.executable, "-m", "clip_client", "app", "main.photos.narrow"],
            env=env, cwd=tmp, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert refused.returncode == 1, refused.stderr
        assert "holds 8-d vectors, but the client embeds 768-d ones" in refused.stderr
        assert "Traceback" not in refused.stderr


def test_the_wheel_ships_the_templates_and_static_files() -> None:
    """hatch puts every file under `packages` (clip_client/) that git does not ignore into the wheel:
    the page's files must be tracked and not ignored (with hatchling installed, its file list too)."""
    import subprocess

    root = Path(__file__).resolve().parents[1]
    needed = [f"clip_client/_webapp/{n}" for n in ("templates/index.html", "static/app.js", "static/app.css")]
    for name in needed:
        assert (root / name).is_file()
        ignored = subprocess.run(["git", "check-ignore", "-q", name], cwd=root, check=False)
        assert ignored.returncode == 1, f"{name} is git-ignored: the wheel would lack it"
    try:
        from hatchling.builders.wheel import WheelBuilder
    except ImportError:
        return
    shipped = {f.distribution_path for f in WheelBuilder(str(root)).recurse_included_files()}
    assert set(needed) <= shipped


def test_in_a_databricks_app_a_volumes_file_and_its_images_come_through_the_files_api(
    embeddings: Path, env: dict[str, str], tmp: Path, monkeypatch: pytest.MonkeyPatch, serve_app: Any
) -> None:
    import clip_client._webapp.databricks as databricks

    volume = "/Volumes/main/photos/images/emb.parquet"
    read: list[str] = []

    def files_api(path: str, *, workspace: Any = None) -> bytes:
        """databricks-sdk's files.download, standing in: the volume's files are this test's folder."""
        read.append(path)
        if path == volume:
            return embeddings.read_bytes()
        if path.startswith("photos/"):
            return (tmp / path).read_bytes()
        raise FileNotFoundError(path)

    monkeypatch.setattr(databricks, "read_volume_file", files_api)
    for name, value in env.items():  # the App's credentials: databricks-sdk's chain, from the environment
        if name.startswith("DATABRICKS_"):
            monkeypatch.setenv(name, value)
    web = databricks.build_app({"CLIP_APP_SOURCE": volume, "CLIP_APP_THUMBNAILS": str(tmp / "volume-thumbs")})
    url = serve_app(web)
    rows = read_rows(embeddings)
    assert httpx.get(f"{url}/thumbnails/3").status_code == 200
    assert read == [volume, rows.keys[3]]
    assert httpx.get(f"{url}/api/duplicates").json()["total"] == 2


# --------------------------------------------------------------------------------------------------
# What a first user ran into


def _run_cli(*args: object, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "clip_client", *map(str, args)],
        env=env, cwd=cwd, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def test_a_file_name_that_is_not_utf8_is_served_with_replacement_characters(
    env: dict[str, str], tmp_path: Path
) -> None:
    import os

    folder = tmp_path / "odd"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(picture(64 + 8 * i, 48, 3, seed=i)).save(folder / f"p{i}.png")
    odd = os.fsdecode(b"caf\xe9.png")
    Image.fromarray(picture(64, 48, 3, seed=0)).save(folder / odd)  # a copy of p0.png: a duplicate
    clip_client("images", "odd", "--out", "odd.parquet", env=env, cwd=tmp_path)
    rows = read_rows(tmp_path / "odd.parquet")
    row = [str(k) for k in rows.keys].index(f"odd/{odd}")
    running = AppProcess(tmp_path / "odd.parquet", env=env, cwd=tmp_path)
    try:
        for path in [
            "/api/browse",
            "/api/search?q=a+cafe",
            f"/api/similar/{(row + 1) % 4}",
            "/api/duplicates?threshold=0.5",
        ]:
            r = running.get(path)
            assert r.status_code == 200, (path, r.text[:300])
            assert "odd/caf\ufffd.png" in r.text
        paths = [x["path"] for x in running.get("/api/browse").json()["results"]]
        assert "odd/caf\ufffd.png" in paths
        thumb = running.get(f"/thumbnails/{row}")  # read by the real bytes of its name
        assert thumb.status_code == 200, thumb.text
        assert thumb.headers["content-type"] == "image/jpeg"
    finally:
        running.stop()


class _Broken:
    """`Queries` with a bug: every call raises what no handler expects."""

    def text(self, query: str) -> Any:
        raise RuntimeError("something unexpected\nover two lines")

    image = text
    labels = text


def test_an_unexpected_error_is_a_500_with_one_line_of_json(
    serve_app: Any, embeddings: Path, tmp: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from clip_client._webapp.server import create_app
    from clip_client._webapp.source import FileSource
    from clip_client._webapp.thumbnails import ThumbnailCache

    source = FileSource.open(embeddings, base=tmp)
    url = serve_app(create_app(source, _Broken(), thumbnails=ThumbnailCache(tmp / "t3")))
    r = httpx.get(f"{url}/api/search", params={"q": "x"})
    assert r.status_code == 500
    assert r.headers["content-type"] == "application/json"
    error = r.json()["error"]
    assert "\n" not in error
    assert "Traceback" not in error
    assert "RuntimeError" in error
    # Logged once, by the app, on one line: no traceback from uvicorn.
    logged = [r for r in caplog.records if r.levelname == "ERROR"]
    assert [r.name for r in logged] == ["clip_client.app"]
    assert logged[0].exc_info is None


def test_relative_paths_are_read_from_the_files_folder_whatever_the_working_folder(
    embeddings: Path, env: dict[str, str], tmp_path: Path, tmp: Path
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    running = AppProcess(embeddings, "--thumbnail-cache", tmp_path / "thumbs", env=env, cwd=elsewhere)
    try:
        for i in range(len(read_rows(embeddings))):
            assert running.get(f"/thumbnails/{i}").status_code == 200, running.get(f"/thumbnails/{i}").text
    finally:
        running.stop()
    # An image not found says where it was looked for.
    from clip_client._webapp.source import FileSource, ImageUnavailable

    source = FileSource.open(embeddings, base=tmp_path)
    with pytest.raises(ImageUnavailable, match=f"looked for {tmp_path}"):
        source.image_bytes(0)


def test_a_npy_without_its_settings_file_or_an_output_of_texts_is_refused(
    env: dict[str, str], tmp_path: Path
) -> None:
    np.save(tmp_path / "x.npy", np.ones((3, 8), np.float32))
    done = _run_cli("app", "x.npy", "--port", "0", env=env, cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    assert "its settings file x.npy.meta.json is missing" in done.stderr  # as `search` says
    assert "serving" not in done.stderr
    clip_client("texts", "a red car", "a dog", "--out", "captions.parquet", env=env, cwd=tmp_path)
    done = _run_cli("app", "captions.parquet", "--port", "0", env=env, cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    assert "an output of `clip-client images` is needed; this file holds texts" in done.stderr


def test_a_decompression_bomb_upload_is_413_naming_the_limit(app: AppProcess) -> None:
    bomb = io.BytesIO()
    Image.new("1", (20000, 20000)).save(bomb, "PNG")
    r = app.post("/api/search/image", files={"file": ("bomb.png", bomb.getvalue(), "image/png")})
    assert r.status_code == 413, r.text
    assert "decompression-bomb limit" in r.json()["error"]


def test_validation_errors_are_one_line_naming_the_parameter(app: AppProcess) -> None:
    r = app.get("/api/search", params={"q": "x", "k": 0})
    assert r.status_code == 422
    assert r.json() == {"error": "k must be between 1 and 200"}
    long = "secret-looking-input-" * 100
    r = app.get("/api/search", params={"q": long})
    assert r.status_code == 422
    assert r.json() == {"error": "q must be at most 1000 characters"}
    r = app.get("/api/search", params={"k": "many"})
    assert r.status_code == 422
    assert r.json() == {"error": "q is required; k must be a whole number"}


def test_a_port_in_use_is_one_line_and_exit_1_before_serving(
    embeddings: Path, env: dict[str, str], tmp: Path
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        done = _run_cli("app", embeddings, "--port", port, env=env, cwd=tmp)
    assert done.returncode == 1, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert done.stderr.startswith(
        f"clip-client: error: port {port} on 127.0.0.1 is in use (or 127.0.0.1 cannot be bound): "
        "choose another --port"
    )


@pytest.mark.parametrize(
    "args",
    [
        ["--source", "x.parquet"],
        ["--source", "main.photos"],
        ["main.photos.index", "--source", "main.photos.index"],
    ],
)
def test_a_databricks_app_source_that_the_app_cannot_read_is_a_usage_error(
    args: list[str], env: dict[str, str], tmp_path: Path
) -> None:
    done = _run_cli("app", "--databricks-app", tmp_path / "out", *args, env=env, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert not (tmp_path / "out").exists()
