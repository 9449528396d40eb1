"""What `omibuild run` says: the answer to --predict or --explain (the response for a person,
the whole record for CI), or, while it serves, how to call it: a curl line, and what the
image's labels say it carries."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, TextIO

_SERVING_KEYS = ("image", "image_id", "interface", "protocol", "url", "ready_seconds", "curl")


def answer_text(record: dict[str, Any], out: TextIO) -> None:
    out.write(json.dumps(record["response"], indent=2) + "\n")


def answer_json(record: dict[str, Any], out: TextIO) -> None:
    out.write(json.dumps(record, indent=2) + "\n")


def serving_text(record: dict[str, Any], out: TextIO) -> None:
    if record.get("curl") is not None:
        out.write(record["curl"] + "\n")
    for what, line in record.items():
        if what not in _SERVING_KEYS:  # what the labels say the image carries
            out.write(f"# {what}\n{line}\n")
    out.flush()


def serving_json(record: dict[str, Any], out: TextIO) -> None:
    out.write(json.dumps(record) + "\n")
    out.flush()  # read by a script while the container keeps serving


ANSWERS: dict[str, Callable[[dict[str, Any], TextIO], None]] = {
    "text": answer_text,
    "json": answer_json,
}
SERVING: dict[str, Callable[[dict[str, Any], TextIO], None]] = {
    "text": serving_text,
    "json": serving_json,
}
