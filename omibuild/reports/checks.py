"""Conformance findings: a table for people, JSON for machines, JUnit XML for CI test views."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import Callable
from typing import TextIO

from omibuild.conformance.check import Finding


def write_junit(image: str, findings: list[Finding], stream: TextIO) -> None:
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
    stream.write(ET.tostring(suite, encoding="unicode", xml_declaration=True) + "\n")


def write_table(image: str, findings: list[Finding], stream: TextIO) -> None:
    from rich.console import Console  # rich: only for the table a person reads
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
    Console(file=stream, width=160).print(t)


def write_json(image: str, findings: list[Finding], stream: TextIO) -> None:
    body = {
        "image": image,
        "ok": all(f.ok for f in findings),
        "findings": [f.to_dict() for f in findings],
    }
    print(json.dumps(body, indent=2), file=stream)


# `omibuild check --format NAME`
FORMATS: dict[str, Callable[[str, list[Finding], TextIO], None]] = {
    "text": write_table,
    "json": write_json,
    "junit": write_junit,
}
