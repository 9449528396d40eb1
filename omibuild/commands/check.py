"""omibuild check IMAGE — is this image OMI-compliant? Table, JSON or JUnit XML."""

from __future__ import annotations

import argparse
import json
import sys
import xml.etree.ElementTree as ET

from omibuild.conformance.check import Finding, check_image
from omibuild.errors import EXIT_INVALID, EXIT_OK, UsageError


def junit(image: str, findings: list[Finding]) -> str:
    suite = ET.Element(
        "testsuite",
        name=image,
        tests=str(len(findings)),
        failures=str(sum(not f.ok for f in findings)),
    )
    for f in findings:
        case = ET.SubElement(
            suite,
            "testcase",
            classname="omibuild.check",
            name=f.requirement,
            time=f"{f.seconds:.3f}",
        )
        if not f.ok:
            ET.SubElement(case, "failure", message=f.detail).text = f.detail
    ET.indent(suite)
    return ET.tostring(suite, encoding="unicode", xml_declaration=True) + "\n"


def table(image: str, findings: list[Finding]) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    t = Table(title=f"omibuild check {image}")
    t.add_column("")
    t.add_column("requirement")
    t.add_column("seen", overflow="fold")
    for f in findings:
        t.add_row(
            "[green]pass[/green]" if f.ok else "[red]FAIL[/red]",
            escape(f.requirement),
            escape(f.detail),
        )
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
