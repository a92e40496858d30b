"""A griffe extension for the API reference: a class whose docstring is completed at import time
shows the completed one.

`ClipClient` and `AsyncClipClient` append their keyword arguments to `__doc__` when
`clip_client._client` is imported (the settings part is generated from `Settings`, so that it cannot
drift from the validation). griffe reads source statically and would show the docstring without
them; this extension swaps in the runtime docstring wherever it extends the static one.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any

import griffe


class RuntimeClassDocstrings(griffe.Extension):
    """Use a `clip_client` class's runtime `__doc__` when it extends the docstring in its source."""

    def on_class_instance(self, *, node: Any, cls: griffe.Class, agent: Any, **kwargs: Any) -> None:
        if cls.docstring is None or not cls.path.startswith("clip_client."):
            return
        source = cls.module.filepath
        if isinstance(source, list) or ".__doc__ = " not in source.read_text(encoding="utf-8"):
            return  # nothing in this module rewrites a docstring: no import needed
        try:
            runtime = getattr(importlib.import_module(cls.module.path), cls.name)
        except Exception:  # an optional dependency missing: keep the static docstring
            return
        doc = inspect.getdoc(runtime)
        static = cls.docstring.value
        if doc and doc != static and doc.startswith(static):
            cls.docstring = griffe.Docstring(
                doc, lineno=cls.docstring.lineno, endlineno=cls.docstring.endlineno, parent=cls
            )
