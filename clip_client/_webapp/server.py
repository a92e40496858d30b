"""The FastAPI app behind `clip-client app`: the page, its JSON API and the thumbnails.

Everything here reads; nothing writes but the thumbnail cache. Rows are named by their id (row
number in the source) only; the page shows data through `textContent`, never as HTML.
"""

from __future__ import annotations

import io
import logging
import math
import re
import threading
from collections import OrderedDict
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from fastapi import FastAPI, File, HTTPException, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.exceptions import HTTPException as StarletteHTTPException

from .._version import __version__
from ..errors import (
    APIConnectionError,
    AuthenticationError,
    ClipClientError,
    EndpointNotFoundError,
    InvalidInputError,
    PayloadTooLargeError,
    PermissionDeniedError,
    RateLimitError,
    ServerError,
)
from .queries import PredictionCache, Predictions, Queries, predict
from .source import Hit, ImageUnavailable, Source, shown
from .thumbnails import ThumbnailCache, ThumbnailError

HERE = Path(__file__).parent

_log = logging.getLogger("clip_client.app")

MAX_K = 200
"""The most results one page of `/api/search` returns."""

MAX_OFFSET = 10_000
"""How deep paging goes (offset + k)."""

MAX_UPLOAD_BYTES = 20 * 1024 * 1024
"""The default bound on an uploaded query image (20 MiB)."""

MAX_LABELS = 50
"""The most labels one request may name."""

MAX_GROUPS = 1000
"""The most duplicate groups one `/api/duplicates` page returns."""

DUPLICATE_RESULTS_REMEMBERED = 4
"""Thresholds whose `find_duplicates` groups are kept."""

K = Annotated[int, Query(ge=1, le=MAX_K, description=f"Results per page, 1 to {MAX_K}.")]
Offset = Annotated[int, Query(ge=0, le=MAX_OFFSET, description="Results to skip (paging).")]
Labels = Annotated[
    str | None,
    Query(max_length=2000, description="Comma-separated labels: each result gets its zero-shot label."),
]
Label = Annotated[str | None, Query(max_length=200, description="Only results whose label is this one.")]

_ROW_ID = re.compile(r"[0-9]{1,12}")

_CSP = (
    "default-src 'self'; img-src 'self' blob: data:; script-src 'self'; style-src 'self'; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
)


def one_line(text: str, limit: int = 300) -> str:
    """`text` on one line, at most `limit` characters."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _error_response(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": one_line(message)}, status_code=status)


def client_error(exc: ClipClientError) -> tuple[int, str]:
    """A typed error of the package as an HTTP status and the one line the page shows."""
    if isinstance(exc, PayloadTooLargeError):
        return 413, str(exc)
    if isinstance(exc, InvalidInputError):
        return 400, str(exc)
    if isinstance(exc, RateLimitError):
        return 429, "the serving endpoint is over its request rate: try again in a moment"
    if isinstance(exc, ServerError | APIConnectionError):
        return 503, (
            "the serving endpoint is not answering yet (it may be scaling up from zero): "
            "try again in a minute"
        )
    if isinstance(exc, AuthenticationError | PermissionDeniedError):
        return 502, (
            "the workspace refused the app's credentials for the serving endpoint: it needs CAN QUERY "
            "on the endpoint"
        )
    if isinstance(exc, EndpointNotFoundError):
        return 502, "the serving endpoint that embeds queries was not found"
    return 502, f"the query could not be embedded ({type(exc).__name__}): {exc}"


_RANGES = {"k": (1, MAX_K), "offset": (0, MAX_OFFSET), "threshold": (0.5, 1), "limit": (1, MAX_GROUPS)}
"""The bounds of the numeric parameters, named whole in their validation errors."""


def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    _log.error(
        "%s %s failed: %s: %s", request.method, request.url.path, type(exc).__name__, one_line(str(exc))
    )
    return _error_response(500, f"the app failed on this request ({type(exc).__name__}): see its log")


def validation_message(errors: Any) -> str:
    """FastAPI's validation errors as one line naming each parameter, never echoing its value."""
    parts = []
    for error in list(errors)[:3]:
        loc = [str(x) for x in error.get("loc", ()) if x not in ("query", "path", "body", "header")]
        name = ".".join(loc) or "the request"
        ctx = error.get("ctx") or {}
        kind = str(error.get("type", ""))
        if name in _RANGES and ("ge" in ctx or "le" in ctx):
            low, high = _RANGES[name]
            why = f"must be between {low} and {high}"
        elif "ge" in ctx and "le" in ctx:
            why = f"must be between {ctx['ge']} and {ctx['le']}"
        elif "ge" in ctx:
            why = f"must be at least {ctx['ge']}"
        elif "le" in ctx:
            why = f"must be at most {ctx['le']}"
        elif "gt" in ctx:
            why = f"must be greater than {ctx['gt']}"
        elif "lt" in ctx:
            why = f"must be less than {ctx['lt']}"
        elif "max_length" in ctx:
            why = f"must be at most {ctx['max_length']} characters"
        elif "min_length" in ctx:
            why = f"must be at least {ctx['min_length']} character{'s' if ctx['min_length'] != 1 else ''}"
        elif kind == "missing":
            why = "is required"
        elif kind.startswith("int"):
            why = "must be a whole number"
        elif kind.startswith("float"):
            why = "must be a number"
        else:
            why = one_line(str(error.get("msg", "is not valid")), 100)
        parts.append(f"{name} {why}")
    return "; ".join(parts) or "the request is not valid"


class _UploadLimit:
    """Pure ASGI middleware: a body over `limit` bytes on `path` is refused with 413, from its
    Content-Length before it is read, or as soon as the bytes read pass the limit."""

    def __init__(self, app: Any, *, path: str, limit: int) -> None:
        self.app = app
        self.path = path
        self.limit = limit

    async def __call__(
        self,
        scope: MutableMapping[str, Any],
        receive: Callable[[], Awaitable[MutableMapping[str, Any]]],
        send: Callable[[MutableMapping[str, Any]], Awaitable[None]],
    ) -> None:
        if scope["type"] != "http" or scope["path"] != self.path:
            await self.app(scope, receive, send)
            return
        message = _too_large(self.limit)
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > self.limit + 65_536:
                await _error_response(413, message)(scope, receive, send)
                return
        seen = 0

        async def counted() -> MutableMapping[str, Any]:
            nonlocal seen
            got = await receive()
            seen += len(got.get("body", b""))
            if seen > self.limit + 65_536:  # the multipart envelope's own bytes are allowed for
                raise HTTPException(413, message)
            return got

        await self.app(scope, counted, send)


def _too_large(limit: int) -> str:
    return f"the image is too large: uploads are limited to {limit / 2**20:.0f} MiB"


class _Duplicates:
    """`find_duplicates` groups by threshold, the last few kept; one computation at a time."""

    def __init__(self) -> None:
        self._items: OrderedDict[float, list[Any]] = OrderedDict()
        self._lock = threading.Lock()

    def groups(self, embeddings: np.ndarray, threshold: float) -> list[Any]:
        from ..search import find_duplicates

        with self._lock:
            if threshold in self._items:
                self._items.move_to_end(threshold)
                return self._items[threshold]
            found = find_duplicates(embeddings, threshold) if len(embeddings) > 1 else []
            self._items[threshold] = found
            while len(self._items) > DUPLICATE_RESULTS_REMEMBERED:
                self._items.popitem(last=False)
            return found


def create_app(
    source: Source,
    queries: Queries,
    *,
    thumbnails: ThumbnailCache,
    max_upload_bytes: int = MAX_UPLOAD_BYTES,
    max_image_pixels: int | None = None,
    title: str = "clip-client",
) -> FastAPI:
    """The app serving `source`, embedding queries with `queries`, thumbnails from `thumbnails`."""
    app = FastAPI(
        title=f"{title}: {source.name}",
        version=__version__,
        description="Search, near-duplicates and zero-shot labels over an embeddings file "
        "(`clip-client app`). Rows are named by their id, their row number in the source.",
    )
    templates = Jinja2Templates(directory=str(HERE / "templates"))  # autoescape on for .html
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")
    app.add_middleware(_UploadLimit, path="/api/search/image", limit=max_upload_bytes)
    predictions = PredictionCache()
    duplicates = _Duplicates()

    @app.middleware("http")
    async def _headers(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        try:
            response = await call_next(request)
        except Exception as exc:  # what no handler expects: one line, logged once, no traceback shown
            response = _unexpected(request, exc)
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        if not request.url.path.startswith(("/docs", "/redoc")):
            response.headers["Content-Security-Policy"] = _CSP
        return response

    @app.exception_handler(ClipClientError)
    async def _client_error(request: Request, exc: ClipClientError) -> JSONResponse:
        status, message = client_error(exc)
        return _error_response(status, message)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error_response(exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _error_response(422, validation_message(exc.errors()))

    # -- helpers ------------------------------------------------------------------------------------

    def parse_labels(labels: str | None) -> tuple[str, ...] | None:
        if labels is None or not labels.strip():
            return None
        from .._core.zeroshot import check_labels

        items = [x.strip() for x in labels.split(",") if x.strip()]
        if len(items) > MAX_LABELS:
            raise HTTPException(422, f"at most {MAX_LABELS} labels")
        try:
            return check_labels(list(dict.fromkeys(items)))
        except InvalidInputError as exc:
            raise HTTPException(422, str(exc)) from None

    def predictions_for(labels: tuple[str, ...], rows: Any = None) -> Predictions:
        """Predictions over the whole source (cached) when it gives its embeddings, else over `rows`."""
        found = predictions.get(labels)
        if found is not None:
            return found
        label_rows, scale = queries.labels(labels)
        every = source.embeddings()
        if every is None:
            return predict(rows, label_rows, scale, labels)
        found = predict(every, label_rows, scale, labels)
        predictions.put(found)
        return found

    def row_json(hit: Hit) -> dict[str, Any]:
        score = None if math.isinf(hit.score) or math.isnan(hit.score) else round(hit.score, 6)
        return {"id": hit.id, "path": shown(hit.path), "score": score, "thumbnail": f"/thumbnails/{hit.id}"}

    def ranked(
        vector: np.ndarray,
        k: int,
        offset: int,
        labels: str | None,
        label: str | None,
        exclude: int | None = None,
    ) -> dict[str, Any]:
        if not np.all(np.isfinite(vector)) or not np.any(vector):
            raise HTTPException(422, "the query's embedding has no direction (NaN or all zeros)")
        every = source.embeddings()
        if every is not None and every.shape[1] != vector.shape[-1]:
            raise HTTPException(
                500,
                f"the query was embedded {vector.shape[-1]}-d but the source's rows are {every.shape[1]}-d: "
                "embed queries with the model that computed the source",
            )
        names = parse_labels(labels)
        if label is not None and (names is None or label not in names):
            raise HTTPException(422, "label= must be one of labels=")
        want = offset + k + (1 if exclude is not None else 0)
        n = len(source)
        fetch = want if label is None else min(n, want * 4)
        while True:
            hits = source.search(vector, fetch)
            if exclude is not None:
                hits = [h for h in hits if h.id != exclude]
            pred = None
            if names is not None and hits:
                every = source.embeddings()
                if every is not None:
                    pred = predictions_for(names)
                    best, prob = pred.best, pred.probability
                    ids = np.array([h.id for h in hits])
                    row_best, row_prob = best[ids], prob[ids]
                else:
                    pred = predictions_for(names, np.stack([source.vector(h.id) for h in hits]))
                    row_best, row_prob = pred.best, pred.probability
                if label is not None:
                    keep = row_best == names.index(label)
                    hits = [h for h, ok in zip(hits, keep.tolist(), strict=True) if ok]
                    row_best, row_prob = row_best[keep], row_prob[keep]
            if label is None or len(hits) >= offset + k or fetch >= n:
                break
            fetch = min(n, fetch * 4)
        page = hits[offset : offset + k]
        out = [row_json(h) for h in page]
        if names is not None and pred is not None:
            for row, b, p in zip(
                out,
                row_best[offset : offset + k].tolist(),
                row_prob[offset : offset + k].tolist(),
                strict=False,
            ):
                row["label"] = names[b] if b >= 0 else None
                row["probability"] = round(float(p), 6) if b >= 0 else None
        return {
            "results": out,
            "offset": offset,
            "more": len(hits) > offset + k or (fetch < n and len(page) == k),
        }

    # -- the page -----------------------------------------------------------------------------------

    @app.get("/", include_in_schema=False)
    def page(request: Request) -> Response:
        return templates.TemplateResponse(
            request,
            "index.html",
            {
                "source": source.name,
                "rows": len(source),
                "duplicates": source.embeddings() is not None,
                "max_upload_mib": max(1, max_upload_bytes // 2**20),
                "max_k": MAX_K,
                "version": __version__,
            },
        )

    # -- the API ------------------------------------------------------------------------------------

    @app.get("/api/info", summary="The source: its name, rows, model and search method")
    def info() -> dict[str, Any]:
        meta = source.meta
        return {
            "source": source.name,
            "rows": len(source),
            "model": None if meta is None else meta.model,
            "approximate": bool(getattr(source, "approximate", False)),
            "duplicates": source.embeddings() is not None,
        }

    @app.get("/api/search", summary="The rows nearest to a text query, best first")
    def search(
        q: Annotated[str, Query(min_length=1, max_length=1000, description="The query text.")],
        k: K = 24,
        offset: Offset = 0,
        labels: Labels = None,
        label: Label = None,
    ) -> dict[str, Any]:
        return ranked(queries.text(q), k, offset, labels, label)

    @app.post("/api/search/image", summary="The rows nearest to an uploaded image, best first")
    async def search_image(
        file: Annotated[UploadFile, File(description="The query image.")],
        k: K = 24,
        offset: Offset = 0,
        labels: Labels = None,
        label: Label = None,
    ) -> Any:
        from starlette.concurrency import run_in_threadpool

        data = await file.read(max_upload_bytes + 1)
        if len(data) > max_upload_bytes:
            raise HTTPException(413, _too_large(max_upload_bytes))
        _check_pixels(data, max_image_pixels)
        vector = await run_in_threadpool(queries.image, data)
        return await run_in_threadpool(ranked, vector, k, offset, labels, label)

    @app.get("/api/similar/{id}", summary="More like this: the rows nearest to row `id`")
    def similar(
        id: str, k: K = 24, offset: Offset = 0, labels: Labels = None, label: Label = None
    ) -> dict[str, Any]:
        row = _row(id)
        try:
            vector = np.asarray(source.vector(row), dtype=np.float32)
        except ImageUnavailable as exc:
            raise HTTPException(404, str(exc)) from None
        return ranked(vector, k, offset, labels, label, exclude=row)

    @app.get("/api/browse", summary="Rows in file order (no query), optionally only one label's")
    def browse(k: K = 24, offset: Offset = 0, labels: Labels = None, label: Label = None) -> dict[str, Any]:
        names = parse_labels(labels)
        if label is not None and (names is None or label not in names):
            raise HTTPException(422, "label= must be one of labels=")
        n = len(source)
        if source.embeddings() is None:
            raise HTTPException(501, "this source cannot be browsed: search it")
        if names is None:
            ids = np.arange(offset, min(n, offset + k))
            return {
                "results": [row_json(Hit(int(i), source.path(int(i)), math.nan)) for i in ids],
                "offset": offset,
                "more": offset + k < n,
            }
        pred = predictions_for(names)
        rows = np.arange(n) if label is None else np.flatnonzero(pred.best == names.index(label))
        page_rows = rows[offset : offset + k]
        out = []
        for i in page_rows.tolist():
            row = row_json(Hit(i, source.path(i), math.nan))
            b = int(pred.best[i])
            row["label"] = names[b] if b >= 0 else None
            row["probability"] = round(float(pred.probability[i]), 6) if b >= 0 else None
            out.append(row)
        return {"results": out, "offset": offset, "more": len(rows) > offset + k}

    @app.get("/api/duplicates", summary="Groups of near-duplicates at a cosine threshold")
    def duplicates_(
        threshold: Annotated[float, Query(ge=0.5, le=1.0, description="Cosine similarity, 0.5 to 1.")] = 0.95,
        limit: Annotated[int, Query(ge=1, le=MAX_GROUPS, description="Groups per page.")] = 100,
        offset: Annotated[int, Query(ge=0, description="Groups to skip.")] = 0,
    ) -> dict[str, Any]:
        every = source.embeddings()
        if every is None:
            raise HTTPException(
                501, "near-duplicates need every row of the source at once: not for this source"
            )
        groups = duplicates.groups(every, round(threshold, 4))
        out = []
        for g, group in enumerate(groups[offset : offset + limit], offset + 1):
            members = [
                {
                    "id": i,
                    "path": shown(source.path(i)),
                    "similarity": round(min(1.0, max(-1.0, s)), 6),
                    "thumbnail": f"/thumbnails/{i}",
                }
                for i, s in zip(group.indices.tolist(), group.similarities.tolist(), strict=True)
            ]
            out.append({"group": g, "keep": members[0]["id"], "members": members})
        return {"threshold": threshold, "groups": out, "total": len(groups), "rows": len(source)}

    @app.get("/api/labels", summary="Zero-shot labels: how many rows each label wins, and given rows' labels")
    def labels_(
        labels: Annotated[str, Query(min_length=1, max_length=2000, description="Comma-separated labels.")],
        ids: Annotated[str | None, Query(max_length=5000, description="Comma-separated row ids.")] = None,
    ) -> dict[str, Any]:
        names = parse_labels(labels)
        if names is None:
            raise HTTPException(422, "give at least one label")
        rows = [_row(x) for x in ids.split(",")] if ids else []
        if len(rows) > MAX_K:
            raise HTTPException(422, f"at most {MAX_K} ids")
        every = source.embeddings()
        out: dict[str, Any] = {"labels": list(names)}
        if every is not None:
            pred = predictions_for(names)
            out["counts"] = pred.counts()
            best, prob = (
                pred.best[rows] if rows else pred.best[:0],
                pred.probability[rows] if rows else pred.probability[:0],
            )
        elif rows:
            pred = predictions_for(names, np.stack([source.vector(r) for r in rows]))
            best, prob = pred.best, pred.probability
        else:
            best, prob = np.zeros(0, np.int16), np.zeros(0, np.float32)
        out["rows"] = [
            {
                "id": r,
                "label": names[b] if b >= 0 else None,
                "probability": round(float(p), 6) if b >= 0 else None,
            }
            for r, b, p in zip(rows, best.tolist(), prob.tolist(), strict=True)
        ]
        return out

    @app.get("/thumbnails/{id}", summary="The thumbnail of row `id` (JPEG)", response_class=Response)
    def thumbnail(id: str) -> Response:
        row = _row(id)
        try:
            data = source.image_bytes(row)
            thumb = thumbnails.get(data)
        except ImageUnavailable as exc:
            raise HTTPException(404, str(exc)) from None
        except ThumbnailError as exc:
            raise HTTPException(404, f"{shown(source.path(row))}: {exc}") from None
        return Response(thumb, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=600"})

    def _row(id: str) -> int:
        if not _ROW_ID.fullmatch(id):
            raise HTTPException(404, "no such row")
        row = int(id)
        if row >= len(source):
            raise HTTPException(404, "no such row")
        return row

    return app


def _check_pixels(data: bytes, max_pixels: int | None) -> None:
    """Refuse (413) an upload over `max_pixels` from its header, (400) one that is not an image."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:
            w, h = img.size
    except Image.DecompressionBombError as exc:  # Pillow checks the header's size before decoding
        limit = 2 * (Image.MAX_IMAGE_PIXELS or 0)
        raise HTTPException(
            413,
            f"the image is over Pillow's decompression-bomb limit of {limit:,} pixels "
            f"(Image.MAX_IMAGE_PIXELS x 2): {exc}",
        ) from None
    except (UnidentifiedImageError, OSError, ValueError):
        raise HTTPException(400, "the upload is not an image Pillow can read (JPEG, PNG, WebP...)") from None
    if max_pixels is not None and w * h > max_pixels:
        raise HTTPException(
            413,
            f"the image is {w}x{h} = {w * h:,} pixels, over the limit of {max_pixels:,} (max_image_pixels)",
        )
