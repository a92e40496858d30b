"""`clip-client dedupe --method`: the exact and approximate methods through the command (typer's
CliRunner, real .npy files), and what happens without faiss."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import clip_client.search as search_module
from clip_client._cli.app import app


def _run(*args: object) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})
    return result.exit_code, result.stdout, result.stderr


def _groups(stdout: str) -> list[list[int]]:
    return [[m["id"] for m in json.loads(line)["members"]] for line in stdout.splitlines() if line]


@pytest.fixture
def dupes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """3,000 random 32-d rows with 40 planted near-copies (cosine 0.98), saved as raw.npy."""
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(3)
    m = rng.standard_normal((3000, 32))
    for i in range(40):
        u = m[i] / np.linalg.norm(m[i])
        w = rng.standard_normal(32)
        w -= (w @ u) * u
        m[2000 + i] = 0.98 * u + np.sqrt(1 - 0.98**2) * w / np.linalg.norm(w)
    np.save(tmp_path / "raw.npy", m.astype(np.float32))
    return tmp_path / "raw.npy"


def test_every_method_finds_the_same_groups(dupes: Path) -> None:
    pytest.importorskip("faiss")
    want = [[i, 2000 + i] for i in range(40)]
    for method in ([], ["--method", "exact"], ["--method", "approximate"], ["--method", "auto"]):
        code, out, err = _run("dedupe", dupes, "--json", *method)
        assert code == 0, err
        assert _groups(out) == want, method
        assert "dedupe (" not in err  # no progress bar where stderr is not a terminal


def test_an_unknown_method_is_refused(dupes: Path) -> None:
    code, _, err = _run("dedupe", dupes, "--method", "fast")
    assert code == 2
    assert "--method" in err
    assert "approximate" in err


def test_without_faiss_auto_warns_and_runs_exact_and_approximate_fails_with_the_hint(
    dupes: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "faiss", None)
    monkeypatch.setattr(search_module, "EXACT_DUPLICATE_MAX_ROWS", 1000)
    with pytest.warns(UserWarning, match=r"clip-serving-client\[index\]"):
        code, out, err = _run("dedupe", dupes, "--json")
    assert code == 0, err
    assert _groups(out) == [[i, 2000 + i] for i in range(40)]
    code, out, err = _run("dedupe", dupes, "--method", "approximate")
    assert code != 0
    assert 'pip install "clip-serving-client[index]"' in err
