"""The `clip-client` command: a shell over the library's verbs, documented in docs/cli.md.

`app` wires the typer app, its exit statuses and `main`; `options` declares the options the commands
share and builds the client from them; `errors` renders errors; one module per group of verbs
(`embed`: texts, images; `search`: search, dedupe, classify; `serving`: status, deploy,
export-model; `vector_search`: the `index` sub-commands and `search` over a Vector Search index;
`webapp`: app, the web page of `clip_client._webapp`); `outputs` holds the files the commands write
and read, the runs that write them (resume, failures) and the model a file records; `interrupts`
says what Ctrl-C does once an output is complete.
"""

from __future__ import annotations

from . import embed, search, serving, vector_search, webapp  # noqa: F401  (each registers its commands on `app`, in this order)
from .app import EXIT_FAILED_INPUTS, EXIT_INTERRUPTED, app, main

__all__ = ["EXIT_FAILED_INPUTS", "EXIT_INTERRUPTED", "app", "main"]
