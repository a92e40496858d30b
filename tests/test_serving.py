"""The MLflow pyfunc models (clip_client.serving): logged, registered, loaded, served by a real
``mlflow models serve`` subprocess, and queried by ``ClipClient(text_url=..., image_url=...)``; every
vector compared with local mode's, on the tiny random checkpoint. No network, no workspace."""

from __future__ import annotations

import base64
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from bad_inputs import BAD_IMAGES
from image_factory import write_images
from serving_server import TOKEN, ServingServer

from clip_client import BadRequestError, ClipClient

mlflow = pytest.importorskip("mlflow")
pd = pytest.importorskip("pandas")

from clip_client.deploy import export_model, log_models, registered_names  # noqa: E402
from clip_client.serving import ARTIFACT_KEY, EmbeddingPredictor  # noqa: E402

TINY_DIM = 24
IMAGE_KINDS = ["rgb_jpeg", "rgba_png", "exif6_jpeg", "palette_gif", "exact224_png", "wide_jpeg"]
TEXTS = [
    "a photo of a cat",
    "",  # embeds as the model does: start and end tokens only
    "naïve café, 東京 🚀",
    " ".join(["word"] * 300),  # far over 77 tokens: truncated, never an error
]


# MLflow puts a SQLite store's artifacts in ./mlruns and its default store in ./mlflow.db, relative
# to the working folder: each test runs in its own (conftest's ``in_tmp_path``).
pytestmark = pytest.mark.usefixtures("in_tmp_path")


@pytest.fixture(scope="module")
def checkpoint(tiny_checkpoint: Path) -> Path:
    """The session's tiny CLIP checkpoint (conftest), under this module's name for it."""
    return tiny_checkpoint


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    written = write_images(tmp_path_factory.mktemp("images"), IMAGE_KINDS)
    return [written[name] for name in IMAGE_KINDS]


@pytest.fixture(scope="module")
def exported(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Both models written by the ``clip-client export-model`` verb, run as a subprocess (the path
    a user takes; it calls :func:`export_model`)."""
    root = tmp_path_factory.mktemp("exported")
    written: dict[str, Path] = {}
    for kind in ("text", "image"):
        done = subprocess.run(
            [sys.executable, "-m", "clip_client", "export-model", "--kind", kind,
             "--model", str(checkpoint), "--out", str(root / kind)],
            capture_output=True, text=True, timeout=300, check=False,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        # quiet: no MLflow "input example" warning, no artifact progress bar
        assert "input example" not in done.stderr.lower(), done.stderr
        assert "Downloading artifacts" not in done.stderr, done.stderr
        written[kind] = Path(done.stdout.strip())
        assert written[kind] == root / kind
        assert (written[kind] / "MLmodel").is_file()
    return written


def test_export_model_verb_refuses_an_unknown_kind_in_one_line(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "clip_client", "export-model", "--kind", "audio",
         "--model", str(tmp_path), "--out", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert "'audio'" in done.stderr
    assert '"text" or "image"' in done.stderr
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def local(checkpoint: Path) -> Iterator[ClipClient]:
    """Local mode on the same checkpoint, raw rows (the served models do not normalise)."""
    with ClipClient.local(checkpoint, device="cpu", normalize=False) as client:
        yield client


def b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode("ascii")


# --------------------------------------------------------------------------------------------------
# The pyfunc models, loaded in-process


def test_the_text_model_loaded_by_path_predicts_local_modes_vectors(
    exported: dict[str, Path], local: ClipClient
) -> None:
    model = mlflow.pyfunc.load_model(str(exported["text"]))
    rows = model.predict(pd.DataFrame({"input": TEXTS}))
    assert isinstance(rows, np.ndarray)
    assert rows.dtype == np.float32
    assert rows.shape == (len(TEXTS), TINY_DIM)
    np.testing.assert_array_equal(rows, local.embed_texts(TEXTS))
    # a text over 77 tokens embeds as its first 77 tokens (start + 75 words + end)
    cut = " ".join(["word"] * 75)
    both = model.predict(pd.DataFrame({"input": [TEXTS[3], cut]}))
    np.testing.assert_array_equal(both[0], both[1])


def test_the_image_model_prepares_as_the_client_does(
    exported: dict[str, Path], local: ClipClient, images: list[Path]
) -> None:
    model = mlflow.pyfunc.load_model(str(exported["image"]))
    rows = model.predict(pd.DataFrame({"input": [b64(p) for p in images]}))
    assert rows.dtype == np.float32
    assert rows.shape == (len(images), TINY_DIM)
    np.testing.assert_array_equal(rows, local.embed_images(images))
    # a data URI is an image too (compared in a batch of the same size: CPU kernels vary with it)
    uri = "data:image/png;base64," + b64(images[1])
    np.testing.assert_array_equal(model.predict([uri]), model.predict([b64(images[1])]))


def test_predict_takes_a_list_as_well_as_a_dataframe(exported: dict[str, Path]) -> None:
    model = mlflow.pyfunc.load_model(str(exported["text"]))
    texts = ["a red car", "a dog"]
    np.testing.assert_array_equal(model.predict(texts), model.predict(pd.DataFrame({"input": texts})))
    assert model.predict(pd.DataFrame({"input": pd.Series([], dtype=str)})).shape == (0, TINY_DIM)


def test_the_input_column_is_read_and_a_frame_without_it_is_refused(exported: dict[str, Path]) -> None:
    """MLflow hands the model only the first column of a DataFrame (the signature's one column is
    unnamed, so that lists pass): the model embeds it only when it is ``input`` (or unnamed)."""
    model = mlflow.pyfunc.load_model(str(exported["text"]))
    np.testing.assert_array_equal(
        model.predict(pd.DataFrame({"input": ["a dog"], "other": ["a cat"]})), model.predict(["a dog"])
    )
    for frame in (
        pd.DataFrame({"other": ["a cat"], "input": ["a dog"]}),  # not "a cat" embedded in silence
        pd.DataFrame({"text": ["a cat"]}),
    ):
        with pytest.raises(
            mlflow.exceptions.MlflowException, match="expected a DataFrame with an 'input'"
        ) as caught:
            model.predict(frame)
        assert caught.value.get_http_status_code() == 400
        assert str(frame.columns[0]) in str(caught.value)


def test_mime_wrapped_base64_is_an_image_and_a_data_uri_must_be_one(
    exported: dict[str, Path], images: list[Path]
) -> None:
    model = mlflow.pyfunc.load_model(str(exported["image"]))
    raw = images[0].read_bytes()
    wrapped = base64.encodebytes(raw).decode("ascii")  # 76-character lines
    assert "\n" in wrapped.strip()
    plain = model.predict([b64(images[0]), b64(images[1])])
    np.testing.assert_array_equal(
        model.predict([wrapped, "data:image/jpeg;base64," + wrapped]), plain[[0, 0]]
    )
    for uri in ("data:text/plain;base64," + b64(images[0]), "data:;base64," + b64(images[0])):
        with pytest.raises(
            mlflow.exceptions.MlflowException, match=r"row 1: a data URI of media type"
        ) as caught:
            model.predict([b64(images[1]), uri])
        assert "is not an image" in str(caught.value)
    with pytest.raises(mlflow.exceptions.MlflowException, match=r"row 0: not valid base64"):
        model.predict(["ab\u00a0cd" + b64(images[0])])  # whitespace outside ASCII is still refused


@pytest.mark.parametrize(
    ("bad", "says"),
    [
        ("this is not base64!", "not valid base64"),
        (base64.b64encode(b"just some notes, not a picture" * 4).decode(), "not a recognised image format"),
        ("", "empty image"),
    ],
    ids=["not base64", "base64 of text", "empty"],
)
def test_a_bad_image_is_an_error_naming_its_row(
    exported: dict[str, Path], images: list[Path], bad: str, says: str
) -> None:
    model = mlflow.pyfunc.load_model(str(exported["image"]))
    batch = [b64(images[0]), b64(images[1]), bad, b64(images[2])]
    with pytest.raises(mlflow.exceptions.MlflowException, match=r"row 2: ") as caught:
        model.predict(pd.DataFrame({"input": batch}))
    assert says in str(caught.value)
    assert caught.value.get_http_status_code() == 400


def test_a_truncated_file_is_an_error_naming_its_row(exported: dict[str, Path], tmp_path: Path) -> None:
    truncated = BAD_IMAGES["truncated JPEG"].make(tmp_path)
    model = mlflow.pyfunc.load_model(str(exported["image"]))
    with pytest.raises(mlflow.exceptions.MlflowException, match=r"row 0: .*truncated"):
        model.predict(pd.DataFrame({"input": [b64(Path(str(truncated)))]}))


def test_the_signature_is_string_in_float32_tensor_out(exported: dict[str, Path]) -> None:
    for kind, folder in exported.items():
        meta = mlflow.models.Model.load(str(folder / "MLmodel"))
        inputs = meta.get_input_schema().inputs
        assert [c.type.name for c in inputs] == ["string"], kind
        (output,) = meta.get_output_schema().inputs
        assert output.type == np.dtype(np.float32), kind
        assert output.shape == (-1, TINY_DIM), kind


def test_the_weights_travel_as_artifacts_and_load_without_the_hub(
    exported: dict[str, Path], checkpoint: Path, monkeypatch: pytest.MonkeyPatch, local: ClipClient
) -> None:
    artifact = exported["text"] / "artifacts" / ARTIFACT_KEY
    assert (artifact / "model.safetensors").read_bytes() == (checkpoint / "model.safetensors").read_bytes()
    assert (exported["text"] / "code" / "clip_client" / "serving.py").is_file()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = mlflow.pyfunc.load_model(str(exported["text"]))
    predictor = model.unwrap_python_model().predictor
    assert isinstance(predictor, EmbeddingPredictor)
    assert Path(predictor.backend.model_name).resolve() != checkpoint.resolve()  # the copy, not the source
    np.testing.assert_array_equal(model.predict(TEXTS[:1]), local.embed_texts(TEXTS[:1]))


@pytest.mark.parametrize(
    ("options", "says"),
    [
        ({"device": "bogus"}, "device='bogus' is not a serving device"),
        ({"device": "mps"}, "device='mps' is not a serving device"),
        ({"dtype": "float8"}, "dtype='float8' is not one of float32, float16, bfloat16"),
    ],
)
def test_a_bad_device_or_dtype_is_refused_before_anything_is_written(
    checkpoint: Path, tmp_path: Path, options: dict[str, str], says: str
) -> None:
    with pytest.raises(ValueError, match=says):
        export_model("text", checkpoint, tmp_path / "out", **options)  # type: ignore[arg-type]
    assert not (tmp_path / "out").exists()
    store = tmp_path / "mlflow.db"
    with pytest.raises(ValueError, match=says):
        log_models(
            checkpoint,
            catalog="main",
            schema="ml",
            tracking_uri=f"sqlite:///{store}",
            registry_uri=f"sqlite:///{store}",
            **options,  # type: ignore[arg-type]
        )
    assert not store.exists()  # nothing logged, nothing registered


def test_export_refuses_an_unknown_kind_and_a_folder_that_is_no_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="kind must be 'text' or 'image'"):
        export_model("audio", tmp_path, tmp_path / "out")  # type: ignore[arg-type]
    from clip_client import ModelLoadError

    with pytest.raises(ModelLoadError, match=r"no config\.json"):
        export_model("text", tmp_path, tmp_path / "out")


# --------------------------------------------------------------------------------------------------
# Logged and registered in a local MLflow store


def test_log_models_registers_both_and_they_load_from_the_registry(
    checkpoint: Path, tmp_path: Path, local: ClipClient, images: list[Path]
) -> None:
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    before = mlflow.get_tracking_uri()
    first = log_models(checkpoint, catalog="main", schema="ml", tracking_uri=store, registry_uri=store)
    assert mlflow.get_tracking_uri() == before  # the URIs were set for the call only
    assert (first.text.name, first.text.version) == ("main.ml.clip_text_embedding", "1")
    assert (first.image.name, first.image.version) == ("main.ml.clip_image_embedding", "1")
    second = log_models(checkpoint, catalog="main", schema="ml", tracking_uri=store, registry_uri=store)
    assert [m.version for m in second] == ["2", "2"]
    # one child run per model, each with its own config as params (one run for both could not
    # change the param 'kind' from text to image: MLflow warned and dropped the image's params)
    runs = mlflow.MlflowClient(tracking_uri=store).search_runs(["0"])
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert sorted(r.data.params.get("kind", "?") for r in children) == ["image", "image", "text", "text"]

    mlflow.set_registry_uri(store)
    try:
        text = mlflow.pyfunc.load_model(first.text.uri)
        image = mlflow.pyfunc.load_model(second.image.uri)
    finally:
        mlflow.set_registry_uri(None)
        os.environ.pop("MLFLOW_REGISTRY_URI", None)
    np.testing.assert_array_equal(text.predict(TEXTS), local.embed_texts(TEXTS))
    np.testing.assert_array_equal(image.predict([b64(p) for p in images]), local.embed_images(images))


def test_registered_names_need_both_catalog_and_schema() -> None:
    assert registered_names("main", "ml")["image"] == "main.ml.clip_image_embedding"
    assert registered_names(None, None)["text"] == "clip_text_embedding"
    with pytest.raises(ValueError, match="pass both catalog= and schema="):
        registered_names("main", None)
    with pytest.raises(ValueError, match=r"schema='a\.b' is not a Unity Catalog name"):
        registered_names("main", "a.b")


# --------------------------------------------------------------------------------------------------
# `mlflow models serve`, a real subprocess, queried by ClipClient(text_url=..., image_url=...)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def scoring_servers(
    exported: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, str]]:
    """Both exported models served by ``mlflow models serve --env-manager local`` on 127.0.0.1, with
    the hub switched off: ``{kind: invocations URL}``."""
    mlflow_cli = Path(sys.executable).with_name("mlflow")
    logs = tmp_path_factory.mktemp("serve-logs")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MLFLOW_TRACKING_URI": f"file://{logs}/mlruns"}
    # mlflow starts `uvicorn` through the shell: from this interpreter's environment, even when it
    # was not activated (pytest run as .venv/bin/pytest: uvicorn not on PATH, exit status 127).
    env["PATH"] = os.pathsep.join([str(mlflow_cli.parent), env.get("PATH", "")])
    started: dict[str, tuple[subprocess.Popen[bytes], str, Path]] = {}
    try:
        for kind, folder in exported.items():
            port = _free_port()
            log = logs / f"{kind}.log"
            with log.open("wb") as out:
                process = subprocess.Popen(
                    [str(mlflow_cli), "models", "serve", "-m", str(folder), "--env-manager", "local",
                     "-h", "127.0.0.1", "-p", str(port), "--workers", "1"],
                    stdout=out, stderr=subprocess.STDOUT, env=env, cwd=logs,
                )  # fmt: skip
            started[kind] = (process, f"http://127.0.0.1:{port}", log)
        for kind, (process, url, log) in started.items():
            _wait_for_ping(process, url, log)
        yield {kind: f"{url}/invocations" for kind, (_, url, _) in started.items()}
    finally:
        for process, _, _ in started.values():
            process.terminate()
        for process, _, _ in started.values():
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _wait_for_ping(process: subprocess.Popen[bytes], url: str, log: Path, within: float = 180.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"mlflow models serve exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/ping", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    pytest.fail(f"mlflow models serve did not answer /ping within {within:g}s:\n{log.read_text()[-3000:]}")


def test_clip_client_on_mlflow_models_serve_matches_local_mode(
    scoring_servers: dict[str, str], checkpoint: Path, images: list[Path]
) -> None:
    urls = {"text_url": scoring_servers["text"], "image_url": scoring_servers["image"]}
    with (
        ClipClient(**urls) as served,
        ClipClient(**urls, image_preparation="server") as served_whole_files,
        ClipClient.local(checkpoint, device="cpu") as local,
    ):
        np.testing.assert_array_equal(served.embed_texts(TEXTS), local.embed_texts(TEXTS))
        expected = local.embed_images(images)
        np.testing.assert_array_equal(served.embed_images(images), expected)
        # the whole files, prepared by the served model, give the same rows as the client's crops
        np.testing.assert_array_equal(served_whole_files.embed_images(images), expected)


def test_check_endpoint_on_the_served_models_says_exact(scoring_servers: dict[str, str]) -> None:
    with ClipClient(text_url=scoring_servers["text"], image_url=scoring_servers["image"]) as served:
        report = served.check_endpoint()
    assert report.image.parity is not None
    assert report.image.parity.verdict == "exact", str(report)
    assert report.text.truncation is not None
    assert report.text.truncation.verdict == "truncates", str(report)
    assert report.text.dim == report.image.dim == TINY_DIM
    assert not report.text.state.known
    assert "no control plane" in (report.text.state.note or "")


def test_the_served_text_model_reads_the_input_column(scoring_servers: dict[str, str]) -> None:
    url = scoring_servers["text"]
    wire = httpx.post(url, json={"dataframe_records": [{"input": "a dog"}]}, timeout=60)
    assert wire.status_code == 200, wire.text
    inputs = httpx.post(url, json={"inputs": ["a dog"]}, timeout=60)  # MLflow's tensor form
    assert inputs.status_code == 200, inputs.text
    assert inputs.json() == wire.json()
    other_first = {"dataframe_records": [{"other": "a cat", "input": "a dog"}]}
    refused = httpx.post(url, json=other_first, timeout=60)
    assert refused.status_code == 400
    assert "expected a DataFrame with an 'input' column" in refused.json()["message"]


def test_a_bad_image_gets_a_400_naming_its_row(
    scoring_servers: dict[str, str], images: list[Path], tmp_path: Path
) -> None:
    body = {"dataframe_records": [{"input": b64(images[0])}, {"input": "bm90IGFuIGltYWdl"}]}
    answer = httpx.post(scoring_servers["image"], json=body, timeout=60)
    assert answer.status_code == 400
    assert "row 1: not a recognised image format" in answer.json()["message"]

    truncated = Path(str(BAD_IMAGES["truncated JPEG"].make(tmp_path)))
    with (
        ClipClient(
            text_url=scoring_servers["text"], image_url=scoring_servers["image"], image_preparation="server"
        ) as served,
        pytest.raises(BadRequestError, match=r"row 1: .*truncated") as caught,
    ):
        served.embed_images([images[0], truncated])
    assert caught.value.status_code == 400


# --------------------------------------------------------------------------------------------------
# ClipClient(text_url=..., image_url=...): any scoring server, checked on the loopback ServingServer


def _urls(server: ServingServer) -> dict[str, str]:
    return {
        "text_url": f"{server.url}/serving-endpoints/clip-text-embedding/invocations",
        "image_url": f"{server.url}/serving-endpoints/clip-image-embedding/invocations",
    }


@pytest.mark.server(dim=TINY_DIM)
def test_urls_send_no_auth_header_and_ask_no_control_plane(server: ServingServer) -> None:
    with ClipClient(**_urls(server), retry_backoff=0) as client:
        rows = client.embed_texts(["a", "b"], normalize=False)
    assert rows.shape == (2, TINY_DIM)
    assert [m for m, _ in server.requests] == ["POST"]  # no state GET: there is no control plane
    assert "Authorization" not in server.received[0].headers


@pytest.mark.server(dim=TINY_DIM)
def test_urls_with_a_token_send_it_and_never_show_it(server: ServingServer) -> None:
    with ClipClient(**_urls(server), token=TOKEN, retry_backoff=0) as client:
        client.embed_texts(["a"])
        assert TOKEN not in repr(client)
    assert server.received[0].headers["Authorization"] == f"Bearer {TOKEN}"


@pytest.mark.parametrize(
    ("options", "says"),
    [
        ({"text_url": "http://127.0.0.1:5000/invocations"}, "text_url= was given without image_url="),
        ({"image_url": "http://127.0.0.1:5000/invocations"}, "image_url= was given without text_url="),
        (
            {"text_url": "http://127.0.0.1:1/x", "image_url": "http://127.0.0.1:1/y", "host": "https://a.b"},
            r"either text_url=/image_url= .* or a workspace \(host=\)",
        ),
        (
            {"text_url": "ftp://h/x", "image_url": "http://127.0.0.1:1/y"},
            "text_url='ftp://h/x' is not an http",
        ),
        (
            {
                "text_url": "http://10.0.0.5:5000/i",
                "image_url": "http://10.0.0.5:5000/i",
                "token": "dapi-x" * 4,
            },
            "clear text",
        ),
    ],
    ids=["text only", "image only", "with host", "not http", "token over plain http"],
)
def test_url_mistakes_are_clear_errors(options: dict[str, Any], says: str) -> None:
    with pytest.raises(ValueError, match=says) as caught:
        ClipClient(**options)
    assert "dapi-x" not in str(caught.value)


def test_urls_and_a_backend_do_not_mix(local: ClipClient) -> None:
    with pytest.raises(ValueError, match="either backend= or workspace options"):
        ClipClient(backend=local.backend, text_url="http://127.0.0.1:1/x", image_url="http://127.0.0.1:1/y")
    with pytest.raises(TypeError, match=r"local\(\) runs the model in-process and takes no image_url"):
        ClipClient.local("/no/such/folder", image_url="http://127.0.0.1:1/y")


@pytest.mark.parametrize("module", ["clip_client.serving", "clip_client.deploy"])
def test_without_mlflow_the_error_says_which_extra_to_install(module: str) -> None:
    """In a process where mlflow cannot be imported: importing serving (or using deploy) raises an
    ImportError naming the extra; deploy itself imports, since create_endpoints needs no MLflow."""
    script = (
        "import sys\n"
        "sys.modules['mlflow'] = None  # an environment without MLflow\n"
        f"import {module} as m\n"
        "m.log_models('x', catalog='a', schema='b') if hasattr(m, 'log_models') else None\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False)
    assert done.returncode == 1
    assert "ImportError" in done.stderr
    assert 'pip install "clip-serving-client[mlflow]"' in done.stderr
