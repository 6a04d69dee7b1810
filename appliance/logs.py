"""The appliance's logs: one event per line on stdout (journald keeps them under systemd;
Promtail ships them to Loki), as JSON or as text (``log_format``: auto, json, text).

A JSON line is one object: ``time`` (ISO 8601, UTC), ``level`` (debug, info, warning, error,
critical), ``logger``, ``message``, then ``meeting_id``, ``participant_id`` and ``request_id``
when the event happened on behalf of one (context variables set by the HTTP middleware and by
signaling, see :func:`bind`), ``exception`` for a traceback, and the ``extra`` fields of the call.
Secrets never reach a line: tokens, passwords, secrets, credentials and Authorization headers are
replaced by ``[redacted]`` wherever they appear (see :func:`redact`). docs/operations.md lists
the fields.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import sys
from collections.abc import Iterator
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import IO, Any

FORMATS = ("auto", "json", "text")
CONTEXT = {name: ContextVar[str | None](name, default=None)
           for name in ("meeting_id", "participant_id", "request_id")}
NOISY = ("sanic.access", "aioice", "aiortc")
REDACTED = "[redacted]"

# Names whose values are secrets, as a key=value, key: value or "key": "value" pair.
SECRET_NAMES = (r"(?:access_|refresh_|setup_|guest_|metrics_|api_|id_)?token|password|passwd|secret(?:_key)?"
                r"|turn_secret|credential|api_key|session|cookie|set-cookie")
_PAIR = re.compile(rf"""(?ix)
    (?P<key>["']?\b(?:{SECRET_NAMES})\b["']?\s*[=:]\s*)
    (?P<value>"[^"]*"|'[^']*'|[^\s&,;"'}}\]]+)""")
_AUTHORIZATION = re.compile(r"(?i)(\bauthorization[\"']?\s*[=:]\s*[\"']?)(?:(bearer|basic)\s+)?[^\s\"',;}]+")
_BEARER = re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{8,}")
_JWT = re.compile(r"\beyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")
_URL_PASSWORD = re.compile(r"(://[^:/@\s]+:)[^@\s/]+@")
# LogRecord's own attributes: whatever else a record has came from ``extra``.
_RECORD_FIELDS = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}


def _quoted(original: str, replacement: str) -> str:
    quote = original[0] if original[:1] in ("'", '"') else ""
    return f"{quote}{replacement}{quote}"


def redact(text: str) -> str:
    """``text`` with every secret it shows replaced by ``[redacted]``."""
    text = _AUTHORIZATION.sub(lambda m: f"{m.group(1)}{m.group(2) + ' ' if m.group(2) else ''}{REDACTED}", text)
    text = _BEARER.sub(lambda m: f"{m.group(1)} {REDACTED}", text)
    text = _PAIR.sub(lambda m: m.group("key") + _quoted(m.group("value"), REDACTED), text)
    text = _JWT.sub(REDACTED, text)
    return _URL_PASSWORD.sub(rf"\1{REDACTED}@", text)


def _is_secret_name(name: str) -> bool:
    return re.fullmatch(rf"(?i)(?:\w*_)?(?:{SECRET_NAMES})|authorization", name) is not None


def _redact_value(name: str, value: Any) -> Any:
    if _is_secret_name(name):
        return REDACTED
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: _redact_value(str(k), v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_redact_value("", v) for v in value]
    if value is None or isinstance(value, (bool, int, float)):
        return value
    return redact(str(value))


# ------------------------------------------------------------------ context
def bind(**ids: str | None) -> None:
    """Name the meeting, participant or request the current task (and the tasks it starts from now
    on) works for; None clears one."""
    for name, value in ids.items():
        CONTEXT[name].set(value)


@contextlib.contextmanager
def bound(**ids: str | None) -> Iterator[None]:
    """:func:`bind` for the duration of a block."""
    tokens = [(CONTEXT[name], CONTEXT[name].set(value)) for name, value in ids.items()]
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


def current() -> dict[str, str]:
    """The ids bound now."""
    return {name: value for name, var in CONTEXT.items() if (value := var.get()) is not None}


class ContextFilter(logging.Filter):
    """Puts the bound ids on every record (as ``record.context``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "context"):
            record.context = current()
        return True


# ------------------------------------------------------------------ formats
class JsonFormatter(logging.Formatter):
    """One JSON object per line (see the module doc)."""

    def format(self, record: logging.LogRecord) -> str:
        event: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace(
                "+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        event.update(getattr(record, "context", None) or current())
        for name, value in vars(record).items():
            if name not in _RECORD_FIELDS and name != "context" and name not in event:
                event[name] = _redact_value(name, value)
        if record.exc_info:
            event["exception"] = redact(self.formatException(record.exc_info))
        elif record.stack_info:
            event["exception"] = redact(self.formatStack(record.stack_info))
        return json.dumps(event, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """``time level logger: message [meeting_id=… participant_id=… request_id=…]``, redacted."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        ids = getattr(record, "context", None) or current()
        if ids:
            first, newline, rest = line.partition("\n")
            line = first + " [" + " ".join(f"{k}={v}" for k, v in ids.items()) + "]" + newline + rest
        return redact(line)


def resolve_format(log_format: str, stream: IO[str]) -> str:
    """json or text: ``auto`` is json when the stream is not a terminal (systemd, a container)."""
    if log_format not in FORMATS:
        raise ValueError(f"log_format {log_format!r}: use one of {', '.join(FORMATS)}")
    if log_format == "auto":
        isatty = getattr(stream, "isatty", None)
        return "text" if isatty is not None and isatty() else "json"
    return log_format


def configure(settings: Any = None, stream: IO[str] | None = None) -> str:
    """Send every log record of this process to ``stream`` (stdout) in the settings' ``log_format``
    and ``log_level`` (auto and INFO without settings), replacing handlers configured before;
    returns the format chosen."""
    stream = stream if stream is not None else sys.stdout
    chosen = resolve_format(getattr(settings, "log_format", "auto"), stream)
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter() if chosen == "json" else TextFormatter())
    handler.addFilter(ContextFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(str(getattr(settings, "log_level", "INFO")).upper())
    for noisy in NOISY:
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return chosen
