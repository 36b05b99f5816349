"""What the routes share, as typed dependencies (`ServerDep`, `SettingsDep`, `ModelDep`, ...), so a test
can swap any of them with `app.dependency_overrides`; and reading an image body within limits.
"""
from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Path, Query, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

try:  # the module's name since python-multipart 0.0.13 (Starlette imports it the same way)
    from python_multipart.exceptions import FormParserError
    from python_multipart.multipart import MultipartParser, parse_options_header
except ModuleNotFoundError:  # pragma: no cover
    from multipart.exceptions import FormParserError
    from multipart.multipart import MultipartParser, parse_options_header

from enet_serve.service.errors import BadRequest, InvalidParameter, PayloadTooLarge, Unauthorized, UnsupportedMediaType
from enet_serve.service.server import LoadedModel, ModelServer
from enet_serve.service.settings import Settings
from enet_serve.service.tasks import HANDLERS

_bearer = HTTPBearer(auto_error=False, description="Authorization: Bearer KEY (when API keys are configured)")
_api_key = APIKeyHeader(name="X-API-Key", auto_error=False, description="X-API-Key: KEY (when API keys are configured)")


# The dependencies are `async def` although they never await: FastAPI runs a plain `def` dependency in
# its thread pool, a thread hop per dependency per request (measurable at 40 requests/s on 2 cores).

async def get_server(request: Request) -> ModelServer:
    return request.app.state.server


async def get_settings(request: Request) -> Settings:
    """The app's settings (the routes read settings only through this)."""
    return request.app.state.settings


def served_model(scope) -> str:
    """The model the dependencies below chose for this request ('' when none did): what the request
    metrics and the traces label it with."""
    state = scope.get("state") or {}
    return state.get("model", "") if isinstance(state, dict) else ""


ServerDep = Annotated[ModelServer, Depends(get_server)]
SettingsDep = Annotated[Settings, Depends(get_settings)]


async def get_model(request: Request, server: ServerDep,
              name: Annotated[str, Path(description="model name", examples=["enet-camvid"])]) -> LoadedModel:
    """The loaded model of the path's `{name}` (404 when there is none), ready or not."""
    model = server.get(name)
    request.state.model = model.name
    return model


ModelDep = Annotated[LoadedModel, Depends(get_model)]


def ready_model_of(task: str):
    """A dependency: the ready model of `task` named by the query's `model=` (its default without one)."""
    handler = HANDLERS[task]
    example = Settings.model_fields[handler.default_setting].default

    async def ready_model(request: Request, server: ServerDep,
                    model: str | None = Query(None, description=f"model name; default: the default {handler.word} "
                                              "model", examples=[example])) -> LoadedModel:
        handle = server.ready_model(model, task)
        request.state.model = handle.name
        return handle

    return ready_model


SegmentModelDep = Annotated[LoadedModel, Depends(ready_model_of("segment"))]
ClassifyModelDep = Annotated[LoadedModel, Depends(ready_model_of("classify"))]


async def require_api_key(
    settings: SettingsDep,
    bearer: HTTPAuthorizationCredentials | None = Depends(_bearer),
    api_key: str | None = Depends(_api_key),
) -> None:
    check_api_key(settings, api_key or (bearer.credentials if bearer is not None else None))


def check_api_key(settings: Settings, given: str | None) -> None:
    """401 unless `given` is one of the configured keys (any key when none are configured)."""
    keys = settings.api_keys
    if not keys:
        return
    if not given:
        raise Unauthorized("missing API key: send 'Authorization: Bearer KEY' or 'X-API-Key: KEY'")
    given_b = given.encode()
    ok = False
    for key in keys:  # compare against every key, in constant time
        ok |= hmac.compare_digest(given_b, key.encode())
    if not ok:
        raise Unauthorized("wrong API key")


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, or 413 as soon as it passes `limit` (announced by Content-Length or not)."""
    length = request.headers.get("content-length")
    if length is not None:
        try:
            n = int(length)
        except ValueError:
            raise BadRequest("invalid Content-Length") from None
        if n > limit:
            raise PayloadTooLarge(f"the body is {n} bytes; the limit is {limit} (max_body_bytes)")
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"the body is larger than {limit} bytes (max_body_bytes)")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_image(request: Request, settings: Settings) -> bytes:
    """Image bytes from a raw body (image/*, application/octet-stream) or multipart/form-data field `image`."""
    kind = media_type(request)
    if kind == "multipart/form-data":
        body = await read_body(request, settings.max_body_bytes)
        image = multipart_part(request.headers.get("content-type", ""), body, b"image")
        if image is None:
            raise InvalidParameter("multipart/form-data body without a field 'image'", code="missing_image")
        return image
    if kind and not (kind.startswith("image/") or kind == "application/octet-stream"):
        raise UnsupportedMediaType(f"unsupported Content-Type {kind!r}: send image bytes (image/jpeg, image/png, ...) "
                                   "or multipart/form-data with a field 'image'")
    return await read_body(request, settings.max_body_bytes)


MAX_PARTS = 40  # parts in a multipart body (Starlette's form parser allowed 8 files and 32 fields)


def multipart_part(content_type: str, body: bytes, name: bytes) -> bytes | None:
    """The bytes of the multipart/form-data part named `name` exactly as sent (the last such part, as a
    form keeps it), whether a file part (`curl -F image=@x.png`) or a plain field (`curl -F 'image=<x.png'`):
    Starlette's form parser decodes a plain field as text, which image bytes do not survive."""
    _, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if not boundary:
        raise BadRequest("invalid multipart body: the Content-Type has no boundary")
    reader = _PartReader(name)
    parser = MultipartParser(boundary, reader.callbacks())
    try:
        parser.write(body)
        parser.finalize()
    except FormParserError as e:
        raise BadRequest(f"invalid multipart body: {e}") from e
    if reader.open:
        raise BadRequest("invalid multipart body: it ends inside a part (no closing boundary)")
    return reader.found


class _PartReader:
    """python-multipart's callbacks: keep the bytes of the parts named `name`, skip the others."""

    def __init__(self, name: bytes):
        self.name = name
        self.parts = 0
        self.open = False
        self.found: bytes | None = None
        self._field, self._value = bytearray(), bytearray()
        self._disposition = b""
        self._data: bytearray | None = None

    def callbacks(self) -> dict:
        return {"on_part_begin": self.on_part_begin, "on_header_field": self.on_header_field,
                "on_header_value": self.on_header_value, "on_header_end": self.on_header_end,
                "on_headers_finished": self.on_headers_finished, "on_part_data": self.on_part_data,
                "on_part_end": self.on_part_end}

    def on_part_begin(self) -> None:
        self.parts += 1
        if self.parts > MAX_PARTS:
            raise BadRequest(f"invalid multipart body: more than {MAX_PARTS} parts")
        self.open, self._disposition, self._data = True, b"", None

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def on_header_end(self) -> None:
        if self._field.lower() == b"content-disposition":
            self._disposition = bytes(self._value)
        self._field.clear()
        self._value.clear()

    def on_headers_finished(self) -> None:
        _, params = parse_options_header(self._disposition)
        if b"name" not in params:
            raise BadRequest("invalid multipart body: a part's Content-Disposition has no name")
        self._data = bytearray() if params[b"name"] == self.name else None

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._data is not None:
            self._data += data[start:end]

    def on_part_end(self) -> None:
        if self._data is not None:
            self.found = bytes(self._data)
        self.open = False
