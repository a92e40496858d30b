"""Databricks Vector Search from the command line: `search` over a Unity Catalog index (called from
the `search` command when its INDEX is `catalog.schema.index`), and the `index` sub-commands
`create`, `sync` and `status` (clip_client.vector_search)."""

from __future__ import annotations

import contextlib
import copy
import json
import re
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ..errors import ClipClientError, SettingValue
from .app import EXIT_OK, app, flag
from .errors import flag_spelling, handled
from .options import Common, shared_options

if TYPE_CHECKING:
    from ..vector_search import VectorSearchResult

_EMBEDDING_FILES = (".parquet", ".npy", ".jsonl")


def is_index_name(value: str | Path) -> bool:
    """Whether the `search` command's INDEX names a Unity Catalog Vector Search index rather than an
    embeddings file: three non-empty dotted parts (`catalog.schema.index`), no path separator, no
    file of that name, and not ending in an embeddings file's suffix (`photos.v2.parquet` stays a
    file, so that a missing file is reported as one)."""
    text = str(value)
    parts = text.split(".")
    return (
        len(parts) == 3
        and all(parts)
        and "/" not in text
        and "\\" not in text
        and not text.lower().endswith(_EMBEDDING_FILES)
        and not Path(text).exists()
    )


_COMPARISON = re.compile(r"^\s*(?P<column>[^\s=<>!]+)\s*(?P<op><=|>=|!=|<|>)\s*(?P<value>.*)$", re.DOTALL)


def parse_filters(given: Sequence[str]) -> dict[str, Any] | None:
    """`--filter` options as Vector Search's `filters` dict.

    Each is `COLUMN=VALUE` (equality), `COLUMN<VALUE`, `COLUMN<=VALUE`, `COLUMN>VALUE`, `COLUMN>=VALUE`
    (sent as the keys `"COLUMN <"`...), or `COLUMN NOT=VALUE` / `COLUMN LIKE=VALUE` (the key before the
    first `=` is sent as it is). A VALUE that parses as a JSON scalar (`5`, `2.5`, `true`, `null`,
    `"5"`) is sent as that value, anything else as the string; the same key given twice or more becomes
    a list (`--filter folder=a --filter folder=b`: `{"folder": ["a", "b"]}`, any of them).
    """
    if not given:
        return None
    filters: dict[str, Any] = {}
    for item in given:
        match = _COMPARISON.match(item)
        if match is not None:
            key, raw = f"{match['column']} {match['op']}", match["value"]
        else:
            key, sep, raw = item.partition("=")
            key = key.strip()
            if not sep or not key:
                raise typer.BadParameter(
                    f"{item!r} is not KEY=VALUE (e.g. folder=maize, 'id<5', 'folder NOT=maize')",
                    param_hint="--filter",
                )
        value = _scalar(raw)
        if key in filters:
            before = filters[key]
            filters[key] = [*before, value] if isinstance(before, list) else [before, value]
        else:
            filters[key] = value
    return filters


def _scalar(raw: str) -> Any:
    try:
        value = json.loads(raw)
    except ValueError:
        return raw
    return value if value is None or isinstance(value, str | int | float | bool) else raw


MAX_K = 10_000
"""Vector Search's most results per query (`clip_client.vector_search.MAX_RESULTS`)."""

INDEX_FLAGS: dict[str, str] = {
    "primary_key": "--primary-key",
    "embedding_column": "--embedding-column",
    "create_endpoint": "--create-endpoint",
    "source_table": "--source-table",
    "endpoint": "--endpoint",
    "timeout": "--timeout",
}
"""The keywords of `create_index` and `VectorIndex` that an option of `clip-client index` sets, and
that option: advice that names `{primary_key=}` reads `--primary-key` here."""


def index_spelling(setting: str, value: SettingValue | None = None, *, keyword: bool = False) -> str:
    """`flag_spelling`, knowing the `index` commands' options too; a flag's `True` is the flag alone
    (`{create_endpoint=True}` reads `--create-endpoint`)."""
    option = INDEX_FLAGS.get(setting)
    if option is None:
        return flag_spelling(setting, value, keyword=keyword)
    return option if value is None or value is True else f"{option} {value}"


@contextlib.contextmanager
def _in_index_words() -> Iterator[None]:
    """Errors of the block with their advice in the `index` commands' option names (the error
    re-raised as a copy whose message says it so, the advice template spent)."""
    try:
        yield
    except ClipClientError as exc:
        text = exc.render(index_spelling)
        if text == str(exc):
            raise
        said = copy.copy(exc)
        said.args = (text,)
        said._advice = None
        raise said from exc.__cause__


def checked_name(value: str, param_hint: str, kind: str = "index") -> str:
    """`value` when it is a Unity Catalog name (`catalog.schema.index`), else a usage error naming
    the argument or option."""
    from ..vector_search import name_problem

    problem = name_problem(value, kind)
    if problem is not None:
        raise typer.BadParameter(f"{value!r} is not a Unity Catalog name: {problem}", param_hint=param_hint)
    return value


def search_index(
    common: Common,
    name: str,
    query: str | None,
    image: Path | None,
    k: int,
    filters: dict[str, Any] | None,
    json_lines: bool,
    show: Callable[[VectorSearchResult, bool], None],
) -> int:
    """The `search` command over a Vector Search index: the query embedded by the client the
    options describe, the hits shown by `show` (the same table as a file's search)."""
    from ..vector_search import VectorIndex

    checked_name(name, "INDEX")
    if k > MAX_K:
        raise typer.BadParameter(
            f"{k} is over Vector Search's {MAX_K:,} results per query: ask for fewer, or narrow the search "
            "with --filter",
            param_hint="'-k' / '--top'",
        )
    with common.client() as client, _in_index_words():
        index = VectorIndex(name, client=client)
        if image is not None:
            result = index.search(image=image, k=k, filters=filters)
        else:
            result = index.search(text=query or "", k=k, filters=filters)
    show(result, json_lines)
    return EXIT_OK


# --------------------------------------------------------------------------------------------------
# clip-client index create|sync|status

index_app = typer.Typer(
    name="index",
    help="Databricks Vector Search indexes of CLIP embeddings: create one over a Delta table that "
    "embed_table wrote, sync it, read its status. Search one with `clip-client search "
    "catalog.schema.index QUERY`.",
    no_args_is_help=True,
    rich_markup_mode="markdown",
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(index_app, name="index")

NameArg = Annotated[str, typer.Argument(help="The index's Unity Catalog name, catalog.schema.index.")]
NoWaitOpt = Annotated[
    bool, flag("--no-wait", help="Return once asked; do not wait until the index is online.")
]
TimeoutOpt = Annotated[
    float, typer.Option("--timeout", min=0, help="Seconds to wait for the index to come online.")
]


def _progress(line: str) -> None:
    typer.echo(line, err=True)


@index_app.command("create")
@handled
@shared_options("model", "workspace")
def create(
    name: NameArg,
    source_table: Annotated[
        str, typer.Option("--source-table", help="The Delta table of embeddings, catalog.schema.table.")
    ],
    endpoint: Annotated[str, typer.Option("--endpoint", help="The Vector Search endpoint that serves it.")],
    primary_key: Annotated[str, typer.Option("--primary-key", help="The table's key column.")] = "path",
    embedding_column: Annotated[
        str, typer.Option("--embedding-column", help="The table's array<float> embedding column.")
    ] = "embedding",
    continuous: Annotated[
        bool, flag("--continuous", help="Follow the table continuously (default: sync when asked).")
    ] = False,
    create_endpoint: Annotated[
        bool, flag("--create-endpoint", help="Create the endpoint when it does not exist.")
    ] = False,
    no_wait: NoWaitOpt = False,
    timeout: TimeoutOpt = 3600.0,
    *,
    common: Common,
) -> int:
    """Create a Delta Sync index over a table of embeddings (or sync it, when it exists as asked).

    The table needs Change Data Feed on, and L2-normalised embeddings for the scores to be cosines.

    Example: clip-client index create main.photos.clip_index --source-table main.photos.embedded
    --endpoint clip-vs
    """
    from ..vector_search import create_index

    checked_name(name, "NAME")
    checked_name(source_table, "--source-table", "table")
    with common.client() as client, _in_index_words():
        create_index(
            name,
            source_table=source_table,
            endpoint=endpoint,
            client=client,
            primary_key=primary_key,
            embedding_column=embedding_column,
            pipeline="CONTINUOUS" if continuous else "TRIGGERED",
            create_endpoint=create_endpoint,
            wait=not no_wait,
            timeout=timeout,
            progress=_progress,
        )
    return EXIT_OK


@index_app.command("sync")
@handled
@shared_options("workspace")
def sync(name: NameArg, no_wait: NoWaitOpt = False, timeout: TimeoutOpt = 3600.0, *, common: Common) -> int:
    """Ask a TRIGGERED Delta Sync index to read its table's changes, and wait until it is online.

    A Direct Access index has no sync (its rows are what upserts write): it is refused."""
    from ..vector_search import VectorIndex

    checked_name(name, "NAME")
    with common.client() as client, _in_index_words():
        VectorIndex(name, client=client).sync(wait=not no_wait, timeout=timeout, progress=_progress)
    return EXIT_OK


@index_app.command("status")
@handled
@shared_options("workspace")
def status(name: NameArg, *, common: Common) -> int:
    """What the index is: type, endpoint, key, embedding column and width, state, rows."""
    from ..vector_search import VectorIndex

    checked_name(name, "NAME")
    with common.client() as client, _in_index_words():
        described = VectorIndex(name, client=client).describe()
    fields = [
        ("index", described.name),
        ("type", described.index_type),
        ("endpoint", described.endpoint),
        ("primary key", described.primary_key),
        ("embedding", f"{described.embedding_column} ({described.dim}-d)" if described.dim else None),
        ("source table", described.source_table),
        ("pipeline", described.pipeline_type),
        ("ready", "yes" if described.ready else "no"),
        ("rows", f"{described.indexed_row_count:,}" if described.indexed_row_count is not None else None),
        ("message", described.message),
    ]
    width = max(len(label) for label, _ in fields)
    for label, value in fields:
        if value is not None:
            typer.echo(f"{label.ljust(width)}  {value}")
    return EXIT_OK
