"""Logging for the backup subsystem: plain text or one JSON object per line.

Log calls carry structured fields through ``extra=`` (``backup_id``, ``backup_type``,
``duration_ms``, ``size_bytes``, ``outcome``); the JSON format puts them, and any other
``extra`` field, at the top level of each line next to ``time``, ``level``, ``logger`` and
``message``.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import datetime, timezone
from typing import IO, Any

STRUCTURED_FIELDS = ("backup_id", "backup_type", "duration_ms", "size_bytes", "outcome")
# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}
_HANDLER_MARK = "_peak_backup_handler"


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time (UTC ISO 8601), level, logger, message, the
    ``extra`` fields, and ``exception`` when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                payload[key] = value
        if record.exc_info:
            payload["exception"] = self.formatException(record.exc_info)
        return json.dumps(payload, default=str, ensure_ascii=False)


def configure_logging(
    level: int | str = logging.WARNING,
    json_format: bool = False,
    *,
    stream: IO[str] | None = None,
) -> logging.Handler:
    """Log to ``stream`` (default stderr) at ``level``, as text (``LEVEL: message``) or JSON
    lines. Replaces the handler an earlier call installed; other handlers stay."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, _HANDLER_MARK, False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(
        JsonFormatter() if json_format else logging.Formatter("%(levelname)s: %(message)s")
    )
    setattr(handler, _HANDLER_MARK, True)
    root.addHandler(handler)
    root.setLevel(level)
    return handler
