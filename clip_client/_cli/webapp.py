"""The `app` command: a web page (and JSON API) over an embeddings file, or a Databricks App folder."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated, Any

import typer

from .app import EXIT_OK, app
from .errors import handled, say_error
from .options import Common, default_cache_path, shared_options
from .outputs import OutputError, options_for_rows, refuse_another_model

_SERVER = "Server"


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@app.command("app")
@handled
@shared_options("model", "endpoints", "tuning", "images")
def app_command(
    source: Annotated[
        str | None,
        typer.Argument(
            help="An output of `images` (.parquet, or .npy/.jsonl with its .meta.json).", show_default=False
        ),
    ] = None,
    host: Annotated[
        str,
        typer.Option(
            "--host",
            help="The address to listen on: 127.0.0.1 serves this machine only; 0.0.0.0 every network "
            "it is on. (The workspace comes from DATABRICKS_HOST or --profile.)",
            rich_help_panel=_SERVER,
        ),
    ] = "127.0.0.1",
    port: Annotated[
        int, typer.Option("--port", min=0, max=65535, help="The port to listen on.", rich_help_panel=_SERVER)
    ] = 8000,
    max_upload_mib: Annotated[
        int,
        typer.Option(
            "--max-upload-mib",
            min=1,
            max=1024,
            help="Largest query image accepted, in MiB.",
            rich_help_panel=_SERVER,
        ),
    ] = 20,
    thumbnail_cache: Annotated[
        Path | None,
        typer.Option(
            "--thumbnail-cache",
            help="Folder of cached thumbnails, 256 MiB at most (default: clip-client/thumbnails in the "
            "user cache folder).",
            show_default=False,
            file_okay=False,
            rich_help_panel=_SERVER,
        ),
    ] = None,
    databricks_app: Annotated[
        Path | None,
        typer.Option(
            "--databricks-app",
            help="Write a Databricks App into this folder (app.yaml, requirements.txt, app.py) instead "
            "of serving: deploy it with `databricks apps deploy`.",
            show_default=False,
            file_okay=False,
            rich_help_panel="Databricks App",
        ),
    ] = None,
    app_source: Annotated[
        str | None,
        typer.Option(
            "--source",
            help="With --databricks-app: the Vector Search index (catalog.schema.index) or /Volumes/ "
            "embeddings file the App serves.",
            show_default=False,
            rich_help_panel="Databricks App",
        ),
    ] = None,
    *,
    common: Common,
) -> int:
    """A web page over SOURCE: search by text or image, more like this, near-duplicates, zero-shot labels.

    Queries are embedded by the model that computed SOURCE (as `search` does); the JSON API is at
    /api (its OpenAPI page at /docs). It listens on 127.0.0.1 unless --host says otherwise, serves
    only the images SOURCE lists, and changes nothing. Needs the app extra:
    pip install "clip-serving-client[app]".

    Example: clip-client app photos.parquet --port 8000
    """
    if databricks_app is not None:
        if source is not None and app_source is not None:
            raise typer.BadParameter(
                "give what the App serves once: SOURCE or --source, not both", param_hint="--source"
            )
        return _write_databricks_app(databricks_app, app_source or source, common)
    if app_source is not None:
        raise typer.BadParameter(
            "--source goes with --databricks-app; give SOURCE as the argument", param_hint="--source"
        )
    if source is None:
        raise typer.BadParameter(
            "give SOURCE, an embeddings file written by `clip-client images`", param_hint="SOURCE"
        )
    _need_the_extra()
    from .._webapp.databricks import is_index_name
    from .._webapp.source import FileSource

    path = Path(source)
    if not path.exists() and is_index_name(source):
        return _serve_index(source, common, host, port, max_upload_mib, thumbnail_cache)
    files = FileSource.open(path)
    if not len(files):
        raise OutputError(f"{path} has no rows to serve")
    with options_for_rows(common, files.meta, path).client() as client:
        refuse_another_model(path, files.meta, client)
        web = _web(files, client, thumbnail_cache, max_upload_mib)
        _run(web, host, port, f"{len(files):,} images of {path.name}")
    return EXIT_OK


def _web(source: Any, client: Any, thumbnail_cache: Path | None, max_upload_mib: int) -> Any:
    """The app over `source`, its queries embedded by `client`."""
    from .._webapp.queries import ClientQueries
    from .._webapp.server import create_app
    from .._webapp.thumbnails import ThumbnailCache

    pixels = client.settings.max_image_pixels
    thumbs = ThumbnailCache(
        thumbnail_cache or default_cache_path().with_name("thumbnails"), max_pixels=pixels
    )
    return create_app(
        source,
        ClientQueries(client),
        thumbnails=thumbs,
        max_upload_bytes=max_upload_mib * 2**20,
        max_image_pixels=pixels,
    )


def _serve_index(
    name: str, common: Common, host: str, port: int, max_upload_mib: int, thumbnail_cache: Path | None
) -> int:
    """Serve a Vector Search index: queries embedded by the options' model (whose width the index
    must have: checked before serving), images read from the paths the index lists (Unity Catalog
    volumes through the Files API of the client's workspace, other paths from this machine)."""
    from .._backend import InWorkspace
    from .._remote.volumes import remote_volume_path, volume_files, volume_path
    from .._webapp.source import VectorSearchSource

    with common.client() as client:
        owner = client.backend.workspace if isinstance(client.backend, InWorkspace) else None

        def read_image(path: str) -> bytes:
            remote = remote_volume_path(path)
            if remote is not None:
                return volume_files(owner).read(remote)
            return Path(volume_path(path) or path).read_bytes()  # a volume's FUSE mount, or this machine

        index = VectorSearchSource(name, client=client, read_image=read_image)
        web = _web(index, client, thumbnail_cache, max_upload_mib)
        _run(web, host, port, f"the Vector Search index {name} ({len(index):,} rows)")
    return EXIT_OK


def _bind(host: str, port: int) -> Any:
    """A listening socket on `host`:`port`, bound before anything is printed (`OutputError`: in use)."""
    import socket

    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET  # as uvicorn chooses
        infos = socket.getaddrinfo(host, port, family, socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, kind, proto, _, address = infos[0]
        sock = socket.socket(family, kind, proto)
    except (OSError, IndexError):
        raise OutputError(
            f"port {port} on {host} is in use (or {host} cannot be bound): choose another --port"
        ) from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError:
        sock.close()
        raise OutputError(
            f"port {port} on {host} is in use (or {host} cannot be bound): choose another --port"
        ) from None
    sock.set_inheritable(True)
    return sock


def _run(web: Any, host: str, port: int, what: str) -> None:
    import uvicorn

    sock = _bind(host, port)
    shown_host = f"[{host}]" if ":" in host else host
    say_error(f"clip-client: serving {what} on http://{shown_host}:{port} (Ctrl-C stops)")
    if not _loopback(host):
        say_error(
            f"clip-client: listening on {host}, not only this machine: anyone who reaches it can see "
            "these images"
        )
    server = uvicorn.Server(uvicorn.Config(web, log_level="warning", access_log=False))
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()


def _need_the_extra() -> None:
    from .._webapp import APP_EXTRA_INSTALL, missing_modules

    missing = missing_modules()
    if missing:
        raise OutputError(
            f"the app needs {', '.join('python-multipart' if m == 'multipart' else m for m in missing)}: "
            f"{APP_EXTRA_INSTALL}"
        )


def _write_databricks_app(folder: Path, source: str | None, common: Common) -> int:
    from .._webapp.databricks import write_app_folder

    if not source:
        raise typer.BadParameter(
            "name what the App serves: --source catalog.schema.index", param_hint="--source"
        )
    from .._webapp.databricks import is_index_name

    if not (is_index_name(source) or source.startswith("/Volumes/")):
        raise typer.BadParameter(
            f"{source} is neither a Vector Search index (catalog.schema.index) nor an embeddings file "
            "in a Unity Catalog volume (/Volumes/...): the App cannot read this machine's files",
            param_hint="--source",
        )
    if common.local:
        raise typer.BadParameter("a Databricks App embeds queries with serving endpoints: drop --local")
    written = write_app_folder(
        folder, source, text_endpoint=common.text_endpoint, image_endpoint=common.image_endpoint
    )
    for path in written:
        typer.echo(str(path))
    say_error(
        f"clip-client: deploy with `databricks apps deploy APP_NAME --source-code-path {folder}` "
        "(a workspace path the folder was synced to); the App's service principal needs CAN QUERY on "
        "the endpoints, SELECT on the index and READ VOLUME on the images' volume"
    )
    return EXIT_OK
