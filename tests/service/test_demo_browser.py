"""The demo page and /docs in a real browser: Debian's Chromium driven by Playwright, against a real
server process serving the shipped models.

Playwright's own browser download cannot work here (no network but the package registries), so the
test launches the system's Chromium (`apt-get install chromium`; CHROMIUM_PATH overrides). `.ci/run`
installs it; elsewhere, without it, the tests are skipped with that instruction. Every request the
browser makes is checked to stay on the server's host: the page and the docs must work offline.

`DEMO_SCREENSHOT=docs/demo.png pytest tests/service/test_demo_browser.py -k segments` writes the
README's screenshot.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from svc_helpers import CAMVID, REPO_ROOT, stop_process

playwright_api = pytest.importorskip("playwright.sync_api", reason="Playwright is in the dev extra: pip install -e '.[dev]'")

SAMPLES = REPO_ROOT / "service" / "static" / "samples"
VIEWPORT = {"width": 1440, "height": 900}
INSTALL_HINT = "apt-get install chromium (Debian's package; Playwright's own browser download does not work offline)"


def find_chromium() -> str | None:
    for candidate in (os.environ.get("CHROMIUM_PATH"), shutil.which("chromium"), shutil.which("chromium-browser"),
                      "/usr/bin/chromium"):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


@pytest.fixture(scope="module")
def browser():
    path = find_chromium()
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"no Chromium in CI: .ci/run must install it ({INSTALL_HINT})")
        pytest.skip(f"no Chromium found to drive: {INSTALL_HINT}, or set CHROMIUM_PATH")
    with playwright_api.sync_playwright() as p:
        # --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start; a fake webcam for video
        chromium = p.chromium.launch(executable_path=path, args=[
            "--no-sandbox", "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"])
        try:
            yield chromium
        finally:
            chromium.close()


def start_server(tmp: Path, *flags: str) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENET_SERVE_")}
    cmd = [sys.executable, "-m", "enet_serve.service", "--host", "127.0.0.1", "--port", str(port),
           "--repository", str(REPO_ROOT / "model_repository"), "--max-batch-size", "2", "--no-tune-batch-size",
           "--no-access-log", *flags]
    log = tmp / f"server-{port}.log"
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        assert proc.poll() is None, log.read_text()
        try:
            if httpx.get(f"{base}/health/ready", timeout=2).status_code == 200:
                return proc, base
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, f"server not ready in 120 s:\n{log.read_text()}"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    proc, base = start_server(tmp_path_factory.mktemp("demo_server"), "--max-body-bytes", "1000000")
    try:
        yield base
    finally:
        stop_process(proc)


class Page:
    """A fresh browser page on `base` that records every request leaving the server's host (and blocks it)."""

    def __init__(self, browser, base: str):
        self.base = base
        self.context = browser.new_context(viewport=VIEWPORT)
        self.page = self.context.new_page()
        self.external: list[str] = []
        self.errors: list[str] = []
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.route("**/*", self._route)

    def _route(self, route) -> None:
        url = route.request.url
        if url.startswith(self.base) or url.startswith(("data:", "blob:")):
            route.continue_()
        else:
            self.external.append(url)
            route.abort()

    def close(self) -> None:
        self.context.close()
        assert not self.errors, f"JavaScript errors: {self.errors}"
        assert not self.external, f"requests left the host: {self.external}"


@pytest.fixture
def page(browser, server):
    p = Page(browser, server)
    yield p.page
    p.close()


def camvid_frame() -> Path:
    """A CamVid val frame: from ../shared when present, else the page's own bundled sample (also CamVid val)."""
    frames = sorted((CAMVID / "val").glob("*.png")) if (CAMVID / "val").is_dir() else []
    return frames[0] if frames else SAMPLES / "camvid-0016E5_07971.jpg"


# JavaScript helpers run in the page
CANVAS_STATS = """() => {
  const c = document.getElementById('canvas');
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  const colours = new Set(); let sum = 0;
  for (let i = 0; i < d.length; i += 4) { colours.add((d[i] << 16) | (d[i + 1] << 8) | d[i + 2]); sum += d[i] + d[i + 1] + d[i + 2]; }
  return {width: c.width, height: c.height, colours: colours.size, mean: sum / (d.length / 4 * 3),
          sample: Array.from(d.slice(0, 4 * 4000))};
}"""
CANVAS_COLOURS = """() => {
  const c = document.getElementById('canvas');
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  const colours = new Set();
  for (let i = 0; i < d.length; i += 4) colours.add([d[i], d[i + 1], d[i + 2]].join(','));
  return Array.from(colours);
}"""


def set_range(page, selector: str, value: int) -> None:
    page.eval_on_selector(selector, "(el, v) => { el.value = v; el.dispatchEvent(new Event('input')); }", value)


# -- the docs -------------------------------------------------------------------------------------------

def test_docs_and_redoc_render_offline(page, server):
    page.goto(f"{server}/docs")
    page.wait_for_selector(".opblock-summary-path")
    paths = set(page.locator(".opblock-summary-path").all_inner_texts())
    assert {"/segment", "/classify", "/models", "/health/ready", "/v2/models/{name}/infer"} <= paths, paths
    page.goto(f"{server}/redoc")
    page.locator("h2", has_text="Segment an image").first.wait_for()
    assert page.locator("[data-section-id]").count() > 5


# -- the page: segmentation ---------------------------------------------------------------------------------

def test_page_segments_an_uploaded_frame(page, server):
    models = httpx.get(f"{server}/models").json()["models"]
    enet = next(m for m in models if m["name"] == "enet-camvid")
    page.goto(server)
    page.wait_for_selector("#model:not([disabled])")
    assert page.input_value("#model") == "enet-camvid"
    frame = camvid_frame()
    page.set_input_files("#file", str(frame))
    page.wait_for_selector("#legend li")

    # the overlay, at the image's own size, not blank, and not the bare image
    overlay = page.evaluate(CANVAS_STATS)
    assert (overlay["width"], overlay["height"]) == (480, 360)
    assert overlay["colours"] > 1000 and 20 < overlay["mean"] < 235, overlay["colours"]
    page.click("#view button[data-view=image]")
    plain = page.evaluate(CANVAS_STATS)
    assert plain["sample"] != overlay["sample"]

    # the raw mask: every pixel is one of the model's class colours, several classes present
    page.click("#view button[data-view=mask]")
    colours = set(page.evaluate(CANVAS_COLOURS))
    palette = {",".join(map(str, c)) for c in enet["colors"]}
    assert colours <= palette, colours - palette
    assert len(colours) >= 4

    # the legend: one row per class present, shares adding up to the whole picture, Road among the largest
    rows = page.locator("#legend li:not(.zero)")
    names = rows.locator(".name").all_inner_texts()
    shares = [float(t.split()[0].lstrip("<")) for t in rows.locator(".pct").all_inner_texts()]
    assert len(names) == len(colours) and "Road" in names[:3], names
    assert abs(sum(shares) - 100) < 1.5, shares

    # the opacity slider: at 0 the overlay is the bare image
    page.click("#view button[data-view=overlay]")
    set_range(page, "#opacity", 0)
    assert page.evaluate(CANVAS_STATS)["sample"] == plain["sample"]
    set_range(page, "#opacity", 55)

    # the round trip and the server's own timings
    timings = page.inner_text("#timings")
    for label in ("Round trip", "Decode", "Queue", "Inference", "Encode", "Server total"):
        assert label in timings, timings

    if os.environ.get("DEMO_SCREENSHOT"):  # the README's picture, with the timings of a warm server
        page.click("#samples .sample >> nth=0")
        page.wait_for_function("() => document.getElementById('result-meta').textContent.startsWith('camvid-')")
        page.wait_for_timeout(150)
        page.screenshot(path=os.environ["DEMO_SCREENSHOT"])


def test_page_switches_to_a_classifier(page, server):
    page.goto(server)
    page.wait_for_selector("#samples .sample")
    page.click("#samples .sample >> nth=0")
    page.wait_for_selector("#legend li")
    page.select_option("#model", "lenet5-fashion")  # the same image, now classified
    page.wait_for_selector("#bars li")
    assert page.locator("#bars li").count() == 5
    # the classifier's own samples: the trouser is a trouser
    page.click("#samples .sample[data-file*=trouser]")
    page.wait_for_function("() => document.querySelector('#bars .name').textContent === 'Trouser'")
    scores = [float(t.split()[0]) for t in page.locator("#bars .pct").all_inner_texts()]
    assert scores == sorted(scores, reverse=True) and scores[0] > 50, scores
    widths = page.eval_on_selector_all("#bars .fill", "els => els.map(e => e.getBoundingClientRect().width)")
    assert widths == sorted(widths, reverse=True) and widths[0] > widths[-1], widths
    assert page.is_hidden("#view-card")  # no overlay controls for a classifier


# -- the page: errors --------------------------------------------------------------------------------------

def test_page_explains_413_and_415(page, server):
    page.goto(server)
    page.wait_for_selector("#model:not([disabled])")
    page.set_input_files("#file", files=[{"name": "notes.txt", "mimeType": "text/plain", "buffer": b"not an image"}])
    page.wait_for_selector("#error:not([hidden])")
    assert "(415)" in page.inner_text("#error-title") and "Content-Type" in page.inner_text("#error-message")
    assert page.is_hidden("#error-retry")  # the same request would fail again
    big = os.urandom(1_200_000)  # the server was started with --max-body-bytes 1000000
    page.set_input_files("#file", files=[{"name": "huge.png", "mimeType": "image/png", "buffer": big}])
    page.wait_for_function("() => document.getElementById('error-title').textContent.includes('413')")
    assert "too large" in page.inner_text("#error-title")


def test_page_retries_after_503(page, server):
    """A 503 with Retry-After (queue full, warming up) shows its reason, counts down, and retries by itself."""
    calls = []

    def busy_once(route):
        calls.append(route.request.url)
        if len(calls) == 1:
            route.fulfill(status=503, headers={"Retry-After": "1", "Content-Type": "application/json"},
                          body=json.dumps({"error": {"code": "queue_full", "message": "64 requests queued"}}))
        else:
            route.continue_()

    page.route("**/segment?*", busy_once)
    page.goto(server)
    page.wait_for_selector("#samples .sample")
    page.click("#samples .sample >> nth=0")
    page.wait_for_selector("#error:not([hidden])")
    assert "(503)" in page.inner_text("#error-title")
    assert "Retrying in" in page.inner_text("#error-message")
    page.wait_for_selector("#legend li", timeout=10_000)
    assert page.is_hidden("#error") and len(calls) == 2


# -- API keys and the video tab -----------------------------------------------------------------------------

def test_page_asks_for_the_api_key(browser, tmp_path):
    proc, base = start_server(tmp_path, "--models", "lenet5-fashion", "--api-keys", "s3cret")
    try:
        p = Page(browser, base)
        page = p.page
        page.goto(base)
        page.wait_for_selector("#keybar:not([hidden])")
        page.wait_for_selector("#error:not([hidden])")
        assert "(401)" in page.inner_text("#error-title")
        page.fill("#api-key", "s3cret")
        page.click("#key-save")
        page.wait_for_selector("#model:not([disabled])")
        assert page.input_value("#model") == "lenet5-fashion"
        page.click("#samples .sample >> nth=0")
        page.wait_for_selector("#bars li")
        p.close()
    finally:
        stop_process(proc)


def test_video_streams_with_an_api_key_kept_out_of_urls_and_logs(browser, tmp_path):
    """A browser's WebSocket cannot send headers: the page offers the key as a subprotocol (a key with
    characters a token cannot hold, base64url-encoded), the server selects it, and the key appears in
    no URL and no log line."""
    key = "s3cret/+=é"
    proc, base = start_server(tmp_path, "--models", "enet-camvid", "--api-keys", key)
    try:
        p = Page(browser, base)
        page = p.page
        page.context.grant_permissions(["camera"])
        urls: list[str] = []
        page.on("websocket", lambda ws: urls.append(ws.url))
        page.goto(base)
        page.wait_for_selector("#keybar:not([hidden])")
        page.fill("#api-key", key)
        page.click("#key-save")
        page.wait_for_selector("#model:not([disabled])")
        page.click("#tab-video")
        page.click("#webcam")
        page.wait_for_function(
            "() => Number((document.querySelector('#timings').textContent.match(/Frames answered(\\d+)/) || [0, 0])[1]) >= 2",
            timeout=30_000)
        page.click("#video-stop")
        assert page.is_hidden("#error")
        p.close()
    finally:
        stop_process(proc)
    assert urls and not any("s3cret" in u or "api_key" in u for u in urls), urls
    logs = "".join(f.read_text() for f in tmp_path.glob("server-*.log"))
    assert "WebSocket /segment/stream" in logs and "s3cret" not in logs


def test_video_tab_says_when_the_stream_route_is_missing(page, server):
    config = httpx.get(f"{server}/ui/config").json()
    page.goto(server)
    page.wait_for_selector("#model:not([disabled])")
    page.click("#tab-video")
    note = page.inner_text("#video-note")
    if config["stream"] is None:
        assert "/segment/stream" in note and page.is_disabled("#webcam")
    else:
        assert "newest frame wins" in note and page.is_enabled("#webcam")


def test_video_streams_the_webcam(page, server):
    """With the stream route (issue 10), Chromium's fake webcam goes through /segment/stream frame after frame."""
    if httpx.get(f"{server}/ui/config").json()["stream"] is None:
        pytest.skip("this server has no /segment/stream WebSocket route")
    page.context.grant_permissions(["camera"])
    page.goto(server)
    page.wait_for_selector("#model:not([disabled])")
    page.click("#tab-video")
    page.click("#webcam")
    page.wait_for_function(
        "() => [...document.querySelectorAll('#timings dt')].some(dt => dt.textContent === 'Frames answered')"
        " && Number(document.querySelector('#timings').textContent.match(/Frames answered(\\d+)/)[1]) >= 3",
        timeout=30_000)
    stats = page.evaluate(CANVAS_STATS)
    assert stats["width"] > 0 and stats["colours"] > 10
    page.click("#video-stop")
    assert page.is_hidden("#error")
