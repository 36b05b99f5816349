"""Errors of the service and the handlers that turn every failure into `{"error": {"code", "message"}}`, or
on the Open Inference Protocol's routes (/v2) into its own form, `{"error": message, "code": code}`: its
clients (tritonclient, perf_analyzer) read `error` as a string.

Statuses follow design.md: 400 bad image, 401 API key, 404 unknown model or route, 405 method,
408 body too slow, 413 body or image too large, 415 media type, 422 bad parameters, 503 queue full,
not ready, model failed, too many connections or shutting down (with Retry-After), 504 deadline
passed in the queue, 500 anything unexpected.
"""
from __future__ import annotations

import logging
from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("service")


class ServiceError(Exception):
    """A failure with an HTTP status, a stable machine-readable code and a message for people."""

    status = 500
    code = "internal_error"

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None,
                 headers: dict[str, str] | None = None, details=None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        self.headers = dict(headers or {})
        self.details = details


class BadImage(ServiceError):
    status, code = 400, "bad_image"


class BadRequest(ServiceError):
    status, code = 400, "bad_request"


class Unauthorized(ServiceError):
    status, code = 401, "unauthorized"

    def __init__(self, message: str = "missing or wrong API key", **kw):
        kw.setdefault("headers", {"WWW-Authenticate": "Bearer"})
        super().__init__(message, **kw)


class ModelNotFound(ServiceError):
    status, code = 404, "model_not_found"


class PayloadTooLarge(ServiceError):
    status, code = 413, "payload_too_large"


class UnsupportedMediaType(ServiceError):
    status, code = 415, "unsupported_media_type"


class InvalidParameter(ServiceError):
    status, code = 422, "invalid_parameter"


class ServiceUnavailable(ServiceError):
    status, code = 503, "unavailable"

    def __init__(self, message: str, *, retry_after: float = 1.0, **kw):
        headers = kw.pop("headers", None) or {}
        headers.setdefault("Retry-After", str(max(1, int(round(retry_after)))))
        super().__init__(message, headers=headers, **kw)


class QueueFull(ServiceUnavailable):
    code = "queue_full"


class NotReady(ServiceUnavailable):
    code = "not_ready"


class ModelFailed(ServiceUnavailable):
    """The model failed to load or warm up (exit_on_error off): the message names the file and the reason."""

    code = "model_failed"


class TooManyConnections(ServiceUnavailable):
    code = "too_many_connections"


class ShuttingDown(ServiceUnavailable):
    code = "shutting_down"


class BodyTimeout(ServiceError):
    status, code = 408, "body_timeout"


class DeadlineExceeded(ServiceError):
    status, code = 504, "deadline_exceeded"


class InferenceFailed(ServiceError):
    status, code = 500, "inference_failed"


class ModelLoadError(Exception):
    """A model of the repository cannot be served (bad config, sha256 mismatch, untrained, ...);
    `path`: the file at fault, when one is."""

    def __init__(self, message: str, *, path=None):
        super().__init__(message)
        self.path = path


V2_ROOT = "/v2"


def is_v2(path: str) -> bool:
    """Whether `path` is one of the Open Inference Protocol's routes."""
    return path == V2_ROOT or path.startswith(V2_ROOT + "/")


def error_body(code: str, message: str, details=None, *, path: str = "") -> dict:
    """The error's JSON body for a request to `path` (the protocol's form under /v2)."""
    if is_v2(path):
        return {"error": message, "code": code}
    error = {"code": code, "message": message}
    if details is not None:
        error["details"] = details
    return {"error": error}


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None,
                   details=None, *, path: str = "") -> JSONResponse:
    return JSONResponse(error_body(code, message, details, path=path), status_code=status, headers=headers)


_HTTP_CODES = {
    400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
    406: "not_acceptable", 408: "body_timeout", 413: "payload_too_large", 415: "unsupported_media_type", 422: "invalid_parameter",
    429: "too_many_requests", 500: "internal_error", 503: "unavailable", 504: "deadline_exceeded",
}


def _jsonable_errors(errors) -> list[dict]:
    out = []
    for e in errors:
        item = {"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
        out.append(item)
    return out


async def _service_error(request: Request, exc: ServiceError) -> JSONResponse:
    if exc.status >= 500 and not isinstance(exc, (ServiceUnavailable, DeadlineExceeded)):
        log.error("%s %s: %s", request.method, request.url.path, exc.message)
    return error_response(exc.status, exc.code, exc.message, exc.headers or None, exc.details, path=request.url.path)


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = _jsonable_errors(exc.errors())
    parts = []
    for e in errors:
        loc = ".".join(str(p) for p in e["loc"] if p not in ("query", "path", "body", "header"))
        parts.append(f"{loc}: {e['msg']}" if loc else e["msg"])
    return error_response(422, "invalid_parameter", "; ".join(parts) or "invalid request", details=errors,
                          path=request.url.path)


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    status = exc.status_code
    if isinstance(exc.detail, str) and exc.detail:
        message = exc.detail
    else:
        message = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else "error"
    if status == 404 and message == "Not Found":
        message = f"no route {request.method} {request.url.path}"
    elif status == 405 and message == "Method Not Allowed":
        message = f"method {request.method} not allowed on {request.url.path}"
    return error_response(status, _HTTP_CODES.get(status, "error"), message, getattr(exc, "headers", None),
                          path=request.url.path)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return error_response(500, "internal_error", f"internal error: {type(exc).__name__}", path=request.url.path)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
