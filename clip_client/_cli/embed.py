"""The `texts` and `images` commands: embed inputs into an output file or stdout."""

from __future__ import annotations

import fnmatch
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

import typer

from .app import EXIT_FAILED_INPUTS, EXIT_OK, IMAGE_GLOBS, app, flag
from .errors import handled, say_error
from .interrupts import finishing
from .options import Common, NormalizeOpt, OutOpt, shared_options, show_progress
from .outputs import (
    DEFAULT_PART_ROWS,
    OutputError,
    OutputMeta,
    ResumableImageRun,
    Rows,
    check_writable,
    shown,
    stream_images,
    write_jsonl,
    write_rows,
)

# --------------------------------------------------------------------------------------------------
# texts


def _read_texts(source: Path, column: str | None) -> tuple[list[int], list[str]]:
    """(ids, texts) from a .txt file (one text per line; blank lines skipped, ids are 0-based line
    numbers), a .csv file (`column`; ids are 0-based data rows) or `-` (stdin, as .txt)."""
    if str(source) == "-":
        lines = sys.stdin.read().splitlines()
        return _lines(lines)
    suffix = source.suffix.lower()
    try:
        if suffix == ".csv":
            import csv

            with open(source, newline="", encoding="utf-8-sig") as f:
                reader = csv.DictReader(f)
                fields = reader.fieldnames or []
                if column is None:
                    if len(fields) != 1:
                        raise typer.BadParameter(
                            f"{source} has columns {fields}: name the one to embed with --column",
                            param_hint="--column",
                        )
                    column = fields[0]
                if column not in fields:
                    raise typer.BadParameter(
                        f"{source} has no column {column!r}; its columns are {fields}", param_hint="--column"
                    )
                texts = [row[column] or "" for row in reader]
            return list(range(len(texts))), texts
        if column is not None:
            raise typer.BadParameter("--column is for .csv files", param_hint="--column")
        return _lines(source.read_text(encoding="utf-8").splitlines())
    except UnicodeDecodeError as exc:
        raise OutputError(f"{source}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise OutputError(f"--from {source}: {exc.strerror or exc}") from None


def _lines(lines: Sequence[str]) -> tuple[list[int], list[str]]:
    ids = [i for i, line in enumerate(lines) if line.strip()]
    skipped = len(lines) - len(ids)
    if skipped:
        say_error(f"clip-client: {skipped} blank line(s) skipped (ids are line numbers, from 0)")
    return ids, [lines[i] for i in ids]


@app.command()
@handled
@shared_options("model", "workspace", "tuning")
def texts(
    text: Annotated[list[str] | None, typer.Argument(help="Texts to embed.", show_default=False)] = None,
    source: Annotated[
        Path | None,
        typer.Option(
            "--from",
            help="Read texts from a file: .txt (one per line), .csv (with --column), or - for stdin.",
            show_default=False,
        ),
    ] = None,
    column: Annotated[
        str | None, typer.Option("--column", help="The .csv column holding the texts.", show_default=False)
    ] = None,
    out: OutOpt = None,
    normalize: NormalizeOpt = False,
    *,
    common: Common,
) -> int:
    """Embed texts: given as arguments, or --from a .txt/.csv file.

    Rows keep the input order, each with its id (its position; for --from, its line or CSV row
    number from 0) and its text. Texts over CLIP's 77 tokens are truncated by the model.

    Example: clip-client texts "a red car" "a dog" --out captions.parquet
    """
    if text and source is not None:
        raise typer.BadParameter("give texts as arguments or --from FILE, not both", param_hint="--from")
    if not text and source is None:
        raise typer.BadParameter("give texts to embed, or --from FILE", param_hint="TEXT...")
    if source is not None:
        ids, items = _read_texts(source, column)
    else:
        if column is not None:
            raise typer.BadParameter("--column goes with --from FILE.csv", param_hint="--column")
        items = list(text or [])
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
        say_complete(out)
    return EXIT_OK


def say_complete(out: Path | None) -> None:
    """The note of a Ctrl-C that came once the output was being finished (`finishing`)."""
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


def gather_images(paths: Sequence[Path], *, recursive: bool, globs: Sequence[str]) -> list[str]:
    """The image paths of the arguments, each once: a file as given (in the order given); a folder's
    entries that match `globs` (default `IMAGE_GLOBS`, case-insensitive), sorted, from its
    subfolders too with `recursive`. Paths are normalised (`os.path.normpath`: `photos/` and
    `photos` agree) but not made absolute. A path that does not exist, and a folder entry that is
    not a readable file (a dangling symlink...), is kept: it fails (and is reported) like any
    unreadable image.

    Raises:
        OutputError: a folder argument holds nothing that matches `globs`.
    """
    patterns = [g.lower() for g in (globs or IMAGE_GLOBS)]
    found: list[str] = []
    for given in paths:
        arg = os.path.normpath(str(given))
        if not os.path.isdir(arg):
            found.append(arg)
            continue
        names: list[str] = []
        if recursive:
            for root, dirs, files in os.walk(arg):
                dirs.sort()
                rel = os.path.relpath(root, arg)
                names += [f if rel == "." else os.path.join(rel, f) for f in files]
        else:
            # Every entry but a folder, as os.walk lists them: a dangling symlink is not dropped.
            names = [e.name for e in os.scandir(arg) if not e.is_dir()]
        matched = [n for n in names if any(fnmatch.fnmatch(os.path.basename(n).lower(), p) for p in patterns)]
        if not matched:
            raise OutputError(
                f"no images found in {given} (patterns: {', '.join(globs or IMAGE_GLOBS)}"
                f"{'' if recursive else '; --recursive for subfolders'})"
            )
        found += [os.path.join(arg, n) for n in sorted(matched)]
    # One row per file, as resume matches rows: by absolute path (symlinks not resolved), so that
    # `photos/a.jpg`, `./photos/a.jpg` and `$PWD/photos/a.jpg` are one input, the first spelling kept.
    first: dict[str, str] = {}
    for path in found:
        first.setdefault(os.path.abspath(path), path)
    unique = list(first.values())
    if len(unique) < len(found):
        say_error(
            f"clip-client: {len(found) - len(unique)} path(s) given more than once; each is embedded once"
        )
    return unique


def report_failures(failed: Sequence[tuple[str, str]], total: int) -> None:
    say_error(f"clip-client: {len(failed)} of {total} image(s) could not be embedded:")
    for path, reason in failed:
        say_error(f"  {shown(path)}: {reason}")


@app.command()
@handled
@shared_options("model", "workspace", "tuning", "images")
def images(
    paths: Annotated[list[Path], typer.Argument(help="Image files and/or folders.", show_default=False)],
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
    overwrite: Annotated[
        bool,
        flag("--overwrite", help="Start again: ignore what an earlier run left in --out."),
    ] = False,
    part_rows: Annotated[
        int,
        typer.Option("--part-rows", min=1, help="Rows per part file while a run is in progress."),
    ] = DEFAULT_PART_ROWS,
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

    Example: clip-client images photos/ --recursive --out photos.parquet
    """
    inputs = gather_images(paths, recursive=recursive, globs=glob or ())
    if not inputs:
        raise OutputError(
            f"no images found in {', '.join(map(str, paths))} (patterns: {', '.join(glob or IMAGE_GLOBS)})"
        )
    if out is not None:
        check_writable(out)  # before the model is loaded or an image sent
    with common.client(normalize=normalize) as client:
        if out is None:
            failed = stream_images(client, inputs, sys.stdout, strict=strict, progress=show_progress())
            with finishing() as window:
                status = _failures(failed, len(inputs))
            if window.interrupted:
                say_complete(None)
            return status
        run = ResumableImageRun(
            client, out, inputs, normalize=normalize, part_rows=part_rows, overwrite=overwrite
        )
        if run.resumed:
            again = f"; {run.changed} changed since (size or mtime) and embedded again" if run.changed else ""
            say_error(
                f"clip-client: resuming: {run.already_done} of {len(inputs)} image(s) already done{again}"
            )
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
                report_failures(run.failed, len(inputs))
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
        status = _failures(done.failed, len(inputs))
    if window.interrupted:
        say_complete(out)
    return status


def _failures(failed: Sequence[tuple[str, str]], total: int) -> int:
    """List the inputs that failed, if any: the exit status of a run that finished."""
    if failed:
        report_failures(failed, total)
        return EXIT_FAILED_INPUTS
    return EXIT_OK
