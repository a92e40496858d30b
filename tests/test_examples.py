"""The example scripts, run as a user runs them: a subprocess on a folder of real images, twice each,
in local mode on the tiny checkpoint and through the loopback server (found by the subprocess's
databricks-sdk from ``DATABRICKS_HOST``/``DATABRICKS_TOKEN``). Each test reads what the script
printed or wrote and checks its content against the library, not just the exit code.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from harness import IMAGE
from image_factory import noise, picture
from PIL import Image
from serving_server import TOKEN, ServingServer, expected_vector, image_pixels
from tiny_clip import write_tiny_clip

from clip_client import ClipClient

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
MODES = ["local", "server"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_clip(tmp_path_factory.mktemp("tiny-clip"))


@pytest.fixture
def images(tmp_path: Path) -> Path:
    """Real image files: ``a.png`` (448x448) planted twice more, as ``a-copy.png`` (the same bytes)
    and ``a-small.png`` (resized to 224x224 with BICUBIC: the very pixels the client prepares from
    ``a.png``), and three unrelated images."""
    folder = tmp_path / "images"
    folder.mkdir()
    Image.fromarray(picture(448, 448, seed=1)).save(folder / "a.png")
    shutil.copyfile(folder / "a.png", folder / "a-copy.png")
    with Image.open(folder / "a.png") as img:
        img.resize((224, 224), Image.Resampling.BICUBIC).save(folder / "a-small.png")
    Image.fromarray(picture(300, 200, seed=2)).save(folder / "b.jpg", quality=90)
    Image.fromarray(picture(200, 320, seed=3)).save(folder / "c.png")
    Image.fromarray(noise(256, 256, seed=4)).save(folder / "d.png")
    return folder


def pixel_model(kind: str, inputs: list[str]) -> list[list[float]]:
    """A loopback endpoint that, like a real one, embeds what it decodes: an image's row is a function
    of its pixels, whatever file format carried them."""
    keys = inputs if kind == "text" else [image_pixels(x).tobytes() for x in inputs]
    return [expected_vector(kind, key).tolist() for key in keys]


class Example:
    """Runs ``examples/<name>`` in one mode: ``--local <tiny>`` with no workspace in the
    environment, or against ``server`` through databricks-sdk's environment variables."""

    def __init__(self, mode: str, tiny: Path, server: ServingServer, home: Path) -> None:
        self.mode = mode
        self.tiny = tiny
        self.server = server
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABRICKS_", "ARM_", "AZURE_"))}
        env |= {
            "HOME": str(home),
            "DATABRICKS_CONFIG_FILE": str(home / "no-such-databrickscfg"),
            "HF_HUB_OFFLINE": "1",
            "PYTHONPATH": str(ROOT),
        }
        if mode == "server":
            env |= {"DATABRICKS_HOST": server.url, "DATABRICKS_TOKEN": TOKEN}
            server.model = pixel_model
        self.env = env

    def run(self, name: str, *args: str | Path) -> str:
        """The script's stdout; it must exit 0 and never show the token."""
        argv = [sys.executable, str(EXAMPLES / name), *map(str, args)]
        if self.mode == "local":
            argv += ["--local", str(self.tiny)]
        done = subprocess.run(
            argv, capture_output=True, text=True, env=self.env, timeout=240, check=False, cwd=ROOT
        )
        assert done.returncode == 0, done.stderr
        assert TOKEN not in done.stdout + done.stderr
        self.stderr = done.stderr
        return done.stdout

    def client(self) -> ClipClient:
        """A client in-process of the same model, to check what the script printed."""
        if self.mode == "local":
            return ClipClient.local(self.tiny, device="cpu", dtype="float32")
        return ClipClient(**self.server.client_kwargs())


@pytest.fixture(params=MODES)
def example(request: pytest.FixtureRequest, tiny: Path, server: ServingServer, tmp_path: Path) -> Example:
    home = tmp_path / "home"
    home.mkdir()
    return Example(request.param, tiny, server, home)


def ranked(out: str, query: str) -> list[tuple[int, float, str]]:
    """The (rank, cosine, file) rows printed under ``query: <query>``."""
    section = out.split(f"query: {query}\n", 1)[1].split("\n\n", 1)[0]
    rows = re.findall(r"^\s*(\d+)\s+(-?\d\.\d{3})\s+(.+)$", section, flags=re.MULTILINE)
    return [(int(r), float(c), f) for r, c, f in rows]


def test_image_search_ranks_an_image_first_for_itself_and_reruns_from_the_cache(
    example: Example, images: Path, server: ServingServer, tmp_path: Path
) -> None:
    cache = tmp_path / "cache.sqlite"
    args = [
        "--images",
        images,
        "--image",
        images / "c.png",
        "--query",
        "a photo",
        "-k",
        "3",
        "--cache",
        cache,
    ]

    out = example.run("image_search.py", *args)

    assert "6 images" in out
    assert "0 from the cache, 6 embedded" in out
    by_image = ranked(out, f"image {str(images / 'c.png')!r}")
    assert by_image[0] == (1, 1.0, str(images / "c.png"))
    assert [r for r, _, _ in by_image] == [1, 2, 3]
    assert all(c < 1.0 for _, c, _ in by_image[1:])
    by_text = ranked(out, "text 'a photo'")
    assert len(by_text) == 3
    cosines = [c for _, c, _ in by_text]
    assert cosines == sorted(cosines, reverse=True)
    with example.client() as client:  # the same ranking, in-process
        matrix = client.embed_images(sorted(images.iterdir()))
        query = client.embed_text("a photo")
    scores = (matrix @ query) / np.linalg.norm(matrix, axis=1) / np.linalg.norm(query)
    best = np.argsort(-scores, kind="stable")[:3]
    np.testing.assert_allclose(cosines, scores[best], atol=6e-4)

    posts = server.posts(IMAGE)
    again = example.run("image_search.py", *args)
    assert "6 from the cache, 0 embedded" in again
    assert ranked(again, f"image {str(images / 'c.png')!r}") == by_image
    assert server.posts(IMAGE) == posts  # nothing sent again (stays 0 in local mode)


def test_find_duplicates_groups_the_planted_copies(example: Example, images: Path) -> None:
    # At 0.99995 only the same pixels group, whatever the model (the tiny random one puts any two
    # gradients above 0.998); the planted copies are the same pixels once prepared.
    out = example.run("find_duplicates.py", "--images", images, "--threshold", "0.99995")

    assert "6 images" in out
    assert "1 group(s) at cosine >= 0.99995" in out
    group = re.findall(r"^\s+(\d\.\d{3})\s+(.+)$", out.split("group 1 (3 images)\n", 1)[1], re.MULTILINE)
    assert sorted(path for _, path in group) == sorted(
        str(images / n) for n in ("a.png", "a-copy.png", "a-small.png")
    )
    assert [similarity for similarity, _ in group] == ["1.000"] * 3


def test_zero_shot_prints_probabilities_that_sum_to_one(example: Example, images: Path) -> None:
    (images / "e-broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    labels = ["a cat", "a dog", "a red car"]

    out = example.run(
        "zero_shot.py", "--images", images, *(a for label in labels for a in ("--label", label))
    )

    table = out.split("\n\n", 1)[1].strip().splitlines()
    assert table[0].split() == ["image", "a", "cat", "a", "dog", "a", "red", "car", "best"]
    rows = {line.split()[0]: line.split()[1:] for line in table[1:]}
    names = sorted(p.name for p in images.iterdir())
    assert sorted(rows) == names
    assert rows["e-broken.png"] == ["nan", "nan", "nan", "(failed)"]
    assert "skipped" in example.stderr
    assert "e-broken.png" in example.stderr
    with example.client() as client:
        good = [images / n for n in names if n != "e-broken.png"]
        want = client.classify(good, labels)
    for path, expected, best in zip(good, want.probabilities, want.predictions, strict=True):
        cells = rows[path.name]
        printed = np.array([float(c) for c in cells[:3]])
        assert abs(printed.sum() - 1.0) <= 0.0015  # three values rounded to 3 decimals
        np.testing.assert_allclose(printed, expected, atol=6e-4)
        assert " ".join(cells[3:]) == best


def test_offline_embedding_writes_the_rows_and_their_paths(
    example: Example, images: Path, tmp_path: Path
) -> None:
    (images / "e-broken.png").write_bytes(b"not an image")
    out_file = tmp_path / "out" / "vectors.npy"
    out_file.parent.mkdir()
    args: list[str | Path] = ["--images", images, "--out", out_file, "--batch-size", "2"]
    if example.mode == "local":
        args += ["--device", "cpu", "--dtype", "float32"]

    out = example.run("offline_embedding.py", *args)

    paths = sorted(images.iterdir())
    listed = out_file.with_suffix(".txt").read_text(encoding="utf-8").splitlines()
    assert listed == [str(p) for p in paths]
    matrix = np.load(out_file)
    assert matrix.dtype == np.float32
    assert f"wrote {len(paths)} x {matrix.shape[1]} float32 embeddings" in out
    assert "(1 failed, NaN rows)" in out
    broken = listed.index(str(images / "e-broken.png"))
    assert np.isnan(matrix[broken]).all()
    with example.client() as client:
        want = client.embed_images([p for p in paths if p.name != "e-broken.png"])
    np.testing.assert_allclose(np.delete(matrix, broken, axis=0), want, rtol=1e-5, atol=1e-6)
