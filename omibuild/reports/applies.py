"""What `apply` says when it is done: for a person, a line per target (or a table for many),
what the image weighs and how to try it, and each failure in one line (a GitHub Actions
annotation too); for CI, JSON with each target's digests, tags and failure kind."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TextIO

from omibuild.engine.jobs import ApplyResult, ApplyStatus
from omibuild.engine.progress import workflow_text
from omibuild.planning.weight import Weight, note, warns
from omibuild.units import human


@dataclass(frozen=True)
class Applied:
    """One target's outcome, with what the verb learnt around it."""

    result: ApplyResult
    plan_digest: str
    output: str  # load | push | oci:PATH
    weight: Weight | None = None  # what plan's resolution expected of the venv
    image_bytes: int | None = None  # the loaded image's size in the engine
    image_digest: str | None = None  # an up-to-date image's digest, read from the engine
    accelerator: str = "cpu"  # the plan's


def record(a: Applied) -> dict[str, Any]:
    """One target as CI reads it: what was built, its digest, and where it went."""
    r = a.result
    return {
        "name": r.name,
        "status": r.status,
        "image_digest": r.digest or a.image_digest,
        "plan_digest": a.plan_digest,
        "tags": list(r.refs),
        "pushed": list(r.refs) if a.output == "push" and r.status != ApplyStatus.FAILED else [],
        "output": a.output,
        "seconds": round(r.seconds, 3),
        "downloaded_bytes": r.downloaded_bytes,
        # model bytes read to learn new layers' digests, and streamed to the engine or a file
        "model_bytes_read": r.model_bytes_read,
        "model_bytes_sent": r.model_bytes_sent,
        "cached_steps": r.cached_steps,
        "total_steps": r.total_steps,
        # the venv's layer as built, and the wheels plan expected it from (pip's resolution)
        "venv_bytes": r.venv_bytes,
        "image_bytes": a.image_bytes,
        "content_bytes": r.content_bytes,
        # export: the manifests beside the image (ModelPack, modelcar), by the refs tagged
        "exports": r.exports,
        "venv_wheel_bytes_expected": a.weight.wheel_bytes if a.weight else None,
        "error": r.error,
        # what kind of failure: disk, memory, requirements, base, missing file, registry, auth,
        # example, build (BuildKit's); model files changed, image, load, push, write (omibuild's)
        "failure_kind": r.failure_kind,
    }


def write_json(applied: list[Applied], out: TextIO, err: TextIO) -> None:
    out.write(json.dumps([record(a) for a in applied], indent=2) + "\n")


def _next_steps(a: Applied, out: TextIO) -> None:
    """What a person sees after a build: size, digest, cache hits, and how to try it."""
    r, facts = a.result, []
    # the engine's own figure, where it differs from the content: unpacked in Docker's classic
    # store, the packed content (and the manifests: within 1%) in its containerd store before
    # moby 29, both in newer ones
    content = r.content_bytes or 0
    if a.image_bytes and abs(a.image_bytes - content) > a.image_bytes / 100:
        facts.append(f"{human(a.image_bytes)} in the engine")
    if r.content_bytes:
        facts.append(f"{human(r.content_bytes)} {'to pull' if a.output == 'push' else 'content'}")
    if r.venv_bytes:
        expected = f" (plan: {a.weight.line()})" if a.weight else ""
        facts.append(f"venv {human(r.venv_bytes)}{expected}")
    if r.digest:
        facts.append(f"digest {r.digest}")
    if r.total_steps:
        facts.append(f"{r.cached_steps}/{r.total_steps} steps cached")
    if facts:
        out.write("  " + ", ".join(facts) + "\n")
    for kind, refs in r.exports.items():
        out.write(f"  {kind}: {', '.join(refs)}\n")
    if r.refs and a.output in ("load", "push"):
        ref = next((t for t in r.refs if t.endswith(":latest")), r.refs[-1])
        pull = f"docker pull {ref} && " if a.output == "push" else ""  # pushed, not loaded here
        out.write(f"  try it: {pull}omibuild run {ref} --predict\n")


def _summary(applied: list[Applied], out: TextIO) -> None:
    from rich.console import Console  # rich: only for the table a person reads
    from rich.table import Table

    table = Table(title="omibuild apply")
    for col in ("model", "status", "image", "seconds", "cached steps"):
        table.add_column(col)
    for r in (a.result for a in applied):
        steps = f"{r.cached_steps}/{r.total_steps}" if r.total_steps else "-"
        table.add_row(r.name, r.status, "\n".join(r.refs), f"{r.seconds:.1f}", steps)
    Console(file=out, width=160).print(table)


def write_text(applied: list[Applied], out: TextIO, err: TextIO) -> None:
    failed = [a.result for a in applied if a.result.status == ApplyStatus.FAILED]
    if len(applied) == 1 and not failed:
        a = applied[0]
        r = a.result
        out.write(
            f"{r.name}: {r.status}"
            + ("" if r.status == ApplyStatus.UP_TO_DATE else f" in {r.seconds:.1f}s")
            + f": {', '.join(r.refs)}\n"
        )
        if r.status == ApplyStatus.BUILT:
            _next_steps(a, out)
            if warns(a.weight, a.accelerator):
                err.write(f"omibuild: warning: {note(a.weight, a.accelerator)}\n")
    elif len(applied) > 1:
        _summary(applied, out)
    for r in failed:
        err.write(f"omibuild: error: {r.name}: {r.error}\n")
        if os.environ.get("GITHUB_ACTIONS") == "true":  # an annotation on the run's summary
            out.write(f"::error title=omibuild apply {r.name}::{workflow_text(r.error or '')}\n")


FORMATS: dict[str, Callable[[list[Applied], TextIO, TextIO], None]] = {
    "text": write_text,
    "json": write_json,
}
