"""How `chatkeep serve` logs: one handler on stderr, text lines or JSON lines, each with its request id.

Every record carries `request_id` (the current request's, "-" outside one), so the lines of one
request, its turn's background work included, can be picked out of a busy server's log. The
access line of each request comes from `chatkeep.access` (see api/observe.py); uvicorn's own
access log is off, as it would repeat it without route, owner or id. What chatkeep logs at INFO
never includes message contents or keys. A text line escapes control characters (a NUL or an
escape sequence a client put in a path, a newline that would forge a line of its own), as JSON
lines do; a traceback keeps its line breaks.
"""

import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any, Literal

import orjson

from chatkeep.request_context import current_request_id

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"
# The attributes every LogRecord has; anything else on a record came as `extra=` and is data.
RECORD_ATTRIBUTES = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "request_id"}
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
CONTROL_BUT_NEWLINE = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f]")


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = current_request_id() or "-"
        return True


def _escaped(match: re.Match[str]) -> str:
    return repr(match.group())[1:-1]  # \x00, \x1b, \n, \t...


class SafeTextFormatter(logging.Formatter):
    """Text lines whose message holds no control character, and whose traceback holds none but its newlines."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return CONTROL.sub(_escaped, super().formatMessage(record))

    def formatException(self, ei: Any) -> str:
        return CONTROL_BUT_NEWLINE.sub(_escaped, super().formatException(ei))

    def formatStack(self, stack_info: str) -> str:
        return CONTROL_BUT_NEWLINE.sub(_escaped, super().formatStack(stack_info))


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request_id, and the record's extras."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", None),
        }
        line.update((name, value) for name, value in record.__dict__.items() if name not in RECORD_ATTRIBUTES)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(line, default=str).decode()


def configure_logging(level: str, log_format: Literal["text", "json"], *, access_log: bool) -> None:
    """Send every logger's records at `level` and above to stderr, in `log_format`."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter() if log_format == "json" else SafeTextFormatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("chatkeep.access").setLevel(logging.NOTSET if access_log else logging.WARNING)
    logging.getLogger("uvicorn.access").disabled = True
