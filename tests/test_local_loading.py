"""Local mode's loading path as a new user meets it (issue 10): the Hugging Face cache first with no
network, a hub that cannot serve the model failing in seconds with a command that exists, and no
"Loading weights" bar unless asked for.

The hub is never the real one: ``HF_ENDPOINT`` points at a loopback port this test holds, either
refusing connections or accepting them and never answering, so every test runs the same with or
without a network, and the port records what the loader asked for. Hub settings are read
when huggingface_hub is imported, so those tests run the loader in a fresh interpreter.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from tiny_clip import write_tiny_clip

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from clip_client import ClipClient  # noqa: E402
from clip_client.local import LocalBackend  # noqa: E402

TESTS = Path(__file__).parent
MISSING = "clip-client-tests/no-such-model"  # a hub id nobody has cached, here or anywhere
#: Loading an uncached model must give up within this many seconds when the hub cannot serve it.
#: Before the hub check it took 23 s of retry sleeps alone (30 s in all) with connections refused,
#: and minutes with a hub that never answers.
FAIL_WITHIN_S = 20.0
#: Bound on the one connection attempt in the never-answering case (huggingface_hub's own setting).
ETAG_TIMEOUT_S = 2

LOAD_AND_REPORT = """
    import json, sys, time
    import transformers
    transformers.CLIPModel, transformers.AutoTokenizer  # import the lazy modules before timing
    from clip_client.local import LocalBackend, ModelLoadError
    start = time.monotonic()
    try:
        backend = LocalBackend(sys.argv[1], device="cpu")
    except ModelLoadError as exc:
        outcome = {"error": str(exc)}
    else:
        outcome = {"dim": backend.dim, "rows": backend.embed("text", ["a dog"]).shape[0]}
    outcome["seconds"] = time.monotonic() - start
    print("OUTCOME", json.dumps(outcome))
"""


class FakeHub:
    """A loopback address for ``HF_ENDPOINT`` that never serves anything.

    ``answering=False``: a bound port nobody listens on, so every connection is refused at once.
    ``answering=True``: it accepts connections, records each request line and never answers, so
    every request runs into the client's timeout; ``requests`` then shows what the loader asked for.
    """

    def __init__(self, answering: bool) -> None:
        self.answering = answering
        self.requests: list[str] = []
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind(("127.0.0.1", 0))
        host, port = self._sock.getsockname()
        self.url = f"http://{host}:{port}"
        self._held: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if answering:
            self._sock.listen(16)
            self._sock.settimeout(0.1)
            self._thread = threading.Thread(target=self._accept, daemon=True)
            self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self._held.append(conn)  # held open, never answered
            conn.settimeout(5)
            head = b""
            with contextlib.suppress(OSError):
                while b"\r\n" not in head and len(head) < 8192:
                    chunk = conn.recv(1024)
                    if not chunk:
                        break
                    head += chunk
            self.requests.append(head.split(b"\r\n", 1)[0].decode("latin-1"))

    def model_requests(self, repo: str) -> list[str]:
        return [line for line in self.requests if f"/{repo}/" in line]

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        for conn in self._held:
            conn.close()
        self._sock.close()


@contextlib.contextmanager
def fake_hub(answering: bool) -> Iterator[FakeHub]:
    hub = FakeHub(answering)
    try:
        yield hub
    finally:
        hub.close()


def load_in_fresh_interpreter(model: str, hf_home: Path, hub: FakeHub, **env: str) -> tuple[dict, str]:
    """``LocalBackend(model)`` in a new interpreter with its own Hugging Face home and ``hub`` as the
    hub; returns what it reported and its stderr."""
    full_env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("HF_", "HUGGINGFACE_", "TRANSFORMERS_")) and key != "XDG_CACHE_HOME"
    }
    full_env |= {"HF_HOME": str(hf_home), "HF_ENDPOINT": hub.url, **env}
    full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(LOAD_AND_REPORT), model],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stdout.splitlines() if line.startswith("OUTCOME ")]
    assert len(lines) == 1, done.stdout + done.stderr
    return json.loads(lines[0].removeprefix("OUTCOME ")), done.stderr


def assert_says_what_to_do(message: str, model: str) -> None:
    assert "\n" not in message  # one line: the examples print it as it is
    assert f"could not load CLIP model {model!r}" in message
    assert "not in the Hugging Face cache" in message
    # a download command that exists in current huggingface_hub (`huggingface-cli` is gone)
    assert f"hf download {model} --include '*.json' --include '*.txt' --include '*.safetensors'" in message
    assert "huggingface-cli" not in message
    assert "--local-dir FOLDER" in message
    assert "point model= at a folder" in message
    assert "ClipClient.local('path/to/folder')" in message


@pytest.mark.parametrize("answering", [False, True], ids=["connection-refused", "never-answers"])
def test_uncached_model_with_the_hub_unreachable_fails_in_seconds(tmp_path: Path, answering: bool) -> None:
    with fake_hub(answering) as hub:
        outcome, stderr = load_in_fresh_interpreter(
            MISSING, tmp_path / "hf", hub, HF_HUB_ETAG_TIMEOUT=str(ETAG_TIMEOUT_S)
        )
    message = outcome.get("error")
    assert message is not None, outcome
    assert_says_what_to_do(message, MISSING)
    assert f"the hub ({hub.url}) cannot be reached" in message
    assert outcome["seconds"] < FAIL_WITHIN_S, outcome
    assert "Retry" not in stderr, stderr  # huggingface_hub's backoff never started
    if answering:
        # one request for the model, bounded by HF_HUB_ETAG_TIMEOUT and not retried
        assert hub.model_requests(MISSING) == [f"HEAD /{MISSING}/resolve/main/config.json HTTP/1.1"]
    assert not list((tmp_path / "hf").rglob("config.json"))  # nothing downloaded


def test_uncached_model_while_offline_does_not_ask_the_hub(tmp_path: Path) -> None:
    with fake_hub(answering=True) as hub:
        outcome, _ = load_in_fresh_interpreter(MISSING, tmp_path / "hf", hub, HF_HUB_OFFLINE="1")
    message = outcome.get("error")
    assert message is not None, outcome
    assert_says_what_to_do(message, MISSING)
    assert "HF_HUB_OFFLINE is set, so the hub was not asked" in message
    assert hub.requests == []
    assert outcome["seconds"] < FAIL_WITHIN_S, outcome


def test_cached_model_loads_without_asking_the_hub(tmp_path: Path) -> None:
    """A model in the cache (the layout `hf download` leaves: refs/main naming a snapshot) loads
    with the hub unreachable, and without asking it for any of the model's files."""
    repo = "clip-client-tests/tiny-clip"
    storage = tmp_path / "hf" / "hub" / ("models--" + repo.replace("/", "--"))
    commit = "0123456789abcdef0123456789abcdef01234567"
    write_tiny_clip(storage / "snapshots" / commit)
    (storage / "refs").mkdir(parents=True)
    (storage / "refs" / "main").write_text(commit, encoding="utf-8")
    with fake_hub(answering=True) as hub:
        outcome, stderr = load_in_fresh_interpreter(repo, tmp_path / "hf", hub)
    assert outcome.get("error") is None, outcome
    assert outcome["dim"] == 24
    assert outcome["rows"] == 1
    assert hub.model_requests(repo) == []  # the cache answered
    assert "Loading weights" not in stderr  # quiet by default


# --------------------------------------------------------------------------------------------------
# progress: transformers' "Loading weights" bar only when asked for


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    folder = write_tiny_clip(tmp_path_factory.mktemp("loading") / "tiny")
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def _hub_bar_states() -> dict[str, bool]:
    """huggingface_hub's switches for its (download) bars, which transformers' switch also flips."""
    states: dict[str, bool] = importlib.import_module("huggingface_hub.utils.tqdm").progress_bar_states
    return states


def _bar_state() -> tuple[bool, dict[str, bool]]:
    return transformers.utils.logging.is_progress_bar_enabled(), dict(_hub_bar_states())


#: transformers 5 draws a "Loading weights" bar for every checkpoint; 4.x has none for one file.
SHOWS_A_BAR = int(transformers.__version__.split(".")[0]) >= 5
needs_env_unset = pytest.mark.skipif(
    "HF_HUB_DISABLE_PROGRESS_BARS" in os.environ, reason="HF_HUB_DISABLE_PROGRESS_BARS decides here"
)


@needs_env_unset
def test_loading_is_quiet_by_default(tiny: Path, capfd: pytest.CaptureFixture[str]) -> None:
    before = _bar_state()
    LocalBackend(tiny, device="cpu")
    with ClipClient.local(tiny, device="cpu"):
        pass
    assert "Loading weights" not in capfd.readouterr().err
    assert _bar_state() == before  # the process-wide switches are as they were


@needs_env_unset
def test_progress_true_shows_the_loading_bar(tiny: Path, capfd: pytest.CaptureFixture[str]) -> None:
    before = _bar_state()
    LocalBackend(tiny, device="cpu", progress=True)
    err = capfd.readouterr().err
    if SHOWS_A_BAR:
        assert "Loading weights" in err
    assert _bar_state() == before


@needs_env_unset
def test_client_progress_covers_loading(tiny: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """``ClipClient.local(progress=True)``: the client's per-call bars, and the loading bar too."""
    before = _bar_state()
    with ClipClient.local(tiny, device="cpu", progress=True):
        pass
    if SHOWS_A_BAR:
        assert "Loading weights" in capfd.readouterr().err
    assert _bar_state() == before


@needs_env_unset
def test_progress_false_is_quiet_even_when_transformers_bars_are_on_globally(
    tiny: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    logging_ = transformers.utils.logging
    was, hub_states = _bar_state()
    logging_.enable_progress_bar()
    try:
        LocalBackend(tiny, device="cpu")
        assert "Loading weights" not in capfd.readouterr().err
        assert logging_.is_progress_bar_enabled()
        logging_.disable_progress_bar()
        LocalBackend(tiny, device="cpu", progress=True)
        if SHOWS_A_BAR:
            assert "Loading weights" in capfd.readouterr().err
        assert not logging_.is_progress_bar_enabled()
    finally:
        (logging_.enable_progress_bar if was else logging_.disable_progress_bar)()
        _hub_bar_states().clear()
        _hub_bar_states().update(hub_states)


@pytest.mark.parametrize("given", ["nowhere_dir/", "./nowhere", "~/nowhere_clip", "a/b/c", "file"])
def test_a_model_that_looks_like_a_path_and_is_no_folder_is_not_asked_of_the_hub(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, given: str
) -> None:
    from clip_client.errors import ModelLoadError

    monkeypatch.chdir(tmp_path)
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(ModelLoadError) as info:
        ClipClient.local(given, device="cpu")
    assert info.value.setting == "model"
    message = str(info.value)
    assert "is a file, not a folder" in message if given == "file" else "there is no such folder" in message
    assert "Point model= at a folder" in message
    for wrong in ("Hugging Face cache", "hf download", "HFValidationError"):
        assert wrong not in message
