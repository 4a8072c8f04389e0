"""Structured logs: one JSON object per line, with the fields passed as ``extra``.

Nothing here adds secrets: code logs ids and names, never passwords, tokens or keys;
a URL that may carry a password goes through ``redact_url`` first.
"""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from urllib.parse import urlsplit, urlunsplit

import orjson

_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


def redact_url(url: str) -> str:
    """The URL with its password (in the user info, or a ``password=`` query item) as ``***``.

    For logs and error messages: ``nats://kibitz:s3cret@nats-1:4222`` becomes
    ``nats://kibitz:***@nats-1:4222``.
    """
    try:
        parts = urlsplit(url)
        items = parts.query.split("&") if parts.query else []
        if parts.password is None and not any(item.startswith("password=") for item in items):
            return url
        netloc = parts.netloc
        if parts.password is not None:
            userinfo, _, host = netloc.rpartition("@")
            netloc = f"{userinfo.partition(':')[0]}:***@{host}"
        query = "&".join("password=***" if item.startswith("password=") else item for item in items)
        return urlunsplit(parts._replace(netloc=netloc, query=query))
    except ValueError:
        return "<unparsable URL>"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        line.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_info:
            line["error"] = self.formatException(record.exc_info)
        return orjson.dumps(line, default=str).decode()


def configure(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("sanic.access", "sanic.root", "sanic.server", "sanic.websockets", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
