"""clip_client.spark in a real local Spark: pandas UDFs against the loopback serving server and the
tiny local checkpoint, compared row for row with what ``ClipClient`` returns for the same inputs.

One session-scoped ``SparkSession`` (``local[2,4]``: two cores, four attempts per task, so a task
whose Python worker dies is re-run), workers on this interpreter. Executors reach ``server`` over
127.0.0.1 with the same keywords the other tests give ``ClipClient`` (``server.client_kwargs()``).

Client constructions are counted from the module's own log: with ``CLIP_CLIENT_SPARK_LOG`` set (a
documented hook, ``clip_client.spark.LOG_FILE_ENV``) each worker writes one INFO line per client it
builds, with its pid and a fingerprint of the options; every test uses options of its own (a
distinct ``timeout``), so its lines are told apart by the fingerprint.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from harness import IMAGE, TEXT
from image_factory import encode, picture
from PIL import Image
from serving_server import DIM, TOKEN, Faults, Reply, ServingServer, answer_rows

from clip_client import ClipClient

pyspark = pytest.importorskip("pyspark")
pd = pytest.importorskip("pandas")

from pyspark.sql import DataFrame, SparkSession  # noqa: E402
from pyspark.sql.types import BinaryType, IntegerType, StringType, StructField, StructType  # noqa: E402

from clip_client import spark as cs  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:PySpark does not yet fully support pandas:FutureWarning")

N_TEXTS = 2000
N_IMAGES = 300
ARROW_BATCH = 250


# --------------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="session")
def worker_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("spark-log") / "workers.log"


@pytest.fixture(scope="session")
def spark(worker_log: Path) -> Iterator[SparkSession]:
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        pytest.fail("these tests need a Java runtime (17+) for pyspark; install one (.ci/run does)")
    saved = {k: os.environ.get(k) for k in ("PYSPARK_PYTHON", "PYSPARK_DRIVER_PYTHON", cs.LOG_FILE_ENV)}
    os.environ["PYSPARK_PYTHON"] = sys.executable
    os.environ["PYSPARK_DRIVER_PYTHON"] = sys.executable
    os.environ[cs.LOG_FILE_ENV] = str(worker_log)  # inherited by the JVM, so by its Python workers
    session = (
        SparkSession.builder.master("local[2,4]")
        .appName("clip_client-tests")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.shuffle.partitions", "4")
        .config("spark.default.parallelism", "4")
        .config("spark.sql.execution.arrow.maxRecordsPerBatch", str(ARROW_BATCH))
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.python.worker.reuse", "true")
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    try:
        yield session
    finally:
        session.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from tiny_clip import write_tiny_clip

    return write_tiny_clip(tmp_path_factory.mktemp("tiny-clip-spark"))


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """N_IMAGES real files: PNGs and JPEGs of assorted sizes and aspect ratios."""
    folder = tmp_path_factory.mktemp("spark-images")
    for i in range(N_IMAGES):
        w, h = 40 + (i * 37) % 260, 40 + (i * 53) % 200
        fmt, ext = (("PNG", "png"), ("JPEG", "jpg"))[i % 2]
        (folder / f"img_{i:04d}.{ext}").write_bytes(encode(Image.fromarray(picture(w, h, seed=i)), fmt))
    return folder


def texts(n: int) -> list[str]:
    return [f"caption {i}: a photo of thing {i % 37} ✓ {'long ' * (i % 5)}" for i in range(n)]


def opts(server: ServingServer, **extra: Any) -> dict[str, Any]:
    """UDF options for ``server``: the keywords every test client gets, plus this test's own."""
    return server.client_kwargs(**extra)


def collect(df: DataFrame, *columns: str) -> list[Any]:
    """The rows of ``df`` in ``id`` order, as tuples of ``columns``."""
    rows = df.select("id", *columns).collect()
    return [tuple(r[c] for c in columns) for r in sorted(rows, key=lambda r: r["id"])]


def matrix(values: list[Any]) -> np.ndarray:
    assert all(v is not None for v in values)
    return np.asarray(values, dtype=np.float32)


def constructions(log: Path, fingerprint_of: str | None = None) -> list[tuple[str, int]]:
    """(fingerprint, pid) of every client construction the workers logged."""
    if not log.exists():
        return []
    found = re.findall(r"built client (\w+) .* in worker pid (\d+),", log.read_text(encoding="utf-8"))
    return [(f, int(p)) for f, p in found if fingerprint_of is None or f == fingerprint_of]


def fingerprint(
    udf_options: dict[str, Any], local: bool = False, model: str | None = None, device: str | None = None
) -> str:
    spec = cs._spec(
        "text",
        image_column="auto",
        on_error="raise",
        error_column=False,
        local=local,
        model=model,
        device=device,
        options=udf_options,
    )
    return spec.fingerprint(device)


def text_frame(spark: SparkSession, values: list[str | None], partitions: int = 4) -> DataFrame:
    schema = StructType([StructField("id", IntegerType()), StructField("text", StringType())])
    return spark.createDataFrame(list(enumerate(values)), schema).repartition(partitions)


def image_frames(spark: SparkSession, folder: Path) -> dict[str, tuple[DataFrame, str, list[Any]]]:
    """The same images in the three column forms: (DataFrame with ``id`` and the column, the
    column, what ``ClipClient.embed_images`` is given for them, in ``id`` order)."""
    files = sorted(folder.iterdir())
    ids = {f.name: i for i, f in enumerate(files)}
    binary = spark.read.format("binaryFile").load(str(folder))
    name_to_id = spark.createDataFrame(list(ids.items()), "name string, id int")
    from pyspark.sql.functions import element_at, split

    binary = binary.withColumn("name", element_at(split("path", "/"), -1)).join(name_to_id, "name")
    b64 = [(i, base64.b64encode(f.read_bytes()).decode("ascii")) for i, f in enumerate(files)]
    b64_df = spark.createDataFrame(b64, "id int, image_base64 string").repartition(3)
    paths_df = spark.createDataFrame([(i, str(f)) for i, f in enumerate(files)], "id int, file string")
    return {
        "binary": (binary.select("id", "content"), "content", [f.read_bytes() for f in files]),
        "base64": (b64_df, "image_base64", [s for _, s in b64]),
        "path": (paths_df.repartition(3), "file", [str(f) for f in files]),
        # binaryFile's own path column: file: URIs, read as the local paths they name
        "uri": (binary.select("id", "path"), "path", [str(f) for f in files]),
    }


# --------------------------------------------------------------------------------------------------
# Through the endpoints


def test_2000_texts_equal_the_clients_rows_in_far_fewer_requests(
    spark: SparkSession, server: ServingServer
) -> None:
    values = texts(N_TEXTS)
    options = opts(server, timeout=31, batch_size=32)
    udf = cs.text_embedding_udf(**options)
    out = collect(text_frame(spark, values).withColumn("embedding", udf("text")), "embedding")
    requests = server.posts(TEXT)
    with ClipClient(**options) as client:
        want = client.embed_texts(values)
    got = matrix([r[0] for r in out])
    assert got.shape == (N_TEXTS, 768)
    assert np.array_equal(got, want)
    # Batched: 32 records per request (4 partitions x 2 Arrow batches of 250 -> 8 x 8 requests).
    assert requests <= 8 * -(-ARROW_BATCH // 32)
    assert sorted(server.inputs(TEXT)) == sorted(values * 2)  # each text sent once by Spark, once here


@pytest.mark.parametrize("form", ["binary", "base64", "path", "uri"])
def test_300_images_in_each_column_form_equal_the_clients_rows(
    spark: SparkSession, server: ServingServer, image_dir: Path, form: str
) -> None:
    df, column, client_inputs = image_frames(spark, image_dir)[form]
    options = opts(server, timeout=32)
    out = collect(cs.embed_table(df, column, "image", **options), "embedding")
    with ClipClient(**options) as client:
        want = client.embed_images(client_inputs)
    got = matrix([r[0] for r in out])
    assert got.shape == (N_IMAGES, 768)
    assert np.array_equal(got, want)
    assert server.posts(IMAGE) < N_IMAGES  # batched


def test_the_mode_decides_what_a_string_is(
    spark: SparkSession, server: ServingServer, tmp_path: Path
) -> None:
    """The same two strings, a base64 image and a file's path, read by each mode: ``"auto"`` tells
    them apart; ``"base64"`` and ``"path"`` take every string as what they name, and refuse the other
    with a reason (so a file named like base64 is never read as base64 under ``"path"``, nor the
    reverse)."""
    one = encode(Image.fromarray(picture(60, 50, seed=1)), "PNG")
    other = tmp_path / "other.png"
    other.write_bytes(encode(Image.fromarray(picture(70, 40, seed=2)), "JPEG"))
    df = spark.createDataFrame(
        [(0, base64.b64encode(one).decode("ascii")), (1, str(other))], "id int, s string"
    ).coalesce(1)
    options = opts(server, timeout=33)
    with ClipClient(**options) as client:
        want = client.embed_images([one, other])

    def run(mode: str) -> list[Any]:
        return collect(
            cs.embed_table(df, "s", "image", error_column="why", image_column=mode, **options),
            "embedding",
            "why",
        )  # type: ignore[arg-type]

    auto, as_b64, as_path = run("auto"), run("base64"), run("path")
    assert np.array_equal(matrix([auto[0][0], auto[1][0]]), want)
    assert np.array_equal(np.float32(as_b64[0][0]), want[0])
    assert as_b64[1][0] is None
    assert "not valid base64" in as_b64[1][1]
    assert np.array_equal(np.float32(as_path[1][0]), want[1])
    assert as_path[0][0] is None
    assert "not an existing file" in as_path[0][1]


# --------------------------------------------------------------------------------------------------
# Nulls and bad rows


def bad_image_rows() -> tuple[list[tuple[int, bytes | None]], dict[int, str]]:
    """Good images with nulls and bad rows among them; the bad rows and what their reason says."""
    good = [encode(Image.fromarray(picture(50 + i, 40, seed=100 + i)), "PNG") for i in range(12)]
    rows: list[tuple[int, bytes | None]] = [(i, g) for i, g in enumerate(good)]
    rows[3] = (3, None)
    rows[7] = (7, b"this is not an image")
    rows[9] = (9, good[9][: len(good[9]) // 3])  # truncated PNG
    return rows, {7: "ImageDecodeError", 9: "ImageDecodeError"}


@pytest.mark.parametrize("mode", ["remote", "local"])
def test_nulls_in_nulls_out_and_bad_rows_nulled_with_reasons(
    spark: SparkSession, server: ServingServer, tiny: Path, worker_log: Path, mode: str
) -> None:
    rows, bad = bad_image_rows()
    df = spark.createDataFrame(rows, "id int, content binary").coalesce(1)
    options: dict[str, Any] = (
        opts(server, timeout=34) if mode == "remote" else {"local": True, "model": str(tiny), "timeout": 34}
    )
    out = collect(cs.embed_table(df, "content", "image", error_column="why", **options), "embedding", "why")
    client = ClipClient(**opts(server)) if mode == "remote" else ClipClient.local(str(tiny))
    with client:
        good_ids = [i for i, v in rows if v is not None and i not in bad]
        want = client.embed_images([rows[i][1] for i in good_ids])
    assert out[3] == (None, None)  # null in, null out, no reason
    for i in bad:
        assert out[i][0] is None
        assert out[i][1].startswith(bad[i]), out[i][1]
    got = matrix([out[i][0] for i in good_ids])
    if mode == "remote":
        assert np.array_equal(got, want)
    else:
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)

    # Without an error column, the reasons go to the worker's log.
    before = worker_log.read_text(encoding="utf-8") if worker_log.exists() else ""
    udf = cs.image_embedding_udf(on_error="null", **options)
    nulled = collect(df.withColumn("e", udf("content")), "e")
    assert [i for i, (v,) in enumerate(nulled) if v is None] == [3, 7, 9]
    logged = worker_log.read_text(encoding="utf-8")[len(before) :]
    assert re.search(r"WARNING Spark partition 0, row 7 .*ImageDecodeError", logged), logged
    assert re.search(r"WARNING Spark partition 0, row 9 .*ImageDecodeError", logged), logged


@pytest.mark.parametrize("mode", ["remote", "local"])
def test_a_bad_image_fails_the_task_naming_its_row_and_reason(
    spark: SparkSession, server: ServingServer, tiny: Path, tmp_path: Path, mode: str
) -> None:
    missing = tmp_path / "gone.jpg"
    real = tmp_path / "real.png"
    real.write_bytes(encode(Image.fromarray(picture(30, 30)), "PNG"))
    rows = [(0, str(real)), (1, None), (2, str(real)), (3, str(missing))]
    df = spark.createDataFrame(rows, "id int, file string").coalesce(1)
    options: dict[str, Any] = (
        opts(server, timeout=35) if mode == "remote" else {"local": True, "model": str(tiny), "timeout": 35}
    )
    udf = cs.image_embedding_udf(image_column="path", **options)
    with pytest.raises(Exception) as caught:
        df.withColumn("e", udf("file")).collect()
    message = str(caught.value)
    assert "InvalidInputError" in message
    assert "Spark partition 0, row 3" in message
    assert not re.search(r"input \d+:", message), message  # the row is named once, as the partition's
    assert str(missing) in message
    assert "no such file" in message


def refuse_poison(kind: str, inputs: list[str]) -> list[list[float]]:
    """A served model that raises (so the server answers 400, as MLflow does) for a batch holding
    an input with POISON in it."""
    if any("POISON" in x for x in inputs):
        raise ValueError("cannot embed a poisoned caption")
    return answer_rows(None, DIM, kind, inputs)


def test_a_row_the_endpoint_refuses_is_named_by_its_row(spark: SparkSession, server: ServingServer) -> None:
    """A 400 for one row's input: the default mode fails the task naming that row (not the batch,
    not its position among the values sent), and tolerant mode's reason names no other position."""
    server.model = refuse_poison
    values: list[str | None] = ["a dog", None, "a cat", "POISON pill", None, "a cow"]
    df = text_frame(spark, values, partitions=1)
    options = opts(server, timeout=42, batch_size=8)
    with pytest.raises(Exception) as caught:
        df.withColumn("e", cs.text_embedding_udf(**options)("text")).collect()
    message = str(caught.value)
    assert "Spark partition 0, row 3 (counted from 0 within the partition)" in message, message
    assert "BadRequestError" in message
    assert "cannot embed a poisoned caption" in message
    assert not re.search(r"input \d+:", message), message

    out = collect(cs.embed_table(df, "text", "text", error_column="why", **options), "embedding", "why")
    assert [i for i, (e, _) in enumerate(out) if e is None] == [1, 3, 4]
    why = out[3][1]
    assert why.startswith("BadRequestError: "), why
    assert "poisoned caption" in why, why
    assert "input 2" not in why, why  # its position among the values sent (nulls skipped)
    with ClipClient(**options) as client:
        want = client.embed_texts(["a dog", "a cat", "a cow"])
    assert np.array_equal(matrix([out[0][0], out[2][0], out[5][0]]), want)


def test_tolerant_mode_still_fails_the_task_on_an_outage(spark: SparkSession, server: ServingServer) -> None:
    server.faults = Faults(status_for_all=403)
    df = text_frame(spark, texts(20), partitions=1)
    udf = cs.text_embedding_udf(on_error="null", error_column=True, **opts(server, timeout=36))
    with pytest.raises(Exception, match=r"PermissionDenied|403"):
        df.withColumn("e", udf("text")).collect()


def test_text_nulls_and_empty_strings(spark: SparkSession, server: ServingServer) -> None:
    values: list[str | None] = ["a dog", None, "", "a cat", None]
    options = opts(server, timeout=37)
    out = collect(cs.embed_table(text_frame(spark, values, 2), "text", "text", **options), "embedding")
    assert out[1] == (None,)
    assert out[4] == (None,)
    with ClipClient(**options) as client:
        want = client.embed_texts(["a dog", "", "a cat"])
    assert np.array_equal(matrix([out[0][0], out[2][0], out[3][0]]), want)


# --------------------------------------------------------------------------------------------------
# Struct columns: Spark's image source, and any other struct


def write_image_source_files(folder: Path) -> dict[str, Path]:
    """PNGs of each mode Spark's image source writes (grey, BGR, BGRA), some larger than the crop,
    plus a file that is not an image (the source's invalid-image row)."""
    folder.mkdir()
    alpha = picture(250, 180, channels=4, seed=23)
    alpha[:40, :, 3] = 0  # fully transparent rows, and graded alpha below: composited onto white
    made = {
        "rgb_small.png": Image.fromarray(picture(60, 45, seed=21), "RGB"),
        "rgb_large.png": Image.fromarray(picture(300, 240, seed=22), "RGB"),
        "rgba.png": Image.fromarray(alpha, "RGBA"),
        "grey.png": Image.fromarray(picture(230, 260, seed=24)[:, :, 0], "L"),
    }
    files = {}
    for name, img in made.items():
        files[name] = folder / name
        files[name].write_bytes(encode(img, "PNG"))
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n but not really")
    return files


def origin_name(origin: str) -> str:
    return origin.rsplit("/", 1)[-1]


@pytest.mark.parametrize("mode", ["remote", "local"])
def test_spark_image_source_rows_equal_the_clients_rows_of_the_files(
    spark: SparkSession, server: ServingServer, tiny: Path, tmp_path: Path, mode: str
) -> None:
    """``spark.read.format("image")`` gives a struct of BGR(A) bytes in OpenCV order: each row is
    embedded as the pixels it describes, equal to ``embed_images`` of the file itself (grey, RGB,
    RGBA with its alpha composited as the client composites the file's); the source's row for a
    file it could not decode is a bad row naming the file (its ``origin``)."""
    files = write_image_source_files(tmp_path / "photos")
    images = spark.read.format("image").load(str(tmp_path / "photos"))
    options: dict[str, Any] = (
        opts(server, timeout=45) if mode == "remote" else {"local": True, "model": str(tiny), "timeout": 45}
    )
    out = cs.embed_table(images, "image", "image", error_column="why", **options)
    rows = {origin_name(r["image"]["origin"]): (r["embedding"], r["why"]) for r in out.collect()}
    assert sorted(rows) == sorted([*files, "broken.png"])
    names = sorted(files)
    client = ClipClient(**opts(server)) if mode == "remote" else ClipClient.local(str(tiny))
    with client:
        want = client.embed_images([files[n] for n in names])
    assert all(rows[n][1] is None for n in names), {n: rows[n][1] for n in names}
    got = matrix([rows[n][0] for n in names])
    if mode == "remote":
        assert np.array_equal(got, want)
    else:
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    embedding, why = rows["broken.png"]
    assert embedding is None
    assert why.startswith("ImageDecodeError: "), why
    assert "broken.png" in why, why
    assert "no pixels" in why, why


def image_struct_frame(spark: SparkSession, tmp_path: Path) -> tuple[DataFrame, bytes]:
    """Rows of the image source's schema built by hand: a good BGR image, a null struct, a struct
    whose data is one byte short, and one whose mode is no 8-bit OpenCV type. Returns the frame
    and the PNG of the good image's RGB pixels."""
    from pyspark.sql.types import BinaryType as Bin

    rgb = picture(40, 30, seed=31)
    bgr = np.ascontiguousarray(rgb[:, :, ::-1]).tobytes()
    schema = StructType(
        [
            StructField("id", IntegerType()),
            StructField(
                "image",
                StructType(
                    [
                        StructField("origin", StringType()),
                        StructField("height", IntegerType()),
                        StructField("width", IntegerType()),
                        StructField("nChannels", IntegerType()),
                        StructField("mode", IntegerType()),
                        StructField("data", Bin()),
                    ]
                ),
            ),
        ]
    )
    rows = [
        (0, ("file:/x/good.png", 30, 40, 3, 16, bgr)),
        (1, None),
        (2, ("file:/x/short.png", 30, 40, 3, 16, bgr[:-1])),
        (3, ("file:/x/odd.png", 30, 40, 3, 21, bgr)),
    ]
    return spark.createDataFrame(rows, schema).coalesce(1), encode(Image.fromarray(rgb), "PNG")


def test_bad_image_structs_are_bad_rows_named_by_partition_row_and_origin(
    spark: SparkSession, server: ServingServer, tmp_path: Path
) -> None:
    df, good = image_struct_frame(spark, tmp_path)
    options = opts(server, timeout=46)
    out = collect(cs.embed_table(df, "image", "image", error_column="why", **options), "embedding", "why")
    with ClipClient(**options) as client:
        want = client.embed_images([good])
    assert np.array_equal(matrix([out[0][0]]), want), out[0][1]
    assert out[0][1] is None
    for i, says in ((1, "the image struct is null"), (2, "holds 3,599 bytes"), (3, "mode 21")):
        assert out[i][0] is None
        assert out[i][1].startswith("ImageDecodeError: "), out[i][1]
        assert says in out[i][1], out[i][1]
    assert "'file:/x/short.png'" in out[2][1]

    udf = cs.image_embedding_udf(**options)
    with pytest.raises(Exception) as caught:
        df.where("id <> 1").withColumn("e", udf("image")).collect()
    line = error_line(str(caught.value))
    assert "ImageDecodeError: Spark partition 0, row 1 (counted from 0 within the partition)" in line, line
    assert "path 'file:/x/short.png'" in line, line
    assert "holds 3,599 bytes" in line, line


def error_line(message: str) -> str:
    """The first line of our error in a failed job's message (after ``...Error: ``)."""
    found = re.search(r"^\S*(?:InvalidInputError|ImageDecodeError): .*$", message, re.MULTILINE)
    assert found is not None, message
    return found.group(0)


def test_other_struct_columns_are_bad_rows_and_refused_before_any_job(
    spark: SparkSession, server: ServingServer
) -> None:
    """A struct that is not the image source's (``named_struct('text', t)``): each row is a bad row
    with a reason under ``on_error="null"``, a typed error naming partition and row otherwise, and
    ``embed_table`` refuses the column on the driver."""
    df = text_frame(spark, ["a dog", None, "a cat"], partitions=1).selectExpr(
        "id", "named_struct('text', text) AS s", "named_struct('content', cast(text AS binary)) AS b"
    )
    options = opts(server, timeout=47)
    for kind, column in (("text", "s"), ("image", "s"), ("image", "b")):
        maker = cs.text_embedding_udf if kind == "text" else cs.image_embedding_udf
        tolerant = maker(on_error="null", error_column=True, **options)
        out = collect(df.withColumn("e", tolerant(column)), "e")
        for (e,) in out:
            assert e["embedding"] is None
            assert e["error"].startswith("InvalidInputError: a struct<"), e["error"]
            assert "not a" in e["error"]
            assert "col('s.text')" in e["error"], e["error"]
        with pytest.raises(Exception) as caught:
            df.withColumn("e", maker(**options)(column)).collect()
        line = error_line(str(caught.value))
        assert "InvalidInputError: Spark partition 0, row 0 (counted from 0 within the partition)" in line
        assert "struct<" in line, line
    assert server.posts() == 0
    with pytest.raises(TypeError, match=r"'s' is struct<text:string>; text embeddings need a string column"):
        cs.embed_table(df, "s", "text")
    with pytest.raises(TypeError, match=r"'s' is struct<text:string>; image columns are binary"):
        cs.embed_table(df, "s", "image")
    with pytest.raises(TypeError, match=r"df\['b'\]\['content'\]"):
        cs.embed_table(df, "b", "image")
    images = spark.read.format("image").load(str(Path(__file__).parent))  # only its schema is used
    with pytest.raises(TypeError, match='is Spark\'s image struct; use image_column="auto"'):
        cs.embed_table(images, "image", "image", image_column="binary")
    assert "embedding" in cs.embed_table(images, "image", "image").columns


# --------------------------------------------------------------------------------------------------
# One evaluation per row, whatever the plan does with the column


def test_a_filter_or_a_join_on_the_output_sends_each_row_once(
    spark: SparkSession, server: ServingServer, tmp_path: Path
) -> None:
    """The UDFs are non-deterministic, so Catalyst neither copies them into a pushed-down filter nor
    duplicates them across a join: one record per row at the endpoint."""
    values = texts(400)
    df = text_frame(spark, values, partitions=2)
    options = opts(server, timeout=48, batch_size=16)
    out = cs.embed_table(df, "text", "text", error_column="why", **options)
    out.where("why IS NULL").write.parquet(str(tmp_path / "filtered"))
    assert sorted(server.inputs(TEXT)) == sorted(values)
    written = spark.read.parquet(str(tmp_path / "filtered"))
    assert written.count() == 400

    server.reset()
    labels = spark.createDataFrame([(i, f"label {i % 7}") for i in range(400)], "id int, label string")
    joined = out.join(labels, "id").where("why IS NULL AND label <> 'label 3'").select("id", "embedding")
    rows = collect(joined, "embedding")
    assert sorted(server.inputs(TEXT)) == sorted(values)
    with ClipClient(**options) as client:
        want = client.embed_texts([v for i, v in enumerate(values) if i % 7 != 3])
    assert np.array_equal(matrix([r[0] for r in rows]), want)


def test_the_first_line_of_a_bad_rows_error_names_partition_row_and_reason(
    spark: SparkSession, server: ServingServer
) -> None:
    """A viewer that keeps only the first line of the worker's error (or cuts it short, as Spark
    Connect's ``str()`` does) still sees the partition, the row and the reason: a server's
    multi-line message is put on that one line, and no cause's traceback comes before it."""

    def refuse_with_traceback(kind: str, inputs: list[str]) -> list[list[float]]:
        if any("POISON" in x for x in inputs):
            raise ValueError(
                'Traceback (most recent call last):\n  File "model.py", line 3, in predict\n'
                "ValueError: cannot embed a poisoned caption"
            )
        return answer_rows(None, DIM, kind, inputs)

    server.model = refuse_with_traceback
    df = text_frame(spark, ["a dog", None, "a cat", "POISON pill", "a cow"], partitions=1)
    with pytest.raises(Exception) as caught:
        df.withColumn("e", cs.text_embedding_udf(**opts(server, timeout=49))("text")).collect()
    message = str(caught.value)
    line = error_line(message)
    assert "Spark partition 0, row 3" in line, line
    assert "cannot embed a poisoned caption" in line, line
    assert "BadRequestError" in line, line
    assert "The above exception was the direct cause" not in message
    assert TOKEN not in message


# --------------------------------------------------------------------------------------------------
# Local mode


def test_local_mode_texts_and_images_match_the_local_client(
    spark: SparkSession, tiny: Path, image_dir: Path, worker_log: Path
) -> None:
    values = texts(N_TEXTS)
    options = {"local": True, "model": str(tiny), "device": "cpu", "timeout": 38}
    out = collect(cs.embed_table(text_frame(spark, values), "text", "text", **options), "embedding")
    frames = image_frames(spark, image_dir)
    images = {
        form: collect(cs.embed_table(df, col, "image", **options), "embedding")
        for form, (df, col, _) in frames.items()
        if form != "uri"
    }
    with ClipClient.local(str(tiny), device="cpu") as client:
        want_texts = client.embed_texts(values)
        want_images = client.embed_images(frames["path"][2])
    np.testing.assert_allclose(matrix([r[0] for r in out]), want_texts, rtol=1e-5, atol=1e-6)
    for form, rows in images.items():
        got = matrix([r[0] for r in rows])
        assert got.shape == want_images.shape, form
        np.testing.assert_allclose(got, want_images, rtol=1e-5, atol=1e-6, err_msg=form)
    # The model was loaded once per worker process, for the texts and the images alike.
    fp = fingerprint({"timeout": 38}, local=True, model=str(tiny), device="cpu")
    built = constructions(worker_log, fp)
    assert built, "no construction was logged"
    assert len(built) == len(set(built))


# --------------------------------------------------------------------------------------------------
# One client per worker process


def test_one_client_per_worker_process(spark: SparkSession, server: ServingServer, worker_log: Path) -> None:
    options = opts(server, timeout=39, batch_size=16)
    udf = cs.text_embedding_udf(**options)
    df = text_frame(spark, texts(1200), partitions=6)  # 6 tasks x 1 Arrow batch of 200
    for _ in range(2):  # two jobs: the second reuses the workers, and their clients
        rows = df.withColumn("e", udf("text")).select("e").collect()
        assert len(rows) == 1200
        assert all(r[0] is not None for r in rows)
    built = constructions(worker_log, fingerprint(options))
    pids = {pid for _, pid in built}
    assert built, "no construction was logged"
    assert len(built) == len(pids), f"a worker built its client twice: {built}"
    assert len(built) <= 2 * 2, built  # at most a few workers (2 cores), never one per task or batch


# --------------------------------------------------------------------------------------------------
# A worker killed mid-partition


def python_workers() -> set[int]:
    """pids of the Python worker processes under this test process (the JVM's pyspark.daemon
    children): only processes this session started."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    found, todo = set(), [os.getpid()]
    while todo:
        pid = todo.pop()
        for child in children.get(pid, []):
            todo.append(child)
            try:
                cmd = Path(f"/proc/{child}/cmdline").read_bytes()
            except OSError:
                continue
            if b"pyspark.daemon" in cmd or b"pyspark.worker" in cmd:
                found.add(child)
    return found


def test_a_worker_killed_mid_partition_is_rerun_and_the_output_is_complete(
    spark: SparkSession, server: ServingServer, worker_log: Path
) -> None:
    values = texts(400)
    options = opts(server, timeout=40, batch_size=10, max_concurrency=1)
    fp = fingerprint(options)
    server.latency = 0.1  # 20 requests per partition, one at a time: about 2 s each
    udf = cs.text_embedding_udf(**options)
    df = text_frame(spark, values, partitions=2)
    result: dict[str, Any] = {}

    def run() -> None:
        try:
            result["rows"] = collect(df.withColumn("e", udf("text")), "e")
        except BaseException as exc:
            result["error"] = exc

    job = threading.Thread(target=run)
    job.start()
    deadline = time.monotonic() + 120
    victim = None
    while victim is None and time.monotonic() < deadline and job.is_alive():
        built = constructions(worker_log, fp)
        if built and server.posts(TEXT) >= 3:
            candidate = built[0][1]
            if candidate in python_workers():
                victim = candidate
        time.sleep(0.05)
    assert victim is not None, "no worker was seen mid-partition"
    os.kill(victim, signal.SIGKILL)
    job.join(180)
    assert not job.is_alive()
    assert "error" not in result, result.get("error")
    rows = result["rows"]
    sent = server.inputs(TEXT)
    assert not Path(f"/proc/{victim}").exists()
    # The killed task's rows that were answered before the kill were sent again by its re-run.
    assert len(sent) > len(values)
    assert set(sent) == set(values)
    with ClipClient(**server.client_kwargs()) as client:
        want = client.embed_texts(values)
    assert np.array_equal(matrix([r[0] for r in rows]), want)


# --------------------------------------------------------------------------------------------------
# Credentials


def test_the_token_never_shows_in_a_plan_a_repr_or_an_error(
    spark: SparkSession, server: ServingServer
) -> None:
    echo = Reply(status=401, body=lambda h: {"error_code": "UNAUTHENTICATED", "message": f"bad {h}"})
    server.script = [echo] * 8  # every attempt of the task (local[2,4]: four)
    options = opts(server, timeout=41, max_retries=0)
    udf = cs.text_embedding_udf(**options)
    df = text_frame(spark, ["a dog"], partitions=1).withColumn("e", udf("text"))
    import io
    from contextlib import redirect_stdout

    plan = io.StringIO()
    with redirect_stdout(plan):
        df.explain(extended=True)
    assert "clip_text_embedding" in plan.getvalue()
    assert TOKEN not in plan.getvalue()
    assert TOKEN not in repr(udf)
    assert TOKEN not in str(udf)
    spec = cs._spec(
        "text", image_column="auto", on_error="raise", error_column=False, local=False, model=None,
        device=None, options=options,
    )  # fmt: skip
    assert TOKEN not in repr(spec)
    with pytest.raises(Exception) as caught:
        df.collect()
    assert "401" in str(caught.value) or "Authentication" in str(caught.value)
    assert TOKEN not in str(caught.value)
    assert TOKEN not in repr(caught.value)


# --------------------------------------------------------------------------------------------------
# Arguments checked on the driver


def test_arguments_are_checked_before_any_job(spark: SparkSession) -> None:
    with pytest.raises(TypeError, match="batchsize"):
        cs.text_embedding_udf(batchsize=3)
    with pytest.raises(TypeError, match="config= cannot be used"):
        cs.text_embedding_udf(config=object())
    with pytest.raises(TypeError, match="local=True"):
        cs.text_embedding_udf(local=True, host="https://x")
    with pytest.raises(TypeError, match="model= and device="):
        cs.image_embedding_udf(model="x")
    with pytest.raises(ValueError, match="batch_size"):
        cs.text_embedding_udf(batch_size=0)
    with pytest.raises(ValueError, match="on_error"):
        cs.text_embedding_udf(on_error="mark")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="image_column"):
        cs.image_embedding_udf(image_column="url")  # type: ignore[arg-type]
    df = spark.createDataFrame([(1, "a", b"x")], "id int, text string, content binary")
    with pytest.raises(TypeError, match="'id' is int"):
        cs.embed_table(df, "id", "text")
    with pytest.raises(TypeError, match="'content' is binary"):
        cs.embed_table(df, "content", "text")
    with pytest.raises(ValueError, match="'nope' is not in the DataFrame"):
        cs.embed_table(df, "nope", "text")
    with pytest.raises(ValueError, match="already has a column 'text'"):
        cs.embed_table(df, "content", "image", output_column="text")
    assert isinstance(df.schema["content"].dataType, BinaryType)


def test_bad_arguments_are_named_before_any_job(spark: SparkSession) -> None:
    df = spark.createDataFrame([(1, "a", b"x")], "id int, text string, content binary")
    for flag in (True, False):
        with pytest.raises(TypeError, match="error_column of embed_table is the name"):
            cs.embed_table(df, "text", "text", error_column=flag)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="error_column must be a non-empty"):
        cs.embed_table(df, "text", "text", error_column="")
    with pytest.raises(TypeError, match="output_column must be"):
        cs.embed_table(df, "text", "text", output_column=None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="output_column must be a non-empty"):
        cs.embed_table(df, "text", "text", output_column=" ")
    with pytest.raises(TypeError, match="column must be the input column's name"):
        cs.embed_table(df, df["text"], "text")  # type: ignore[arg-type]
    # image_column must fit the column's type
    for mode in ("path", "base64"):
        with pytest.raises(TypeError, match=f"image_column='{mode}' takes a string column"):
            cs.embed_table(df, "content", "image", image_column=mode)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match='image_column="binary" takes a binary column'):
        cs.embed_table(df, "text", "image", image_column="binary")
    with pytest.raises(ValueError, match="image_column must be one of"):
        cs.embed_table(df, "text", "image", image_column="url")  # type: ignore[arg-type]
    # an error column needs tolerant mode: with "raise" it would stay empty
    with pytest.raises(ValueError, match="an error column holds the reasons of rows nulled"):
        cs.embed_table(df, "text", "text", on_error="raise", error_column="why")
    with pytest.raises(ValueError, match="an error column holds the reasons of rows nulled"):
        cs.image_embedding_udf(on_error="raise", error_column=True)
    # UDF options
    with pytest.raises(ValueError, match="device='banana' is not a torch device"):
        cs.text_embedding_udf(local=True, device="banana")
    with pytest.raises(TypeError, match="device must be a string"):
        cs.text_embedding_udf(local=True, device=0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="local must be True or False"):
        cs.image_embedding_udf(local=1)  # type: ignore[arg-type]
    for good in ("cpu", "cuda", "cuda:1", "mps"):
        cs.text_embedding_udf(local=True, device=good)


def test_column_names_resolve_as_spark_resolves_them(spark: SparkSession, server: ServingServer) -> None:
    """``spark.sql.caseSensitive`` (default false) decides which names match; output names that
    would clash are refused; dots and backticks in any name are quoted, not parsed."""
    df = spark.createDataFrame([(0, "a dog", "x"), (1, None, "y")], "id int, Caption string, Label string")
    with pytest.raises(ValueError, match=r"already has a column 'label' \('Label'"):
        cs.embed_table(df, "caption", "text", output_column="label")
    with pytest.raises(ValueError, match="error_column and output_column must differ"):
        cs.embed_table(df, "caption", "text", output_column="emb", error_column="EMB")
    with pytest.raises(ValueError, match="error_column and output_column must differ"):
        cs.embed_table(df, "Caption", "text", output_column="emb", error_column="emb")
    assert "embedding" in cs.embed_table(df, "CAPTION", "text").columns
    twins = spark.createDataFrame([("a", "b")], "t string, T string")
    with pytest.raises(ValueError, match="ambiguous"):
        cs.embed_table(twins, "t", "text")
    spark.conf.set("spark.sql.caseSensitive", "true")
    try:
        with pytest.raises(ValueError, match="'caption' is not in the DataFrame"):
            cs.embed_table(df, "caption", "text")
        out = cs.embed_table(df, "Caption", "text", output_column="label", error_column="LABEL")
        assert out.columns == ["id", "Caption", "Label", "label", "LABEL"]
        assert cs.embed_table(twins, "T", "text").columns == ["t", "T", "embedding"]
    finally:
        spark.conf.unset("spark.sql.caseSensitive")

    # Dots and backticks, in the input column and in both new ones, through a real job.
    odd = df.withColumnRenamed("Caption", "my.caption `x`")
    options = opts(server, timeout=43)
    out = cs.embed_table(odd, "MY.caption `X`", "text", "emb.v`1", error_column="why.`", **options)
    assert out.columns == ["id", "my.caption `x`", "Label", "emb.v`1", "why.`"]
    rows = [(r[3], r[4]) for r in out.orderBy("id").collect()]  # by position: names are parsed
    with ClipClient(**options) as client:
        want = client.embed_texts(["a dog"])
    assert np.array_equal(matrix([rows[0][0]]), want)
    assert rows[1] == (None, None)


def test_urls_empty_and_percent_encoded_paths(
    spark: SparkSession, server: ServingServer, tmp_path: Path
) -> None:
    """In ``"path"`` and ``"auto"`` mode a URL is refused with the string as given and a hint, an
    empty string as an empty path; ``file:`` URIs are percent-decoded, as ``_metadata.file_path``
    gives them for names with spaces or non-ASCII letters."""
    folder = tmp_path / "photos été"
    folder.mkdir()
    image = encode(Image.fromarray(picture(50, 40, seed=7)), "PNG")
    (folder / "a photo ü.png").write_bytes(image)
    files = spark.read.format("binaryFile").load(str(folder)).select("_metadata.file_path")
    uri = files.collect()[0][0]
    assert "%20" in uri  # what Spark gives: a percent-encoded URI
    urls = ["s3://bucket/a.jpg", "abfss://c@acct.dfs.core.windows.net/a.jpg", "https://example.com/a.jpg"]
    df = spark.createDataFrame(list(enumerate([uri, "", *urls])), "id int, p string").coalesce(1)
    options = opts(server, timeout=44)
    with ClipClient(**options) as client:
        want = client.embed_images([image])
    for mode in ("path", "auto"):
        out = cs.embed_table(df, "p", "image", error_column="why", image_column=mode, **options)  # type: ignore[arg-type]
        rows = collect(out, "embedding", "why")
        assert np.array_equal(matrix([rows[0][0]]), want), rows[0][1]
        assert rows[1][0] is None
        assert "empty path" in rows[1][1], rows[1][1]
        for (embedding, why), url in zip(rows[2:], urls, strict=True):
            assert embedding is None
            assert repr(url) in why, why
            assert "URLs are not fetched; download the file first" in why, why


def test_a_file_named_with_a_percent_sign_is_read_as_named(tmp_path: Path) -> None:
    """binaryFile's own ``path`` column does not percent-encode: a name that only exists undecoded
    is kept."""
    real = tmp_path / "100%25.png"
    real.write_bytes(b"x")
    assert cs._local_path(f"file:{real}") == str(real)
    assert cs._local_path(f"file:{tmp_path}/a%20b.png") == f"{tmp_path}/a b.png"


def test_the_task_gpu_picks_the_device() -> None:
    from pyspark.resource import ResourceInformation

    assert cs._task_device({"gpu": ResourceInformation("gpu", ["3", "4"])}) == "cuda:3"
    assert cs._task_device({}) is None
    assert cs._task_device(None) is None


@pytest.mark.parametrize(
    ("given", "opened"),
    [
        ("dbfs:/Volumes/main/default/x.jpg", "/Volumes/main/default/x.jpg"),
        ("dbfs:/FileStore/x.jpg", "/dbfs/FileStore/x.jpg"),
        ("file:/tmp/x.jpg", "/tmp/x.jpg"),
        ("file:///tmp/x.jpg", "/tmp/x.jpg"),
        ("file:/tmp/a%20b%C3%A9.jpg", "/tmp/a bé.jpg"),
        ("dbfs:/Volumes/m/d/a%20b.jpg", "/Volumes/m/d/a b.jpg"),
        ("/Volumes/a/b/c.png", "/Volumes/a/b/c.png"),
        ("relative/x.png", "relative/x.png"),
    ],
)
def test_path_uris_map_to_the_files_they_name(given: str, opened: str) -> None:
    assert cs._local_path(given) == opened


def test_pyspark_is_imported_lazily_and_its_absence_named() -> None:
    """``import clip_client.spark`` loads no pyspark or pandas; building a UDF without pyspark raises
    an ImportError with the install command (a real interpreter where pyspark cannot be imported)."""
    import subprocess

    code = (
        "import sys\n"
        "import clip_client.spark as cs\n"
        "assert 'pyspark' not in sys.modules and 'pandas' not in sys.modules, sorted(sys.modules)\n"
        "sys.modules['pyspark'] = None\n"
        "try:\n"
        "    cs.text_embedding_udf()\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert 'pip install "clip-serving-client[spark]"' in done.stdout
    assert "pyspark" in done.stdout


# --------------------------------------------------------------------------------------------------
# Spark Connect

_CONNECT_SCRIPT = """
import json, os, sys
import numpy as np
from pyspark.sql import SparkSession
from clip_client.spark import embed_table, image_embedding_udf

options = json.loads(os.environ["CLIP_TEST_OPTIONS"])
texts = json.loads(os.environ["CLIP_TEST_TEXTS"])
spark = SparkSession.builder.remote("local[2]").getOrCreate()
assert type(spark).__module__ == "pyspark.sql.connect.session", type(spark)
df = spark.createDataFrame(list(enumerate(texts)), "id int, text string").repartition(3)
out = embed_table(df, "text", "text", **options).orderBy("id").collect()
np.save(sys.argv[1], np.asarray([r["embedding"] for r in out], dtype=np.float32))
images = spark.read.format("binaryFile").load(sys.argv[3])
udf = image_embedding_udf(**options)
rows = images.select("path", udf("content").alias("embedding")).orderBy("path").collect()
np.save(sys.argv[2], np.asarray([r["embedding"] for r in rows], dtype=np.float32))
good = os.path.join(sys.argv[3], sorted(os.listdir(sys.argv[3]))[0])
bad = spark.createDataFrame([(0, good), (1, sys.argv[4])], "id int, p string").coalesce(1)
try:
    bad.select(image_embedding_udf(image_column="path", **options)("p")).collect()
except Exception as exc:
    open(sys.argv[5], "w", encoding="utf-8").write(str(exc))
spark.stop()
"""


def test_the_udfs_run_under_spark_connect(server: ServingServer, image_dir: Path, tmp_path: Path) -> None:
    """Under Spark Connect (what Databricks serverless, shared clusters and Databricks Connect
    run): a local Spark Connect server (``SparkSession.builder.remote("local[2]")``, in a process
    of its own, since this one holds a classic session) runs ``embed_table`` on texts and the image
    UDF on a ``binaryFile`` table; both equal ``ClipClient``'s rows. A bad row's failed job shows,
    in ``str()`` of the client's exception, our error line with the partition, row and reason."""
    pytest.importorskip("grpc")  # pyspark[connect]
    import json
    import subprocess

    values = texts(120)
    files = sorted(image_dir.iterdir())[:40]
    folder = tmp_path / "images"
    folder.mkdir()
    for f in files:
        shutil.copy(f, folder / f.name)
    options = opts(server, timeout=37, batch_size=16)
    env = {
        **os.environ,
        "PYSPARK_PYTHON": sys.executable,
        "CLIP_TEST_OPTIONS": json.dumps(options),
        "CLIP_TEST_TEXTS": json.dumps(values),
    }
    done = subprocess.run(
        [sys.executable, "-c", _CONNECT_SCRIPT, tmp_path / "t.npy", tmp_path / "i.npy", folder,
         tmp_path / "gone.png", tmp_path / "error.txt"],
        capture_output=True, text=True, timeout=600, env=env, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    assert TOKEN not in done.stdout + done.stderr
    with ClipClient(**options) as client:
        want_texts = client.embed_texts(values)
        want_images = client.embed_images(sorted(folder.iterdir()))
    np.testing.assert_array_equal(np.load(tmp_path / "t.npy"), want_texts)
    np.testing.assert_array_equal(np.load(tmp_path / "i.npy"), want_images)
    line = error_line((tmp_path / "error.txt").read_text(encoding="utf-8"))
    assert "InvalidInputError: Spark partition 0, row 1 (counted from 0 within the partition)" in line, line
    assert "gone.png" in line, line
    assert "no such file" in line, line


def test_a_volume_path_column_is_read_through_the_files_api_off_cluster(
    spark: SparkSession, serve: Any, tmp_path: Path
) -> None:
    """Off a cluster, `/Volumes/...` in a path column (and binaryFile's `dbfs:/Volumes/...`) names
    no local file: each worker's client reads it through its workspace's Files API (a loopback fake
    that is also the serving endpoint). A file that is not there is a bad row naming its path."""
    from serving_server import FilesServer

    root = tmp_path / "volumes"
    photos = root / "main" / "default" / "photos"
    photos.mkdir(parents=True)
    names = []
    for i in range(12):
        fmt, ext = (("PNG", "png"), ("JPEG", "jpg"))[i % 2]
        names.append(f"img_{i:02d}.{ext}")
        (photos / names[-1]).write_bytes(encode(Image.fromarray(picture(50 + i, 40 + 2 * i, seed=i)), fmt))
    files = serve(cls=FilesServer, root=root)
    volume = "/Volumes/main/default/photos"
    paths = [f"{volume}/{n}" if i % 3 else f"dbfs:{volume}/{n}" for i, n in enumerate(names)]
    paths.append(f"{volume}/gone.jpg")
    df = spark.createDataFrame(list(enumerate(paths)), "id int, p string").repartition(3)
    options = opts(files, timeout=47)
    out = cs.embed_table(df, "p", "image", error_column="why", image_column="path", **options)
    rows = collect(out, "embedding", "why")
    with ClipClient(**options) as client:
        want = client.embed_images([str(photos / n) for n in names])
    assert np.array_equal(matrix([r[0] for r in rows[:-1]]), want)
    embedding, why = rows[-1]
    assert embedding is None
    assert f"{volume}/gone.jpg" in why, why
    assert "no such file" in why, why
    assert TOKEN not in why
    assert sum(files.downloads.values()) == len(names)
