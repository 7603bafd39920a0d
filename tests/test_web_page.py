"""The chat page end to end in headless Chromium (Debian's chromium, driven by Playwright for Python): upload a
real photo, ask, wait for the streamed answer, check the answer and the boxes drawn on the canvas, ask a
follow-up, save a screenshot to tests/artifacts/web_chat.png, then drop a second photo onto the page and ask
about it (multi-image conversation) and go back to the first through the photo strip. On a phone-sized page
(390 px): no sideways scroll, and damaged or refused uploads leave the conversation as it was.

Needs ``apt-get install -y chromium`` and ``pip install playwright`` (never ``playwright install``: the browser
is Debian's); skips with the reason otherwise."""

from __future__ import annotations

import base64
import json
import os
import shutil
from pathlib import Path

import httpx
import pytest

from facellm.tools.photos import photo
from test_serve import PHOTOS, ServerProcess
from tiny_facellm import tiny_model

CHROMIUM = os.environ.get("FACELLM_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(__file__).parent / "artifacts"
KEY = "page-key"
# the flags Chromium needs on these machines (root, no GPU, closed network)
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]
FACE_1_RGB = (0xE6, 0x19, 0x4B)  # COLORS[0] in serve/web/app.js: face #1's box


def _browser_missing() -> str | None:
    if not (Path(CHROMIUM).is_file() or shutil.which(CHROMIUM)):
        return f"no Chromium at {CHROMIUM}: apt-get install -y chromium chromium-driver"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Playwright for Python is not installed: pip install playwright (not `playwright install`)"
    return None


needs_browser = pytest.mark.skipif(_browser_missing() is not None, reason=_browser_missing() or "")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("web")
    model = tiny_model(root, seed=3).save_pretrained(root / "random")
    srv = ServerProcess(["--engine", "transformers", "--model", str(model), "--api-key", KEY,
                         "--image-dir", str(PHOTOS)])
    yield srv
    assert srv.stop() == 0


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    from playwright.sync_api import sync_playwright

    profile = tmp_path_factory.mktemp("chromium-profile")  # a fresh --user-data-dir
    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(str(profile), executable_path=CHROMIUM, headless=True,
                                                        args=FLAGS, viewport={"width": 1400, "height": 900})
        pg = context.new_page()
        pg.set_default_timeout(60_000)
        yield pg
        context.close()


def _last_answer(page, n: int) -> str:
    """Waits for the n-th assistant message to finish; returns its text."""
    done = page.locator(".msg.assistant[data-done='1'], .msg.error[data-done='1']").nth(n - 1)
    done.wait_for()
    return done.locator(".bubble").inner_text()


def test_page_is_served_offline(server):
    r = httpx.get(server.base + "/", timeout=30)
    assert r.status_code == 200 and "text/html" in r.headers["content-type"]
    assert "http" not in r.text.replace("http-equiv", "")  # nothing from a CDN: the page works offline
    assert httpx.get(server.base + "/web/app.js", timeout=30).status_code == 200
    assert httpx.get(server.base + "/web/../api.py", timeout=30).status_code == 404
    cfg = httpx.get(server.base + "/web/config.json", timeout=30).json()
    assert cfg["auth_required"] is True and KEY not in str(cfg)


@needs_browser
def test_chat_with_a_group_photo(server, page):
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(server.base + "/")
    assert page.locator("#key-box").is_visible()  # the server has keys: the page asks for one
    # without the key the server refuses, and the page says so
    page.set_input_files("#file", str(photo("group")))
    page.fill("#question", "How many faces are there?")
    page.press("#question", "Enter")
    assert "API key" in _last_answer(page, 1)

    page.fill("#api-key", KEY)
    page.fill("#question", "How many faces are there?")
    page.press("#question", "Enter")
    answer = _last_answer(page, 2)
    assert "6 faces" in answer, answer
    canvas = page.locator("#canvas")
    assert canvas.get_attribute("data-faces") == "6"
    # boxes really drawn: face #1's colour on the middle of its box's left edge (canvas = image pixels)
    x1, y1, _, y2 = json.loads(canvas.get_attribute("data-boxes"))[0]
    rgb = page.evaluate("([x, y]) => Array.from(document.getElementById('canvas').getContext('2d')"
                        ".getImageData(x, y, 1, 1).data.slice(0, 3))", [round(x1), round((y1 + y2) / 2)])
    assert all(abs(a - b) <= 8 for a, b in zip(rgb, FACE_1_RGB)), rgb
    tools = page.locator("details.tools li").all_text_contents()  # collapsed: not "visible" text
    assert tools and tools[-1].startswith("detect"), tools
    # follow-up in the same conversation, no new upload
    page.fill("#question", "Who is smiling?")
    page.press("#question", "Enter")
    follow = _last_answer(page, 3)
    assert "of the 6 faces are smiling" in follow, follow
    assert page.locator("details.tools").count() == 2  # each answer shows its tool calls
    page.locator("details.tools").nth(1).locator("summary").click()
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "web_chat.png"
    page.screenshot(path=str(shot), full_page=True)
    print(f"screenshot: {shot}")
    assert shot.stat().st_size > 10_000

    # drop a second photo on the page: it joins the conversation as image_2
    data = base64.b64encode(photo("astronaut").read_bytes()).decode()
    page.evaluate("""(b64) => {
        const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
        const dt = new DataTransfer();
        dt.items.add(new File([bytes], 'astronaut.png', {type: 'image/png'}));
        document.getElementById('drop').dispatchEvent(new DragEvent('drop', {dataTransfer: dt, bubbles: true}));
    }""", data)
    page.fill("#question", "Is the person in image_2 smiling?")
    page.press("#question", "Enter")
    answer = _last_answer(page, 4)
    assert answer.startswith("Yes"), answer
    assert page.locator("#canvas").get_attribute("data-faces") == "1"
    assert page.locator("#legend").inner_text().startswith("image_2: #1: smiling")
    # the first photo is not lost: the strip holds both, and a click brings the group photo back with its boxes
    strip = page.locator("#strip button")
    assert [strip.nth(i).get_attribute("data-image-id") for i in range(strip.count())] == ["image_1", "image_2"]
    strip.nth(0).click()
    assert canvas.get_attribute("data-image") == "image_1" and canvas.get_attribute("data-faces") == "6"
    assert page.locator("#legend").inner_text().startswith("image_1: #1")
    assert not errors, errors


@needs_browser
def test_question_asked_while_the_photo_is_still_read(server, page):
    """Enter pressed before the browser has finished reading the chosen photo: the question waits for the photo
    (it once answered "Add a photo first" and, on a slow machine, never marked that message done)."""
    tab = page.context.new_page()
    tab.set_default_timeout(60_000)
    # a slow disk: each FileReader read finishes 1.5 s late
    tab.add_init_script("""(() => {
        const read = FileReader.prototype.readAsDataURL;
        FileReader.prototype.readAsDataURL = function (f) { setTimeout(() => read.call(this, f), 1500); };
    })()""")
    tab.goto(server.base + "/")
    tab.fill("#api-key", KEY)
    tab.set_input_files("#file", str(photo("group")))
    tab.fill("#question", "How many faces are there?")
    tab.press("#question", "Enter")
    answer = _last_answer(tab, 1)
    assert "6 faces" in answer, answer
    assert tab.locator("#canvas").get_attribute("data-faces") == "6"
    tab.close()


def _canvas_state(page) -> tuple:
    return page.evaluate("() => { const c = document.getElementById('canvas'); "
                         "return [c.dataset.image, c.dataset.faces, c.width, c.height, c.toDataURL().length]; }")


@needs_browser
def test_phone_width_strip_and_bad_uploads(server, page, tmp_path):
    cut = tmp_path / "cut_short.jpg"  # half a JPEG: a browser would draw its top half and grey below
    cut.write_bytes(photo("grace_hopper").read_bytes()[: photo("grace_hopper").stat().st_size // 2])
    huge = tmp_path / "huge.png"  # decodes in the browser; over the server's 25 MP limit
    from PIL import Image

    Image.new("L", (6000, 5000), 200).save(huge)
    failed: list[str] = []
    page = page.context.new_page()  # the same browser, a phone-sized tab
    page.set_viewport_size({"width": 390, "height": 844})
    page.set_default_timeout(60_000)
    page.on("response", lambda r: failed.append(f"{r.status} {r.url}") if r.status >= 400 else None)
    page.goto(server.base + "/")
    page.fill("#api-key", KEY)
    page.set_input_files("#file", str(photo("group")))
    page.fill("#question", "How many faces are there?")
    page.press("#question", "Enter")
    assert "6 faces" in _last_answer(page, 1)
    width = page.evaluate("() => Math.max(document.documentElement.scrollWidth, document.body.scrollWidth)")
    assert width <= 390, f"the page is {width} px wide at 390 px: it scrolls sideways"
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "web_phone.png"), full_page=True)
    before = _canvas_state(page)
    assert before[0] == "image_1" and before[1] == "6"

    page.set_input_files("#file", str(cut))  # damaged: refused in the page, nothing drawn
    error = page.locator(".msg.error").last
    error.wait_for()
    assert "cut_short.jpg was not added" in error.inner_text() and "cut short" in error.inner_text()
    assert _canvas_state(page) == before and page.locator("#strip button").count() == 1

    page.set_input_files("#file", str(huge))  # the browser can show it; the server refuses it on the question
    page.wait_for_function("document.querySelectorAll('#strip button').length === 2")
    assert page.locator("#canvas").get_attribute("data-image") == "new"
    page.fill("#question", "How many faces are there?")
    page.press("#question", "Enter")
    answer = _last_answer(page, 2)
    assert "25,000,000 pixels" in answer and "not added" in answer, answer
    assert page.locator("#strip button").count() == 1 and _canvas_state(page) == before
    page.fill("#question", "Who is smiling?")  # the conversation goes on with the first photo
    page.press("#question", "Enter")
    assert "of the 6 faces are smiling" in _last_answer(page, 3)
    width = page.evaluate("() => Math.max(document.documentElement.scrollWidth, document.body.scrollWidth)")
    assert width <= 390, width
    page.screenshot(path=str(ARTIFACTS / "web_phone_after.png"), full_page=True)
    page.close()
    # nothing the page asked for was missing (the favicon included); the one refusal was the huge photo's
    assert [f for f in failed if "/v1/faces/query" not in f] == [] and len(failed) <= 1, failed
    icon = httpx.get(server.base + "/favicon.ico", timeout=30)
    assert icon.status_code == 200 and icon.headers["content-type"] == "image/x-icon" and icon.content[:4] == \
        b"\x00\x00\x01\x00"
