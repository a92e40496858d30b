"""The web app of `clip-client app` (the `app` extra: fastapi, uvicorn, jinja2, python-multipart).

`source` (where rows come from: an embeddings file, or a Vector Search index), `queries` (what
embeds a query: the model that computed the rows), `thumbnails` (the bounded on-disk cache),
`server` (the FastAPI app), `databricks` (the folder a Databricks App deploys). Nothing here is
imported by `import clip_client`.
"""

from __future__ import annotations

APP_EXTRA_INSTALL = 'pip install "clip-serving-client[app]"'
"""How to install what the app needs."""

APP_MODULES = ("fastapi", "uvicorn", "jinja2", "multipart")


def missing_modules() -> list[str]:
    """The app's packages that are not installed (empty when the `app` extra is)."""
    import importlib.util

    return [m for m in APP_MODULES if importlib.util.find_spec(m) is None]
