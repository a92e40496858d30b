"""Unity Catalog volumes off-cluster: `/Volumes/...` read through the workspace's Files API.

On a Databricks cluster `/Volumes/catalog/schema/volume/...` is a FUSE mount and is read as any
local path. Elsewhere (a laptop, a CI runner, a Spark job outside Databricks) the same path, or its
`dbfs:/Volumes/...` spelling, names nothing on disk: it is read through databricks-sdk's
`WorkspaceClient().files` (`list_directory_contents`, `download`, `get_metadata`), with the
workspace and credentials resolved as the serving client resolves them (`resolve_workspace`: env
vars, `~/.databrickscfg` profiles, notebook auth, OAuth).

Every Files API request runs under one semaphore per workspace (`max_in_flight`), and is retried
with the package's retry policy (`retry_arguments`: 408/429/5xx and dropped connections, capped
exponential backoff with jitter, `Retry-After` honoured) on top of databricks-sdk's own retries of
429 and 503. An SDK failure becomes the package's typed error (`APIStatusError` with the status, the
server's `error_code` and message, scrubbed of credentials), which `clip_client.sources` turns
into one failed input named by its path.
"""

from __future__ import annotations

import functools
import os
import posixpath
import threading
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any, TypeVar

from .. import _constants as C
from .._core.secrets import safe_cause
from ..errors import APIError, APIStatusError
from .retry import retry_arguments
from .sdk_errors import typed_error

if TYPE_CHECKING:
    from .workspace import Workspace

__all__ = ["VolumeEntry", "VolumeFiles", "remote_volume_path", "volume_files", "volume_path"]

VOLUMES = "/Volumes/"
_DBFS_VOLUMES = "dbfs:/Volumes/"

T = TypeVar("T")


def volume_path(path: str) -> str | None:
    """The `/Volumes/...` path that `path` names, in one spelling: itself, or `dbfs:/Volumes/...`
    without its scheme (as Spark's `binaryFile` source spells it), `//` collapsed, `.` segments and
    a trailing slash dropped (as `os.path.normpath` spells a local path: two spellings of one file
    are one path); `/Volumes` itself is `/Volumes`. None for any other path."""
    if path.startswith(_DBFS_VOLUMES) or path == _DBFS_VOLUMES.rstrip("/"):
        path = path[len("dbfs:") :]
    elif not (path.startswith(VOLUMES) or path == VOLUMES.rstrip("/")):
        return None
    found = posixpath.normpath(path)
    # `..` may climb out of /Volumes: that is a local path, as it is on a cluster.
    return found if found == VOLUMES.rstrip("/") or found.startswith(VOLUMES) else None


def remote_volume_path(path: object) -> str | None:
    """The `/Volumes/...` path of `path` when it is to be read through the Files API: a volume
    path (`/Volumes/...`, `dbfs:/Volumes/...`) that is not a local path, as it is on a cluster
    (the FUSE mount). None for anything else, which is read as it always was."""
    if isinstance(path, os.PathLike):
        path = os.fspath(path)
    if not isinstance(path, str):
        return None
    found = volume_path(path)
    if found is None or os.path.lexists(found):
        return None
    return found


@dataclass(frozen=True)
class VolumeEntry:
    """One entry of a volume folder's listing."""

    path: str
    """Its absolute path (`/Volumes/...`), without a trailing slash."""
    name: str
    is_dir: bool
    size: int | None = None
    mtime_ns: int | None = None

    @property
    def stamp(self) -> tuple[int, int] | None:
        """`(size, mtime in ns)`, what a resumed run compares; None when the listing gave neither."""
        return None if self.size is None or self.mtime_ns is None else (self.size, self.mtime_ns)


class VolumeFiles:
    """The Files API of one workspace, for reading volumes: thread-safe, bounded, retried.

    Args:
        files: databricks-sdk's `FilesAPI` (`WorkspaceClient(...).files`).
        host: the workspace, for messages.
        max_in_flight: Files API requests at once, across threads (a download holds its slot until
            its body is read).
    """

    def __init__(
        self,
        files: Any,
        *,
        host: str = "",
        max_in_flight: int = C.VOLUME_MAX_IN_FLIGHT,
        max_retries: int = C.VOLUME_MAX_RETRIES,
        backoff: float = C.RETRY_INITIAL_WAIT,
        backoff_max: float = C.RETRY_MAX_WAIT,
        deadline: float = C.VOLUME_RETRY_DEADLINE,
    ) -> None:
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be >= 1, got {max_in_flight}")
        self.files = files
        self.host = host
        self._download = _plain_download(files)
        self.max_in_flight = max_in_flight
        self._slots = threading.BoundedSemaphore(max_in_flight)
        self._retry_settings = (max_retries, backoff, backoff_max, deadline)
        self._lock = threading.Lock()
        self.in_flight = 0
        self.max_seen_in_flight = 0
        """The most requests this reader had in flight at once (for tests and benchmarks)."""

    def __repr__(self) -> str:
        return f"VolumeFiles(host={self.host!r}, max_in_flight={self.max_in_flight})"

    # -- requests ---------------------------------------------------------------------------------

    def _bounded(self, call: Callable[[], T]) -> T:
        """`call()` holding one of the `max_in_flight` slots, its SDK failure as a typed error."""
        with self._slots:
            with self._lock:
                self.in_flight += 1
                self.max_seen_in_flight = max(self.max_seen_in_flight, self.in_flight)
            try:
                return call()
            except APIError:
                raise
            except Exception as exc:
                raise typed_error(exc) from safe_cause(exc)
            finally:
                with self._lock:
                    self.in_flight -= 1

    def _retried(self, call: Callable[[], T]) -> T:
        """`call()` under the package's retry policy; the last failure is raised as it is."""
        from tenacity import Retrying  # on first use: import cost

        max_retries, backoff, backoff_max, deadline = self._retry_settings
        arguments = retry_arguments(
            max_retries=max_retries, deadline=deadline, backoff=backoff, backoff_max=backoff_max
        )
        result: T = Retrying(**arguments)(self._bounded, call)
        return result

    def read(self, path: str) -> bytes:
        """The bytes of the file `path` (`/Volumes/...`).

        Raises:
            APIStatusError: the Files API refused (404: no such file; 403: no READ VOLUME...), once
                retries are spent for a transient status.
            APIConnectionError: the connection failed, retries spent.
        """

        def download() -> bytes:
            response = self._download(path)
            contents = response.contents
            try:
                return bytes(contents.read())
            finally:
                close = getattr(contents, "close", None)
                if close is not None:
                    close()

        return self._retried(download)

    def kind(self, path: str, *, file_first: bool = False) -> tuple[str, tuple[int, int] | None] | None:
        """What `path` is: `("dir", None)`, `("file", stamp)` (stamp: `(size, mtime in ns)` or None),
        or None when it is neither (404). `file_first`: ask whether it is a file first (its name is
        an image's), so that a file costs one request."""

        def as_dir() -> tuple[str, tuple[int, int] | None] | None:
            self._retried(lambda: self.files.get_directory_metadata(path))
            return ("dir", None)

        def as_file() -> tuple[str, tuple[int, int] | None] | None:
            meta = self._retried(lambda: self.files.get_metadata(path))
            return ("file", _stamp(meta.content_length, _http_date_ns(meta.last_modified)))

        for ask in (as_file, as_dir) if file_first else (as_dir, as_file):
            try:
                return ask()
            except APIStatusError as exc:
                if exc.status_code != 404:
                    raise
        return None

    def entries(self, directory: str) -> Iterator[VolumeEntry]:
        """The entries of the folder `directory`, in the service's order, streamed a page at a time:
        memory holds one page, whatever the folder's size. A page that fails transiently is asked
        for again (the listing restarts and skips what was already given; the service's order is
        stable); the last failure is raised as it is.

        Raises:
            APIStatusError: 404 (no such folder), 403..., retries spent.
            APIConnectionError: the connection failed, retries spent.
        """
        listing: Iterator[Any] | None = None
        given = 0

        def advance() -> Any:
            nonlocal listing
            try:
                if listing is None:  # (again): the entries already given are read past
                    listing = iter(self.files.list_directory_contents(directory))
                    for _ in range(given):
                        if next(listing, None) is None:  # the folder lost entries meanwhile
                            return None
                return next(listing, None)
            except BaseException:
                listing = None
                raise

        while (entry := self._retried(advance)) is not None:
            given += 1
            yield _entry(entry)


def _plain_download(files: Any) -> Callable[[str], Any]:
    """`files.download`, as the Files API's own one request (`GET /api/2.0/fs/files{path}`) where
    `files` is databricks-sdk's `FilesAPI`: its `FilesExt.download` (SDK 0.72+) first asks for a
    pre-signed cloud-storage URL (`/fs/endpoints`, `/fs/create-download-url`) and falls back to the
    Files API when that fails, logging a warning (`IO_OFFLOAD ... failed 3 transfers in a row`) that
    reaches a library user's stderr. An image is small: one request through the workspace costs less
    than two, is what the retries and the bound on requests in flight count, and works where cloud
    storage cannot be reached (a laptop behind a firewall, a workspace with private storage)."""
    try:
        from databricks.sdk.service.files import FilesAPI
    except ImportError:  # pragma: no cover - databricks-sdk is a dependency
        return files.download  # type: ignore[no-any-return]
    if isinstance(files, FilesAPI):
        return functools.partial(FilesAPI.download, files)
    return files.download  # type: ignore[no-any-return]  # a stand-in (tests, the app)


def _entry(entry: Any) -> VolumeEntry:
    path = str(entry.path or "").rstrip("/")
    name = str(entry.name or path.rsplit("/", 1)[-1])
    mtime = entry.last_modified
    return VolumeEntry(
        path=path,
        name=name,
        is_dir=bool(entry.is_directory),
        size=None if entry.file_size is None else int(entry.file_size),
        mtime_ns=None if mtime is None else int(mtime) * 1_000_000,
    )


def _stamp(size: int | None, mtime_ns: int | None) -> tuple[int, int] | None:
    return None if size is None or mtime_ns is None else (int(size), mtime_ns)


def _http_date_ns(value: str | None) -> int | None:
    if not value:
        return None
    try:
        return int(parsedate_to_datetime(value).timestamp()) * 1_000_000_000
    except (TypeError, ValueError):
        return None


# --------------------------------------------------------------------------------------------------
# Which workspace


def volume_files(
    workspace: Workspace | None = None,
    *,
    host: str | None = None,
    token: str | None = None,
    profile: str | None = None,
) -> VolumeFiles:
    """The Files API reader of `workspace` (a client's), or of the workspace that `options`
    (`host=`, `token=`, `profile=`) and databricks-sdk's default chain resolve: one per workspace
    and process, so its bound on requests in flight is shared."""
    if workspace is None:
        # The default chain reads the environment: a reader per environment it was resolved in.
        ambient = tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith(_AMBIENT)))
        return _files_for(host or None, token or None, profile or None, ambient)
    return _files_of_workspace(workspace)


def _files_of_workspace(workspace: Workspace) -> VolumeFiles:
    from databricks.sdk import WorkspaceClient

    from .workspace import sdk_config

    with _lock:
        files = _readers.get(workspace)
        if files is None:
            config = workspace.config
            if config is None:  # an explicit host and token
                config = sdk_config(host=workspace.host, token=workspace.static_token())
            files = VolumeFiles(WorkspaceClient(config=config).files, host=workspace.host)
            _readers[workspace] = files
        return files


_readers: weakref.WeakKeyDictionary[Workspace, VolumeFiles] = weakref.WeakKeyDictionary()
"""The reader of each workspace (a client's), shared by its threads."""
_lock = threading.Lock()


_AMBIENT = ("DATABRICKS_", "ARM_", "AZURE_", "GOOGLE_")
"""The environment variables databricks-sdk's default chain reads."""


@functools.lru_cache(maxsize=16)
def _files_for(
    host: str | None, token: str | None, profile: str | None, ambient: tuple[tuple[str, str], ...]
) -> VolumeFiles:
    from .._core.secrets import redact_library_logs
    from .workspace import resolve_workspace

    redact_library_logs()
    return _files_of_workspace(resolve_workspace(host=host, token=token, profile=profile))
