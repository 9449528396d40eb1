"""Validation results for people (one line per problem, with its file and line) and for
machines (JSON)."""

from __future__ import annotations

import hashlib
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


def _escape(text: str, *, prop: bool = False) -> str:
    """A workflow command's data (or a property's value) as GitHub Actions reads it."""
    text = text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
    return text.replace(":", "%3A").replace(",", "%2C") if prop else text


def write_github(results: list[Result], stream: TextIO) -> None:
    """GitHub Actions workflow commands: each problem is an annotation on its line."""
    for r in results:
        for i in r.issues:
            level = "warning" if i.severity == "warning" else "error"
            where = f"file={_escape(i.file, prop=True)},line={i.line},col={i.col}"
            title = _escape(f"omibuild validate: {i.path}", prop=True)
            message = i.message + (f" (hint: {i.hint})" if i.hint else "")
            print(f"::{level} {where},title={title}::{_escape(message)}", file=stream)
    write_text(results, stream)  # the log says it in words too


def write_gitlab(results: list[Result], stream: TextIO) -> None:
    """A GitLab code-quality report: merge requests show each problem on its line."""
    body = []
    for r in results:
        for i in r.issues:
            key = f"{i.file}:{i.line}:{i.path}:{i.message}"
            fingerprint = hashlib.sha256(key.encode()).hexdigest()
            body.append(
                {
                    "description": i.message + (f" (hint: {i.hint})" if i.hint else ""),
                    "check_name": "omibuild-validate",
                    "fingerprint": fingerprint,
                    "severity": "minor" if i.severity == "warning" else "major",
                    "location": {"path": i.file, "lines": {"begin": i.line}},
                }
            )
    print(json.dumps(body, indent=2), file=stream)


# `omibuild validate --format NAME`
FORMATS: dict[str, Callable[[list[Result], TextIO], None]] = {
    "text": write_text,
    "json": write_json,
    "github": write_github,
    "gitlab": write_gitlab,
}
