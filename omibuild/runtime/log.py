"""Structured logs: one JSON object per line on stderr."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

_silent = False


def silence() -> None:
    """No more records from this process (a one-shot command that says what it did itself)."""
    global _silent
    _silent = True


def log(level: str, msg: str, **fields: Any) -> None:
    if _silent:
        return
    record = {"ts": round(time.time(), 3), "level": level, "msg": msg, **fields}
    sys.stderr.write(json.dumps(record, default=str) + "\n")
    sys.stderr.flush()


def info(msg: str, **fields: Any) -> None:
    log("info", msg, **fields)


def warning(msg: str, **fields: Any) -> None:
    log("warning", msg, **fields)


def error(msg: str, **fields: Any) -> None:
    log("error", msg, **fields)


class JsonHandler(logging.Handler):
    """uvicorn's own records (``Invalid HTTP request received.``, its start-up errors, the
    access log) as this module's JSON lines: a traceback is one field, never many lines."""

    def emit(self, record: logging.LogRecord) -> None:
        fields: dict[str, Any] = {"logger": record.name}
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            fields["error"] = f"{type(exc).__name__}: {text[:200]}"
        try:
            message = record.getMessage()
        except (TypeError, ValueError):
            message = str(record.msg)
        log(record.levelname.lower(), message.splitlines()[0][:500] if message else "", **fields)


def uvicorn_config(level: str) -> dict[str, Any]:
    """A logging configuration for uvicorn's loggers (its ``log_config``)."""
    handler = {"json": {"()": f"{__name__}.JsonHandler"}}
    loggers = {
        name: {"handlers": ["json"], "level": level.upper(), "propagate": False}
        for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi")
    }
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "handlers": handler,
        "loggers": loggers,
    }
