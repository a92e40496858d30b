"""Shared by the benchmarks: a simulated Model Serving endpoint in its own process, and test images.

The endpoint is a real HTTP server on 127.0.0.1 speaking the invocation protocol, shaped like a
"Small" endpoint: at most ``slots`` requests are served at once and the others queue (on the server,
as on Databricks). A request holds its slot for ``request_ms + item_ms * records``; parsing the body,
computing the rows and serialising the answer happen inside that time, so the server's ceiling is
exactly ``slots * batch / (request_ms + item_ms * batch)`` items per second whatever the client does.
The rows are ``tests/serving_server.expected_vector`` (deterministic per input), so a benchmark can
check every answer it timed. The answer is serialised the way MLflow's scoring server writes float32
predictions (shortest float64 repr, about 19 characters per value). ``TCP_NODELAY`` is set and each
answer goes out in one write, so no Nagle/delayed-ACK stall (40 ms per small answer on Linux
loopback) is charged to any client.

With ``decode_images`` the server also does what a real endpoint's preprocessing does with every
image record, inside the request's slot and on top of its latency budget: decode the file, apply
its EXIF orientation, convert to RGB and resize and crop it exactly as ``CLIPImageProcessor`` does
(``clip_client._core.images``, the PIL-exact path). A 12 MP JPEG then costs the server what it would
cost an endpoint, and a 224x224 PNG next to nothing; the row is derived from the 224x224 pixels, so
a file and the client's crop of it get the same row. Its CPU time is counted (``prep_cpu_seconds``).

A benchmark that must stop a client part-way (``texts_scale.py`` interrupts a run once half its rows
are written) closes a gate rather than racing the client: :meth:`Endpoint.hold` makes the server keep
every request that arrives once it has answered ``after_items`` more records until :meth:`Endpoint.release`
(or the server stops), so the client cannot finish first however fast the machine is.

Run as a module by :func:`serve`; by hand: ``python benchmarks/_serve.py --slots 4 --request-ms 50``.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import platform
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
for _p in (ROOT, ROOT / "tests"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from serving_server import TOKEN, endpoint_state, expected_vector  # noqa: E402

from clip_client._core.images import clip_resize_crop, to_rgb  # noqa: E402

__all__ = ["TOKEN", "Endpoint", "ceiling", "expected_vector", "machine", "photo", "serve"]

TEXT_ENDPOINT = "clip-text-embedding"
#: The control plane's ``GET /api/2.0/serving-endpoints/{name}``, answered with ``workload_size``.
_STATE_PATH = "/api/2.0/serving-endpoints/"
IMAGE_ENDPOINT = "clip-image-embedding"

try:
    import orjson
except ImportError:  # the server then serialises with the standard library (slower, still in-slot)
    orjson = None  # type: ignore[assignment]


def ceiling(slots: int, batch: int, request_ms: float, item_ms: float) -> float:
    """Items per second a server with ``slots`` slots serves at ``batch`` records per request."""
    return slots * batch / ((request_ms + item_ms * batch) / 1000)


def machine() -> str:
    """One line naming the CPU and core count, for the header of every table."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores, Python {platform.python_version()}, {platform.system()}"


def photo(width: int, height: int, seed: int = 0, noise: int = 3) -> Image.Image:
    """A synthetic photo: smooth large shapes, mid-frequency texture and sensor-like noise, so JPEG
    sizes and decode costs resemble a camera's (a 12 MP one at quality 90 is a few MB)."""
    rng = np.random.default_rng(seed)

    def layer(step: int, resample: Image.Resampling) -> np.ndarray:
        small = rng.integers(0, 256, (max(2, height // step), max(2, width // step), 3), dtype=np.uint8)
        return np.asarray(Image.fromarray(small).resize((width, height), resample), dtype=np.int16)

    arr = layer(96, Image.Resampling.BICUBIC) * 3 // 4 + layer(6, Image.Resampling.BILINEAR) // 4
    arr += rng.integers(-noise, noise + 1, arr.shape, dtype=np.int16)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def write_photos(
    folder: Path, count: int, size: tuple[int, int], fmt: str = "JPEG", seed: int = 0
) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    ext = {"JPEG": "jpg", "PNG": "png"}[fmt]
    paths = []
    for i in range(count):
        path = folder / f"photo_{size[0]}x{size[1]}_{i:05d}.{ext}"
        options = {"quality": 90} if fmt == "JPEG" else {}
        photo(*size, seed=seed + i).save(path, fmt, **options)
        paths.append(path)
    return paths


# --------------------------------------------------------------------------------------------------
# The server (runs in the child process)


class _Stats:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests = 0
        self.items = 0
        self.busy = 0.0  # slot-seconds
        self.at_server = 0  # requests in a slot or queued for one
        self.max_at_server = 0
        self.late = 0  # requests whose own work outlasted their latency budget
        self.bytes = 0  # request bodies received
        self.prep_cpu = 0.0  # CPU seconds spent preparing images (decode_images)
        self.hold_after: int | None = None  # the gate: keep requests once this many items are answered
        self.released = threading.Event()
        self.released.set()

    def snapshot(self) -> dict[str, Any]:
        """The counters; ``max_at_server`` is the most seen since the previous snapshot."""
        with self.lock:
            snap = {
                "requests": self.requests,
                "items": self.items,
                "busy_slot_seconds": self.busy,
                "max_at_server": self.max_at_server,
                "late": self.late,
                "bytes": self.bytes,
                "prep_cpu_seconds": self.prep_cpu,
            }
            self.max_at_server = self.at_server
            return snap


def _dumps(obj: Any) -> bytes:
    if orjson is not None:
        return orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY)
    return json.dumps(obj, default=lambda a: a.tolist()).encode()


def _loads(raw: bytes) -> Any:
    return orjson.loads(raw) if orjson is not None else json.loads(raw)


def server_pixels(raw: bytes, size: int = 224) -> np.ndarray:
    """What an endpoint's PIL-exact preprocessing makes of an image file: decoded, oriented, RGB,
    resized (shortest edge, BICUBIC) and center-cropped, as ``(size, size, 3)`` uint8."""
    from PIL import ImageOps

    with Image.open(io.BytesIO(raw)) as img:
        img.load()
        upright = ImageOps.exif_transpose(img)
        return np.asarray(clip_resize_crop(to_rgb(upright), size))


def _rows(kind: str, body: bytes, decode_images: bool = False) -> tuple[np.ndarray, float, float]:
    """The answer's rows for a request body, and the wall and CPU seconds spent preparing images
    (``decode_images``); ValueError if the body breaks the protocol."""
    doc = _loads(body)
    if not isinstance(doc, dict) or set(doc) != {"dataframe_records"}:
        raise ValueError("expected a JSON object with exactly one key, 'dataframe_records'")
    records = doc["dataframe_records"]
    if not isinstance(records, list) or not records:
        raise ValueError("'dataframe_records' must be a non-empty list")
    out = np.empty((len(records), 768), dtype=np.float64)
    wall = cpu = 0.0
    for i, record in enumerate(records):
        if not isinstance(record, dict) or set(record) != {"input"} or not isinstance(record["input"], str):
            raise ValueError(f"record {i} must be {{'input': <string>}}")
        value = record["input"]
        if kind == "text":
            out[i] = expected_vector(kind, value)
            continue
        raw = base64.b64decode(value, validate=True)
        if decode_images:
            started, started_cpu = time.perf_counter(), time.thread_time()
            try:
                raw = server_pixels(raw).tobytes()
            except Exception as exc:  # what MLflow makes of an exception in predict(): a 400
                raise ValueError(f"record {i} is not an image the model can read: {exc}") from exc
            wall += time.perf_counter() - started
            cpu += time.thread_time() - started_cpu
        out[i] = expected_vector(kind, raw)
    return out, wall, cpu


def _handler(
    slots: threading.BoundedSemaphore,
    request_s: float,
    item_s: dict[str, float],
    stats: _Stats,
    decode_images: bool = False,
    workload_size: str | None = None,
) -> type[BaseHTTPRequestHandler]:
    kinds = {TEXT_ENDPOINT: "text", IMAGE_ENDPOINT: "image"}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _send(self, status: int, body: bytes) -> None:
            head = (
                f"HTTP/1.1 {status} {self.responses.get(status, ('',))[0]}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
            ).encode("latin-1")
            self.wfile.write(head + body)  # one write: headers and body leave together

        def _error(self, status: int, code: str, message: str) -> None:
            self._send(status, json.dumps({"error_code": code, "message": message}).encode())

        def do_GET(self) -> None:
            if self.path == "/_bench/stats":
                return self._send(200, json.dumps(stats.snapshot()).encode())
            name = self.path.removeprefix(_STATE_PATH)
            if workload_size is not None and self.path.startswith(_STATE_PATH) and name in kinds:
                state = endpoint_state(name, workload_size=workload_size)  # the control plane's answer
                return self._send(200, json.dumps(state).encode())
            return self._error(404, "ENDPOINT_NOT_FOUND", f"No API found for {self.path}")

        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            if self.path in ("/_bench/hold", "/_bench/release"):
                with stats.lock:
                    if self.path == "/_bench/hold":
                        stats.hold_after = stats.items + int(json.loads(raw)["after_items"])
                        stats.released.clear()
                    else:
                        stats.hold_after = None
                        stats.released.set()
                return self._send(200, b"{}")
            parts = self.path.strip("/").split("/")
            if len(parts) != 3 or parts[0] != "serving-endpoints" or parts[2] != "invocations":
                return self._error(404, "ENDPOINT_NOT_FOUND", f"No API found for {self.path}")
            kind = kinds.get(parts[1])
            if kind is None:
                return self._error(404, "RESOURCE_DOES_NOT_EXIST", f"Endpoint '{parts[1]}' does not exist.")
            if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                return self._error(401, "UNAUTHENTICATED", "Invalid access token.")
            with stats.lock:
                held = stats.hold_after is not None and stats.items >= stats.hold_after
            if held:  # the gate is closed: keep the request until it opens (or the server stops)
                stats.released.wait()
            with stats.lock:  # arrived: in a slot or queued for one
                stats.bytes += len(raw)
                stats.at_server += 1
                stats.max_at_server = max(stats.max_at_server, stats.at_server)
            try:
                with slots:  # the queue: a request waits here for one of the endpoint's slots
                    status, out = self._serve_one(kind, raw)
            finally:
                with stats.lock:
                    stats.at_server -= 1
            try:
                return self._send(status, out)
            except (BrokenPipeError, ConnectionResetError):  # the client went away (interrupted)
                return None

        def _serve_one(self, kind: str, raw: bytes) -> tuple[int, bytes]:
            """Inside a slot: parse, compute and serialise, then hold the slot for the rest of the
            request's latency budget; preparing images (``decode_images``) comes on top of it."""
            start = time.perf_counter()
            n, left, prep, prep_cpu = 0, 0.0, 0.0, 0.0
            try:
                try:
                    rows, prep, prep_cpu = _rows(kind, raw, decode_images)
                except ValueError as exc:
                    status = 400
                    out = json.dumps({"error_code": "BAD_REQUEST", "message": str(exc)}).encode()
                else:
                    status, out, n = 200, _dumps({"predictions": rows}), len(rows)
                left = start + prep + request_s + item_s[kind] * n - time.perf_counter()
                if left > 0:
                    time.sleep(left)
            finally:
                with stats.lock:
                    stats.requests += 1
                    stats.items += n
                    stats.busy += time.perf_counter() - start
                    stats.prep_cpu += prep_cpu
                    stats.late += left < -0.002
            return status, out

    return Handler


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            super().handle_error(request, client_address)  # a client that hung up is no error


def _main() -> None:
    parser = argparse.ArgumentParser(
        description="a simulated Model Serving endpoint (benchmarks); it prints the URL it listens on",
        epilog="Clients authenticate with the test token: "
        f"DATABRICKS_HOST=<that URL> DATABRICKS_TOKEN={TOKEN}",
    )
    parser.add_argument("--slots", type=int, default=4)
    parser.add_argument("--request-ms", type=float, default=50.0)
    parser.add_argument("--item-ms", type=float, default=1.0, help="per text record")
    parser.add_argument(
        "--image-item-ms", type=float, default=None, help="per image record (default: item-ms)"
    )
    parser.add_argument(
        "--decode-images", action="store_true", help="decode, resize and crop every image record"
    )
    parser.add_argument(
        "--workload-size", default=None, help="answer the endpoint-state GET with this workload size"
    )
    args = parser.parse_args()
    image_ms = args.item_ms if args.image_item_ms is None else args.image_item_ms
    handler = _handler(
        threading.BoundedSemaphore(args.slots),
        args.request_ms / 1000,
        {"text": args.item_ms / 1000, "image": image_ms / 1000},
        _Stats(),
        args.decode_images,
        args.workload_size,
    )
    server = _Server(("127.0.0.1", 0), handler)
    host, port = server.server_address[:2]
    print(f"listening on http://{host}:{port}", flush=True)
    server.serve_forever(poll_interval=0.05)


# --------------------------------------------------------------------------------------------------
# The parent's handle on it


@dataclass
class Endpoint:
    url: str
    slots: int
    request_ms: float
    item_ms: float
    image_item_ms: float
    decode_images: bool = False

    def stats(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.url}/_bench/stats", timeout=10) as resp:
            return json.loads(resp.read())  # type: ignore[no-any-return]

    def hold(self, after_items: int) -> None:
        """Close the gate: once ``after_items`` more records are answered, keep every new request."""
        self._post("/_bench/hold", {"after_items": after_items})

    def release(self) -> None:
        """Open the gate: the requests it kept are served, and new ones pass."""
        self._post("/_bench/release", {})

    def _post(self, path: str, doc: dict[str, Any]) -> None:
        request = urllib.request.Request(f"{self.url}{path}", data=json.dumps(doc).encode(), method="POST")
        with urllib.request.urlopen(request, timeout=10) as resp:
            resp.read()

    def ceiling(self, kind: str, batch: int) -> float:
        return ceiling(
            self.slots, batch, self.request_ms, self.item_ms if kind == "text" else self.image_item_ms
        )

    def describe(self) -> str:
        image = "" if self.image_item_ms == self.item_ms else f" ({self.image_item_ms:g} ms per image)"
        decode = ", plus decoding, resizing and cropping each image" if self.decode_images else ""
        return (
            f"{self.slots} slots (more requests queue), {self.request_ms:g} ms per request + "
            f"{self.item_ms:g} ms per item{image}{decode}, in a separate process at {self.url}"
        )


@contextmanager
def serve(
    slots: int = 4,
    request_ms: float = 50.0,
    item_ms: float = 1.0,
    image_item_ms: float | None = None,
    decode_images: bool = False,
    workload_size: str | None = None,
) -> Iterator[Endpoint]:
    """Start the endpoint in a child process; stop it on exit. With ``workload_size`` it also answers
    the control plane's ``GET /api/2.0/serving-endpoints/{name}``: a ready endpoint of that size (what
    ``max_concurrency="auto"`` reads); without, that GET gets a 404."""
    image_ms = item_ms if image_item_ms is None else image_item_ms
    cmd = [sys.executable, str(Path(__file__).resolve()), "--slots", str(slots)]
    cmd += ["--request-ms", str(request_ms), "--item-ms", str(item_ms), "--image-item-ms", str(image_ms)]
    cmd += ["--decode-images"] if decode_images else []
    cmd += ["--workload-size", workload_size] if workload_size else []
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        if not line.startswith("listening on "):
            raise RuntimeError(f"the benchmark server did not start (said {line!r})")
        url = line.removeprefix("listening on ")
        yield Endpoint(url, slots, request_ms, item_ms, image_ms, decode_images)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def b64_file(path: Path) -> str:
    """What users send today: the original file, base64'd."""
    return base64.b64encode(path.read_bytes()).decode("ascii")


if __name__ == "__main__":
    _main()
