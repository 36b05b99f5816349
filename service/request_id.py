"""`X-Request-ID`: the request's own (when it is a sane token: 1-128 of `A-Za-z0-9._:/+=@-`) or a
new uuid4 hex, returned in the response and put on every log line written while the request runs
(`REQUEST_ID`, a contextvar that `RequestIdFilter` copies onto each log record)."""
from __future__ import annotations

import contextvars
import logging
import re
import uuid

HEADER = "X-Request-ID"
_RAW = HEADER.lower().encode("latin-1")
_SANE = re.compile(rb"[A-Za-z0-9._:/+=@-]{1,128}")
REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")


def request_id_of(headers) -> str:
    """The client's id when it is sane (anything else could forge log lines), else a new one."""
    for name, value in headers:
        if name == _RAW and _SANE.fullmatch(value):
            return value.decode("latin-1")
    return uuid.uuid4().hex


class RequestIdMiddleware:
    """Outermost middleware: every response, errors and refusals included, carries the id."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        rid = request_id_of(scope.get("headers", ()))
        scope.setdefault("state", {})["request_id"] = rid
        token = REQUEST_ID.set(rid)

        async def send_with_id(message):
            if message["type"] in ("http.response.start", "websocket.accept"):
                headers = [(k, v) for k, v in message.get("headers", ()) if k.lower() != _RAW]
                headers.append((_RAW, rid.encode("latin-1")))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            REQUEST_ID.reset(token)


class RequestIdFilter(logging.Filter):
    """Adds `record.request_id` ("-" outside a request); put it on handlers, so every logger's lines get it."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = REQUEST_ID.get()
        return True
