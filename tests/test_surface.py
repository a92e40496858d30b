"""The public surface is a contract: typed constructors that list every keyword, one source for every
setting's default and range (``Settings``) that the docstrings and docs/configuration.md agree with,
documented public methods, and an ``import clip_client`` that stays light."""

from __future__ import annotations

import ast
import inspect
import re
import subprocess
import sys
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Union, get_args, get_origin, get_type_hints

import httpx
import numpy as np
import pytest

import clip_client
from clip_client import AsyncClipClient, ClipClient, Settings

ROOT = Path(__file__).resolve().parent.parent
CLIENTS = [ClipClient, AsyncClipClient]
#: Constructor keywords that are not settings: where the client talks to, and its plumbing.
WORKSPACE_AND_PLUMBING = {"host", "token", "profile", "config", "backend", "http_client", "cache"}
PUBLIC_METHODS = [
    "embed_texts",
    "embed_text",
    "embed_images",
    "embed_image",
    "iter_embed_texts",
    "iter_embed_images",
    "classify",
    "check_endpoint",
    "close",
    "local",
]


@pytest.mark.parametrize("cls", CLIENTS, ids=lambda c: c.__name__)
def test_the_signature_lists_every_keyword(cls: type) -> None:
    params = inspect.signature(cls).parameters
    assert set(params) == set(Settings.model_fields) | WORKSPACE_AND_PLUMBING
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params.values())
    assert all(p.default is None for p in params.values())  # None: "the default", from Settings


def test_each_client_takes_the_http_client_it_can_use() -> None:
    from databricks.sdk.core import Config

    names = {**vars(clip_client._client), "Config": Config}
    assert get_type_hints(ClipClient.__init__, names)["http_client"] == httpx.Client | None
    assert get_type_hints(AsyncClipClient.__init__, names)["http_client"] == httpx.AsyncClient | None
    with pytest.raises(TypeError, match="AsyncClipClient"):
        ClipClient(host="https://x.cloud.databricks.com", token="t" * 12, http_client=httpx.AsyncClient())  # type: ignore[arg-type]
    with httpx.Client() as sync_http, pytest.raises(TypeError, match="ClipClient takes that one"):
        AsyncClipClient(host="https://x.cloud.databricks.com", token="t" * 12, http_client=sync_http)  # type: ignore[arg-type]


@pytest.mark.parametrize("cls", CLIENTS, ids=lambda c: c.__name__)
def test_a_misspelt_keyword_is_a_type_error_naming_the_public_class(cls: type) -> None:
    with pytest.raises(
        TypeError, match=rf"{cls.__name__}.__init__\(\) got an unexpected keyword argument 'batchsize'"
    ):
        cls(host="https://x.cloud.databricks.com", token="t" * 12, batchsize=3)


def mypy_strict(*paths: Path) -> subprocess.CompletedProcess[str]:
    """``mypy --strict`` on some files, as a user's project would run it against clip_client."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--no-incremental",
            "--follow-imports=silent",
            *map(str, paths),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )


_TYPO_SNIPPET = """
from clip_client import AsyncClipClient, ClipClient

ClipClient(batchsize=3)
AsyncClipClient(batchsize=3)
ClipClient(batch_size=3)
AsyncClipClient(batch_size=3)
"""


@pytest.fixture(scope="module")
def user_code_checked(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Path], list[str]]:
    """The user code the tests below type-check, checked by one mypy run (it costs ~13 s a run):
    the files by name, and mypy's output lines."""
    folder = tmp_path_factory.mktemp("user-code")
    files = {"typo": folder / "typo.py", "backend": folder / "my_backend.py"}
    files["typo"].write_text(_TYPO_SNIPPET)
    files["backend"].write_text(_docs_backend_example() + "\nprint(client.embed_texts(['a', 'b']).shape)\n")
    return files, mypy_strict(*files.values()).stdout.splitlines()


def _errors_in(checked: tuple[dict[str, Path], list[str]], name: str) -> list[str]:
    files, lines = checked
    return [
        line for line in lines if ": error:" in line and Path(line.split(":", 1)[0]).name == files[name].name
    ]


def test_mypy_rejects_a_misspelt_keyword_on_both_clients(
    user_code_checked: tuple[dict[str, Path], list[str]],
) -> None:
    errors = _errors_in(user_code_checked, "typo")
    output = "\n".join(user_code_checked[1])
    assert len(errors) == 2, output
    assert all('Unexpected keyword argument "batchsize"' in line for line in errors), output
    assert {'"ClipClient"' in errors[0], '"AsyncClipClient"' in errors[1]} == {True}


def _valid(field: Any) -> str | None:
    """A setting's valid values as docs/configuration.md writes them, from its pydantic constraints:
    ``"png", "bmp", "jpeg"``; ``≥ 1``; ``1 to 256``; for a union, each member's (``1 to 256``, then
    the literal choices)."""
    return _valid_of(field.annotation, field.metadata)


def _valid_of(annotation: Any, metadata: list[Any]) -> str | None:
    """As :func:`_valid`; a union (``max_concurrency``: a number or "auto") as its parts, joined
    by ", or "."""
    origin = get_origin(annotation)
    if origin is Annotated:
        inner, *extra = get_args(annotation)
        return _valid_of(inner, [*metadata, *(c for m in extra for c in getattr(m, "metadata", [m]))])
    if origin in (Union, UnionType):
        return ", or ".join(v for arg in get_args(annotation) if (v := _valid_of(arg, [])))
    choices = get_args(annotation)
    if choices:
        return ", ".join(f'"{c}"' for c in choices)
    bound = {
        attr: getattr(m, attr)
        for m in metadata
        for attr in ("ge", "gt", "le")
        if getattr(m, attr, None) is not None
    }
    if "ge" in bound and "le" in bound:
        return f"{bound['ge']} to {bound['le']}"
    if "ge" in bound:
        return f"≥ {bound['ge']}"
    if "gt" in bound:
        return f"> {bound['gt']}"
    return None


def _documented_settings() -> dict[str, tuple[str, str, str]]:
    """The settings table of docs/configuration.md: name -> (default, valid, meaning) cells."""
    text = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    table = text.split("## Settings", 1)[1]
    rows = {}
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[0].startswith("`"):
            rows[cells[0].strip("`")] = (cells[1], cells[2], cells[3])
        elif rows and not line.startswith("|"):
            break
    return rows


def test_docs_configuration_table_matches_settings() -> None:
    documented = _documented_settings()
    assert list(documented) == list(Settings.model_fields)  # every setting, in the same order
    for name, field in Settings.model_fields.items():
        default, valid, meaning = documented[name]
        assert ast.literal_eval(default.strip("`")) == field.default, name
        expected = _valid(field)
        if expected is not None:
            assert valid.replace("`", "").startswith(expected), (name, valid, expected)
        assert meaning, name


@pytest.mark.parametrize("cls", CLIENTS, ids=lambda c: c.__name__)
def test_the_class_docstring_documents_every_keyword(cls: type) -> None:
    doc = inspect.getdoc(cls) or ""
    for name, field in Settings.model_fields.items():
        line = next((ln for ln in doc.splitlines() if ln.strip().startswith(f"{name}:")), None)
        assert line is not None, name
        assert "default" in line
        assert field.description, name
        assert field.description[:30] in doc, name
    for name in WORKSPACE_AND_PLUMBING:
        assert re.search(rf"^\s*{name}:", doc, re.MULTILINE), name


@pytest.mark.parametrize("cls", CLIENTS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("method", PUBLIC_METHODS)
def test_every_public_method_is_documented(cls: type, method: str) -> None:
    doc = inspect.getdoc(getattr(cls, method)) or ""
    assert doc, f"{cls.__name__}.{method} has no docstring"
    if method != "close":
        assert "Returns" in doc or "Returns, Raises" in doc, (cls.__name__, method)
        assert "Raises" in doc, (cls.__name__, method)
        assert "```python" in doc, (cls.__name__, method)  # an example, fenced


@pytest.mark.parametrize("method", [m for m in PUBLIC_METHODS if m != "local"])
def test_each_async_method_is_documented_as_the_twin_of_the_sync_one(method: str) -> None:
    """One rule: the first line names the sync method it mirrors; the rest says only what differs."""
    doc = inspect.getdoc(getattr(AsyncClipClient, method)) or ""
    link = f"[`ClipClient.{method}`][clip_client.ClipClient.{method}]"
    assert doc.splitlines()[0] == f"The async twin of {link}.", doc.splitlines()[0]
    assert getattr(AsyncClipClient, method) is not getattr(ClipClient, method)


def test_everything_exported_is_importable_and_documented() -> None:
    for name in clip_client.__all__:
        value = getattr(clip_client, name)
        if inspect.isclass(value) or inspect.isfunction(value):
            assert inspect.getdoc(value), name
    for held in (
        "EmbeddingResult",
        "EmbeddingFailure",
        "ClientStats",
        "EmbeddingStream",
        "AsyncEmbeddingStream",
    ):
        assert held in clip_client.__all__
    for alias in ("OnError", "ImageFormat", "InputKind", "HighBitDepth"):
        assert alias in clip_client.__all__
    assert clip_client.EmbeddingStream.__module__ == "clip_client"  # its public path, not _core.streams
    # The wire body's models live with the test server that parses bodies; the client's encoder is a
    # hand-written fast path and never used them.
    assert not {"InvocationRecord", "InvocationRequest"} & set(dir(clip_client.types))


def test_exported_names_show_their_public_path() -> None:
    """Names defined in private modules say ``clip_client``; names of the public modules keep them."""
    import pickle
    import typing

    homes = {}
    for name in clip_client.__all__:
        value = getattr(clip_client, name)
        if inspect.isclass(value):
            assert not value.__module__.startswith("clip_client._"), name
            assert getattr(sys.modules[value.__module__], name) is value, name  # pickle finds it there
            typing.get_type_hints(value)  # its annotations still resolve
            homes[name] = value.__module__
    assert homes["ClipClient"] == homes["Backend"] == homes["EndpointCheck"] == "clip_client"
    assert homes["ControlPlane"] == homes["EndpointState"] == homes["ZeroShotResult"] == "clip_client"
    assert homes["APIError"] == "clip_client.errors"
    assert homes["Settings"] == homes["EmbeddingResult"] == "clip_client.types"
    assert homes["TopK"] == "clip_client.search"
    assert homes["LocalBackend"] == "clip_client.local"
    assert repr(ClipClient) == "<class 'clip_client.ClipClient'>"
    state = clip_client.EndpointState("clip-text-embedding", ready=True)
    report = clip_client.EndpointReport("text", "clip-text-embedding", state, dim=768)
    for value in (state, report, clip_client.ServedEntity(name="a", entity_version="3")):
        assert pickle.loads(pickle.dumps(value)) == value


#: Private names public modules still take from another module, owned elsewhere: may only shrink.
_PRIVATE_IMPORTS_LEFT = {
    ("serving.py", "local", "_check_checkpoint_folder"),
    ("serving.py", "local", "_DTYPES"),
    ("index.py", "search", "_as_float"),
    ("index.py", "search", "_normalised_queries"),
    ("index.py", "search", "_normalised_rows"),
    ("index.py", "search", "_positive_int"),
}


def test_public_modules_import_no_private_name_of_another_module() -> None:
    """A public module uses another module's public names (a private layer's too: `_remote.workspace`'s
    `resolve_workspace`), never its private ones (`_ConfigAuth`): those may change without notice."""
    found = set()
    for path in sorted((ROOT / "clip_client").glob("*.py")):
        if path.name.startswith("_"):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level and node.module:  # from .x import y
                for alias in node.names:
                    if alias.name.startswith("_") and not alias.name.startswith("__"):
                        found.add((path.name, node.module, alias.name))
    assert found - _PRIVATE_IMPORTS_LEFT == set()


def test_import_clip_client_loads_no_heavy_dependency() -> None:
    code = (
        "import sys, clip_client\n"
        "heavy = [m for m in ('torch', 'transformers', 'pandas', 'pyspark', 'mlflow') if m in sys.modules]\n"
        "print(heavy)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def _docs_backend_example() -> str:
    text = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    section = text.split("## Backends", 1)[1]
    return section.split("```python", 1)[1].split("```", 1)[0]


def test_the_documented_backend_type_checks_and_runs(
    user_code_checked: tuple[dict[str, Path], list[str]],
) -> None:
    example = user_code_checked[0]["backend"]
    assert _errors_in(user_code_checked, "backend") == [], "\n".join(user_code_checked[1])
    # mypy did run over both files: the typo file's two errors are all it found
    assert user_code_checked[1][-1].startswith("Found 2 errors in 1 file (checked 2 source files)")
    ran = subprocess.run([sys.executable, str(example)], capture_output=True, text=True, check=False)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip() == "(2, 768)"


def test_local_checks_every_option_before_loading_the_model(tmp_path: Path) -> None:
    missing = tmp_path / "not-a-checkpoint"  # loading it would be a ModelLoadError
    with pytest.raises(TypeError, match=r"unexpected keyword argument.*'normalise'"):
        ClipClient.local(missing, normalise=True)
    with pytest.raises(TypeError, match=r"in-process.*host, token"):
        ClipClient.local(missing, host="https://x.cloud.databricks.com", token="t" * 12)
    with pytest.raises(ValueError, match="batch_size"):
        ClipClient.local(missing, batch_size="8")


WORKSPACE = {"host": "https://x.cloud.databricks.com", "token": "t" * 12}


def test_wrong_plumbing_objects_say_what_is_wanted() -> None:
    with pytest.raises(TypeError, match=r"takes an httpx\.Client, got str$"):
        ClipClient(**WORKSPACE, http_client="x")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"members of clip_client\.Backend; str lacks image_input"):
        ClipClient(backend="x")  # type: ignore[arg-type]


def test_a_backends_image_size_is_checked_at_construction() -> None:
    class Sized:
        image_input = "pixels"
        max_request_bytes = None
        batch_size = None
        image_size = 224
        dim = None

        def endpoint(self, kind: str) -> None: ...
        def payload(self, kind: str, item: Any) -> tuple[Any, int]: ...
        def embed(self, kind: str, payloads: Any, ctx: Any) -> Any: ...
        async def aembed(self, kind: str, payloads: Any, ctx: Any) -> Any: ...
        def concurrency_limit(self) -> None: ...
        def close(self) -> None: ...
        async def aclose(self) -> None: ...

    with pytest.raises(ValueError, match=r"image_size=64, but this backend's model takes 224x224"):
        ClipClient(backend=Sized(), image_size=64)  # type: ignore[arg-type]
    assert ClipClient(backend=Sized()).settings.image_size == 224  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["a?b", "a#b", "..", "a/b", " a", "", "x" * 300, "a b"])
def test_endpoint_names_that_would_change_the_url_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match=r"not a serving endpoint name|at least 1 character"):
        ClipClient(**WORKSPACE, text_endpoint=name)


@pytest.mark.parametrize(
    "bad",
    [
        {"normalize": "no"},
        {"progress": "yes"},
        {"batch_size": "3"},
        {"batch_size": True},
        {"image_size": 5000},
    ],
)
def test_settings_of_the_wrong_type_are_refused_not_coerced(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=next(iter(bad))):
        ClipClient(**WORKSPACE, **bad)


@pytest.mark.parametrize("deadline", ["5", 0, -1, True, float("nan")])
def test_a_bad_deadline_is_a_value_error(deadline: Any) -> None:
    with ClipClient(**WORKSPACE) as client, pytest.raises(ValueError, match="deadline must be"):
        client.embed_texts(["a"], deadline=deadline)


def test_raise_for_failures_notes_the_others_once() -> None:
    from clip_client import EmbeddingFailure, EmbeddingResult, InvalidInputError

    errors = [InvalidInputError("bad", index=i) for i in range(3)]
    result = EmbeddingResult(
        np.zeros((3, 2), np.float32), [EmbeddingFailure(i, e) for i, e in enumerate(errors)]
    )
    for _ in range(3):
        with pytest.raises(InvalidInputError):
            result.raise_for_failures()
    assert getattr(errors[0], "__notes__", []) == ["2 other input(s) failed too"]


def test_status_errors_raised_by_a_backend_need_no_status_code() -> None:
    from clip_client import BadRequestError, PayloadTooLargeError, ServerError

    assert PayloadTooLargeError("too large").status_code == 413
    assert BadRequestError("no").status_code == 400
    assert ServerError("down").status_code == 500
    with pytest.raises(TypeError, match="needs status_code"):
        clip_client.APIStatusError("what status?")
