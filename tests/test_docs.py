"""The built docs site reads well: the API reference shows no raw Sphinx/RST markup, its examples are
code blocks, and no page names a private base class. One `mkdocs build --strict` per test session."""

from __future__ import annotations

import ast
import html
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# The pages rendered from docstrings by mkdocstrings.
API_PAGES = ("reference/index.html", "deploy/index.html")
SPHINX_ROLE = re.compile(r":(?:py:)?(?:meth|class|func|attr|mod|data|exc|obj):")


def _mkdocs() -> list[str] | None:
    try:
        import mkdocs  # noqa: F401
        import mkdocstrings  # noqa: F401
    except ImportError:
        return None
    return [sys.executable, "-m", "mkdocs"]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    command = _mkdocs()
    if command is None:
        pytest.skip("mkdocs and mkdocstrings are not installed (the docs extra): cannot build the site")
    out = tmp_path_factory.mktemp("site")
    built = subprocess.run(
        [*command, "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        check=False,
    )
    assert built.returncode == 0, f"mkdocs build --strict failed:\n{built.stdout}\n{built.stderr}"
    return out


def _page(site: Path, page: str) -> str:
    return (site / page).read_text(encoding="utf-8")


def _outside_code(text: str) -> str:
    """The page with every `<pre>` block and `<code>` span removed."""
    text = re.sub(r"<pre\b.*?</pre>", "", text, flags=re.DOTALL)
    return re.sub(r"<code\b.*?</code>", "", text, flags=re.DOTALL)


def _visible(text: str) -> str:
    """The page's text as a reader sees it (tags dropped, entities decoded), scripts excluded."""
    text = re.sub(r"<(script|style)\b.*?</\1>", "", text, flags=re.DOTALL)
    return html.unescape(re.sub(r"<[^>]+>", "", text))


@pytest.mark.parametrize("page", API_PAGES)
def test_no_sphinx_roles_show(site: Path, page: str) -> None:
    text = _visible(_page(site, page))
    found = sorted({m.group(0) for m in SPHINX_ROLE.finditer(text)})
    assert found == [], f"{page} shows Sphinx roles literally: {found}"


@pytest.mark.parametrize("page", API_PAGES)
def test_no_rst_double_backticks_show(site: Path, page: str) -> None:
    assert "``" not in _visible(_outside_code(_page(site, page))), page


@pytest.mark.parametrize("page", API_PAGES)
def test_examples_are_code_blocks(site: Path, page: str) -> None:
    text = _page(site, page)
    # A bare doctest `>>>` becomes a nested blockquote in Markdown, or shows as text.
    assert "&gt;&gt;&gt;" not in _outside_code(text), f"{page}: a >>> example outside a code block"
    assert "<blockquote>" not in text, f"{page}: a >>> example rendered as a blockquote"
    # An RST literal block (`text::` then an indented block) shows its `::`.
    assert "::" not in _visible(_outside_code(text)), page


@pytest.mark.parametrize("page", API_PAGES)
def test_no_private_base_classes_show(site: Path, page: str) -> None:
    text = _page(site, page)
    bases = re.findall(r"Bases:(.*?)</p>", text, flags=re.DOTALL)
    assert bases, f"{page}: no `Bases:` lines at all; has the markup changed?"
    named = [name.strip() for line in bases for name in _visible(line).split(",")]
    assert [n for n in named if n.startswith("_")] == [], f"{page}: private bases shown: {named}"


def _section(text: str, start_id: str, end_id: str) -> str:
    return text[text.index(f'id="{start_id}"') : text.index(f'id="{end_id}"')]


def test_the_clip_client_section_has_an_example_code_block(site: Path) -> None:
    section = _section(
        _page(site, "reference/index.html"), "clip_client.ClipClient", "clip_client.AsyncClipClient"
    )
    # Example blocks; signatures are `<div class="doc-signature highlight">`.
    blocks = re.findall(
        r'<div class="(?:language-python )?highlight"><pre\b.*?</pre>', section, flags=re.DOTALL
    )
    examples = [b for b in blocks if "client." in _visible(b)]
    assert examples, "no example code block in the ClipClient section"
    assert "&gt;&gt;&gt;" not in "".join(examples)  # plain Python, ready to copy


def test_the_clip_client_keywords_are_in_the_reference(site: Path) -> None:
    """The constructor's keywords (appended to the docstring at import time) render as tables."""
    text = _page(site, "reference/index.html")
    section = text[text.index('id="clip_client.ClipClient"') : text.index('id="clip_client.AsyncClipClient"')]
    visible = _visible(section)
    for name in ("host", "token", "http_client", "cache", "batch_size", "max_concurrency"):
        assert re.search(rf"^\s*{name}\s*$", visible, flags=re.MULTILINE), name


def test_cross_references_resolve_to_links(site: Path) -> None:
    """Docstring cross-references become links (`--strict` fails on one that does not resolve)."""
    text = _page(site, "reference/index.html")
    # from `embed_image`'s docstring: "any input [`embed_images`][clip_client.ClipClient.embed_images] takes"
    link = (
        r'<a class="autorefs[^"]*"[^>]*href="#clip_client\.ClipClient\.embed_images"[^>]*>'
        r"<code>embed_images</code></a>"
    )
    assert re.search(link, text)
    assert "[`" not in _visible(_outside_code(text))


def _docstrings(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        body = getattr(node, "body", None)
        if not isinstance(body, list):
            continue
        for stmt in body:
            if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant):
                if isinstance(stmt.value.value, str):
                    found.append((stmt.lineno, stmt.value.value))
    return found


def test_docstrings_use_one_dialect() -> None:
    """Markdown only: no Sphinx roles, no RST double backticks or `::` blocks, no bare `>>>`."""
    bad = []
    for path in sorted((ROOT / "clip_client").rglob("*.py")):
        for lineno, doc in _docstrings(path):
            where = f"{path.relative_to(ROOT)}:{lineno}"
            if SPHINX_ROLE.search(doc):
                bad.append(f"{where}: a Sphinx role")
            if re.search(r"(?<!`)``(?!`)", doc):
                bad.append(f"{where}: ``double backticks``")
            if re.search(r"^\s*>>>", doc, flags=re.MULTILINE):
                bad.append(f"{where}: a >>> example outside a ```python block")
            if re.search(r"\S::\s*$", doc, flags=re.MULTILINE):
                bad.append(f"{where}: an RST literal block")
        for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if re.match(r"\s*#:", line):
                bad.append(f"{path.relative_to(ROOT)}:{lineno}: a `#:` comment (griffe reads docstrings)")
    assert bad == []
