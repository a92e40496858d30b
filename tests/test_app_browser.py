"""`clip-client app` in a real headless Chromium (Playwright driving Debian's chromium).

The app runs as `clip-client app FILE` (a subprocess, real uvicorn on 127.0.0.1) over a folder of
real images embedded through the loopback serving server. Every wait is on a condition of the page
(a count of cards, an attribute, a download), never a fixed sleep. Skipped, saying why, only where
chromium or the playwright package is absent (`.ci/run` installs both).
"""

from __future__ import annotations

import base64
import csv
import io
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from app_harness import XSS_NAME, AppProcess, clip_client, workspace_env, write_folder
from serving_server import TOKEN, ServingServer

from clip_client import ClipClient, cosine_topk
from clip_client._cli.outputs import read_rows

pytest.importorskip("fastapi")
playwright_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium_path() -> str | None:
    """Debian's chromium binary (its /usr/bin/chromium is a shell wrapper), or None."""
    for candidate in ("/usr/lib/chromium/chromium", "/usr/bin/chromium", "/usr/bin/chromium-browser"):
        if Path(candidate).is_file():
            return candidate
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    """Headless Chromium (each launch has a fresh, temporary profile)."""
    path = chromium_path()
    if path is None:
        pytest.skip("chromium is not installed (apt-get install chromium chromium-driver)")
    with playwright_api.sync_playwright() as p:
        launched = p.chromium.launch(executable_path=path, headless=True, args=CHROMIUM_FLAGS)
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def browser(chromium: Any) -> Iterator[Any]:
    context = chromium.new_context(
        accept_downloads=True,
        viewport={"width": 1100, "height": 700},
        bypass_csp=True,  # the page's CSP forbids eval, which wait_for_function(string) uses
    )
    yield context
    context.close()


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("app-browser")
    with ServingServer() as server:
        env = workspace_env(server.url, TOKEN, tmp)
        write_folder(tmp / "photos")
        clip_client("images", "photos", "--out", "emb.parquet", env=env, cwd=tmp)
        app = AppProcess(tmp / "emb.parquet", "--thumbnail-cache", tmp / "thumbs", env=env, cwd=tmp)
        with ClipClient(**server.client_kwargs()) as reference:
            try:
                yield {
                    "app": app,
                    "tmp": tmp,
                    "env": env,
                    "rows": read_rows(tmp / "emb.parquet"),
                    "ref": reference,
                }
            finally:
                app.stop()
                assert TOKEN not in app.log()


@pytest.fixture
def page(browser: Any, setup: dict[str, Any]) -> Iterator[Any]:
    tab = browser.new_page()
    tab.dialogs = []  # any alert() is an injection that ran
    tab.on("dialog", lambda d: (tab.dialogs.append(d.message), d.dismiss()))
    tab.goto(setup["app"].url + "/")
    settled(tab)
    yield tab
    assert tab.dialogs == []
    tab.close()


def settled(page: Any) -> None:
    """Wait until the page has no request of results in flight."""
    page.wait_for_function("document.body.dataset.loading === 'no'")


def card_ids(page: Any) -> list[int]:
    return [int(x) for x in page.eval_on_selector_all("#results .card", "cs => cs.map(c => c.dataset.id)")]


def all_thumbnails_settled(page: Any) -> None:
    page.wait_for_function(
        "[...document.querySelectorAll('#results .card')].every(c => c.dataset.state === 'loaded' || "
        "c.dataset.state === 'missing')"
    )


def search(page: Any, text: str) -> None:
    page.fill("#query", text)
    page.press("#query", "Enter")
    page.wait_for_function("t => document.getElementById('mode').textContent.includes(t)", arg=text)
    settled(page)


def test_a_typed_query_shows_thumbnails_in_score_order(page: Any, setup: dict[str, Any]) -> None:
    rows = setup["rows"]
    query = "<img src=x onerror=alert(1)>"
    search(page, query)
    want = cosine_topk(setup["ref"].embed_text(query), rows.embeddings, len(rows)).indices[0].tolist()
    assert card_ids(page) == want[:24]
    all_thumbnails_settled(page)
    states = page.eval_on_selector_all("#results .card", "cs => cs.map(c => c.dataset.state)")
    assert set(states) == {"loaded"}
    # The query and the file named like a tag show as text; no element was made from them.
    assert page.text_content("#mode") == f"Results for “{query}”"
    assert page.locator("#results .path", has_text=XSS_NAME).count() == 1
    assert page.locator("img[src='x']").count() == 0
    assert page.text_content("#status").startswith(f"{len(rows)} results")


def test_results_load_in_pages_as_the_user_scrolls(page: Any, setup: dict[str, Any]) -> None:
    rows = setup["rows"]
    page.set_viewport_size({"width": 600, "height": 400})
    page.goto(setup["app"].url + "/?k=3")
    settled(page)
    search(page, "a red car")
    assert len(card_ids(page)) < len(rows)
    while (shown := len(card_ids(page))) < len(rows):
        page.evaluate("window.scrollTo(0, document.body.scrollHeight)")
        page.wait_for_function(
            "n => document.querySelectorAll('#results .card').length > n "
            "&& document.body.dataset.loading === 'no'",
            arg=shown,
        )
    want = cosine_topk(setup["ref"].embed_text("a red car"), rows.embeddings, len(rows)).indices[0].tolist()
    assert card_ids(page) == want


def test_the_next_page_loads_when_the_user_reaches_the_bottom_in_the_same_frame_it_grew(
    page: Any, setup: dict[str, Any]
) -> None:
    # A page of results is taller than the viewport and its 400 px margin, and the reader is
    # back at the bottom before the browser draws again: every time cards are added, a
    # MutationObserver (a microtask, so before the next frame) scrolls to the new bottom. The
    # sentinel is then in view at every frame, so an IntersectionObserver that only reports
    # changes would never call again: the page must still go on loading to the end.
    rows = setup["rows"]
    page.set_viewport_size({"width": 600, "height": 400})
    page.goto(setup["app"].url + "/?k=6")
    settled(page)
    search(page, "a red car")
    shown = len(card_ids(page))
    assert shown < len(rows)
    page.evaluate(
        """() => {
            const toBottom = () => window.scrollTo(0, document.body.scrollHeight);
            new MutationObserver(toBottom).observe(document.getElementById('results'), { childList: true });
            toBottom();
        }"""
    )
    page.wait_for_function(
        "n => document.querySelectorAll('#results .card').length === n "
        "&& document.body.dataset.loading === 'no'",
        arg=len(rows),
        timeout=10_000,
    )
    want = cosine_topk(setup["ref"].embed_text("a red car"), rows.embeddings, len(rows)).indices[0].tolist()
    assert card_ids(page) == want


def test_choosing_or_dropping_an_image_searches_by_it(page: Any, setup: dict[str, Any]) -> None:
    image = setup["tmp"] / "photos" / "img03.jpg"
    page.set_input_files("#image-input", str(image))
    page.wait_for_function("document.getElementById('mode').textContent.includes('img03.jpg')")
    settled(page)
    assert page.text_content("#results .card .path") == "photos/img03.jpg"
    # Dropped onto the drop zone: a File made in the page from the image's bytes.
    data = base64.b64encode((setup["tmp"] / "photos" / "img06.png").read_bytes()).decode()
    page.evaluate(
        """b64 => {
            const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
            const dt = new DataTransfer();
            dt.items.add(new File([bytes], 'dropped.png', {type: 'image/png'}));
            const drop = new DragEvent('drop', {dataTransfer: dt, bubbles: true, cancelable: true});
            document.getElementById('drop-zone').dispatchEvent(drop);
        }""",
        data,
    )
    page.wait_for_function("document.getElementById('mode').textContent.includes('dropped.png')")
    settled(page)
    assert page.text_content("#results .card .path") == "photos/img06.png"


def test_more_like_this(page: Any, setup: dict[str, Any]) -> None:
    rows = setup["rows"]
    row = rows.keys.index("photos/img05.jpg")
    page.click(f"#results .card[data-id='{row}'] .similar")
    page.wait_for_function("document.getElementById('mode').textContent === 'More like photos/img05.jpg'")
    settled(page)
    want = [
        i
        for i in cosine_topk(rows.embeddings[row], rows.embeddings, len(rows)).indices[0].tolist()
        if i != row
    ]
    assert card_ids(page) == want


def test_duplicates_change_a_keep_choice_and_export(page: Any, setup: dict[str, Any]) -> None:
    page.click("#tab-duplicates")
    page.click("#duplicates-button")  # at the slider's default, 0.95
    page.wait_for_function("document.getElementById('duplicates-status').textContent === '2 groups at 0.95'")
    page.fill("#threshold", "0.97")  # moving the slider asks again
    assert page.text_content("#threshold-value") == "0.97"
    page.wait_for_function("document.getElementById('duplicates-status').textContent === '2 groups at 0.97'")
    assert page.locator("#groups .group").count() == 2
    first = page.locator("#groups .group").first
    members = first.locator(".card")
    assert members.count() == 2
    assert "keep" in (members.nth(0).get_attribute("class") or "")
    kept_path = members.nth(1).locator(".path").text_content()
    members.nth(1).locator("input[type=radio]").check()
    page.wait_for_function("document.querySelector('#groups .group').dataset.keep !== undefined")
    assert "keep" in (members.nth(1).get_attribute("class") or "")
    assert "drop" in (members.nth(0).get_attribute("class") or "")
    with page.expect_download() as got:
        page.click("#export-csv")
    download = got.value
    assert download.suggested_filename == "duplicates.csv"
    table = list(csv.DictReader(io.StringIO(Path(download.path()).read_text())))
    assert [set(r) for r in table] == [{"path", "group", "decision"}] * 4
    group1 = {r["path"]: r["decision"] for r in table if r["group"] == "1"}
    assert group1[kept_path] == "keep"
    assert sorted(group1.values()) == ["drop", "keep"]
    with page.expect_download() as got:
        page.click("#export-json")
    decisions = json.loads(Path(got.value.path()).read_text())
    assert decisions == [
        {"path": r["path"], "group": int(r["group"]), "decision": r["decision"]} for r in table
    ]


def test_labels_show_on_every_result_and_filter_the_grid(page: Any, setup: dict[str, Any]) -> None:
    rows = setup["rows"]
    labels = ["maize", "wheat", "rice"]
    result = setup["ref"].classify([str(setup["tmp"] / p) for p in rows.keys], labels)
    page.fill("#labels", "maize, wheat, rice")
    page.click("#labels-button")
    page.wait_for_function("!document.getElementById('label-filter').disabled")
    settled(page)
    page.wait_for_function("document.querySelectorAll('#results .card[data-label]').length > 0")
    shown = page.eval_on_selector_all(
        "#results .card", "cs => cs.map(c => [Number(c.dataset.id), c.dataset.label])"
    )
    assert shown == [[i, result.predictions[i]] for i in range(len(rows))]
    label_text = page.text_content("#results .card .label")
    assert label_text is not None
    assert label_text.startswith(result.predictions[0])
    page.select_option("#label-filter", "wheat")
    page.wait_for_function(
        "[...document.querySelectorAll('#results .card')].every(c => c.dataset.label === 'wheat') && "
        "document.body.dataset.loading === 'no'"
    )
    assert card_ids(page) == [i for i, p in enumerate(result.predictions) if p == "wheat"]


def test_a_moved_image_shows_a_placeholder_with_its_message(browser: Any, setup: dict[str, Any]) -> None:
    tmp = setup["tmp"]
    here = tmp / "moved"
    shutil.copytree(tmp / "photos", here / "photos")
    shutil.copyfile(tmp / "emb.parquet", here / "emb.parquet")
    (here / "photos" / "img02.png").unlink()
    app = AppProcess(here / "emb.parquet", env=setup["env"], cwd=here)
    tab = browser.new_page()
    try:
        tab.goto(app.url + "/")
        settled(tab)
        all_thumbnails_settled(tab)
        row = setup["rows"].keys.index("photos/img02.png")
        card = tab.locator(f"#results .card[data-id='{row}']")
        tab.wait_for_function(
            "id => document.querySelector(`#results .card[data-id='${id}'] .placeholder`) !== null", arg=row
        )
        assert card.locator(".placeholder").text_content() == (
            "photos/img02.png is not there any more (moved or deleted since it was embedded): "
            f"looked for {here.resolve() / 'photos/img02.png'}"
        )
        missing = tab.eval_on_selector_all(
            "#results .card", "cs => cs.filter(c => c.dataset.state === 'missing').length"
        )
        assert missing == 1
    finally:
        tab.close()
        app.stop()


def test_an_error_is_one_line_and_an_empty_result_says_so(page: Any, setup: dict[str, Any]) -> None:
    # 20 labels over 16 images: some label wins none of them.
    page.fill("#labels", ", ".join(f"label {c}" for c in "abcdefghijklmnopqrst"))
    page.click("#labels-button")
    page.wait_for_function("!document.getElementById('label-filter').disabled")
    settled(page)
    empty = page.evaluate(
        "[...document.querySelectorAll('#label-filter option')]"
        ".find(o => o.textContent.endsWith('(0)')).value"
    )
    page.select_option("#label-filter", empty)
    page.wait_for_function("document.getElementById('status').textContent.startsWith('No results')")
    assert page.locator("#results .card").count() == 0
    # An upload that is not an image: the server's one line, shown as the error.
    page.set_input_files(
        "#image-input", files=[{"name": "notes.png", "mimeType": "image/png", "buffer": b"hello"}]
    )
    page.wait_for_function("!document.getElementById('error').hidden")
    assert page.text_content("#error") == "the upload is not an image Pillow can read (JPEG, PNG, WebP...)"


def test_the_page_works_under_its_own_content_security_policy(chromium: Any, setup: dict[str, Any]) -> None:
    """Without bypass_csp: the page's script and styles load under its CSP, and nothing is refused."""
    context = chromium.new_context()
    tab = context.new_page()
    refused: list[str] = []
    tab.on("console", lambda m: refused.append(m.text) if "Content Security Policy" in m.text else None)
    try:
        tab.goto(setup["app"].url + "/")
        tab.locator("#results .card").nth(len(setup["rows"]) - 1).wait_for()
        tab.fill("#query", "a red car")
        tab.press("#query", "Enter")
        tab.locator("#mode", has_text="a red car").wait_for()
        tab.locator("#results .card .score").first.wait_for()
        assert tab.locator("#results .card").count() == len(setup["rows"])
        assert refused == []
    finally:
        context.close()


def test_the_duplicates_export_holds_every_group_past_the_first_thousand(page: Any) -> None:
    import re
    from urllib.parse import parse_qs, urlparse

    total = 1500

    def groups(route: Any) -> None:  # the server's answer for a collection with 1,500 groups
        query = parse_qs(urlparse(route.request.url).query)
        offset, limit = int(query.get("offset", ["0"])[0]), int(query["limit"][0])
        body = {
            "threshold": 0.95,
            "total": total,
            "rows": 2 * total,
            "groups": [
                {
                    "group": g,
                    "keep": 0,
                    "members": [
                        {"id": 0, "path": f"g{g}/a.png", "similarity": 1.0, "thumbnail": "/thumbnails/0"},
                        {"id": 1, "path": f"g{g}/b.png", "similarity": 0.99, "thumbnail": "/thumbnails/1"},
                    ],
                }
                for g in range(offset + 1, min(total, offset + limit) + 1)
            ],
        }
        route.fulfill(status=200, content_type="application/json", body=json.dumps(body))

    page.route(re.compile(r"/api/duplicates\?"), groups)
    page.click("#tab-duplicates")
    page.click("#duplicates-button")
    page.wait_for_function(
        "document.getElementById('duplicates-status').textContent.includes('the export holds all 1500')"
    )
    assert page.locator("#groups .group").count() == 1000
    with page.expect_download() as got:
        page.click("#export-json")
    decisions = json.loads(Path(got.value.path()).read_text())
    assert len(decisions) == 2 * total
    assert sorted({d["group"] for d in decisions}) == list(range(1, total + 1))


def test_a_slow_answer_to_an_earlier_label_press_is_dropped(page: Any) -> None:
    import re

    held: list[Any] = []

    def hold_the_first(route: Any) -> None:
        if "maize" in route.request.url:
            held.append(route)  # answered only after the later press has been answered
        else:
            route.continue_()

    page.route(re.compile(r"/api/labels\?"), hold_the_first)
    page.fill("#labels", "maize, wheat")
    page.click("#labels-button")
    page.wait_for_function("document.getElementById('status').textContent.includes('Labelling')")
    while not held:  # the condition "the first request reached the route"
        page.wait_for_timeout(10)
    page.fill("#labels", "cat, dog")
    page.click("#labels-button")
    page.wait_for_function("!document.getElementById('label-filter').disabled")
    settled(page)
    # The condition "the stale answer was handled": its body's json() resolved, then one task
    # later. The page's handler resumes from that promise in microtasks, which all run before
    # any next task, so by then it has done whatever it does with the answer.
    page.evaluate(
        """() => {
            const json = Response.prototype.json;
            Response.prototype.json = function () {
                const parsed = json.call(this);
                if (this.url.includes("maize")) {
                    parsed.finally(() => setTimeout(() => { window.staleAnswerHandled = true; }, 0));
                }
                return parsed;
            };
        }"""
    )
    held[0].continue_()
    page.wait_for_function("window.staleAnswerHandled === true")
    options = page.eval_on_selector_all("#label-filter option", "os => os.map(o => o.value)")
    assert options[1:] == ["cat", "dog"]
