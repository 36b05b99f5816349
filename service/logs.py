"""Logging of `enet-serve serve`: one configuration for the service's and uvicorn's loggers, as text
or as one JSON object per line, each line with the request id of the request that wrote it."""
from __future__ import annotations

import json
import logging
import logging.config
import re
from datetime import datetime, timezone

from enet_serve.service.request_id import RequestIdFilter
from enet_serve.service.settings import Settings

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s]: %(message)s"
_KEY_IN_QUERY = re.compile(r"(api_key=)[^&\s\"']+")


class RedactKeyFilter(logging.Filter):
    """Blanks `api_key=...` in log lines: uvicorn logs a WebSocket's URL with its query, where a
    client may put its key (the stream's `api_key` parameter), and does so even without access logs."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "api_key=" in message:
            record.msg, record.args = _KEY_IN_QUERY.sub(r"\1***", message), None
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
