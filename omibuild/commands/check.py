"""omibuild check IMAGE — is this image OMI-compliant? Table, JSON or JUnit XML."""

from __future__ import annotations

import argparse
import json
import sys
from xml.sax.saxutils import escape, quoteattr

from omibuild.check import Finding, check_image
from omibuild.errors import EXIT_INVALID, EXIT_OK, UsageError


def junit(image: str, findings: list[Finding]) -> str:
    failures = sum(not f.ok for f in findings)
    cases = []
    for f in findings:
        body = (
            "" if f.ok else f"<failure message={quoteattr(f.detail)}>{escape(f.detail)}</failure>"
        )
        cases.append(
            f'  <testcase classname="omibuild.check" name={quoteattr(f.requirement)} '
            f'time="{f.seconds:.3f}">{body}</testcase>'
        )
    return (
        f'<?xml version="1.0" encoding="utf-8"?>\n<testsuite name={quoteattr(image)} '
        f'tests="{len(findings)}" failures="{failures}">\n' + "\n".join(cases) + "\n</testsuite>\n"
    )


def table(image: str, findings: list[Finding]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"omibuild check {image}")
    t.add_column("")
    t.add_column("requirement")
    t.add_column("seen", overflow="fold")
    for f in findings:
        t.add_row("[green]pass[/green]" if f.ok else "[red]FAIL[/red]", f.requirement, f.detail)
    Console(width=160).print(t)


def run(args: argparse.Namespace) -> int:
    findings, exists = check_image(args.image, args.timeout)
    if not exists:
        raise UsageError(
            f"no image {args.image} in the local engine", hint="pull or build it first"
        )
    if args.format == "json":
        print(
            json.dumps(
                {
                    "image": args.image,
                    "ok": all(f.ok for f in findings),
                    "findings": [f.to_dict() for f in findings],
                },
                indent=2,
            )
        )
    elif args.format == "junit":
        sys.stdout.write(junit(args.image, findings))
    else:
        table(args.image, findings)
    return EXIT_OK if all(f.ok for f in findings) else EXIT_INVALID
