"""Logging of `enet-serve serve`: one configuration for the service's and uvicorn's loggers, as text
or as one JSON object per line, each line with the request id of the request that wrote it."""
from __future__ import annotations

import json
import logging
import logging.config
import re
from datetime import datetime, timezone
from urllib.parse import unquote_plus

from enet_serve.service.request_id import RequestIdFilter
from enet_serve.service.settings import Settings

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s]: %(message)s"
_QUERY_PAIR = re.compile(r"([^\s?&=\"']+)=([^&\s\"']+)")  # name=value in a logged URL


def is_key_parameter(name: str) -> bool:
    """Whether a query parameter `name`, as sent, is an API key: Starlette percent-decodes names, so
    `api%5Fkey` authenticates as `api_key` does (any name ending so is blanked, as before)."""
    return unquote_plus(name).lower().endswith("api_key")


def redact_query(query: str) -> str:
    """A raw query string with the value of every API key parameter replaced by `***`."""
    pairs = []
    for pair in query.split("&"):
        name, eq, value = pair.partition("=")
        pairs.append(f"{name}=***" if eq and value and is_key_parameter(name) else pair)
    return "&".join(pairs)


def _blank(match: re.Match) -> str:
    return f"{match[1]}=***" if is_key_parameter(match[1]) else match[0]


class RedactKeyFilter(logging.Filter):
    """Blanks API key query parameters (`api_key=...`, however percent-encoded) in log lines: uvicorn
    logs a WebSocket's URL with its raw query, where a client may put its key (the stream's `api_key`
    parameter), and does so even without access logs."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "=" in message:
            redacted = _QUERY_PAIR.sub(_blank, message)
            if redacted != message:
                record.msg, record.args = redacted, None
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "request_id": getattr(record, "request_id", "-"),
            "message": record.getMessage(),
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


def log_config(settings: Settings) -> dict:
    """A logging.config.dictConfig dictionary: root, uvicorn and uvicorn.access on one stderr handler."""
    level = "DEBUG" if settings.log_level == "trace" else settings.log_level.upper()
    formatter = {"()": JsonFormatter} if settings.log_format == "json" else {"format": TEXT_FORMAT}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"request_id": {"()": RequestIdFilter}, "redact_key": {"()": RedactKeyFilter}},
        "formatters": {"line": formatter},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "stream": "ext://sys.stderr", "formatter": "line",
                                "filters": ["request_id", "redact_key"]}},
        "root": {"level": level, "handlers": ["stderr"]},
        "loggers": {
            "uvicorn": {"level": level, "handlers": [], "propagate": True},
            "uvicorn.error": {"level": level, "handlers": [], "propagate": True},
            "uvicorn.access": {"level": level if settings.access_log else "CRITICAL", "handlers": [],
                               "propagate": True},
        },
    }


def configure_logging(settings: Settings) -> None:
    logging.config.dictConfig(log_config(settings))
