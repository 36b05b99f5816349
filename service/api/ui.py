"""The demo page: `GET /` (service/static/index.html), its files under `/static`, and `GET /ui/config`,
what the page needs to know before it asks for anything else (whether API keys are required, the
body limits, the bundled sample images, whether the video stream route exists).

The page is plain HTML, CSS and JavaScript from the package (no build step, nothing from another
host), so it works offline and behind a firewall. None of these routes needs an API key: the page
must load to show the field that asks for one; `/models`, `/segment` and `/classify` still do.
"""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from starlette.routing import NoMatchFound

from enet_serve.service._version import __version__
from enet_serve.service.api.deps import SettingsDep

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
SAMPLES_DIR = STATIC_DIR / "samples"
STATIC_URL = "/static"

# This host only: the page's requests (fetch, the video WebSocket) and its files; images from blob: and
# data: URLs (the chosen file, the mask PNG), a chosen video file from a blob: URL.
CSP = ("default-src 'self'; img-src 'self' data: blob:; media-src 'self' blob:; style-src 'self'; "
       "script-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'self'; frame-ancestors 'self'")

router = APIRouter(include_in_schema=False)


@router.get("/")
async def index() -> FileResponse:
    # no-cache: a new version of the page is picked up at once (it revalidates with the ETag)
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html",
                        headers={"Cache-Control": "no-cache", "Content-Security-Policy": CSP})


@lru_cache(maxsize=1)
def samples() -> list[dict]:
    """The bundled sample images (samples/samples.json), each with its URL."""
    path = SAMPLES_DIR / "samples.json"
    try:
        items = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise RuntimeError(f"{path}: the demo page's sample list cannot be read: {e}") from e
    for item in items:
        if not (SAMPLES_DIR / item["file"]).is_file():
            raise RuntimeError(f"{path}: sample {item['file']!r} is not in {SAMPLES_DIR}")
    return [{**item, "url": f"{STATIC_URL}/samples/{item['file']}"} for item in items]


def stream_path(app: FastAPI) -> str | None:
    """The video stream's WebSocket path (api/stream.py), None in an app built without it."""
    try:
        return app.url_path_for("segment_stream")
    except NoMatchFound:
        return None


@router.get("/ui/config")
async def ui_config(request: Request, settings: SettingsDep) -> dict:
    return {
        "version": __version__,
        "api_key_required": bool(settings.api_keys),
        "max_body_bytes": settings.max_body_bytes,
        "max_image_pixels": settings.max_image_pixels,
        "samples": samples(),
        "stream": stream_path(request.app),
    }


def install(app: FastAPI) -> None:
    """Serve the page, its files and its config on `app` (when the demo_page setting is on)."""
    app.include_router(router)
    app.mount(STATIC_URL, StaticFiles(directory=STATIC_DIR), name="static")
