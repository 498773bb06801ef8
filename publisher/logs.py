"""Logging: one line per record on stderr, readable text or JSON, with a secret-redaction safety net.

Text (the default): `<UTC time> <LEVEL> <logger> <message> key=value ...`, where the key=value pairs
are the record's `extra={...}` fields and, for a logged exception, `exc=` plus a compact `at=` trace.

JSON (`FILLPUB_LOG_FORMAT=json`): one object per line with `ts` (RFC 3339 UTC), `level`, `logger`,
`message`, `source` on lines about one source, the `extra={...}` fields, and `exc`/`at` for an
exception. A line is about a source when its call passes `extra={"source": name}` or it is logged
inside a task that called :func:`bind_source` (each poller's task does).

aiokafka logs every failed connection and metadata refresh at ERROR while the service's own retry
loop logs the same failure once with what it does next; outside DEBUG the aiokafka loggers only
pass CRITICAL, so each Kafka retry is one line.

Code must never log a secret. As defence in depth, every secret the service loads is registered with
:func:`register_secret`, and the handler masks any registered value (and each line of a multi-line
one, such as a PEM key) as `***` in the final text of every record.
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
import re
import sys
import threading
import time
import traceback
from collections.abc import Iterable, Mapping
from typing import Any, TextIO

LEVEL_ENV = "FILLPUB_LOG_LEVEL"
FORMAT_ENV = "FILLPUB_LOG_FORMAT"
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
FORMATS = ("text", "json")
#: client libraries whose records are quieted outside DEBUG (see the module docstring)
_KAFKA_LOGGERS = ("aiokafka", "kafka")
_HTTP_LOGGERS = ("httpx", "httpcore")
MASK = "***"

# Values this short would mask ordinary words and numbers all over the log; no real credential is.
_MIN_SECRET_LENGTH = 6
_TRACE_FRAMES = 4

_secrets: set[str] = set()
_secrets_lock = threading.Lock()
_pattern: re.Pattern[str] | None = None

#: the source the current task works for (set by :func:`bind_source`)
_SOURCE: contextvars.ContextVar[str | None] = contextvars.ContextVar("fillpub_source", default=None)

#: attributes every LogRecord has; anything else on a record came from `extra=`
_STANDARD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}


def bind_source(name: str) -> None:
    """Mark every later log line of the current task (and of tasks it starts) as about `name`."""
    _SOURCE.set(name)


def register_secret(value: str) -> None:
    """Mask `value` (and each long line of it) in every log line from now on."""
    global _pattern
    candidates = {value.strip()}
    for line in value.splitlines():
        line = line.strip()
        # PEM armour lines (`-----BEGIN PRIVATE KEY-----`) are not secret and appear in docs
        if not line.startswith("-----"):
            candidates.add(line)
    candidates = {c for c in candidates if len(c) >= _MIN_SECRET_LENGTH}
    if not candidates:
        return
    with _secrets_lock:
        _secrets.update(candidates)
        # longest first, so a whole key is masked as one rather than line by line
        ordered = sorted(_secrets, key=len, reverse=True)
        _pattern = re.compile("|".join(re.escape(s) for s in ordered))


def redact(text: str, extra: Iterable[str] = ()) -> str:
    """`text` with every registered secret, and every value of `extra`, replaced by `***`.

    `extra` is for credentials that live for one request (a Kalshi signature, an API key header)
    and are not worth registering for good. Redact before cutting a text short: a secret cut in
    half no longer matches, and its first half would be shown.
    """
    for value in extra:
        if len(value) >= _MIN_SECRET_LENGTH:
            text = text.replace(value, MASK)
    pattern = _pattern
    return pattern.sub(MASK, text) if pattern is not None else text


class RedactingFilter(logging.Filter):
    """Masks registered secrets in a record's message before any handler formats it.

    The formatter of :func:`configure_logging` masks its whole output as well (extras, exception
    text); this filter covers the message for any other formatter put on the same handler.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if _pattern is not None:
            message = record.getMessage()
            masked = redact(message)
            if masked != message:
                record.msg, record.args = masked, None
        return True


class LineFormatter(logging.Formatter):
    """`ts level logger message key=value ...` on one line, secrets masked."""

    def format(self, record: logging.LogRecord) -> str:
        created = time.gmtime(record.created)
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", created) + f".{int(record.msecs):03d}Z"
        message = record.getMessage()
        parts = [ts, record.levelname, record.name, _one_line(message)]
        parts += [f"{key}={_value(value)}" for key, value in _extras(record).items()
                  # `source kalshi-main: ...` already says it; the extra is for the JSON format
                  if not (key == "source" and message.startswith(f"source {value}:"))]
        if record.exc_info and record.exc_info[1] is not None:
            parts.append(_exception(record.exc_info[1]))
        if record.stack_info:
            parts.append(f"stack={_value(record.stack_info)}")
        return redact(" ".join(parts))


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ts, level, logger, message[, source][, extras][, exc, at]."""

    def format(self, record: logging.LogRecord) -> str:
        created = time.gmtime(record.created)
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", created) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        extras = dict(_extras(record))
        source = extras.pop("source", None) or _SOURCE.get()
        if source is not None:
            out["source"] = str(source)
        for key, value in extras.items():
            out.setdefault(key, value if isinstance(value, (int, float, bool)) or value is None else str(value))
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            out["exc"] = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            frames = traceback.extract_tb(exc.__traceback__)[-_TRACE_FRAMES:]
            if frames:
                out["at"] = " < ".join(f"{os.path.basename(f.filename)}:{f.lineno} {f.name}" for f in reversed(frames))
        if record.stack_info:
            out["stack"] = record.stack_info
        # masked value by value: JSON escaping would hide a secret from a pass over the whole text
        return json.dumps({k: redact(v) if isinstance(v, str) else v for k, v in out.items()}, ensure_ascii=False)


def _extras(record: logging.LogRecord) -> Mapping[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD_ATTRS and not k.startswith("_")}


def _one_line(text: str) -> str:
    return text.replace("\r", "\\r").replace("\n", "\\n")


def _value(value: Any) -> str:
    text = value if isinstance(value, str) else str(value)
    if text and not any(c.isspace() or c in '"=' for c in text):
        return text
    return json.dumps(text, ensure_ascii=False)


def _exception(exc: BaseException) -> str:
    """`exc="Type: message" at="file:line fn < ..."`, innermost frame first, causes appended."""
    out: list[str] = []
    seen: set[int] = set()
    current: BaseException | None = exc
    label = "exc"
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        summary = f"{type(current).__name__}: {current}" if str(current) else type(current).__name__
        frames = traceback.extract_tb(current.__traceback__)[-_TRACE_FRAMES:]
        trace = " < ".join(f"{os.path.basename(f.filename)}:{f.lineno} {f.name}" for f in reversed(frames))
        out.append(f"{label}={_value(summary)}" + (f" at={_value(trace)}" if trace else ""))
        current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)
        label = "cause"
    return " ".join(out)


def configure_logging(level: str | None = None, *, stream: TextIO | None = None,
                      environ: Mapping[str, str] = os.environ, fmt: str | None = None) -> None:
    """Send every log record to stderr, one line each.

    The level is `level` if given, else `FILLPUB_LOG_LEVEL`, else INFO; the format `fmt` if given,
    else `FILLPUB_LOG_FORMAT`, else text. Raises ValueError, naming the variable, for an unknown
    level or format. Replaces handlers installed by an earlier call.
    """
    name = (level or environ.get(LEVEL_ENV) or "INFO").strip().upper()
    if name == "WARN":
        name = "WARNING"
    if name not in LEVELS:
        source = "log level" if level else LEVEL_ENV
        raise ValueError(f"{source}: unknown level {name!r} (one of {', '.join(LEVELS)})")
    form = (fmt or environ.get(FORMAT_ENV) or "text").strip().lower()
    if form not in FORMATS:
        where = "log format" if fmt else FORMAT_ENV
        raise ValueError(f"{where}: unknown format {form!r} (one of {', '.join(FORMATS)})")
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if form == "json" else LineFormatter())
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_fillpub", False)]:
        root.removeHandler(old)
    handler._fillpub = True  # type: ignore[attr-defined]  # noqa: SLF001 - our own marker attribute
    root.addHandler(handler)
    root.setLevel(name)
    debug = name == "DEBUG"
    # client libraries log every request and reconnect at INFO; their warnings still show
    for noisy in _HTTP_LOGGERS:
        logging.getLogger(noisy).setLevel(logging.DEBUG if debug else max(logging.WARNING, root.level))
    for noisy in _KAFKA_LOGGERS:
        logging.getLogger(noisy).setLevel(logging.DEBUG if debug else logging.CRITICAL)
