"""load → validate → convert, as one call that collects every issue."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from omibuild.errors import OmiError
from omibuild.manifest import schema, semantic
from omibuild.manifest.issues import Issue
from omibuild.manifest.load import RawManifest, load
from omibuild.manifest.model import Manifest, convert
from omibuild.settings import default_base_image


@dataclass
class Result:
    file: str
    issues: list[Issue] = field(default_factory=list)
    manifest: Manifest | None = None

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def errors(self) -> list[Issue]:
        return [i for i in self.issues if i.severity == "error"]


def _example(raw: RawManifest) -> object:
    example = raw.data["model"].get("example")
    if not example:
        return None
    if "file" in example:
        path = raw.path.parent / example["file"]
        try:
            loaded = json.loads(path.read_text("utf-8"))
        except (OSError, ValueError) as err:
            line, col = raw.position(("model", "example", "file"))
            raise _Invalid(
                Issue(
                    raw.file,
                    line,
                    col,
                    "$.model.example.file",
                    f"cannot read the example as JSON: {err}",
                )
            ) from None
        return loaded.get("instances", loaded) if isinstance(loaded, dict) else loaded
    return example["instances"]


class _Invalid(Exception):
    def __init__(self, issue: Issue) -> None:
        self.issue = issue


def validate_file(path: Path, env: Mapping[str, str] | None = None) -> Result:
    env = os.environ if env is None else env
    raw = load(path, env)
    result = Result(raw.file, list(raw.issues))
    if raw.data is None:
        return result
    result.issues += schema.check(raw)
    result.issues += semantic.check(raw)
    result.issues = sorted(set(result.issues), key=lambda i: (i.line, i.col, i.message))
    if result.errors:
        return result
    try:
        result.manifest = convert(raw.data, path.absolute(), _example(raw), default_base_image(env))
    except _Invalid as inv:
        result.issues.append(inv.issue)
    return result


def load_manifest(path: Path, env: Mapping[str, str] | None = None) -> Manifest:
    """For verbs that need a valid manifest: raise with the first issue(s) otherwise."""
    result = validate_file(path, env)
    for issue in result.issues:
        if issue.severity == "warning":  # the verb goes on; the person still reads why
            print(f"omibuild: {issue.text()}", file=sys.stderr)
    if result.manifest is None:
        lines = [i.text() for i in result.errors]
        more = (
            f" (and {len(lines) - 1} more; run `omibuild validate {path}`)"
            if len(lines) > 1
            else ""
        )
        raise OmiError(lines[0] + more)
    return result.manifest
