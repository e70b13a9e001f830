"""Log lines, in one of two formats (--log-format, LOG_FORMAT): `text`, for people (the default),
or `json`, one JSON object per line for a log pipeline (time, level, logger, message, process,
and the per-call fields). Nothing a client sends can forge or split a line in either format: the
JSON encoder escapes every control character, and the text of a call line quotes and escapes any
client value that is not plain."""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from typing import Any, Mapping
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(process)d %(name)s %(message)s"

# The attribute of a LogRecord that carries a call line's fields (logging's `extra`).
CALL = "call"

_PLAIN = re.compile(r"[A-Za-z0-9_.:@/+=-]{1,200}")


def _shown(value: object) -> str:
    """A value of a text line: as is when plain, else quoted with JSON's escapes (newlines,
    quotes, spaces, control and non-ASCII characters), so that it stays one token of one line."""
    text = str(value)
    return text if _PLAIN.fullmatch(text) else json.dumps(text)


def call_message(fields: Mapping[str, Any]) -> str:
    """The human form of a call line: `Identify ws=default OK 1.23ms request_id=r1 trace_id=…`."""
    line = f"{fields['method']} ws={_shown(fields['workspace'])} {fields['code']} {fields['ms']:.2f}ms"
    for name in ("key_id", "request_id", "trace_id"):
        if fields.get(name):
            line += f" {name}={_shown(fields[name])}"
    return line


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "process": record.process,
        }
        fields = getattr(record, CALL, None)
        if fields:
            line.update(fields)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exception"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, default=str)


def configure(level: str = "INFO", log_format: str = "text", stream: Any = None) -> None:
    """The root logger's handler, on stderr unless `stream` (as logging.basicConfig: nothing
    changes when the root logger already has a handler, as under pytest)."""
    if log_format not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, not {log_format!r}")
    # Log lines never print a caller, thread or process name: skip gathering them (the logging
    # HOWTO's "Optimization"; the stack walk of findCaller costs the most).
    logging._srcfile = None
    logging.logThreads = False
    logging.logMultiprocessing = False
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=level.upper(), handlers=[handler])


def redact_url(url: str) -> str:
    """A database URL fit for a log line: its password (in the URL or as a parameter) as ***."""
    if "://" not in url:  # a libpq key=value string
        return re.sub(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", r"\1***", url)
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        credentials, _, host = netloc.rpartition("@")
        user, has_password, _ = credentials.partition(":")
        netloc = f"{user}:***@{host}" if has_password else netloc
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(key == "password" for key, _ in pairs):
            query = urlencode([(key, "***" if key == "password" else value) for key, value in pairs], safe="/*")
    return urlunsplit(parts._replace(netloc=netloc, query=query))
