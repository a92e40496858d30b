"""Take docs/app.md's screenshots of the real page: `python docs/app_screenshots.py`.

Writes a folder of synthetic images (Pillow: shapes on gradients, and a few exact copies), embeds it
with `clip-client images` through the tests' loopback serving server (a stand-in workspace: its
embeddings are a hash of each input, so the rankings shown are not a real model's), runs
`clip-client app` on it and photographs the page in headless Chromium (Playwright driving Debian's
chromium): search, near-duplicates and labels. The images land in docs/img/.

Needs the dev extra (playwright) and chromium; `--out DIR` writes elsewhere.
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from app_harness import AppProcess, clip_client, workspace_env  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402
from serving_server import TOKEN, ServingServer  # noqa: E402
from test_app_browser import CHROMIUM_FLAGS, chromium_path  # noqa: E402

KINDS = ["field", "harbour", "orchard", "market", "forest", "street"]


def draw(seed: int, size: tuple[int, int] = (320, 240)) -> Image.Image:
    rng = random.Random(seed)
    w, h = size
    top = tuple(rng.randrange(40, 220) for _ in range(3))
    bottom = tuple(rng.randrange(40, 220) for _ in range(3))
    img = Image.new("RGB", size)
    px = ImageDraw.Draw(img)
    for y in range(h):
        t = y / (h - 1)
        px.line([(0, y), (w, y)], fill=tuple(int(a + (b - a) * t) for a, b in zip(top, bottom, strict=True)))
    for _ in range(rng.randrange(3, 8)):
        x0, y0 = rng.randrange(w), rng.randrange(h)
        x1, y1 = x0 + rng.randrange(20, 140), y0 + rng.randrange(20, 120)
        colour = tuple(rng.randrange(256) for _ in range(3))
        if rng.random() < 0.5:
            px.ellipse([x0, y0, x1, y1], fill=colour)
        else:
            px.rectangle([x0, y0, x1, y1], fill=colour)
    return img


def write_photos(folder: Path, n: int = 36) -> None:
    folder.mkdir(parents=True)
    for i in range(n):
        draw(i).save(folder / f"{KINDS[i % len(KINDS)]}-{i:03d}.jpg", quality=88)
    for i in (0, 7, 13):
        name = f"{KINDS[i % len(KINDS)]}-{i:03d}.jpg"
        shutil.copyfile(folder / name, folder / f"copy-of-{name}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img", help="where the PNGs go")
    args = parser.parse_args()
    executable = chromium_path()
    if executable is None:
        sys.exit("chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch, ServingServer() as server:
        tmp = Path(scratch)
        env = workspace_env(server.url, TOKEN, tmp)
        write_photos(tmp / "photos")
        clip_client("images", "photos", "--out", "photos.parquet", env=env, cwd=tmp)
        app = AppProcess(tmp / "photos.parquet", env=env, cwd=tmp)
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_FLAGS)
                page = browser.new_page(viewport={"width": 1280, "height": 860}, bypass_csp=True)
                page.goto(app.url + "/")
                page.fill("#query", "a harbour at dusk")
                page.press("#query", "Enter")
                page.wait_for_function("document.getElementById('mode').textContent.includes('harbour')")
                wait_for_thumbnails(page)
                page.screenshot(path=str(args.out / "app-search.png"))

                page.fill("#labels", "field, harbour, orchard")
                page.click("#labels-button")
                page.wait_for_function("!document.getElementById('label-filter').disabled")
                page.select_option("#label-filter", "orchard")
                page.wait_for_function(
                    "[...document.querySelectorAll('#results .card')]"
                    ".every(c => c.dataset.label === 'orchard')"
                )
                wait_for_thumbnails(page)
                page.screenshot(path=str(args.out / "app-labels.png"))

                page.click("#tab-duplicates")
                page.click("#duplicates-button")
                page.wait_for_function("document.querySelectorAll('#groups .group').length === 3")
                page.locator("#groups .group").first.locator("input[type=radio]").nth(1).check()
                page.wait_for_function(
                    "[...document.querySelectorAll('#groups img')]"
                    ".every(i => i.complete && i.naturalWidth > 0)"
                )
                page.screenshot(path=str(args.out / "app-duplicates.png"))
                browser.close()
        finally:
            app.stop()
    for name in ("app-search.png", "app-labels.png", "app-duplicates.png"):
        print(args.out / name)


def wait_for_thumbnails(page: object) -> None:
    page.wait_for_function(  # type: ignore[attr-defined]
        "document.body.dataset.loading === 'no' && [...document.querySelectorAll('#results .card')]"
        ".every(c => c.dataset.state === 'loaded' || c.dataset.state === 'missing')"
    )


if __name__ == "__main__":
    main()
