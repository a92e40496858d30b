"""Images from where large collections live: local folders, tar shards in the webdataset layout,
object stores (`s3://`, `gs://`, `abfss://`...) through fsspec, and Unity Catalog volumes
(`/Volumes/...`) through the Files API where they are not mounted.

```python
from clip_client import ClipClient, iter_images

with ClipClient() as client:
    items = list(iter_images("shards/shard-{000000..000009}.tar", reread=True))
    vectors = client.embed_images(items)  # row i is the image whose key is items[i]
```

[`iter_images`][clip_client.iter_images] yields one [`SourceItem`][clip_client.SourceItem] per
image, in a stable order, without listing the whole collection first: a folder (or prefix) is
walked one directory at a time and a shard is read as a stream, so memory holds one directory's
listing and a bounded number of images, never all the keys. `embed_images` and
`iter_embed_images` take the items as they are; an item that cannot be read (a missing object, a
member that is not an image, permission denied) is one failed input, named by its key, under the
call's `on_error`.

Object stores need the `files` extra (`pip install "clip-serving-client[files]"`: fsspec) and
the store's fsspec plugin: `s3fs` for `s3://`, `gcsfs` for `gs://`, `adlfs` for
`abfss://`/`az://`. Their credentials come from the plugin's usual places (environment, profile
files, instance metadata) or from `storage_options`. `http://` and `https://` URLs are refused.
"""

from __future__ import annotations

import fnmatch
import functools
import hashlib
import io
import os
import re
import tarfile
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from datetime import datetime
from typing import IO, Any, NamedTuple, TypeVar

from ._remote.volumes import VolumeFiles, volume_files, volume_path
from .errors import APIError, APIStatusError, AuthenticationError, InvalidInputError

__all__ = [
    "IMAGE_GLOBS",
    "TAR_SUFFIXES",
    "NothingFoundError",
    "SourceItem",
    "SourceNotFoundError",
    "Stamp",
    "iter_images",
]

IMAGE_GLOBS: tuple[str, ...] = ("*.jpg", "*.jpeg", "*.png", "*.gif", "*.bmp", "*.tif", "*.tiff", "*.webp")
"""The file names [`iter_images`][clip_client.iter_images] picks from a folder, a prefix or a shard
when no `globs` are given (matched case-insensitively against the base name)."""

TAR_SUFFIXES: tuple[str, ...] = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
"""A source whose name ends with one of these (case-insensitive) is read as a tar shard."""

Stamp = tuple[int, int]
"""What identifies one version of an image, for resuming: `(size in bytes, mtime in ns)`. For a
tar member, the member's size and mtime; for an object without a modification time, its size and
a 63-bit digest of its ETag."""

_WDS_KEY = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")
"""webdataset's rule (`base_plus_ext`): a member `dir/KEY.ext.more` is the field `ext.more` of the
sample `dir/KEY`; the key ends at the first dot of the base name. A base name with no dot, or
starting with one, has no key here (webdataset drops `.x.jpg` and keys `dir/.x.jpg` as `dir/`)."""
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_URLS = ("http://", "https://")
_GLOB_MAGIC = re.compile(r"[*?[]")
_INSTALL = 'pip install "clip-serving-client[files]"'
_MAX_PREFETCH_THREADS = 16
_MTIME_FIELDS = ("mtime", "LastModified", "last_modified", "updated", "modified", "timeCreated", "created")
"""Where fsspec plugins put an object's modification time (local, s3fs, adlfs, gcsfs, memory...)."""
_ETAG_FIELDS = ("ETag", "etag", "md5Hash")


class SourceItem(str):
    """One image of a source: a `str`, its key (the row id), that also reads its bytes.

    The key is the path of a local file as listed (the folder argument as given, joined with the
    file's path inside it), the webdataset key of a tar member (`dir/000123` for
    `dir/000123.jpg`), or the URI of an object (the argument as given, joined with the object's
    path below it). Being a `str`, an item works wherever a row id does (a dict key, a column of
    keys); `embed_images` and `iter_embed_images` read its bytes instead of treating it as a path.

    Attributes:
        source: the argument of [`iter_images`][clip_client.iter_images] (after brace and glob
            expansion) that the item came from: a folder, a shard, a prefix or a file.
        stamp: `(size in bytes, mtime in ns)` of the file, member or object when it was listed
            (see [`Stamp`][clip_client.sources.Stamp]), or None when it could not be known: what a
            resumed run compares to tell a changed image from a finished one.
    """

    source: str
    stamp: Stamp | None
    _reader: Callable[[], bytes] | None
    _data: bytes | None
    _ahead: Future[bytes] | None
    _local: bool

    def __new__(
        cls,
        key: str,
        *,
        source: str = "",
        stamp: Stamp | None = None,
        reader: Callable[[], bytes] | None = None,
        data: bytes | None = None,
        local: bool = False,
    ) -> SourceItem:
        item = super().__new__(cls, key)
        item.source = source or key
        item.stamp = stamp
        item._reader = reader
        item._data = data
        item._ahead = None
        item._local = local
        return item

    @property
    def key(self) -> str:
        """The key as a plain `str`."""
        return str.__str__(self)

    @property
    def local_path(self) -> str | None:
        """The file's path when the item is a local file (then the client opens it as any path
        input, with the same messages), else None."""
        return self.key if self._local else None

    def read(self) -> bytes:
        """The image's encoded bytes (JPEG, PNG...).

        A tar member read from a stream holds its bytes; an object read ahead
        (`prefetch`) hands its bytes over once and releases them, and reads the object again if
        asked again; anything else is read on each call.

        Raises:
            InvalidInputError: the bytes cannot be read (a missing object or file, permission
                denied, a member that is a link, a shard cut short); the message names the key.
        """
        if self._data is not None:
            return self._data
        ahead, self._ahead = self._ahead, None
        if ahead is not None:
            try:
                return ahead.result()
            except CancelledError:
                pass  # the read-ahead was stopped (the listing was closed): read it now
        if self._reader is None:
            raise InvalidInputError("nothing to read", path=self.key)
        return self._reader()

    def __repr__(self) -> str:
        return f"SourceItem({self.key!r}, source={self.source!r}, stamp={self.stamp!r})"

    def __reduce__(self) -> tuple[Any, ...]:  # a copy is the key: the reader is not picklable
        return (str, (self.key,))


def iter_images(
    sources: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
    *,
    recursive: bool = False,
    globs: Sequence[str] = (),
    prefetch: int = 16,
    storage_options: Mapping[str, Any] | None = None,
    reread: bool = False,
) -> Iterator[SourceItem]:
    """The images of `sources`, one [`SourceItem`][clip_client.SourceItem] each, listed and read
    lazily: nothing is listed before the first item is asked for.

    Each source is one of:

    - a local image file (one item, even if its name _matches no glob);
    - a local folder: its files whose base name _matches `globs` (default
      [`IMAGE_GLOBS`][clip_client.sources.IMAGE_GLOBS]), with `recursive` those of its subfolders
      too (symlinked folders are not followed), in the sorted order of their paths below it;
    - a tar shard (a name ending in one of [`TAR_SUFFIXES`][clip_client.sources.TAR_SUFFIXES], local
      or in an object store) in the webdataset layout: its members `KEY.ext` matching `globs`, in
      the shard's order, one item per key; the siblings `KEY.json`, `KEY.txt`... are skipped; a
      matching member with no key (its base name starts with a dot, or has none) is one failed
      item keyed by its name;
    - an object-store URI (`s3://bucket/prefix`, `gs://...`, `abfss://...`, `memory://...`): an
      object, or the objects below a prefix, as a local file or folder;
    - a Unity Catalog volume path (`/Volumes/catalog/schema/volume/...`, or `dbfs:/Volumes/...`)
      that is not mounted here (off a Databricks cluster): a file, or a folder's files matching
      `globs` in the Files API's order, read through databricks-sdk's `WorkspaceClient().files`
      (the listing streamed a page at a time; on a cluster it is a local path). The path is
      normalised as a local one is (`dbfs:` kept, `//`, `.` and a trailing slash dropped). A path
      that is neither, or is above a volume (`/Volumes`, a catalog, a schema), raises
      `SourceNotFoundError`, unless its name is an image's (one failed input); a folder that cannot
      be read raises (never one failed input): 401 `AuthenticationError`, 403 or a failure that
      outlasts the retries `InvalidInputError` naming the folder;
    - a pattern. Braces (`shard-{000000..000099}.tar`, `{a,b}`) expand, in order and lazily (one
      name at a time, however large the range), in local paths and URIs alike; in a local path
      only when no file has that very name. `*`, `?` and `[` are glob characters only in a URI,
      where they match objects (sorted); a local path is never globbed (`*` is a character of its
      name: let the shell, or `glob.glob`, expand it). A name that braces give, or a local path,
      that names nothing is one failed input keyed by it; so is a URI glob that matches no object
      (keyed by the glob).

    Args:
        sources: one source or an iterable of them (read lazily): `str` or `os.PathLike` paths
            and URIs. Bytes are refused: decode a bytes path with `os.fsdecode`.
        recursive: descend into subfolders (sub-prefixes) of folder (prefix) sources.
        globs: base-name patterns of the images in folders, prefixes and shards (case-insensitive):
            a list such as `["*.png"]`, never a single `str`.
        prefetch: objects of an object store read ahead of the consumer, by a pool of up to 16
            threads (0: each object is read when its item is read, in the caller's thread).
        storage_options: keyword arguments for the fsspec filesystem of URIs (credentials,
            endpoint...), as `fsspec.open` takes them; for volume paths, the workspace (`host`,
            `token`, `profile`), else databricks-sdk's default chain finds it.
        reread: the items of a plain (uncompressed) `.tar` shard read their member again, by
            offset, each time they are read, and the shard is listed by seeking over the members'
            data, instead of being read as a stream whose items hold their bytes: for a listing
            kept whole (`list(iter_images(...))`), whose memory then holds keys, not images.
            Compressed shards cannot be read by offset: their items hold their bytes either way.
            Nothing is read ahead then (`prefetch` is ignored): each item reads when it is read.

    Returns:
        the items, source by source. A source that cannot be read whole (a folder that cannot be
        listed, a shard that is not a tar or is cut short: one that does not end with one or more
        whole zero blocks, and nothing after them) yields one item keyed by the source (or the
        subfolder) whose `read` raises: one failed input; the items before it are kept.

    Raises:
        InvalidInputError: a folder, prefix or shard holds nothing that _matches `globs` (raised
            when it has been walked, with `path` set to it): `NothingFoundError`; a volume path
            names nothing (`SourceNotFoundError`), or its folder cannot be listed at all.
        AuthenticationError: the Files API refused the credentials (401) for a volume path: every
            other request would be refused too.
        ImportError: a URI was given without fsspec or the store's plugin installed (the message
            says what to install).
        ValueError: `prefetch` is negative; a source has unbalanced braces (raised when it is
            reached).
        TypeError: `globs` is a single `str` (or holds something other than `str`); `sources` is
            bytes, or holds a source that is not a `str` or `os.PathLike` path (raised when it is
            reached).
    """
    if prefetch < 0:
        raise ValueError(f"prefetch must be >= 0, got {prefetch}")
    patterns = _patterns(globs)
    if isinstance(sources, (str, os.PathLike)):
        sources = [_source_path(sources)]
    elif isinstance(sources, (bytes, bytearray, memoryview)):
        raise TypeError(_BYTES_SOURCE.format(type(sources).__name__))
    items = (
        item
        for source in _expanded(sources, storage_options)
        for item in (
            (source,)
            if isinstance(source, SourceItem)
            else _items_of(source, recursive, patterns, storage_options, hold=not reread)
        )
    )
    return _read_ahead(items, prefetch) if prefetch and not reread else items


# --------------------------------------------------------------------------------------------------
# Arguments: what a source is


def _patterns(globs: Sequence[str]) -> tuple[str, ...]:
    if isinstance(globs, (str, bytes)):
        raise TypeError(
            f"iter_images(globs=...) takes a list of patterns, such as [{str(globs)!r}] or "
            f"['*.png'], not a single {type(globs).__name__} (it would be read as one pattern per "
            "character)"
        )
    for glob in globs:
        if not isinstance(glob, str):
            raise TypeError(f"iter_images(globs=...): each pattern must be a str, got {type(glob).__name__}")
    return tuple(g.lower() for g in (globs or IMAGE_GLOBS))


def _matches(name: str, patterns: Sequence[str]) -> bool:
    """Whether the base name of `name` _matches one of `patterns` (lower-cased already)."""
    base = name.rstrip("/").rsplit("/", 1)[-1].lower()
    return any(fnmatch.fnmatch(base, p) for p in patterns)


def _is_uri(source: str) -> bool:
    """`scheme://...`: read through fsspec (or refused, for http and https)."""
    return bool(_URI.match(source))


def _is_shard(source: str) -> bool:
    """A name ending in one of [`TAR_SUFFIXES`][clip_client.sources.TAR_SUFFIXES]."""
    return source.lower().endswith(TAR_SUFFIXES)


_BYTES_SOURCE = (
    "iter_images(sources=...) takes str or os.PathLike paths, not {}: decode a bytes path first "
    "(os.fsdecode(path))"
)


def _source_path(given: object) -> str:
    """`given` (one source) as a `str` path.

    Raises:
        TypeError: `given` is bytes, a path-like object whose path is bytes, or not a path at all.
    """
    if isinstance(given, (bytes, bytearray, memoryview)):
        raise TypeError(_BYTES_SOURCE.format(type(given).__name__))
    if not isinstance(given, (str, os.PathLike)):
        raise TypeError(
            "iter_images(sources=...): each source must be a str or os.PathLike path, "
            f"got {type(given).__name__}"
        )
    path = os.fspath(given)
    if not isinstance(path, str):
        raise TypeError(_BYTES_SOURCE.format(f"a path-like object whose path is {type(path).__name__}"))
    return path


def _expanded(
    sources: Iterable[str | os.PathLike[str]],
    storage_options: Mapping[str, Any] | None,
) -> Iterator[str | SourceItem]:
    for given in sources:
        yield from _expand(_source_path(given), storage_options)


def _expand(source: str, storage_options: Mapping[str, Any] | None = None) -> Iterator[str | SourceItem]:
    """`source` with its braces and (for a URI) its glob expanded, lazily and in order.

    A local path is never globbed, and its braces expand only when no file has that very name. A
    URI glob that matches no object is one failed item keyed by the glob, as a local path that
    names nothing is (when it is read)."""
    if _is_uri(source) and not source.lower().startswith(_URLS):
        for one in _braces(source):
            if not _GLOB_MAGIC.search(one.split("://", 1)[1]):
                yield one
                continue
            fs, path = _filesystem(one, storage_options)
            scheme = one.split("://", 1)[0]
            matched = sorted(fs.glob(path))
            if not matched:
                yield _failed(one, one, "no object matches this pattern")
            for p in matched:
                yield _with_scheme(scheme, p, fs)
        return
    if "{" in source and not os.path.lexists(source):
        yield from _braces(source)
        return
    yield source


# Brace expansion as `braceexpand` 0.1.7 (bash's, with backslash escapes) does it, but lazily:
# `braceexpand` builds an `itertools.product`, which holds every value of every range at once.
_INT_RANGE = re.compile(r"^(-?\d+)\.\.(-?\d+)(?:\.\.-?(\d+))?$")
_CHAR_RANGE = re.compile(r"^([A-Za-z])\.\.([A-Za-z])(?:\.\.-?(\d+))?$")
_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_ESCAPED = re.compile(r"\\(.)")

_Part = Callable[[], Iterable[str]]
"""One part of a brace pattern: a function that gives its values, afresh on each call."""


def _braces(source: str) -> Iterator[str]:
    """The strings that the braces of `source` expand to, in order, one at a time: memory holds one
    value per brace, whatever the number of strings (`{0..99999999999}` included).

    Raises:
        ValueError: the braces of `source` are unbalanced.
    """
    if "{" not in source:
        yield source
        return
    parts = _brace_pattern(source, source)
    for pieces in _brace_product(parts):
        yield _ESCAPED.sub(r"\1", "".join(pieces))


def _brace_product(parts: Sequence[_Part]) -> Iterator[list[str]]:
    """The values of `parts` joined in `itertools.product` order, without holding them."""
    if not parts:
        yield []
        return
    for value in parts[0]():
        for rest in _brace_product(parts[1:]):
            yield [value, *rest]


def _constant(text: str) -> _Part:
    return lambda: (text,)


def _expansions(parts: Sequence[_Part]) -> _Part:
    return lambda: ("".join(pieces) for pieces in _brace_product(parts))


def _brace_pattern(pattern: str, source: str) -> list[_Part]:
    """The parts of `pattern`: literals and brace expressions (a brace pair that is neither a range
    nor a list stays literal, its inside expanded)."""
    parts: list[_Part] = []
    start = 0
    for pos, char, depth in _unescaped(pattern):
        if char == "{" and depth == 0:  # depth before this brace
            if pos > start:
                parts.append(_constant(pattern[start:pos]))
            start = pos
        elif char == "}" and depth == 1:  # closes a top-level pair
            expr = pattern[start + 1 : pos]
            part = _brace_expression(expr, source)
            if part is None:
                parts += [_constant("{"), _expansions(_brace_pattern(expr, source)), _constant("}")]
            else:
                parts.append(part)
            start = pos + 1
    if _depth_at_end(pattern) != 0:
        raise ValueError(f"{source}: unbalanced braces")
    if start < len(pattern):
        parts.append(_constant(pattern[start:]))
    return parts


def _unescaped(text: str) -> Iterator[tuple[int, str, int]]:
    """`(position, character, brace depth before it)` of each brace and comma of `text` that no
    backslash escapes: the one scan both the pattern and a brace expression are split by."""
    pos = depth = 0
    while pos < len(text):
        char = text[pos]
        if char == "\\":
            pos += 2
            continue
        if char in "{},":
            yield pos, char, depth
            depth += {"{": 1, "}": -1, ",": 0}[char]
        pos += 1


def _depth_at_end(text: str) -> int:
    """The brace depth after the whole of `text` (0: balanced, ignoring escaped braces)."""
    depth = 0
    for _, char, _ in _unescaped(text):
        depth += {"{": 1, "}": -1, ",": 0}[char]
    return depth


def _brace_expression(expr: str, source: str) -> _Part | None:
    """The values of `{expr}`: an integer range, a letter range or a comma list; None if none."""
    if m := _INT_RANGE.match(expr):
        first, last, step = m.groups()
        width = (
            max(len(first), len(last))
            if any(s.startswith(("0", "-0")) for s in (first, last) if s not in ("0", "-0"))
            else 0
        )
        by = (int(step) or 1) if step else 1
        a, b = int(first), int(last)
        numbers = range(a, b + 1, by) if a < b else range(a, b - 1, -by)
        return lambda: (f"{n:0{width}d}" for n in numbers)
    if m := _CHAR_RANGE.match(expr):
        first, last, step = m.groups()
        by = (int(step) or 1) if step else 1
        a, b = _ALPHABET.index(first), _ALPHABET.index(last)
        letters = _ALPHABET[a : b + 1 : by] if a < b else _ALPHABET[a : (b or -len(_ALPHABET)) - 1 : -by]
        return lambda: letters
    items: list[_Part] = []
    start = 0
    for pos, char, depth in _unescaped(expr):
        if char == "," and depth == 0:
            items.append(_expansions(_brace_pattern(expr[start:pos], source)))
            start = pos + 1
    if _depth_at_end(expr) != 0 or not items:
        return None
    items.append(_expansions(_brace_pattern(expr[start:], source)))
    return lambda: (value for item in items for value in item())


def _with_scheme(scheme: str, path: str, fs: Any) -> str:
    full: str = fs.unstrip_protocol(path)
    return full if full.startswith(f"{scheme}://") else f"{scheme}://{path.lstrip('/')}"


# --------------------------------------------------------------------------------------------------
# Items of one source


def _items_of(
    source: str,
    recursive: bool,
    patterns: Sequence[str],
    storage_options: Mapping[str, Any] | None,
    *,
    hold: bool,
) -> Iterator[SourceItem]:
    """The items of one (expanded) source. `hold`: a tar member's bytes are read with the stream
    and held by its item; without it (a listing kept whole), a plain `.tar` is listed by seeking
    and each member read again by offset when its item is read."""
    if source.lower().startswith(_URLS):
        yield _failed(
            source,
            source,
            "URLs are not fetched; download the file first, or give its object-store URI "
            "(s3://, gs://, abfss://...)",
        )
        return
    if _is_uri(source):
        yield from _uri_items(source, recursive, patterns, storage_options, hold=hold)
        return
    volume = volume_path(source)
    if volume is not None:
        if not os.path.lexists(volume):  # off-cluster: no FUSE mount, the Files API reads it
            yield from _volume_items(source, volume, recursive, patterns, storage_options, hold=hold)
            return
        source = volume  # on a cluster: the mount, read as any local path
    path = os.path.normpath(source)
    if os.path.isdir(path):
        yield from _local_folder(path, source, recursive, patterns)
    elif _is_shard(path) and os.path.isfile(path):
        yield from _tar_items(path, _local_opener(path), patterns, hold=hold)
    else:  # a file, or a path that does not exist: it fails (and is reported) like any unreadable image
        yield _local_item(path, path)


def _local_opener(path: str) -> Callable[[], IO[bytes]]:
    def open_shard() -> IO[bytes]:
        return open(path, "rb")

    return open_shard


def _failed(key: str, source: str, reason: str) -> SourceItem:
    def fail() -> bytes:
        raise InvalidInputError(reason, path=key)

    return SourceItem(key, source=source, reader=fail)


def _local_item(path: str, source: str) -> SourceItem:
    def read() -> bytes:
        try:
            with open(path, "rb") as f:
                return f.read()
        except OSError as exc:
            raise InvalidInputError(f"cannot read file: {_reason(exc)}", path=path) from exc

    return SourceItem(path, source=source, stamp=_local_stamp(path), reader=read, local=True)


def _local_stamp(path: str) -> Stamp | None:
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return (st.st_size, st.st_mtime_ns)


class _Entry(NamedTuple):
    """One entry of a folder walk: its path below the root (`/`-joined for object stores,
    `os.sep` for local folders), and the store's details (None for a local file)."""

    rel: str
    info: Mapping[str, Any] | None


def _walk_sorted(
    root: str,
    list_dir: Callable[[str], Iterable[tuple[str, bool, Mapping[str, Any] | None]]],
    join: Callable[[str, str], str],
    *,
    recursive: bool,
    patterns: Sequence[str],
) -> Iterator[_Entry]:
    """The files below `root` that match `patterns`, in the sorted order of their relative paths
    (as `sorted()` of the whole list would give), one directory listing in memory at a time:
    a subfolder `d` sorts as `d/`, so its files come exactly where the global sort puts them.

    `list_dir(path)` gives `(name, is_dir, info)`; a subfolder it cannot list is yielded as
    `_Entry(rel, {"error": reason})` (the root's error is raised)."""

    def walk(rel: str) -> Iterator[_Entry]:
        where = join(root, rel) if rel else root
        try:
            listing = list(list_dir(where))
        except Exception as exc:
            if not rel:
                raise
            yield _Entry(rel, {"error": f"cannot list folder: {_reason(exc)}"})
            return
        keyed = sorted(
            ((f"{name}/" if is_dir else name), name, is_dir, info) for name, is_dir, info in listing
        )
        for _, name, is_dir, info in keyed:
            child = join(rel, name) if rel else name
            if is_dir:
                if recursive:
                    yield from walk(child)
            elif _matches(name, patterns):
                yield _Entry(child, info)

    return walk("")


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _local_dir_entries(path: str, *, descend_links: bool = False) -> list[tuple[str, bool, None]]:
    """`(name, is_dir, None)` of a local folder's entries, as `os.walk` sorts them: a symlink to a
    folder is a folder (and, unless `descend_links`, is listed as one but not entered); a dangling
    symlink is a file."""
    out: list[tuple[str, bool, None]] = []
    with os.scandir(path) as entries:
        for e in entries:
            is_dir = e.is_dir()
            if is_dir and e.is_symlink() and not descend_links:
                continue  # os.walk lists it among the folders and does not enter it
            out.append((e.name, is_dir, None))
    return out


def _local_folder(path: str, source: str, recursive: bool, patterns: Sequence[str]) -> Iterator[SourceItem]:
    found = False
    for rel, info in _walk_sorted(
        path, _local_dir_entries, os.path.join, recursive=recursive, patterns=patterns
    ):
        found = True
        full = os.path.join(path, rel)
        if info is not None and "error" in info:
            yield _failed(full, path, str(info["error"]))
        else:
            yield _local_item(full, path)
    if not found:
        raise NothingFoundError(source, patterns, recursive)


class NothingFoundError(InvalidInputError):
    """A folder, prefix or shard holds no file that _matches the patterns."""

    def __init__(self, source: str, patterns: Sequence[str], recursive: bool) -> None:
        self.source = source
        self.patterns = tuple(patterns)
        self.recursive = recursive
        hint = "" if recursive or _is_shard(source) else "; recursive=True for subfolders"
        super().__init__(f"no images found (patterns: {', '.join(patterns)}{hint})", path=source)


# --------------------------------------------------------------------------------------------------
# Tar shards (webdataset)


def _tar_items(
    shard: str,
    opener: Callable[[], IO[bytes]],
    patterns: Sequence[str],
    *,
    hold: bool,
) -> Iterator[SourceItem]:
    """The images of a tar shard, one item per webdataset key, in the shard's order.

    With `hold`, the shard is read once as a stream (`tarfile` mode `r|*`, any compression) and
    each item holds its member's bytes. Without it, a plain `.tar` is listed by seeking over the
    members' data (mode `r:`) and each item reads its member again by offset; a compressed shard
    cannot be read by offset, so its items hold their bytes either way.

    A key with two members that match `patterns` (`KEY.jpg` and `KEY.png`) is one failed item; so
    is a member that _matches but is not a regular file (a link), has no webdataset key, or repeats
    the key of an earlier member not next to it (these two keyed by the member's name, after the
    sample they are found in), and the shard itself when it cannot be opened or is
    not whole (keyed by the shard, after the items read before the fault): `tarfile` ends the
    archive quietly at a missing, short or corrupt header, so the end is checked (`_end_fault`).
    """
    seek = not hold and shard.lower().endswith(".tar")
    try:
        f = opener()
    except Exception as exc:
        yield _failed(shard, shard, f"cannot open shard: {_reason(exc)}")
        return
    pending: _Member | None = None
    behind: list[SourceItem] = []  # keyless members met while `pending` was open: they follow it
    seen: dict[str, str] = {}  # key -> its first member's name, for this shard (bounded by it)
    found = False
    fault: str | None = None
    with f:
        try:
            with tarfile.open(fileobj=f, mode="r:" if seek else "r|*", tarinfo=_Header) as tf:
                while (member := tf.next()) is not None:
                    vars(tf)["members"].clear()  # tarfile indexes every member: any shard, bounded memory
                    if member.isdir() or not _matches(member.name, patterns):
                        continue
                    found = True
                    m = _WDS_KEY.match(member.name)
                    if m is None or m.group(1).endswith("/"):  # `.x.jpg`, `dir/.x.jpg`, `noext`
                        keyless = _keyless(member, shard)
                        if pending is None:
                            yield keyless
                        else:
                            behind.append(keyless)
                        continue
                    key = m.group(1)
                    if pending is not None and pending.key == key:
                        pending.names.append(member.name)
                        continue
                    if key in seen:  # a key met earlier in this shard, not next to it: its own failure
                        repeat = _repeated_key(member, shard, key, seen[key])
                        if pending is None:
                            yield repeat
                        else:
                            behind.append(repeat)
                        continue
                    seen[key] = member.name
                    if pending is not None:
                        done, pending = pending, None  # a fault from here on must not yield it again
                        yield done.item(shard, opener)
                        yield from behind
                        behind.clear()
                    data = None
                    if member.isfile() and not seek:
                        extracted = tf.extractfile(member)
                        assert extracted is not None  # a regular file always extracts
                        data = extracted.read()
                    pending = _Member(key, [member.name], member, data)
                fault = _end_fault(tf)
        except (tarfile.TarError, EOFError, OSError, ValueError) as exc:
            fault = f"shard is not a tar or ends early: {_reason(exc)}"
    if pending is not None:
        yield pending.item(shard, opener)
    yield from behind
    if fault is not None:
        yield _failed(shard, shard, fault)
    elif not found:
        raise NothingFoundError(shard, patterns, False)


_HEADER_FAULT = "_clip_client_header_fault"
_TAR_ERRORS = vars(tarfile)  # the header errors below are not in typeshed's stubs
_ZERO_BLOCK: type[Exception] = _TAR_ERRORS["EOFHeaderError"]
_NO_HEADER: type[Exception] = _TAR_ERRORS["EmptyHeaderError"]
_SHORT_HEADER: type[Exception] = _TAR_ERRORS["TruncatedHeaderError"]


class _Header(tarfile.TarInfo):
    """A `TarInfo` that records, on its `TarFile`, why the last header could not be read.

    `TarFile.next` returns None (a normal end of archive) for a zero block, but also, past the
    first member, for a missing, short or corrupt header: the error kept here tells them apart."""

    @classmethod
    def fromtarfile(cls, tf: tarfile.TarFile) -> _Header:
        try:
            return super().fromtarfile(tf)
        except tarfile.HeaderError as exc:
            vars(tf)[_HEADER_FAULT] = exc
            raise


def _end_fault(tf: tarfile.TarFile) -> str | None:
    """Why the archive that `tf.next()` has just ended is not whole, or None when it ends as a tar
    must: one or more 512-byte zero blocks (POSIX writes two, some writers one) and nothing else, no
    partial block. Reads the rest of the shard (its padding, normally)."""
    exc = vars(tf).get(_HEADER_FAULT)
    at = tf.offset  # where the header that could not be read starts, in the (uncompressed) tar
    if isinstance(exc, _ZERO_BLOCK):
        rest = 0
        while chunk := tf.fileobj.read(1 << 16):
            if chunk.count(0) != len(chunk):
                return (
                    f"shard has data after its end-of-archive marker (byte {at} of the tar): "
                    "a concatenation of tars, or a corrupt shard"
                )
            rest += len(chunk)
        if rest % tarfile.BLOCKSIZE:
            return f"shard ends early: it stops inside a block of its end-of-archive marker (byte {at})"
        return None
    if isinstance(exc, _NO_HEADER):
        return (
            f"shard ends early: it stops at byte {at} of the tar, after a member, with no "
            "end-of-archive marker (a shard cut short: the members after the cut are lost)"
        )
    if isinstance(exc, _SHORT_HEADER):
        return f"shard ends early: it stops inside the member header at byte {at} of the tar"
    if exc is not None:
        return f"shard has a corrupt member header at byte {at} of the tar ({exc}): the rest is unreadable"
    return f"shard ends early: no end-of-archive marker (byte {at} of the tar)"


def _keyless(member: tarfile.TarInfo, shard: str) -> SourceItem:
    """A failed item for an image member that has no webdataset key: its base name starts with a
    dot (`.x.jpg`, `dir/._x.jpg`) or has none (a name without an extension that a glob matched).
    Keyed by the member's name, as `tar tf` lists it."""
    base = member.name.rsplit("/", 1)[-1]
    why = "starts with a dot" if base.startswith(".") else "has no extension"
    return _with_stamp(
        _failed(
            member.name,
            shard,
            f"member {member.name} of {shard} has no webdataset key (its base name {why}); rename it",
        ),
        (member.size, int(member.mtime * 1_000_000_000)),
    )


def _repeated_key(member: tarfile.TarInfo, shard: str, key: str, first: str) -> SourceItem:
    """A failed item for an image member whose webdataset key an earlier, not adjacent, member of
    the same shard already has (webdataset groups a sample's files by key, next to each other):
    keyed by the member's name, so that it is reported, not taken for the first one again."""
    return _with_stamp(
        _failed(
            member.name,
            shard,
            f"member {member.name} of {shard} repeats the webdataset key {key!r} of the earlier member "
            f"{first} (a sample's files are next to each other in a shard); rename one, or choose one "
            "with globs (--glob)",
        ),
        (member.size, int(member.mtime * 1_000_000_000)),
    )


class _Member:
    """The image member of the sample being read, until the next sample's member shows."""

    def __init__(self, key: str, names: list[str], info: tarfile.TarInfo, data: bytes | None) -> None:
        self.key, self.names, self.info, self.data = key, names, info, data

    def item(self, shard: str, opener: Callable[[], IO[bytes]]) -> SourceItem:
        info = self.info
        stamp = (info.size, int(info.mtime * 1_000_000_000))
        if len(self.names) > 1:
            return _with_stamp(
                _failed(
                    self.key,
                    shard,
                    f"sample has {len(self.names)} images ({', '.join(self.names)}) in {shard}; "
                    "choose one with globs (--glob)",
                ),
                stamp,
            )
        if not info.isfile():
            return _with_stamp(
                _failed(self.key, shard, f"member {info.name} of {shard} is a link, not a file"), stamp
            )
        if self.data is not None:
            return SourceItem(self.key, source=shard, stamp=stamp, data=self.data)
        reread = functools.partial(_reread, opener, shard, info.offset_data, info.size, self.key, info.name)
        return SourceItem(self.key, source=shard, stamp=stamp, reader=reread)


def _reread(
    opener: Callable[[], IO[bytes]], shard: str, offset: int, size: int, key: str, name: str
) -> bytes:
    """The bytes of the member `name` of a plain tar `shard`, read again by offset."""
    try:
        with opener() as f:
            f.seek(offset)
            data = f.read(size)
    except Exception as exc:
        raise InvalidInputError(f"cannot read from {shard}: {_reason(exc)}", path=key) from exc
    if len(data) != size:
        raise InvalidInputError(f"{shard} ends before its member {name}", path=key)
    return data


def _with_stamp(item: SourceItem, stamp: Stamp) -> SourceItem:
    item.stamp = stamp
    return item


# --------------------------------------------------------------------------------------------------
# Object stores (fsspec)


def _fsspec() -> Any:
    import importlib

    try:
        return importlib.import_module("fsspec")
    except ImportError:
        raise ImportError(f"object-store URIs need fsspec: {_INSTALL}") from None


def _filesystem(uri: str, storage_options: Mapping[str, Any] | None) -> tuple[Any, str]:
    """The fsspec filesystem of `uri` and the path inside it.

    Raises:
        ImportError: fsspec, or the store's plugin, is missing.
    """
    fsspec = _fsspec()
    try:
        fs, path = fsspec.core.url_to_fs(uri, **dict(storage_options or {}))
    except (ImportError, ValueError) as exc:
        scheme = uri.split("://", 1)[0]
        raise ImportError(
            f"{uri}: no fsspec filesystem for {scheme}:// ({exc}); install its plugin "
            "(s3fs for s3://, gcsfs for gs://, adlfs for abfss:// and az://)"
        ) from exc
    return fs, str(path)


def _uri_items(
    uri: str,
    recursive: bool,
    patterns: Sequence[str],
    storage_options: Mapping[str, Any] | None,
    *,
    hold: bool,
) -> Iterator[SourceItem]:
    fs, path = _filesystem(uri, storage_options)
    try:
        info = fs.info(path)
    except FileNotFoundError:
        info = None
    except Exception as exc:
        yield _failed(uri, uri, f"cannot read: {_reason(exc)}")
        return
    if info is not None and info.get("type") == "directory":
        base = uri.rstrip("/")

        def list_dir(where: str) -> list[tuple[str, bool, Mapping[str, Any] | None]]:
            out: list[tuple[str, bool, Mapping[str, Any] | None]] = []
            for entry in fs.ls(where, detail=True):
                name = str(entry["name"]).rstrip("/").rsplit("/", 1)[-1]
                out.append((name, entry.get("type") == "directory", entry))
            return out

        found = False
        for rel, entry in _walk_sorted(
            path.rstrip("/"), list_dir, lambda a, b: f"{a}/{b}", recursive=recursive, patterns=patterns
        ):
            found = True
            key = f"{base}/{rel}"
            if entry is not None and "error" in entry:
                yield _failed(key, uri, str(entry["error"]))
                continue
            inner = str(entry["name"]) if entry is not None else f"{path.rstrip('/')}/{rel}"
            yield SourceItem(
                key, source=uri, stamp=_object_stamp(entry), reader=_object_reader(fs, inner, key)
            )
        if not found:
            raise NothingFoundError(uri, patterns, recursive)
        return
    if _is_shard(path) and info is not None:
        yield from _tar_items(uri, lambda: fs.open(path, "rb"), patterns, hold=hold)
        return
    yield SourceItem(uri, source=uri, stamp=_object_stamp(info), reader=_object_reader(fs, path, uri))


def _object_reader(fs: Any, path: str, key: str) -> Callable[[], bytes]:
    def read() -> bytes:
        try:
            data = fs.cat_file(path)
        except FileNotFoundError:
            raise InvalidInputError("no such object", path=key) from None
        except Exception as exc:
            raise InvalidInputError(f"cannot read object: {_reason(exc)}", path=key) from exc
        return bytes(data)

    return read


def _object_stamp(info: Mapping[str, Any] | None) -> Stamp | None:
    """`(size, mtime in ns)` from an fsspec `info` dict (a digest of the ETag where no time is
    given), or None when it gives no size."""
    if info is None or info.get("size") is None:
        return None
    size = int(info["size"])
    for field in _MTIME_FIELDS:
        ns = _nanoseconds(info.get(field))
        if ns is not None:
            return (size, ns)
    for field in _ETAG_FIELDS:
        if info.get(field):
            digest = hashlib.blake2b(str(info[field]).encode(), digest_size=8).digest()
            return (size, int.from_bytes(digest, "big") >> 1)
    return None


def _nanoseconds(value: object) -> int | None:
    if isinstance(value, datetime):
        return int(value.timestamp() * 1_000_000) * 1000
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return int(value * 1_000_000) * 1000
    if isinstance(value, str):
        try:
            return int(datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() * 1_000_000) * 1000
        except ValueError:
            return None
    return None


# --------------------------------------------------------------------------------------------------
# Unity Catalog volumes off-cluster (the Files API)


class SourceNotFoundError(InvalidInputError):
    """A source names nothing: a Unity Catalog volume path, read off-cluster through the Files
    API, that is neither a folder nor a file (a folder that is not there, a volume, schema or
    catalog misspelt). A missing image file is not this error: it is one failed input, as a local
    file that is not there is."""

    def __init__(self, source: str, reason: str = "no such folder or file in the volume") -> None:
        self.source = source
        super().__init__(reason, path=source)


def _volume_reader(storage_options: Mapping[str, Any] | None) -> VolumeFiles:
    """The Files API reader for volume sources: `storage_options` may name the workspace
    (`host`, `token`, `profile`, as databricks-sdk's `Config` takes them), else databricks-sdk's
    default chain finds it (env vars, `~/.databrickscfg`, notebook auth)."""
    options = dict(storage_options or {})
    given = options.get("volume_files")
    if isinstance(given, VolumeFiles):
        return given
    return volume_files(host=options.get("host"), token=options.get("token"), profile=options.get("profile"))


def volume_item(
    key: str, path: str, files: VolumeFiles | Callable[[], VolumeFiles], *, stamp: Stamp | None = None
) -> SourceItem:
    """The item of the volume file `path` (`/Volumes/...`), keyed `key`, read through `files` (or
    the reader `files()` gives when the item is first read: in the thread that reads it, since
    building one may reach the network)."""
    return SourceItem(key, source=key, stamp=stamp, reader=_volume_file_reader(files, path, key))


def _volume_file_reader(
    files: VolumeFiles | Callable[[], VolumeFiles], path: str, key: str
) -> Callable[[], bytes]:
    def read() -> bytes:
        reader = files if isinstance(files, VolumeFiles) else files()
        try:
            return reader.read(path)
        except APIError as exc:
            if isinstance(exc, APIStatusError) and exc.status_code == 404 and _is_volume_folder(reader, path):
                raise InvalidInputError(
                    "is a folder, not an image file: embed_images takes files; list a folder's images "
                    "with clip_client.iter_images (or the `clip-client images` command)",
                    path=key,
                ) from None
            raise _volume_input_error(exc, key) from exc

    return read


def _is_volume_folder(files: VolumeFiles, path: str) -> bool:
    """Whether `path`, which is not a file, is a folder (one more request, after a 404)."""
    try:
        return files.kind(path) == ("dir", None)
    except APIError:
        return False


def _volume_failure(exc: APIError, what: str = "file") -> str:
    """What the Files API said, in the words a local file's (or folder's) failure would use."""
    if isinstance(exc, APIStatusError):
        said = f"the Files API answered HTTP {exc.status_code}"
        if exc.error_code:
            said += f" {exc.error_code}"
        said += f": {exc.message}"
        if exc.status_code == 404:
            return f"no such {what} ({said})"
        if exc.status_code == 403:
            return f"cannot access {what}: permission denied ({said}); READ VOLUME on the volume is needed"
        if exc.status_code == 401:
            return (
                f"cannot access {what}: not authenticated ({said}); check DATABRICKS_HOST and "
                "DATABRICKS_TOKEN, or the profile"
            )
    attempts = f" (gave up after {exc.attempts} attempts)" if exc.attempts > 1 else ""
    return f"cannot read {what} through the Files API: {exc.message}{attempts}"


def _volume_input_error(exc: APIError, key: str) -> InvalidInputError:
    return InvalidInputError(_volume_failure(exc), path=key)


def _unauthenticated(exc: APIError, source: str) -> AuthenticationError | None:
    """A 401 of the Files API, reading `source`, as the package's typed error (a 401 stops a call:
    every other request would be refused too); None for any other failure."""
    if not (isinstance(exc, APIStatusError) and exc.status_code == 401):
        return None
    return AuthenticationError(
        f"the Files API refused to read {source} ({exc.message})",
        status_code=401,
        error_code=exc.error_code,
        request_id=exc.request_id,
        attempts=exc.attempts,
    )


_VOLUME_DEPTH = 5  # `/Volumes/CATALOG/SCHEMA/VOLUME` split at `/`: the shallowest folder of files


def _volume_items(
    source: str,
    path: str,
    recursive: bool,
    patterns: Sequence[str],
    storage_options: Mapping[str, Any] | None,
    *,
    hold: bool,
) -> Iterator[SourceItem]:
    """The items of a volume path read off-cluster: a folder's files, walked through the Files
    API's paged listing a page at a time (subfolders as they come, in the service's order: memory
    holds one page per level, never a whole folder), a shard, or one file. Keys are `source` as
    given (`/Volumes/...` or `dbfs:/Volumes/...`), normalised as a local path is, joined with the
    path below it; the Files API is asked for `path` (`volume_path`'s one spelling).

    A folder (a path whose name is not an image's or a shard's) that cannot be read is an error
    about it, never one failed input: 401 is `AuthenticationError` (for any path), 404
    `SourceNotFoundError`, anything else (403, a 5xx that outlasts the retries) `InvalidInputError`
    with the server's words."""
    root = path.rstrip("/") or path
    if len(root.split("/")) < _VOLUME_DEPTH:  # `/Volumes`, a catalog, a schema: no files there
        raise SourceNotFoundError(
            source,
            "not a volume folder: volume paths are /Volumes/CATALOG/SCHEMA/VOLUME/... "
            "(a catalog or schema is not listed)",
        )
    files = _volume_reader(storage_options)
    # Keys are normalised as local paths are (`//`, `.` and a trailing slash dropped), the
    # `dbfs:` scheme kept as given.
    base = ("dbfs:" if source.startswith("dbfs:") else "") + root
    named_file = _matches(root, patterns) or _is_shard(root)
    try:
        kind = files.kind(root, file_first=named_file)
    except APIError as exc:
        unauthenticated = _unauthenticated(exc, source)
        if unauthenticated is not None:
            raise unauthenticated from None
        if named_file:  # a file then: its read fails, or not, with the server's own words
            yield volume_item(base, root, files)
            return
        if not (isinstance(exc, APIStatusError) and exc.status_code == 403):
            raise InvalidInputError(
                f"cannot list folder: {_volume_failure(exc, 'folder')}", path=source
            ) from None
        kind = ("dir", None)  # listing it says why it is refused, in the server's words (HEAD has none)
    if kind is None:
        if named_file:  # a missing file: one failed input
            yield volume_item(base, root, files)
            return
        raise SourceNotFoundError(source)
    what, stamp = kind
    if what == "file":
        if _is_shard(root):
            yield from _tar_items(source, lambda: io.BytesIO(files.read(root)), patterns, hold=hold)
        else:
            yield volume_item(base, root, files, stamp=stamp)
        return

    def walk(directory: str, rel: str) -> Iterator[SourceItem]:
        listing = files.entries(directory)
        while True:
            try:
                entry = next(listing, None)
            except APIError as exc:
                unauthenticated = _unauthenticated(exc, source)
                if unauthenticated is not None:
                    raise unauthenticated from None
                if not rel:
                    if isinstance(exc, APIStatusError) and exc.status_code == 404:
                        raise SourceNotFoundError(source) from None
                    raise InvalidInputError(
                        f"cannot list folder: {_volume_failure(exc, 'folder')}", path=source
                    ) from None
                yield _failed(
                    f"{base}/{rel}", source, f"cannot list folder: {_volume_failure(exc, 'folder')}"
                )
                return
            if entry is None:
                return
            child = f"{rel}/{entry.name}" if rel else entry.name
            if entry.is_dir:
                if recursive:
                    yield from walk(entry.path, child)
            elif _matches(entry.name, patterns):
                key = f"{base}/{child}"
                item = volume_item(key, entry.path, files, stamp=entry.stamp)
                item.source = source
                yield item

    found = False
    for item in walk(root, ""):
        found = True
        yield item
    if not found:
        raise NothingFoundError(source, patterns, recursive)


# --------------------------------------------------------------------------------------------------
# Read-ahead


def _read_ahead(items: Iterator[SourceItem], depth: int) -> Iterator[SourceItem]:
    """`items`, the objects among them read by a pool of threads, `depth` ahead of the consumer.
    Items that hold their bytes, and local files (which the client reads in its own pool), pass
    through. Closing the iterator cancels the reads not yet started."""
    return read_ahead_by(items, depth, lambda item: item)


V = TypeVar("V")


def read_ahead_by(
    values: Iterable[V], depth: int, item_of: Callable[[V], object]
) -> Generator[V, None, None]:
    """`values`, those whose `item_of(value)` is a `SourceItem` read from a store (an object, a
    volume file read through the Files API, a plain shard's member) read by a pool of up to 16
    threads, `depth` ahead of the consumer; anything else passes through. Closing the iterator
    cancels the reads not yet started. (The `images` command reads its pending inputs so.)"""
    pool: ThreadPoolExecutor | None = None
    window: deque[V] = deque()
    try:
        for value in values:
            item = item_of(value)
            if (
                isinstance(item, SourceItem)
                and item._reader is not None
                and item._data is None
                and not item._local
            ):
                if pool is None:
                    pool = ThreadPoolExecutor(
                        min(depth, _MAX_PREFETCH_THREADS), thread_name_prefix="clip-fetch"
                    )
                item._ahead = pool.submit(item._reader)
            window.append(value)
            if len(window) >= depth:
                yield window.popleft()
        while window:
            yield window.popleft()
    finally:  # stopped early: the reads of items never handed out are not needed
        for value in window:
            item = item_of(value)
            if isinstance(item, SourceItem) and item._ahead is not None:
                item._ahead.cancel()
        if pool is not None:  # reads of items handed out finish; the threads then end
            pool.shutdown(wait=False)
