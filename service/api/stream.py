"""WS /segment/stream: video frames in (binary messages, JPEG or PNG), one answer per frame the server
gets to; the newest frame wins (service/newest_frame.py).

Query parameters are /segment's (`model`, `format`, `min_confidence`, `classes`, `regions`, `min_area`,
`alpha`); API keys as on the other routes (`X-API-Key` or `Authorization: Bearer`), or, as a browser's
WebSocket cannot send headers, in the subprotocol `enet-serve.key.<base64url of the key>` (the demo page's
way; the server selects it) or the query parameter `api_key` (kept out of the logs). Per answered frame
one JSON text message `{"frame", "dropped", "latency_ms", "model", "width", "height", "class_fractions",
...}` (for json and rle: the whole body of that format), then, for the binary formats (png, confidence,
overlay), one binary message with the body. A frame the server cannot answer (a bad image, a full
queue) gets `{"frame", "dropped", "error": {"code", "message"}}` and the stream goes on. Frames of all
connections go through the model's batcher like any other request.

Close codes: 4000 + the HTTP status of what went wrong at the start (4401 API key, 4404 unknown model,
4422 bad parameter, 4503 not ready or too many connections; an `{"error": ...}` text message first),
4415 for a text message from the client, 1009 for a frame over `stream_max_frame_bytes`.
"""
from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import time
from typing import Any, Literal

from fastapi import APIRouter, WebSocket
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.websockets import WebSocketDisconnect, WebSocketState

from enet_serve.service.api.deps import check_api_key
from enet_serve.service.api.segment import segment_options
from enet_serve.service.errors import InvalidParameter, ServiceError, ServiceUnavailable, error_body
from enet_serve.service.metrics import Metrics
from enet_serve.service.newest_frame import Frame, NewestFrame
from enet_serve.service.server import LoadedModel, ModelServer
from enet_serve.service.settings import Settings
from enet_serve.service.tasks import SEGMENT_FORMATS, SegmentOptions

log = logging.getLogger("service")
router = APIRouter()

CLOSE_UNSUPPORTED = 4415  # a text message: frames are binary messages
CLOSE_TOO_BIG = 1009  # RFC 6455 "message too big" (uvicorn's ws_max_size closes with it too)
REASON_BYTES = 123  # a close frame's reason is at most 123 bytes


class StreamQuery(BaseModel):
    """The stream's query parameters (those of POST /segment)."""

    model_config = ConfigDict(extra="ignore", protected_namespaces=())
    model: str | None = None
    format: Literal[tuple(SEGMENT_FORMATS)] = "json"  # type: ignore[valid-type]
    alpha: float | None = Field(None, ge=0, le=1)
    min_confidence: float | None = Field(None, ge=0, le=1)
    classes: str | None = None
    regions: bool = False
    min_area: int | None = Field(None, ge=1)


class StreamConnections:
    """The open stream connections of one app, against `stream_max_connections`."""

    def __init__(self, limit: int):
        self.limit = limit
        self.open = 0

    def enter(self) -> bool:
        if self.open >= self.limit:
            return False
        self.open += 1
        return True

    def leave(self) -> None:
        self.open -= 1


@router.websocket("/segment/stream", name="segment_stream")
async def segment_stream(websocket: WebSocket) -> None:
    app = websocket.app
    server: ModelServer = app.state.server
    settings: Settings = app.state.settings
    metrics: Metrics = app.state.metrics
    connections: StreamConnections = app.state.stream_connections
    key_protocol = _key_protocol(websocket)
    # a browser fails a connection whose server does not select a subprotocol it offered
    await websocket.accept(subprotocol=key_protocol)
    try:
        check_api_key(settings, _given_key(websocket, key_protocol))
        model, options = _open(server, settings, dict(websocket.query_params))
        if not connections.enter():
            raise ServiceUnavailable(f"too many stream connections (stream_max_connections={connections.limit}); "
                                     "retry later", code="too_many_streams")
    except ServiceError as e:
        metrics.stream_rejected.labels(e.code).inc()
        await _close_with_error(websocket, e)
        return
    gauge = metrics.stream_connections.labels(model.name)
    gauge.inc()
    try:
        await _receive_frames(websocket, server, model, options, settings, metrics)
    finally:
        gauge.dec()
        connections.leave()


KEY_PROTOCOL = "enet-serve.key."  # + the key in base64url without padding (a subprotocol is a token)


def _key_protocol(websocket: WebSocket) -> str | None:
    return next((p for p in websocket.scope.get("subprotocols", []) if p.startswith(KEY_PROTOCOL)), None)


def _given_key(websocket: WebSocket, key_protocol: str | None) -> str | None:
    key = websocket.headers.get("x-api-key")
    if key:
        return key
    scheme, _, credentials = websocket.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    # browsers (the demo page) cannot set headers on a WebSocket
    if key_protocol is not None:
        encoded = key_protocol[len(KEY_PROTOCOL):]
        try:
            return base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode("utf-8")
        except (ValueError, UnicodeDecodeError):
            return None  # not a key: 4401 like any wrong one
    return websocket.query_params.get("api_key") or None


def _open(server: ModelServer, settings: Settings, params: dict[str, str]) -> tuple[LoadedModel, SegmentOptions]:
    """The stream's model and options from its query parameters (the ServiceErrors of POST /segment)."""
    try:
        query = StreamQuery.model_validate(params)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in e.errors())
        raise InvalidParameter(problems) from None
    model = server.ready_model(query.model, "segment")
    options = segment_options(model.handler, query.format,  # type: ignore[arg-type]
                              alpha=settings.overlay_alpha if query.alpha is None else query.alpha,
                              min_confidence=query.min_confidence, classes=query.classes, regions=query.regions,
                              min_area=query.min_area)
    return model, options


async def _receive_frames(websocket: WebSocket, server: ModelServer, model: LoadedModel, options: SegmentOptions,
                          settings: Settings, metrics: Metrics) -> None:
    """Read frames into the connection's newest-frame slot while `_answer_frames` answers them."""
    slot = NewestFrame()
    dropped = metrics.stream_frames.labels(model.name, "dropped")
    worker = asyncio.create_task(_answer_frames(websocket, slot, server, model, options, metrics),
                                 name=f"stream-{model.name}")
    close: tuple[int, str] | None = None
    count = 0
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                break
            data = message.get("bytes")
            if data is None:
                close = (CLOSE_UNSUPPORTED, "send each frame as a binary message (JPEG or PNG bytes)")
                break
            if len(data) > settings.stream_max_frame_bytes:
                close = (CLOSE_TOO_BIG, f"frame {count} is {len(data)} bytes; the limit is "
                                        f"{settings.stream_max_frame_bytes} (stream_max_frame_bytes)")
                break
            if slot.put(Frame(count, data, time.perf_counter())) is not None:
                dropped.inc()
            count += 1
    finally:
        slot.close()
        worker.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await worker
    if close is not None:
        await _close(websocket, *close)


async def _answer_frames(websocket: WebSocket, slot: NewestFrame, server: ModelServer, model: LoadedModel,
                         options: SegmentOptions, metrics: Metrics) -> None:
    handler = model.handler
    keep_original = handler.wants_original(options)
    answered = metrics.stream_frames.labels(model.name, "answered")
    failed = metrics.stream_frames.labels(model.name, "failed")
    while (item := await slot.take()) is not None:
        frame, dropped = item
        head: dict[str, Any] = {"frame": frame.index, "dropped": dropped}
        try:
            prepared, outputs = await server.infer_image(model, frame.data, keep_original)
            text, binary = await server.codec(handler.encode_stream, prepared, outputs, options)
        except ServiceError as e:
            failed.inc()
            await websocket.send_text(json.dumps({**head, **error_body(e.code, e.message)}))
            continue
        except Exception as e:  # a bug: answer the frame, log it, go on with the next
            log.exception("%s: stream frame %d failed", model.name, frame.index)
            failed.inc()
            await websocket.send_text(json.dumps({**head, **error_body("internal_error", f"internal error: "
                                                                                          f"{type(e).__name__}")}))
            continue
        head["latency_ms"] = round((time.perf_counter() - frame.received) * 1000, 2)
        # the format's JSON object with the frame's fields first
        await websocket.send_text(json.dumps(head, separators=(",", ":"))[:-1] + "," + text[1:])
        if binary is not None:
            await websocket.send_bytes(binary)
        answered.inc()


async def _close_with_error(websocket: WebSocket, error: ServiceError) -> None:
    """The error as a text message, then the close code 4000 + its HTTP status."""
    with contextlib.suppress(WebSocketDisconnect, RuntimeError):
        await websocket.send_text(json.dumps(error_body(error.code, error.message)))
    await _close(websocket, 4000 + error.status, error.message)


async def _close(websocket: WebSocket, code: int, reason: str) -> None:
    if websocket.application_state == WebSocketState.DISCONNECTED:
        return
    reason_bytes = reason.encode()[:REASON_BYTES]
    with contextlib.suppress(WebSocketDisconnect, RuntimeError):
        await websocket.close(code, reason_bytes.decode("utf-8", errors="ignore"))
