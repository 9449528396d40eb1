"""Structured logs: one JSON object per line on stderr."""

from __future__ import annotations

import json
import sys
import time
from typing import Any


def log(level: str, msg: str, **fields: Any) -> None:
    record = {"ts": round(time.time(), 3), "level": level, "msg": msg, **fields}
    sys.stderr.write(json.dumps(record, default=str) + "\n")
    sys.stderr.flush()


def info(msg: str, **fields: Any) -> None:
    log("info", msg, **fields)


def error(msg: str, **fields: Any) -> None:
    log("error", msg, **fields)
