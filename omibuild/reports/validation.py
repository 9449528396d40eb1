"""Validation results for people (one line per problem, with its file and line) and for
machines (JSON)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TextIO

from omibuild.manifest.validate import Result


def write_text(results: list[Result], stream: TextIO) -> None:
    lines = []
    for r in results:
        lines += [i.text() for i in r.issues]
        if r.ok:
            lines.append(f"{r.file}: valid")
    bad = sum(len(r.errors) for r in results)
    if bad:
        lines.append(
            f"{bad} problem{'s' if bad != 1 else ''} in "
            f"{sum(1 for r in results if not r.ok)} of {len(results)} file(s)"
        )
    print("\n".join(lines), file=stream)


def write_json(results: list[Result], stream: TextIO) -> None:
    body = [
        {"file": r.file, "valid": r.ok, "issues": [i.to_dict() for i in r.issues]} for r in results
    ]
    print(json.dumps(body, indent=2), file=stream)


# `omibuild validate --format NAME`
FORMATS: dict[str, Callable[[list[Result], TextIO], None]] = {
    "text": write_text,
    "json": write_json,
}
