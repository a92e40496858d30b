"""A loopback fake of Databricks Vector Search (and of Unity Catalog's table GET), on top of the
Model Serving fake: one real HTTP server on 127.0.0.1 that databricks-sdk talks to as to a workspace.

It serves, in the real error shape (``{"error_code": ..., "message": ...}``):

- ``GET/POST /api/2.0/vector-search/endpoints[/{name}]``: endpoints, PROVISIONING then ONLINE.
- ``POST /api/2.0/vector-search/indexes`` (Delta Sync with self-managed vectors, or Direct Access),
  ``GET .../indexes/{name}`` (``status.ready``, ``detailed_state``, ``message``, ``indexed_row_count``),
  ``POST .../sync``: an index is ``PROVISIONING_INITIAL_SNAPSHOT`` (or ``ONLINE_TRIGGERED_UPDATE``
  for a sync) for ``provision_polls`` reads, then ``ONLINE_NO_PENDING_UPDATE`` with its source
  table's rows copied in, or ``OFFLINE_FAILED`` with ``fail_sync``'s message.
- ``POST .../upsert-data`` (``inputs_json``; keys in ``fail_keys`` come back in
  ``failed_primary_keys``; a body over ``upsert_limit`` bytes is a 400), ``DELETE .../delete-data``.
- ``POST .../query``: exact L2 over what was upserted or synced, scored ``1 / (1 + d^2)`` as Databricks
  scores, with ``filters_json`` (equality, lists, ``"col <"``...), pages of 1,000 and
  ``next_page_token``; ``POST .../query-next-page``; ``num_results`` over 10,000 is a 400.
- ``GET /api/2.1/unity-catalog/tables/{full_name}``: ``columns`` and ``properties`` of ``tables``.

``refusals`` maps a path fragment to ``(status, error_code, message)``: every request whose path holds
it is refused so (a 403, a 404...). ``vs_requests`` records ``(method, path, body)`` of each request.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import numpy as np
from serving_server import ServingServer

VS = "/api/2.0/vector-search/"
TABLES = "/api/2.1/unity-catalog/tables/"
PAGE = 1000
MAX_RESULTS = 10_000


class VectorSearchServer(ServingServer):
    def __init__(self, **options: Any) -> None:
        self.tables: dict[str, dict[str, Any]] = {}
        self.vs_endpoints: dict[str, dict[str, Any]] = {}
        self.indexes: dict[str, dict[str, Any]] = {}
        self.refusals: dict[str, tuple[int, str, str]] = {}
        self.vs_requests: list[tuple[str, str, bytes]] = []
        self.fail_keys: set[str] = set()
        self.fail_sync: str | None = None
        self.provision_polls = 1
        self.upsert_limit: int | None = None
        self.pages: dict[str, list[list[Any]]] = {}
        self.vs_lock = threading.Lock()
        super().__init__(**options)

    # -- what tests set up ---------------------------------------------------------------------------

    def add_table(
        self, name: str, rows: list[dict[str, Any]], *, cdf: bool = True, columns: list[str] | None = None
    ) -> None:
        names = columns or (list(rows[0]) if rows else ["path", "embedding"])
        props = {"delta.enableChangeDataFeed": "true"} if cdf else {"delta.minReaderVersion": "1"}
        self.tables[name] = {"columns": names, "properties": props, "rows": rows}

    def add_endpoint(self, name: str, state: str = "ONLINE") -> None:
        self.vs_endpoints[name] = {"name": name, "endpoint_status": {"state": state}, "polls": 0}

    def posted(self, fragment: str) -> list[bytes]:
        return [body for method, path, body in self.vs_requests if fragment in path and method != "GET"]

    # -- the service ---------------------------------------------------------------------------------

    def _index_json(self, index: dict[str, Any]) -> dict[str, Any]:
        """The index as GET answers it; each read moves a provisioning or syncing index one step."""
        if index["pending"] > 0:
            index["pending"] -= 1
            if index["pending"] == 0:
                if self.fail_sync is not None:
                    index["state"], index["ready"], index["message"] = "OFFLINE_FAILED", False, self.fail_sync
                else:
                    if index["type"] == "DELTA_SYNC":
                        table = self.tables[index["spec"]["source_table"]]
                        index["rows"] = {str(r[index["primary_key"]]): dict(r) for r in table["rows"]}
                        index["cache"] = None
                    index["state"], index["ready"], index["message"] = (
                        "ONLINE_NO_PENDING_UPDATE",
                        True,
                        "Index is ready",
                    )
        spec_key = "delta_sync_index_spec" if index["type"] == "DELTA_SYNC" else "direct_access_index_spec"
        return {
            "name": index["name"],
            "endpoint_name": index["endpoint_name"],
            "primary_key": index["primary_key"],
            "index_type": index["type"],
            spec_key: index["spec"],
            "status": {
                "ready": index["ready"],
                "detailed_state": index["state"],
                "message": index["message"],
                "indexed_row_count": len(index["rows"]),
            },
        }

    def _query(self, index: dict[str, Any], body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        k = int(body.get("num_results", 10))
        if k > MAX_RESULTS:
            return 400, {
                "error_code": "INVALID_PARAMETER_VALUE",
                "message": f"num_results must be <= {MAX_RESULTS}",
            }
        columns = list(body["columns"])
        vector_column = index["spec"]["embedding_vector_columns"][0]["name"]
        query = np.asarray(body["query_vector"], dtype=np.float64)
        filters = json.loads(body["filters_json"]) if body.get("filters_json") else {}
        if filters:
            rows = [r for r in index["rows"].values() if _matches(r, filters)]
            matrix = np.asarray([r[vector_column] for r in rows], dtype=np.float64).reshape(
                len(rows), len(query)
            )  # (0, d) when no row matches: reshape(0, -1) cannot infer the width
        else:  # the whole index: its matrix is kept until a write changes the rows
            if index.get("cache") is None:
                every = list(index["rows"].values())
                stacked = np.asarray([r[vector_column] for r in every], dtype=np.float64)
                index["cache"] = (every, stacked.reshape(len(every), len(query)))
            rows, matrix = index["cache"]
        if rows:
            scores = 1.0 / (1.0 + np.sum((matrix - query) ** 2, axis=1))
        else:
            scores = np.zeros(0)
        order = np.argsort(-scores, kind="stable")[:k]
        scored = [(float(scores[i]), rows[i]) for i in order]
        data = [[row.get(c) for c in columns] + [score] for score, row in scored[:k]]
        manifest = {
            "column_count": len(columns) + 1,
            "columns": [{"name": c} for c in columns] + [{"name": "score"}],
        }
        return 200, self._page(data, manifest)

    def _page(self, data: list[list[Any]], manifest: dict[str, Any]) -> dict[str, Any]:
        page, rest = data[:PAGE], data[PAGE:]
        answer: dict[str, Any] = {
            "manifest": manifest,
            "result": {"row_count": len(page), "data_array": page},
        }
        if rest:
            token = f"tok-{len(self.pages)}"
            self.pages[token] = rest
            self.pages[token + ":manifest"] = manifest  # type: ignore[assignment]
            answer["next_page_token"] = token
        return answer

    def _vs(self, method: str, raw_path: str, body: bytes) -> tuple[int, dict[str, Any]]:
        path = urlsplit(raw_path).path
        with self.vs_lock:
            self.vs_requests.append((method, raw_path, body))
            for fragment, (status, code, message) in self.refusals.items():
                if fragment in path:
                    return status, {"error_code": code, "message": message}
            doc = json.loads(body) if body else {}
            if path.startswith(TABLES):
                name = unquote(path[len(TABLES) :])
                table = self.tables.get(name)
                if table is None:
                    return 404, {
                        "error_code": "TABLE_DOES_NOT_EXIST",
                        "message": f"Table '{name}' does not exist.",
                    }
                return 200, {
                    "name": name.split(".")[-1],
                    "full_name": name,
                    "columns": [{"name": c, "type_text": "string"} for c in table["columns"]],
                    "properties": table["properties"],
                }
            rest = path[len(VS) :].split("/")
            if rest[0] == "endpoints":
                if method == "POST" and len(rest) == 1:
                    self.vs_endpoints[doc["name"]] = {
                        "name": doc["name"],
                        "endpoint_status": {"state": "PROVISIONING"},
                        "polls": 1,
                    }
                    return 200, {"name": doc["name"], "endpoint_status": {"state": "PROVISIONING"}}
                endpoint = self.vs_endpoints.get(rest[1]) if len(rest) > 1 else None
                if endpoint is None:
                    return 404, {
                        "error_code": "RESOURCE_DOES_NOT_EXIST",
                        "message": f"Vector search endpoint {rest[-1]} not found",
                    }
                if endpoint["polls"] > 0:
                    endpoint["polls"] -= 1
                    if endpoint["polls"] == 0:
                        endpoint["endpoint_status"] = {"state": "ONLINE"}
                return 200, {k: v for k, v in endpoint.items() if k != "polls"}
            if rest[0] != "indexes":
                return 404, {"error_code": "ENDPOINT_NOT_FOUND", "message": f"No API found for {path}"}
            if len(rest) == 1 and method == "POST":
                name = doc["name"]
                if name in self.indexes:
                    return 409, {
                        "error_code": "RESOURCE_ALREADY_EXISTS",
                        "message": f"Index {name} already exists",
                    }
                if doc["endpoint_name"] not in self.vs_endpoints:
                    return 404, {
                        "error_code": "RESOURCE_DOES_NOT_EXIST",
                        "message": f"Vector search endpoint {doc['endpoint_name']} not found",
                    }
                kind = doc["index_type"]
                spec = (
                    doc["delta_sync_index_spec"] if kind == "DELTA_SYNC" else doc["direct_access_index_spec"]
                )
                self.indexes[name] = {
                    "name": name,
                    "endpoint_name": doc["endpoint_name"],
                    "primary_key": doc["primary_key"],
                    "type": kind,
                    "spec": spec,
                    "rows": {},
                    "pending": self.provision_polls,
                    "state": "PROVISIONING_INITIAL_SNAPSHOT",
                    "ready": False,
                    "message": "Index is being provisioned",
                }
                if self.provision_polls == 0:
                    self.indexes[name]["pending"] = 1
                return 200, {"name": name}
            name = unquote(rest[1])
            index = self.indexes.get(name)
            if index is None:
                return 404, {
                    "error_code": "RESOURCE_DOES_NOT_EXIST",
                    "message": f"Index {name} does not exist.",
                }
            verb = rest[2] if len(rest) > 2 else ""
            if verb == "" and method == "GET":
                return 200, self._index_json(index)
            if verb == "sync":
                index["pending"] = max(1, self.provision_polls)
                index["state"] = "ONLINE_TRIGGERED_UPDATE" if index["ready"] else index["state"]
                return 200, {}
            if verb == "upsert-data":
                if self.upsert_limit is not None and len(body) > self.upsert_limit:
                    return 400, {"error_code": "INVALID_PARAMETER_VALUE", "message": "request too large"}
                rows = json.loads(doc["inputs_json"])
                index["cache"] = None
                failed = [
                    str(r[index["primary_key"]])
                    for r in rows
                    if str(r[index["primary_key"]]) in self.fail_keys
                ]
                for r in rows:
                    if str(r[index["primary_key"]]) not in self.fail_keys:
                        index["rows"][str(r[index["primary_key"]])] = r
                return 200, {
                    "status": "PARTIAL_SUCCESS" if failed else "SUCCESS",
                    "result": {"success_row_count": len(rows) - len(failed), "failed_primary_keys": failed},
                }
            if verb == "delete-data":
                keys = parse_qs(urlsplit(raw_path).query).get("primary_keys", [])
                index["cache"] = None
                for key in keys:
                    index["rows"].pop(key, None)
                return 200, {"status": "SUCCESS", "result": {"success_row_count": len(keys)}}
            if verb == "query":
                if not index["ready"]:
                    return 400, {"error_code": "INVALID_STATE", "message": "Index is not ready"}
                return self._query(index, doc)
            if verb == "query-next-page":
                token = doc.get("page_token")
                data = self.pages.pop(token, None)
                if data is None:
                    return 400, {"error_code": "INVALID_PARAMETER_VALUE", "message": "bad page token"}
                manifest: Any = self.pages.pop(token + ":manifest")
                return 200, self._page(data, manifest)
            return 404, {"error_code": "ENDPOINT_NOT_FOUND", "message": f"No API found for {path}"}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self
        base: Any = super()._handler()

        def ours(path: str) -> bool:
            return path.startswith((VS, TABLES))

        class Handler(base):  # type: ignore[misc,valid-type]
            def _serve_vs(self, method: str) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length", "0") or 0))
                status, answer = server._vs(method, self.path, raw)
                self._send(status, json.dumps(answer).encode(), {"x-request-id": f"vs-{status}"})

            def do_GET(self) -> None:
                if ours(self.path):
                    self._serve_vs("GET")
                else:
                    super().do_GET()

            def do_POST(self) -> None:
                if ours(self.path):
                    self._serve_vs("POST")
                else:
                    super().do_POST()

            def do_DELETE(self) -> None:
                self._serve_vs("DELETE")

        return Handler


def _matches(row: dict[str, Any], filters: dict[str, Any]) -> bool:
    for key, want in filters.items():
        column, _, op = key.partition(" ")
        value = row.get(column)
        if op == "":
            ok = value in want if isinstance(want, list) else value == want
        elif op == "NOT":
            ok = value not in want if isinstance(want, list) else value != want
        else:
            ok = (
                value is not None
                and {"<": value < want, ">": value > want, "<=": value <= want, ">=": value >= want}[op]
            )
        if not ok:
            return False
    return True
