"""Process logging for the long-running commands (`serve`, `dns serve`).

`text` is for people (the format the commands always had); `json` is for log pipelines
(Kubernetes, journald forwarders): one JSON object per line with `time` (UTC, ISO 8601),
`level`, `logger` and `message`, so a collector needs no multi-line parsing. A traceback
can carry request data and paths, so it is added (as `exception`) only at debug level.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from enum import StrEnum
from typing import NoReturn, TextIO

TEXT_FORMAT = "%(asctime)s %(levelname)s %(message)s"
_HANDLER = "egressguard"
LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
          "error": logging.ERROR}


class LogFormat(StrEnum):
    TEXT = "text"
    JSON = "json"


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (newlines in messages are escaped)."""

    def __init__(self, *, debug: bool = False) -> None:
        super().__init__()
        self.debug = debug

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(
                timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if self.debug and record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def configure(level: str, fmt: LogFormat | str = LogFormat.TEXT,
              stream: TextIO | None = None, *, debug: bool = False) -> None:
    """Send the process's log records to `stream` (stderr) at `level` in `fmt`; JSON
    records carry tracebacks with `debug` (`serve --debug`) or at debug level."""
    numeric = LEVELS.get(level.lower())
    if numeric is None:
        raise ValueError(f"--log-level {level!r}: expected {', '.join(LEVELS)}")
    handler = logging.StreamHandler(stream or sys.stderr)
    if LogFormat(fmt) is LogFormat.JSON:
        handler.setFormatter(JsonFormatter(debug=debug or numeric <= logging.DEBUG))
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    handler.set_name(_HANDLER)
    root = logging.getLogger()
    for old in list(root.handlers):  # ours from an earlier call; others (pytest's) stay
        if old.get_name() == _HANDLER:
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(numeric)
    logging.getLogger("alembic").setLevel(logging.WARNING)  # migrations log at INFO


def configure_or_exit(level: str, fmt: LogFormat | str = LogFormat.TEXT, *,
                      debug: bool = False) -> None:
    """`configure` for a command: a bad `--log-level` is one line and exit status 2."""
    try:
        configure(level, fmt, debug=debug)
    except ValueError as exc:
        _exit(str(exc))


def _exit(message: str) -> NoReturn:
    sys.stderr.write(f"error: {message}\n")
    raise SystemExit(2)
