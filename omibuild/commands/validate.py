"""omibuild validate FILE... — every problem in every file, at once, with line numbers."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from omibuild.errors import EXIT_INVALID, EXIT_OK
from omibuild.manifest.validate import Result, validate_file


def report_text(results: list[Result]) -> str:
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
    return "\n".join(lines)


def report_json(results: list[Result]) -> str:
    return json.dumps(
        [
            {"file": r.file, "valid": r.ok, "issues": [i.to_dict() for i in r.issues]}
            for r in results
        ],
        indent=2,
    )


def run(args: argparse.Namespace) -> int:
    results = [validate_file(Path(f)) for f in args.files]
    out = report_json(results) if args.format == "json" else report_text(results)
    stream = sys.stdout if args.format == "json" or all(r.ok for r in results) else sys.stderr
    print(out, file=stream)
    return EXIT_OK if all(r.ok for r in results) else EXIT_INVALID
