"""`import clip_client` stays light: no heavy or optional package is loaded until a feature needs it
(issue 18), and the public names that load lazily still behave like the others. Timings are not
asserted here: `benchmarks/import_time.py` measures them side by side."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import clip_client

#: Packages `import clip_client` must not load: optional extras, or needed by one feature only.
#: (Not click: `import httpx` itself loads it, for its own command line, when it is installed.)
HEAVY = (
    "typer",
    "pyarrow",
    "pandas",
    "torch",
    "transformers",
    "mlflow",
    "pyspark",
    "faiss",
    "databricks",
    "tenacity",
    "httpcore",
    # The app extra (`clip-client app`): loaded by that command only.
    "fastapi",
    "uvicorn",
    "starlette",
    "jinja2",
    "multipart",
)


def _fresh(code: str) -> dict[str, object]:
    """What ``code`` leaves in a fresh interpreter's ``result`` (a JSON-able value)."""
    program = f"import json, sys\n{code}\nprint(json.dumps(result))"
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, check=True)
    value: dict[str, object] = json.loads(done.stdout)
    return value


def test_import_clip_client_loads_no_heavy_or_optional_package() -> None:
    result = _fresh(
        "import clip_client\n"
        f"result = {{'loaded': sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})}}"
    )
    assert result["loaded"] == []


def test_the_lazily_loaded_names_load_on_first_use_and_star_import_gets_every_name() -> None:
    result = _fresh(
        "import clip_client\n"
        "before = 'clip_client.local' in sys.modules or 'clip_client.search' in sys.modules\n"
        "ns = {}\n"
        "exec('from clip_client import *', ns)\n"
        "result = {'before': before, 'missing': sorted(set(clip_client.__all__) - set(ns)),\n"
        "          'loaded': ['clip_client.local' in sys.modules, 'clip_client.search' in sys.modules]}"
    )
    assert result == {"before": False, "missing": [], "loaded": [True, True]}


def test_every_public_name_resolves_and_is_listed_by_dir() -> None:
    from clip_client.local import LocalBackend
    from clip_client.search import DuplicateGroup, TopK, cosine_topk, find_duplicates

    for name in clip_client.__all__:
        assert getattr(clip_client, name) is not None, name
        assert name in dir(clip_client), name
    assert clip_client.LocalBackend is LocalBackend
    assert clip_client.find_duplicates is find_duplicates
    assert clip_client.cosine_topk is cosine_topk
    assert (clip_client.TopK, clip_client.DuplicateGroup) == (TopK, DuplicateGroup)
    assert "LocalBackend" in clip_client.__all__


def test_an_unknown_name_is_an_attribute_error_naming_it() -> None:
    with pytest.raises(AttributeError, match="NoSuchThing"):
        clip_client.NoSuchThing


def test_the_lazy_table_and_the_type_checkers_imports_agree_with_every_module() -> None:
    """`clip_client._HOMES` (what `__getattr__` loads) names each public name's real home, and the
    `if TYPE_CHECKING:` imports (what mypy and editors see) import exactly those names from there."""
    import ast
    import importlib
    import inspect

    table = {**clip_client._HOMES, **clip_client._ON_THEIR_OWN}
    assert sorted(table) == sorted(set(clip_client.__all__) - {"__version__"})
    for name, module in table.items():
        home = importlib.import_module(f"clip_client.{module}")
        assert getattr(home, name) is getattr(clip_client, name), name

    tree = ast.parse(inspect.getsource(clip_client))
    guarded = next(
        node for node in tree.body if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING"
    )
    seen = {
        alias.name: (node.module or "")
        for node in guarded.body
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }
    assert seen == table
