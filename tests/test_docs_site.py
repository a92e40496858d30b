"""The docs site stays in step with the package: every public name has an API reference entry, and
every page in docs/ is in the site's navigation. (`mkdocs build --strict` in CI checks the rest.)"""

from __future__ import annotations

import re
from pathlib import Path

import clip_client

ROOT = Path(__file__).resolve().parent.parent


def test_reference_covers_all_public_names() -> None:
    reference = (ROOT / "docs" / "reference.md").read_text(encoding="utf-8")
    documented = set(re.findall(r"^::: clip_client\.(\w+)\s*$", reference, flags=re.MULTILINE))
    public = set(clip_client.__all__) - {"__version__"}
    assert sorted(public - documented) == [], "add these to docs/reference.md"
    assert sorted(documented - public) == [], "not in clip_client.__all__"


def test_every_page_is_in_the_nav() -> None:
    config = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    in_nav = set(re.findall(r":\s*([\w-]+\.md)\s*$", config, flags=re.MULTILINE))
    pages = {p.name for p in (ROOT / "docs").glob("*.md")}
    assert sorted(pages - in_nav) == [], "add these pages to the nav in mkdocs.yml"
    assert sorted(in_nav - pages) == []
