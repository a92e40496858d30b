"""The `texts` and `images` commands: embed inputs into an output file or stdout."""

from __future__ import annotations

import collections
import csv
import json
import os
import re
import sqlite3
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Annotated, cast

import numpy as np
import typer

from ._ledger import KeyClash, Ledger
from .app import EXIT_FAILED_INPUTS, EXIT_OK, IMAGE_GLOBS, app, flag
from .errors import handled, say_error
from .interrupts import Finishing, finishing
from .options import Common, NormalizeOpt, OutOpt, OverwriteOpt, PartRowsOpt, shared_options, show_progress
from .outputs import (
    DEFAULT_CHUNK_ROWS,
    DEFAULT_PART_ROWS,
    OutputError,
    OutputMeta,
    ResumableImageRun,
    ResumableTextRun,
    Rows,
    check_writable,
    shown,
    stream_images,
    vanished,
    write_jsonl,
    write_rows,
)

# --------------------------------------------------------------------------------------------------
# texts


TEXT_FORMATS = (".txt", ".csv", ".jsonl", ".parquet")
"""The `--from` files `texts` reads by extension; any other name (and `-`, stdin) is read as .txt."""


class TextInput:
    """The texts of `--from`, read as they are embedded, never all at once: `(id, text)` pairs in
    file order, an `id` being the 0-based line number (.txt, stdin, .jsonl; blank lines skipped and
    counted in `skipped`) or data row number (.csv, .parquet).

    The file is opened, and its header or schema checked, when this is built: a missing file, a
    `--column` it lacks, or a `--column` a .txt file cannot have is said before any text is sent.
    A fault further in (bytes that are not UTF-8, a row without a text) is an `OutputError`
    naming the line or row, raised when the iteration reaches it.
    """

    def __init__(self, source: Path, column: str | None) -> None:
        self.source = source
        self.skipped = 0
        self.suffix = "" if str(source) == "-" else source.suffix.lower()
        self.column = column
        if self.suffix not in (".csv", ".jsonl", ".parquet") and column is not None:
            raise typer.BadParameter("--column is for .csv, .jsonl and .parquet files", param_hint="--column")
        if str(source) == "-":
            return
        try:
            if self.suffix == ".csv":
                with open(source, "rb") as f:
                    self.column = self._csv_column(csv.DictReader(self._csv_lines(f)).fieldnames or [])
            elif self.suffix == ".parquet":
                self.column = self._parquet_column()
            elif not source.is_file():
                open(source, "rb").close()  # the reason, as the system says it
        except OSError as exc:
            raise OutputError(f"--from {source}: {exc.strerror or exc}") from None

    def _csv_column(self, fields: Sequence[str]) -> str:
        if self.column is None:
            if len(fields) != 1:
                raise typer.BadParameter(
                    f"{self.source} has columns {fields}: name the one to embed with --column",
                    param_hint="--column",
                )
            return fields[0]
        if self.column not in fields:
            raise typer.BadParameter(
                f"{self.source} has no column {self.column!r}; its columns are {fields}",
                param_hint="--column",
            )
        return self.column

    def _parquet_column(self) -> str:
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            with open(self.source, "rb") as f:
                schema = pq.read_schema(f)
        except pa.ArrowInvalid as exc:
            raise OutputError(f"--from {self.source}: not a Parquet file ({exc})") from None
        strings = [f.name for f in schema if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)]
        column = self.column or (
            "text" if "text" in schema.names else (strings[0] if len(strings) == 1 else None)
        )
        if column is None:
            raise typer.BadParameter(
                f"{self.source} has string columns {strings}: name the one to embed with --column",
                param_hint="--column",
            )
        if column not in strings:
            what = (
                f"holds {schema.field(column).type}, not strings"
                if column in schema.names
                else "is not there"
            )
            raise typer.BadParameter(
                f"{self.source}: column {column!r} {what}; its string columns are {strings}",
                param_hint="--column",
            )
        return column

    def __iter__(self) -> Iterator[tuple[int, str]]:
        try:
            if str(self.source) == "-":
                yield from self._lines(_stdin_bytes())
            elif self.suffix == ".csv":
                yield from self._csv()
            elif self.suffix == ".parquet":
                yield from self._parquet()
            else:
                with open(self.source, "rb") as f:
                    yield from self._jsonl(f) if self.suffix == ".jsonl" else self._lines(f)
        except OSError as exc:
            raise OutputError(f"--from {self.source}: {exc.strerror or exc}") from None

    def _decoded(self, f: Iterable[bytes], encoding: str = "utf-8") -> Iterator[str]:
        """Each line of `f` (bytes, split on `\\n` only: a binary file's lines), decoded as it comes,
        its line end kept. A line that is not UTF-8 is an `OutputError` naming it (from 1), once
        the lines before it have been taken."""
        for number, raw in enumerate(_split_on_newlines(f)):
            try:
                yield raw.decode(encoding if number == 0 else "utf-8")
            except UnicodeDecodeError as exc:
                name = "stdin" if str(self.source) == "-" else str(self.source)
                at = exc.start + len(raw) - len(exc.object)  # a BOM that utf-8-sig took counts
                raise OutputError(
                    f"{name}: line {number + 1} is not UTF-8 text ({exc.reason}, byte {at + 1} "
                    "of the line); re-encode it as UTF-8 (e.g. iconv -f latin1 -t utf-8) and rerun"
                ) from None

    def _numbered_lines(self, f: Iterable[bytes]) -> Iterator[tuple[int, str]]:
        """Each line with its number from 0: lines end at `\\n` only (as JSON Lines and `wc -l`
        count them; `\\v`, `\\f`, U+0085, U+2028... are text), a `\\r` before it dropped."""
        for number, line in enumerate(self._decoded(f)):
            yield number, line.removesuffix("\n").removesuffix("\r")

    def _lines(self, f: Iterable[bytes]) -> Iterator[tuple[int, str]]:
        for number, line in self._numbered_lines(f):
            if line.strip():
                yield number, line
            else:
                self.skipped += 1

    def _jsonl(self, f: Iterable[bytes]) -> Iterator[tuple[int, str]]:
        column = self.column or "text"
        for number, line in self._numbered_lines(f):
            if not line.strip():
                self.skipped += 1
                continue
            try:
                obj = json.loads(line)
            except ValueError as exc:
                raise OutputError(f"{self.source}: line {number + 1} is not JSON ({exc})") from None
            value = obj.get(column) if isinstance(obj, dict) else None
            if not isinstance(value, str):
                raise OutputError(
                    f"{self.source}: line {number + 1} has no string {column!r} "
                    f"({self._found(obj, column)}); "
                    "each line must be an object with the text to embed (--column names its key)"
                )
            yield number, value

    @staticmethod
    def _found(obj: object, column: str) -> str:
        return f"found {type(obj[column]).__name__}" if isinstance(obj, dict) and column in obj else "absent"

    def _csv(self) -> Iterator[tuple[int, str]]:
        with open(self.source, "rb") as f:
            reader = csv.DictReader(self._csv_lines(f))
            for number, row in enumerate(reader):
                yield number, row[self.column or ""] or ""

    def _csv_lines(self, f: Iterable[bytes]) -> Iterator[str]:
        """The lines of a CSV file as `open(newline="", encoding="utf-8-sig")` gives them (a lone
        `\\r` ends one too), decoded a line at a time: bytes that are not UTF-8 name their line."""
        for line in self._decoded(f, "utf-8-sig"):
            yield from _LONE_CR.split(line)

    def _parquet(self) -> Iterator[tuple[int, str]]:
        import pyarrow.parquet as pq

        number = 0
        with open(self.source, "rb") as f:
            for batch in pq.ParquetFile(f).iter_batches(batch_size=DEFAULT_CHUNK_ROWS, columns=[self.column]):
                for value in batch.column(0).to_pylist():
                    if value is None:
                        raise OutputError(
                            f"{self.source}: row {number} has no text (null in column {self.column!r}); "
                            "fill it or filter it out"
                        )
                    yield number, value
                    number += 1

    def say_skipped(self) -> None:
        if self.skipped:
            say_error(f"clip-client: {self.skipped} blank line(s) skipped (ids are line numbers, from 0)")


_LONE_CR = re.compile(r"(?<=\r)(?!\n)(?!$)")
"""Where a line ends at a lone `\\r` (not one of `\\r\\n`), as the csv module's `newline=""` files end it."""


def _split_on_newlines(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """`chunks` (a binary file's lines, or any pieces of bytes) as lines split on `\\n` only, each
    with its `\\n` (the last one may lack it)."""
    rest = b""
    for chunk in chunks:
        if rest or not chunk.endswith(b"\n") or b"\n" in chunk[:-1]:
            *lines, rest = (rest + chunk).split(b"\n")
            yield from (line + b"\n" for line in lines)
        else:  # a whole line already, as a binary file gives them
            yield chunk
    if rest:
        yield rest


def _stdin_bytes() -> Iterable[bytes]:
    """The bytes of stdin (its text stream's, encoded, where it has no binary buffer)."""
    buffer = getattr(sys.stdin, "buffer", None)
    if buffer is not None:
        return cast("Iterable[bytes]", buffer)
    return (chunk.encode("utf-8", "surrogatepass") for chunk in sys.stdin)  # a surrogate: not UTF-8


@app.command()
@handled
@shared_options("model", "workspace", "tuning")
def texts(
    text: Annotated[list[str] | None, typer.Argument(help="Texts to embed.", show_default=False)] = None,
    source: Annotated[
        Path | None,
        typer.Option(
            "--from",
            help="Read texts from a file: .txt (one per line), .csv, .jsonl or .parquet (with "
            "--column), or - for stdin.",
            show_default=False,
        ),
    ] = None,
    column: Annotated[
        str | None,
        typer.Option(
            "--column",
            help="The column (.csv, .parquet) or key (.jsonl) holding the texts (default: the only "
            "one; 'text' for .jsonl and .parquet).",
            show_default=False,
        ),
    ] = None,
    out: OutOpt = None,
    overwrite: OverwriteOpt = False,
    part_rows: PartRowsOpt = DEFAULT_PART_ROWS,
    normalize: NormalizeOpt = False,
    *,
    common: Common,
) -> int:
    """Embed texts: given as arguments, or --from a .txt/.csv/.jsonl/.parquet file.

    Rows keep the input order, each with its id (its position; for --from, its line or row
    number from 0) and its text. Texts over CLIP's 77 tokens are truncated by the model.

    --from streams: memory does not grow with the file. With --out it is resumable: finished rows
    are kept in OUT.parts/ as the run goes; rerun the same command after an interruption and only
    the rows not yet done are embedded (from the first line that differs, if the file changed).

    Example: clip-client texts "a red car" "a dog" --out captions.parquet
    """
    if text and source is not None:
        raise typer.BadParameter("give texts as arguments or --from FILE, not both", param_hint="--from")
    if not text and source is None:
        raise typer.BadParameter("give texts to embed, or --from FILE", param_hint="TEXT...")
    if source is None:
        if column is not None:
            raise typer.BadParameter("--column goes with --from FILE", param_hint="--column")
        return _texts_given(list(text or []), out, normalize, common)
    given = TextInput(source, column)
    if out is None:
        return _texts_to_stdout(given, normalize, common)
    check_writable(out)  # before the model is loaded or a text sent
    with common.client(normalize=normalize) as client:
        run = ResumableTextRun(client, out, normalize=normalize, part_rows=part_rows, overwrite=overwrite)
        todo = run.resume(given)
        if run.kept:
            say_error(f"clip-client: resuming: {_rows(run.kept)} already done")
        if run.differs_at is not None and run.differs_at < 0:
            say_error(
                f"clip-client: {shown(str(source))} has fewer rows than the earlier run's: the rows "
                "past its end are left out"
            )
        elif run.differs_at is not None:
            say_error(
                f"clip-client: {shown(str(source))} differs from the earlier run's rows at id "
                f"{run.differs_at}: the rows from there on are embedded again"
            )
        try:
            run.embed(todo, progress=show_progress())
        except BaseException:
            given.say_skipped()
            if run.store.parts.is_dir():
                say_error(
                    f"clip-client: finished rows kept in {shown(str(run.store.parts))}; rerun to resume"
                )
            raise
    given.say_skipped()
    with finishing() as window:
        written = run.finish()
        say_error(
            f"clip-client: wrote {_rows(len(written))} ({written.dim}-d float32) to {shown(str(out))} "
            f"({run.embedded} embedded)"
        )
    if window.interrupted:
        say_complete(out, window)
    return EXIT_OK


def _texts_given(items: list[str], out: Path | None, normalize: bool, common: Common) -> int:
    """Texts given as arguments (in memory already): embedded, then written whole."""
    ids = list(range(len(items)))
    if out is not None:
        check_writable(out)  # before the model is loaded or a text sent
    with common.client(normalize=normalize) as client:
        meta = OutputMeta.of(client, "text", normalize=normalize)
        vectors = client.embed_texts(items, progress=show_progress())
    rows = Rows(ids, vectors, items, meta)
    with finishing() as window:
        _write(out, rows)
    if window.interrupted:
        say_complete(out, window)
    return EXIT_OK


def _texts_to_stdout(given: TextInput, normalize: bool, common: Common) -> int:
    """Texts of `--from` embedded as they are read, each row on stdout (JSON Lines) as it comes, a
    chunk at a time; the last chunk is written inside the `finishing` window."""
    chunk: list[tuple[int, str, np.ndarray]] = []
    sent: collections.deque[tuple[int, str]] = collections.deque()
    fault: list[OutputError] = []

    def texts() -> Iterator[str]:
        try:
            for key, value in given:
                sent.append((key, value))
                yield value
        except OutputError as exc:  # the input ends there: the rows before it are written first
            fault.append(exc)

    # Only the key's name matters on stdout: rows of texts carry an `id`.
    meta = OutputMeta(kind="text", model="", normalize=normalize)

    def rows_of(items: list[tuple[int, str, np.ndarray]]) -> Rows:
        dim = items[0][2].shape[0] if items else 0
        matrix = np.stack([v for _, _, v in items]) if items else np.zeros((0, dim), np.float32)
        return Rows([k for k, _, _ in items], matrix, [t for _, t, _ in items], meta)

    with common.client(normalize=normalize) as client:
        with client.iter_embed_texts(texts(), progress=show_progress()) as stream:
            for _, vector in stream:
                key, value = sent.popleft()
                chunk.append((key, value, vector))
                if len(chunk) >= DEFAULT_PART_ROWS:
                    write_jsonl(sys.stdout, rows_of(chunk[:-1]))
                    chunk = chunk[-1:]  # the last row waits: it is written in the finishing window
        given.say_skipped()
    if fault:
        write_jsonl(sys.stdout, rows_of(chunk))
        sys.stdout.flush()
        raise fault[0]
    with finishing() as window:
        write_jsonl(sys.stdout, rows_of(chunk))
        sys.stdout.flush()
    if window.interrupted:
        say_complete(None, window)
    return EXIT_OK


def say_complete(out: Path | None, window: Finishing) -> None:
    """The note of a Ctrl-C that came once the output was being finished (`finishing`)."""
    window.said = True
    what = f"{shown(str(out))} is written whole" if out is not None else "every row is on stdout"
    say_error(f"clip-client: interrupted after the output was complete: {what}; nothing to rerun")


def _write(out: Path | None, rows: Rows) -> None:
    if out is None:
        write_jsonl(sys.stdout, rows)
        sys.stdout.flush()
        return
    write_rows(out, rows)
    dim = rows.embeddings.shape[1] if rows.embeddings.ndim == 2 else 0
    say_error(f"clip-client: wrote {_rows(len(rows))} ({dim}-d float32) to {shown(str(out))}")


def _rows(n: int) -> str:
    """`n` row(s), in words: "1 row", "2 rows"."""
    return f"{n} row" if n == 1 else f"{n} rows"


# --------------------------------------------------------------------------------------------------
# images


def gather_images(
    paths: Sequence[str | os.PathLike[str]],
    *,
    recursive: bool,
    globs: Sequence[str],
    workspace: Mapping[str, str | None] | None = None,
) -> list[str]:
    """The images of the arguments, each once, as `list_images` lists them, in a list (for the
    commands that hold their results whole anyway, `classify`).

    Local files are plain `str` paths; shard members and objects are `SourceItem`s (their key as a
    `str`, which reads its bytes and carries its stamp). A plain `.tar` shard's members are read
    again by offset when embedded, so the list holds keys, not images.

    Raises:
        OutputError: as `list_images`.
    """
    with Ledger() as ledger:
        relist = list_images(paths, recursive=recursive, globs=globs, ledger=ledger, workspace=workspace)
        ledger.plan()  # no row is done: every input is to list
        listed = [item for item, _ in ledger.pending(relist())]
        # Gone since it was listed: kept as a path, so that it fails (and is reported) when read.
        return listed + list(ledger.unsent())


def _listing(
    paths: Sequence[str | os.PathLike[str]],
    *,
    recursive: bool,
    globs: Sequence[str],
    workspace: Mapping[str, str | None] | None = None,
) -> Iterator[str]:
    """Every image of the arguments, repeats included, as `clip_client.iter_images` lists them,
    one at a time: a local file as its path (`str`), a shard member, object or volume file (off a
    cluster) as its `SourceItem`. `workspace` (`host`, `profile`) is where volumes are read."""
    from ..errors import InvalidInputError
    from ..sources import NothingFoundError, SourceNotFoundError, iter_images

    for given in paths:
        try:
            for image in iter_images(
                [given],
                recursive=recursive,
                globs=globs or IMAGE_GLOBS,
                prefetch=0,
                reread=True,
                storage_options=workspace,
            ):
                yield image.local_path or image
        except NothingFoundError as exc:
            raise OutputError(
                f"no images found in {os.fspath(given)} (patterns: {', '.join(globs or IMAGE_GLOBS)}"
                f"{'' if exc.recursive else '; --recursive for subfolders'})"
            ) from None
        except SourceNotFoundError as exc:
            raise OutputError(
                f"{os.fspath(given)}: {exc.reason} (read through the workspace's Files API: this is not a "
                "Databricks cluster, where /Volumes is mounted); check the catalog, schema, volume and folder"
            ) from None
        except InvalidInputError as exc:  # a volume folder that cannot be listed at all
            raise OutputError(str(exc)) from None


def list_images(
    paths: Sequence[str | os.PathLike[str]],
    *,
    recursive: bool,
    globs: Sequence[str],
    ledger: Ledger,
    workspace: Mapping[str, str | None] | None = None,
) -> Callable[[], Iterator[str]]:
    """List the images of the arguments into `ledger` (its `inputs`, in order, with their stamps),
    each once, streaming: memory does not grow with their count. Listed by
    `clip_client.iter_images`: a file as given (in the order given); a folder's entries that match
    `globs` (default `IMAGE_GLOBS`, case-insensitive), sorted, from its subfolders too with
    `recursive`; a tar shard's images in the webdataset layout, keyed by their webdataset key; an
    object-store URI's object, or the objects below it, keyed by URI; a Unity Catalog volume path
    (`/Volumes/...`, `dbfs:/Volumes/...`) that is not mounted here, through the Files API of
    `workspace` (`host`, `profile`; else databricks-sdk's default chain), keyed by path; braces
    (`shard-{000..009}.tar`) and, in URIs, globs expanded. Paths are normalised
    (`os.path.normpath`: `photos/` and `photos` agree) but not made absolute. A path that does not
    exist, and a folder entry that is not a readable file (a dangling symlink...), is kept: it fails
    (and is reported) like any unreadable image. A repeat (the same absolute path, the same shard's
    member) is counted and said once, on stderr; the first spelling is kept.

    A stamp is a local file's size and mtime now (`file_stamp`), before it is read, or a shard
    member's or object's as its listing gave it (`SourceItem.stamp`).

    Returns:
        `relist()`: the same listing again (repeats included; the same items, shard members read
        through theirs), for `Ledger.pending` to take the inputs from as they are embedded.

    Raises:
        OutputError: a folder, shard or prefix holds nothing that matches `globs`; one key comes
            from two different images (two shards with the same webdataset key).
    """

    def relist() -> Iterator[str]:
        return _listing(paths, recursive=recursive, globs=globs, workspace=workspace)

    # One row per image, as resume matches rows: by absolute path (symlinks not resolved), so that
    # `photos/a.jpg`, `./photos/a.jpg` and `$PWD/photos/a.jpg` are one input, the first spelling kept.
    # A shard member is the same image again only from the same shard.
    # A volume file read through the Files API is its one spelling (`volume_path`: `dbfs:` dropped,
    # `//` and `.` collapsed), as a local file is its absolute path.
    def rows() -> Iterator[tuple[str, str, str, tuple[int, int] | None]]:
        for item in relist():
            row = _volume_row(item) or os.path.abspath(item)
            yield item, row, _image_identity(item, row), _stamp_of(item)

    try:
        repeats = ledger.add_inputs(rows())
    except KeyClash as clash:
        raise OutputError(
            f"key {str(clash.key)!r} names two images: {clash.first} and {clash.other}; keys are the rows' "
            "ids and must be unique: give one of them"
        ) from None
    if repeats:
        say_error(f"clip-client: {repeats} path(s) given more than once; each is embedded once")
    return relist


def _volume_row(item: str) -> str | None:
    """The one spelling of a volume file read through the Files API (`/Volumes/...`), None for
    anything else (a local file, a shard's member, an object)."""
    from .._remote.volumes import volume_path
    from ..sources import TAR_SUFFIXES, SourceItem

    if not isinstance(item, SourceItem) or item.local_path is not None:
        return None
    if item.key != item.source and item.source.lower().endswith(TAR_SUFFIXES):
        return None
    return volume_path(str(item))


def _image_identity(item: str, row: str) -> str:
    """Which image `item` is, in words: a shard's member is `KEY in SHARD` (the shard absolute when
    local); a file is its absolute path `row`; an object is its URI."""
    from ..sources import TAR_SUFFIXES, SourceItem

    if not isinstance(item, SourceItem):
        return row
    if item.key != item.source and item.source.lower().endswith(TAR_SUFFIXES):
        shard = item.source if "://" in item.source else os.path.abspath(item.source)
        return f"{item.key} in {shard}"
    return _volume_row(item) or item.key


def _stamp_of(item: str) -> tuple[int, int] | None:
    """A shard member's or an object's stamp as its listing gave it (`SourceItem.stamp`), a file's
    size and mtime now (`file_stamp`), before it is read."""
    from ..sources import SourceItem
    from .outputs import file_stamp

    return item.stamp if isinstance(item, SourceItem) else file_stamp(item)


def report_failures(failed: Sequence[tuple[str, str]], total: int) -> None:
    say_error(f"clip-client: {len(failed)} of {total} image(s) could not be embedded:")
    for path, reason in failed:
        say_error(f"  {shown(path)}: {reason}")


@app.command()
@handled
@shared_options("model", "workspace", "tuning", "images")
def images(
    paths: Annotated[
        list[str],
        typer.Argument(
            help="Image files, folders, tar shards (webdataset), object-store URIs (s3://, gs://, abfss://) "
            "and Unity Catalog volume paths (/Volumes/..., read through the Files API off a cluster).",
            show_default=False,
        ),
    ],
    out: OutOpt = None,
    recursive: Annotated[bool, flag("--recursive", "-r", help="Descend into subfolders.")] = False,
    glob: Annotated[
        list[str] | None,
        typer.Option(
            "--glob",
            help="File name pattern for folders (repeatable) (default: common image extensions).",
            show_default=False,
        ),
    ] = None,
    strict: Annotated[
        bool, flag("--strict", help="Stop at the first image that cannot be embedded.")
    ] = False,
    overwrite: OverwriteOpt = False,
    part_rows: PartRowsOpt = DEFAULT_PART_ROWS,
    normalize: NormalizeOpt = False,
    *,
    common: Common,
) -> int:
    """Embed images: files, or the images in folders (sorted; --recursive for subfolders).

    Resumable: with --out, finished rows are kept in OUT.parts/ as the run goes; rerun the same
    command after an interruption and only the missing images are embedded, and those whose file
    changed (size or modification time) since. The output is written whole at the end (never half a
    file).

    Images that cannot be read are listed at the end with their reasons (exit status 3) and left out
    of the output; --strict stops at the first.

    Memory does not grow with the image count: the list of images is kept in a temporary file (in
    TMPDIR; about 300 bytes an image), deleted when the run ends.

    Example: clip-client images photos/ --recursive --out photos.parquet
    """
    try:
        with Ledger() as ledger:
            relist = list_images(
                paths, recursive=recursive, globs=glob or (), ledger=ledger, workspace=common.workspace()
            )
            return _images(ledger, relist, paths, out, glob, strict, overwrite, part_rows, normalize, common)
    except sqlite3.Error as exc:  # the temporary folder is full or not writable
        raise OutputError(
            f"cannot keep the run's list of images in {tempfile.gettempdir()} ({exc}); free space there, "
            "or set TMPDIR to a folder with room, and rerun (finished rows are kept for a resume)"
        ) from None


def _images(
    ledger: Ledger,
    relist: Callable[[], Iterator[str]],
    paths: Sequence[str],
    out: Path | None,
    glob: Sequence[str] | None,
    strict: bool,
    overwrite: bool,
    part_rows: int,
    normalize: bool,
    common: Common,
) -> int:
    """The `images` command once its inputs are listed in `ledger`."""
    total = ledger.count
    if not total:
        raise OutputError(
            f"no images found in {', '.join(map(str, paths))} (patterns: {', '.join(glob or IMAGE_GLOBS)})"
        )
    if out is not None:
        check_writable(out)  # before the model is loaded or an image sent
    with common.client(normalize=normalize) as client:
        if out is None:
            ledger.plan()  # no row is done: every input is to embed
            failed = stream_images(
                client, (item for item, _ in ledger.pending(relist())), sys.stdout, count=total,
                strict=strict, progress=show_progress(),
            )  # fmt: skip
            vanished(ledger, failed, strict=strict)
            with finishing() as window:
                status = _failures(failed, total)
            if window.interrupted:
                say_complete(None, window)
            return status
        run = ResumableImageRun(
            client, out, ledger, relist, normalize=normalize, part_rows=part_rows, overwrite=overwrite
        )
        if run.resumed:
            again = f"; {run.changed} changed since (size or mtime) and embedded again" if run.changed else ""
            say_error(f"clip-client: resuming: {run.already_done} of {total} image(s) already done{again}")
        try:
            run.embed(strict=strict, progress=show_progress())
        except BaseException:
            if run.kept:
                say_error(
                    f"clip-client: {run.kept} finished row(s) kept in {shown(str(run.store.parts))}; "
                    "rerun to resume"
                )
            raise
    with finishing() as window:
        try:
            done = run.finish()
        except BaseException:
            if run.failed:  # the failures are said whatever stops the output
                report_failures(run.failed, total)
            raise
        if done.left_out:
            say_error(
                f"clip-client: {done.left_out} row(s) of the earlier output are not among this run's "
                "inputs: left out"
            )
        say_error(
            f"clip-client: wrote {_rows(len(done.rows))} to {shown(str(out))} ({done.embedded} embedded, "
            f"{done.from_cache} of them from the cache)"
        )
        status = _failures(done.failed, total)
    if window.interrupted:
        say_complete(out, window)
    return status


def _failures(failed: Sequence[tuple[str, str]], total: int) -> int:
    """List the inputs that failed, if any: the exit status of a run that finished."""
    if failed:
        report_failures(failed, total)
        return EXIT_FAILED_INPUTS
    return EXIT_OK
