"""Structured logs: one JSON object per line on stderr."""

from __future__ import annotations

import json
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


def error(msg: str, **fields: Any) -> None:
    log("error", msg, **fields)
