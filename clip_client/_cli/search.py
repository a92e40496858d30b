"""The `search`, `dedupe` and `classify` commands: read an embeddings file, answer from it."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import numpy as np
import typer

from ..errors import InvalidInputError
from .app import EXIT_FAILED_INPUTS, EXIT_OK, app, flag
from .embed import gather_images, report_failures
from .errors import handled, say_error
from .options import Common, JsonOpt, shared_options, show_progress
from .outputs import (
    OutputError,
    Rows,
    failure_reason,
    json_line,
    options_for_rows,
    read_chunks,
    read_rows,
    refuse_another_model,
    shown,
)

if TYPE_CHECKING:
    from ..vector_search import VectorSearchResult

# --------------------------------------------------------------------------------------------------
# search, dedupe


def _print_table(header: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[int] = ()) -> None:
    """A plain table on stdout: columns padded to their widest cell, the last never cut."""
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(header)]

    def line(cells: Sequence[str]) -> str:
        out = [
            c.rjust(widths[i]) if i in right else (c if i == len(cells) - 1 else c.ljust(widths[i]))
            for i, c in enumerate(cells)
        ]
        return "  ".join(out).rstrip()

    typer.echo(line(header))
    for r in rows:
        typer.echo(line(r))


def _label(rows: Rows, i: int) -> str:
    if rows.texts is not None:
        return shown(" ".join(str(rows.texts[i]).split()))
    return shown(str(rows.keys[i]))


def _clamp(similarity: float) -> float:
    """A cosine similarity as printed: float32 rounding can take it just past 1 (or -1); `-inf`
    (a row that cannot be normalised, `cosine_topk`) stays `-inf`."""
    return similarity if math.isinf(similarity) and similarity < 0 else min(1.0, max(-1.0, similarity))


def _json_score(similarity: float) -> float | None:
    """A score in `--json`: rounded to 6 decimals; null for `-inf`, which JSON cannot hold."""
    return None if math.isinf(similarity) else round(_clamp(similarity), 6)


def _echo_json(obj: dict[str, Any]) -> None:
    """One `--json` line: valid UTF-8, a name that is not UTF-8 as its `\\udcXX` escape."""
    typer.echo(json_line(obj))


@app.command()
@handled
@shared_options("model", "workspace", "tuning", "images")
def search(
    index: Annotated[
        Path,
        typer.Argument(
            help="An output of `images` or `texts` (.parquet, .npy or .jsonl), or a Databricks Vector "
            "Search index by its Unity Catalog name (catalog.schema.index)."
        ),
    ],
    query: Annotated[str | None, typer.Argument(help="The query text.", show_default=False)] = None,
    image: Annotated[
        Path | None,
        typer.Option("--image", help="Query with this image instead of a text.", show_default=False),
    ] = None,
    k: Annotated[int, typer.Option("-k", "--top", min=1, help="How many results.")] = 10,
    filters: Annotated[
        list[str] | None,
        typer.Option(
            "--filter",
            help="With a Vector Search index: only rows where KEY=VALUE (repeatable; also 'KEY<VALUE', "
            "'KEY>=VALUE', 'KEY NOT=VALUE'; a VALUE that is a JSON scalar is sent as one, e.g. 5 or true; "
            "a KEY given twice matches any of its values).",
            show_default=False,
        ),
    ] = None,
    json_lines: JsonOpt = False,
    *,
    common: Common,
) -> int:
    """The rows of INDEX nearest to a text (or --image) by cosine similarity, best first.

    Exact search over every row of a file. The query is embedded by the model that computed INDEX,
    as its settings name it (a local checkpoint, or the serving endpoints): --local, --model and the
    workspace options are only needed to say otherwise, and another model is refused.

    INDEX may also be a Databricks Vector Search index (catalog.schema.index, see `clip-client
    index`): the query is embedded by the serving endpoints (or --local) and the index answers,
    with --filter conditions if given.

    Example: clip-client search photos.parquet "a red car" -k 5

    Example: clip-client search main.photos.clip_index "a red car" --filter folder=maize
    """
    from ..search import cosine_topk
    from .vector_search import is_index_name, parse_filters, search_index

    if (query is None) == (image is None):
        raise typer.BadParameter("give a query text or --image FILE (one of them)", param_hint="QUERY")
    if is_index_name(index):
        return search_index(
            common, str(index), query, image, k, parse_filters(filters or []), json_lines, _show_index_hits
        )
    if filters:
        raise typer.BadParameter(
            "--filter applies to a Vector Search index (catalog.schema.index), not to a file",
            param_hint="--filter",
        )
    # The file is read a chunk at a time, each chunk's exact top-k merged into the running one:
    # memory does not grow with the file. Its first rows say its settings and width.
    chunks = read_chunks(index, role="INDEX", foreign=True)
    rows = next(chunks)
    while not len(rows):
        more = next(chunks, None)
        if more is None:
            raise OutputError(f"{index} has no rows to search")
        rows = more
    # The model the file records, wherever no option chose one; a mismatch is refused before loading.
    with options_for_rows(common, rows.meta, index).client() as client:
        refuse_another_model(index, rows.meta, client)
        vector = client.embed_image(str(image)) if image is not None else client.embed_text(query or "")
    width = rows.embeddings.shape[1]
    if vector.shape[-1] != width:
        made_by = rows.meta.model if rows.meta is not None else "unknown"
        raise OutputError(
            f"{index} holds {width}-d rows (model: {made_by}), but the query is {vector.shape[-1]}-d: "
            "embed it with the model that computed the index"
        )
    key, has_texts = rows.key_name, rows.texts is not None
    hits: list[tuple[float, int, Any, str | None]] = []  # (score, row of the file, key, text): best first
    offset = 0
    for chunk in itertools.chain([rows], chunks):
        if len(chunk):
            if chunk.embeddings.shape[1] != width:
                raise OutputError(f"{index}: its embeddings are not all of one width")
            top = cosine_topk(vector, chunk.embeddings, k)
            for i, score in zip(top.indices[0].tolist(), top.scores[0].tolist(), strict=True):
                text = chunk.texts[i] if chunk.texts is not None else None
                hits.append((score, offset + i, chunk.keys[i], text))
            # Best first, equal scores by lower row number: what one `cosine_topk` over the file gives.
            hits.sort(key=lambda hit: (-hit[0], hit[1]))
            del hits[k:]
        offset += len(chunk)
    _show_hits(key, [(score, name, text) for score, _, name, text in hits], has_texts, json_lines)
    return EXIT_OK


def _show_hits(
    key: str, hits: Sequence[tuple[float, Any, str | None]], has_texts: bool, json_lines: bool
) -> None:
    """The hits of a search, best first: a table (rank, score, key, text) or `--json` lines."""
    if json_lines:
        for rank, (score, name, text) in enumerate(hits, 1):
            obj: dict[str, Any] = {"rank": rank, "score": _json_score(score), key: name}
            if has_texts:
                obj["text"] = text
            _echo_json(obj)
        return
    header = ["rank", "score", key] + (["text"] if has_texts else [])
    table = [
        [str(rank), f"{_clamp(score):.4f}", shown(str(name))]
        + ([shown(" ".join(str(text).split()))] if has_texts else [])
        for rank, (score, name, text) in enumerate(hits, 1)
    ]
    _print_table(header, table, right=(0, 1))


def _show_index_hits(result: VectorSearchResult, json_lines: bool) -> None:
    """A Vector Search index's hits, as a file's are shown."""
    hits = [(float(score), key, None) for key, score in zip(result.keys[0], result.scores[0], strict=True)]
    _show_hits(result.primary_key, hits, False, json_lines)


class DedupeMethod(str, Enum):
    """`--method` of `dedupe`: the `method` of `find_duplicates`."""

    auto = "auto"
    exact = "exact"
    approximate = "approximate"


@app.command()
@handled
@shared_options()
def dedupe(
    index: Annotated[
        Path, typer.Argument(help="An output of `images` or `texts` (.parquet, .npy or .jsonl).")
    ],
    threshold: Annotated[
        float,
        typer.Option(
            "--threshold",
            "-t",
            min=-1.0,
            max=1.0,
            help="Cosine similarity at and above which two rows match.",
        ),
    ] = 0.95,
    method: Annotated[
        DedupeMethod,
        typer.Option(
            "--method",
            help="How pairs are found: exact compares every pair (time grows with rows squared); "
            "approximate compares each row with its k-means cells' rows (needs the index extra); "
            "auto is exact up to 50,000 rows, approximate above.",
        ),
    ] = DedupeMethod.auto,
    json_lines: JsonOpt = False,
) -> int:
    """Groups of near-duplicates in INDEX: rows joined by cosine >= --threshold (through chains).

    Each group lists its members, the first (in file order) with 1.0 and the others with their
    similarity to it. Needs no model: it reads the embeddings only. Above 50,000 rows the
    approximate method runs (--method): 170 s for 1,000,000 768-d rows on 2 cores.

    Example: clip-client dedupe photos.parquet --threshold 0.97
    """
    from ..search import find_duplicates

    rows = read_rows(index, role="INDEX", foreign=True)
    _say_unmatchable(index, rows)
    groups = (
        find_duplicates(rows.embeddings, threshold, method=method.value, progress=show_progress())
        if len(rows)
        else []
    )
    key = rows.key_name
    if json_lines:
        for g, group in enumerate(groups, 1):
            members = [
                {key: rows.keys[i], "similarity": round(_clamp(s), 6)}
                for i, s in zip(group.indices.tolist(), group.similarities.tolist(), strict=True)
            ]
            _echo_json({"group": g, "members": members})
        return EXIT_OK
    if not groups:
        typer.echo(f"no near-duplicates at threshold {threshold} among {len(rows)} rows")
        return EXIT_OK
    in_groups = sum(len(g.indices) for g in groups)
    typer.echo(f"{len(groups)} group(s), {in_groups} of {len(rows)} rows, threshold {threshold}")
    for g, group in enumerate(groups, 1):
        typer.echo(f"\ngroup {g} ({len(group.indices)} members)")
        for i, s in zip(group.indices.tolist(), group.similarities.tolist(), strict=True):
            typer.echo(f"  {_clamp(s):.4f}  {_label(rows, i)}")
    return EXIT_OK


def _say_unmatchable(index: Path, rows: Rows) -> None:
    """Say on stderr which rows have no direction (a NaN, an infinity, or all zeros): they match no
    row, so `dedupe` lists them in no group."""
    if not len(rows):
        return
    norms = np.linalg.norm(rows.embeddings.astype(np.float64), axis=1)
    bad = np.flatnonzero(~np.isfinite(norms) | (norms == 0)).tolist()
    if bad:
        some = ", ".join(_label(rows, i) for i in bad[:5]) + (", ..." if len(bad) > 5 else "")
        say_error(
            f"clip-client: {len(bad)} row(s) of {shown(str(index))} hold a NaN, an infinity or all "
            f"zeros, so they match nothing and are in no group: {some}"
        )


# --------------------------------------------------------------------------------------------------
# classify, status


def _labels(labels: str | None, labels_file: Path | None) -> list[str]:
    """The labels of `--labels` (comma-separated) or `--labels-file` (one per line; blank lines
    skipped, and said), checked by the rules of [`ClipClient.classify`][clip_client.ClipClient.classify]: at
    least one, none empty, each once.

    Raises:
        typer.BadParameter: neither or both given; no label; an empty label (its position, from 1),
            or one given twice (where, in the option's words: a label's position in `--labels`, a
            line of `--labels-file`).
    """
    from .._core.zeroshot import check_labels

    if (labels is None) == (labels_file is None):
        raise typer.BadParameter(
            'give --labels "cat,dog,car" or --labels-file FILE (one of them)', param_hint="--labels"
        )
    if labels_file is not None:
        hint = "--labels-file"
        try:
            raw = labels_file.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise OutputError(f"--labels-file {labels_file}: {exc.strerror or exc}") from None
        lines = [n for n, x in enumerate(raw, 1) if x.strip()]
        out = [raw[n - 1].strip() for n in lines]
        if len(out) < len(raw):
            say_error(f"clip-client: {len(raw) - len(out)} blank line(s) of {labels_file} skipped")
        if not out:
            raise typer.BadParameter(
                f"{labels_file} holds no label: write one label per line", param_hint=hint
            )
        where = ("line", lines, str(labels_file))
    else:
        hint = "--labels"
        out = [x.strip() for x in (labels or "").split(",")]
        empty = [n for n, x in enumerate(out, 1) if not x]
        if len(out) == 1 and empty:
            raise typer.BadParameter('no label given: --labels "cat,dog,car"', param_hint=hint)
        if empty:
            raise typer.BadParameter(
                f"label {empty[0]} of {len(out)} in {labels!r} is empty: remove the extra comma",
                param_hint=hint,
            )
        where = ("label", list(range(1, len(out) + 1)), str(len(out)))
    try:
        check_labels(out)
    except InvalidInputError as exc:
        raise typer.BadParameter(_label_problem(exc, out, where), param_hint=hint) from None
    return out


def _label_problem(
    exc: InvalidInputError, items: Sequence[str], where: tuple[str, Sequence[int], str]
) -> str:
    """A label or template refused by the client's checks, said with where it was given rather
    than its Python index: `where` is what counts (`label`, `line`, `--template`), the number of
    each item, and the whole (`3`, the labels file): `line 7 of labels.txt`."""
    i = exc.index
    if i is None or not 0 <= i < len(items):
        return " ".join((exc.reason or str(exc)).split())
    what, numbers, whole = where
    item = items[i]
    first = items.index(item)
    if first < i:
        return f"{what} {numbers[i]} of {whole}, {item!r}, repeats {what} {numbers[first]}: give each once"
    return f"{what} {numbers[i]} of {whole}, {item!r}, {_item_problem(exc, item)}"


def _item_problem(exc: InvalidInputError, item: str) -> str:
    """What the client's checks found wrong with one label or template, without its index."""
    if exc.argument == "templates":
        from .._core.zeroshot import _template_problem

        problem = _template_problem(item) or "is refused"
        return (
            f"{problem}: each --template needs exactly one {{}}, where the label goes ({{{{ and }}}} for "
            "literal braces)"
        )
    return "has no text: a label must have some"


@app.command()
@handled
@shared_options("model", "workspace", "tuning", "images")
def classify(
    paths: Annotated[list[Path], typer.Argument(help="Image files and/or folders.", show_default=False)],
    labels: Annotated[
        str | None,
        typer.Option("--labels", help='Comma-separated labels: "cat,dog,car".', show_default=False),
    ] = None,
    labels_file: Annotated[
        Path | None, typer.Option("--labels-file", help="A file of labels, one per line.", show_default=False)
    ] = None,
    template: Annotated[
        list[str] | None,
        typer.Option(
            "--template",
            help='Prompt template with {} for the label, e.g. "a photo of a {}." (repeatable; '
            "averaged) (default: the client's).",
            show_default=False,
        ),
    ] = None,
    top: Annotated[int, typer.Option("--top", min=1, help="Labels shown per image, most likely first.")] = 1,
    recursive: Annotated[bool, flag("--recursive", "-r", help="Descend into subfolders.")] = False,
    glob: Annotated[
        list[str] | None,
        typer.Option("--glob", help="File name pattern for folders (repeatable).", show_default=False),
    ] = None,
    strict: Annotated[
        bool, flag("--strict", help="Stop at the first image that cannot be embedded.")
    ] = False,
    json_lines: JsonOpt = False,
    *,
    common: Common,
) -> int:
    """Zero-shot labels for images, with probabilities (softmax over the labels).

    Example: clip-client classify photos/ --labels "cat,dog,car" --top 2
    """
    from .._core.zeroshot import check_templates

    names = _labels(labels, labels_file)
    try:
        check_templates(template or None)
    except InvalidInputError as exc:
        given = template or []
        where = ("--template", list(range(1, len(given) + 1)), str(len(given)))
        raise typer.BadParameter(_label_problem(exc, given, where), param_hint="--template") from None
    inputs = gather_images(paths, recursive=recursive, globs=glob or (), workspace=common.workspace())
    if not inputs:
        raise OutputError(f"no images found in {', '.join(map(str, paths))}")
    with common.client() as client:
        result = client.classify(
            inputs, names, templates=template or None, on_error="raise" if strict else "mark",
            progress=show_progress(),
        )  # fmt: skip
    failed = {f.index: failure_reason(f) for f in result.failures}
    tops = result.top(min(top, len(names)))
    if json_lines:
        for i, path in enumerate(inputs):
            if i in failed:
                continue
            _echo_json(
                {"path": path, "labels": [{"label": lab, "probability": round(p, 6)} for lab, p in tops[i]]}
            )
    else:
        table = [
            [shown(path), ", ".join(f"{lab} {p:.3f}" for lab, p in tops[i])]
            for i, path in enumerate(inputs)
            if i not in failed
        ]
        _print_table(["path", "label probability" if top == 1 else f"top {top} labels"], table)
    if failed:
        report_failures([(inputs[i], r) for i, r in sorted(failed.items())], len(inputs))
        return EXIT_FAILED_INPUTS
    return EXIT_OK
