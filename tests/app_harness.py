"""What the tests of `clip-client app` share: a folder of real images, its embeddings file written by
the real `clip-client images`, and the app itself running as `clip-client app` in a subprocess (a
real uvicorn on 127.0.0.1, reached over real HTTP)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from image_factory import exif_bytes, picture
from PIL import Image

XSS_NAME = "<img src=x onerror=alert(1)>.png"
"""A real file name: the page must show it as text."""


def write_folder(folder: Path, n: int = 12) -> dict[str, Path]:
    """`n` distinct pictures (PNG and JPEG), two exact copies of the first two (near-duplicates at
    any threshold), a JPEG whose EXIF says "rotate 90" (80x40 stored, 40x80 upright) and a PNG
    named like an HTML tag. Returns name -> path."""
    folder.mkdir(parents=True, exist_ok=True)
    out: dict[str, Path] = {}
    for i in range(n):
        ext = "png" if i % 2 == 0 else "jpg"
        path = folder / f"img{i:02d}.{ext}"
        Image.fromarray(picture(96 + 8 * i, 72 + 4 * i, 3, seed=i)).save(path)
        out[path.name] = path
    for i in range(2):
        src = out[f"img{i:02d}.{'png' if i % 2 == 0 else 'jpg'}"]
        copy = folder / f"copy-of-{src.name}"
        shutil.copyfile(src, copy)
        out[copy.name] = copy
    rotated = folder / "rotated.jpg"
    Image.fromarray(picture(80, 40, 3, seed=99)).save(rotated, "JPEG", quality=90, exif=exif_bytes(6))
    out[rotated.name] = rotated
    xss = folder / XSS_NAME
    Image.fromarray(picture(64, 64, 3, seed=123)).save(xss, "PNG")
    out[xss.name] = xss
    return out


def clip_client(*args: object, env: dict[str, str], cwd: Path, timeout: float = 300) -> str:
    """Run `python -m clip_client ARGS`; its stdout (a failure raises with stderr)."""
    done = subprocess.run(
        [sys.executable, "-m", "clip_client", *map(str, args)],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class AppProcess:
    """`clip-client app SOURCE --port P ARGS` in a subprocess, started and ready (its /api/info
    answers), stopped by `stop()`; `log()` is everything it printed."""

    def __init__(self, source: Path, *args: object, env: dict[str, str], cwd: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = cwd / f"app-{self.port}.log"
        self._out = open(self._log, "wb")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "clip_client",
                "app",
                str(source),
                "--port",
                str(self.port),
                *map(str, args),
            ],
            env=env,
            cwd=cwd,
            stdout=self._out,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 120
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"clip-client app exited {self.proc.returncode}: {self.log()}")
            try:
                if httpx.get(f"{self.url}/api/info", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"clip-client app did not start: {self.log()}")
            time.sleep(0.1)  # polling for the condition "the server answers", not a fixed wait

    def get(self, path: str, **options: Any) -> httpx.Response:
        return httpx.get(self.url + path, timeout=60, **options)

    def post(self, path: str, **options: Any) -> httpx.Response:
        return httpx.post(self.url + path, timeout=60, **options)

    def log(self) -> str:
        if not self._out.closed:
            self._out.flush()
        return self._log.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._out.close()


def workspace_env(url: str, token: str, tmp: Path) -> dict[str, str]:
    """This process's environment with the loopback workspace's host and token, no config file and a
    cache folder of the test's own."""
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DATABRICKS_", "ARM_", "AZURE_", "GOOGLE_", "XDG_CACHE_HOME"))
    }
    return {
        **clean,
        "DATABRICKS_HOST": url,
        "DATABRICKS_TOKEN": token,
        "DATABRICKS_CONFIG_FILE": str(tmp / "no-databrickscfg"),
        "XDG_CACHE_HOME": str(tmp / "xdg-cache"),
    }
