"""The folder `clip-client app --databricks-app DIR` writes, and what its entry point runs.

`databricks apps deploy` runs `app.yaml`'s command, `python app.py`, which calls `build_app()`:
the source and endpoints come from `app.yaml`'s environment, the credentials from databricks-sdk's
default chain (inside an App: the app's own service principal), never from the folder.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import _constants as C
from .._version import __version__

if TYPE_CHECKING:
    from fastapi import FastAPI

SOURCE_ENV = "CLIP_APP_SOURCE"
TEXT_ENDPOINT_ENV = "CLIP_APP_TEXT_ENDPOINT"
IMAGE_ENDPOINT_ENV = "CLIP_APP_IMAGE_ENDPOINT"
THUMBNAILS_ENV = "CLIP_APP_THUMBNAILS"

INDEX_NAME = re.compile(r"[A-Za-z0-9_`-]+\.[A-Za-z0-9_`-]+\.[A-Za-z0-9_`-]+")
"""A Unity Catalog three-level name: `catalog.schema.index`."""

_ENTRY_POINT = '''"""A Databricks App: clip-client's search page over {source}.

Written by `clip-client app --databricks-app` (clip_client {version}); deploy this folder with
`databricks apps deploy`. The source and endpoints are in app.yaml; credentials come from
databricks-sdk's default chain (the app's service principal), never from this folder.
"""

import os

from clip_client._webapp.databricks import build_app

app = build_app()

if __name__ == "__main__":
    import uvicorn

    uvicorn.run(app, host="0.0.0.0", port=int(os.environ.get("DATABRICKS_APP_PORT", "8000")))
'''


def is_index_name(source: str) -> bool:
    """True for a Unity Catalog `catalog.schema.index` name (not a file)."""
    return INDEX_NAME.fullmatch(source) is not None and Path(source).suffix.lower() not in {
        ".parquet",
        ".npy",
        ".jsonl",
    }


def write_app_folder(
    folder: Path,
    source: str,
    *,
    text_endpoint: str = C.DEFAULT_TEXT_ENDPOINT,
    image_endpoint: str = C.DEFAULT_IMAGE_ENDPOINT,
    requirement: str | None = None,
) -> list[Path]:
    """Write `app.yaml`, `requirements.txt` and `app.py` into `folder` (made if missing).

    Args:
        folder: where; files of these names already there are replaced, nothing else is touched.
        source: a Vector Search index (`catalog.schema.index`) or an embeddings file the app can
            read (a `/Volumes/...` path).
        text_endpoint, image_endpoint: the serving endpoints that embed queries.
        requirement: the pip requirement for clip_client (default: this version with the `app`
            extra; a wheel's path or URL where the package is not on an index the App can reach).

    Returns:
        the files written.
    """
    folder.mkdir(parents=True, exist_ok=True)
    env = [
        (SOURCE_ENV, source),
        (TEXT_ENDPOINT_ENV, text_endpoint),
        (IMAGE_ENDPOINT_ENV, image_endpoint),
        (THUMBNAILS_ENV, "/tmp/clip-client-thumbnails"),
    ]
    # JSON strings are valid YAML scalars: every value is quoted and escaped.
    lines = ["command:", '  - "python"', '  - "app.py"', "env:"]
    for name, value in env:
        lines += [f"  - name: {json.dumps(name)}", f"    value: {json.dumps(value)}"]
    files = {
        "app.yaml": "\n".join(lines) + "\n",
        "requirements.txt": (requirement or f"clip-serving-client[app]=={__version__}") + "\n",
        "app.py": _ENTRY_POINT.format(source=source.replace('"', "'"), version=__version__),
    }
    written = []
    for name, text in files.items():
        path = folder / name
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


def read_volume_file(path: str, *, workspace: Any = None) -> bytes:
    """A Unity Catalog volume file's bytes through the Files API: the package's volume reader
    (`clip_client._remote.volumes`: bounded requests in flight, retried, typed errors), for the
    workspace databricks-sdk's default chain resolves (an App's service principal), or `workspace`
    (a databricks-sdk `WorkspaceClient`) when given."""
    from .._remote.volumes import VolumeFiles, volume_files, volume_path

    files = volume_files() if workspace is None else VolumeFiles(workspace.files)
    return files.read(volume_path(path) or path)


def build_app(environ: dict[str, str] | None = None) -> FastAPI:
    """The app an App's `app.py` runs, configured from `environ` (default: the process's)."""
    from .._client import ClipClient
    from .queries import ClientQueries
    from .server import create_app
    from .source import FileSource, Source, VectorSearchSource
    from .thumbnails import ThumbnailCache

    env = os.environ if environ is None else environ
    source_name = env.get(SOURCE_ENV)
    if not source_name:
        raise RuntimeError(f"{SOURCE_ENV} is not set: app.yaml names the source")
    client = ClipClient(
        text_endpoint=env.get(TEXT_ENDPOINT_ENV, C.DEFAULT_TEXT_ENDPOINT),
        image_endpoint=env.get(IMAGE_ENDPOINT_ENV, C.DEFAULT_IMAGE_ENDPOINT),
        cache=None,
    )
    source: Source
    if is_index_name(source_name):
        source = VectorSearchSource(source_name, client=client, read_image=read_volume_file)
    elif source_name.startswith("/Volumes/"):
        # An embeddings file on a volume: downloaded once through the Files API (a Parquet file
        # only: its images' paths are in it), its images read through the Files API too.
        local = Path(tempfile.mkdtemp(prefix="clip-app-")) / Path(source_name).name
        local.write_bytes(read_volume_file(source_name))
        source = FileSource.open(local, read_image=read_volume_file)
    else:
        source = FileSource.open(Path(source_name))
    thumbs = ThumbnailCache(
        Path(env.get(THUMBNAILS_ENV, "/tmp/clip-client-thumbnails")),
        max_pixels=client.settings.max_image_pixels,
    )
    return create_app(
        source,
        ClientQueries(client),
        thumbnails=thumbs,
        max_image_pixels=client.settings.max_image_pixels,
        title="clip-client (Databricks App)",
    )
