"""omibuild apply FILE|DIR... — build (and push) OMI images; several manifests build together."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from omibuild.contract import PLAN_DIGEST_LABEL, PLAN_STATE_LABEL
from omibuild.engine.apply import ApplyOptions, Target, apply_all
from omibuild.engine.buildx import BuildxExecutor
from omibuild.engine.images import docker_context
from omibuild.engine.progress import workflow_text
from omibuild.errors import EXIT_INVALID, EXIT_OK, BuildError, UsageError
from omibuild.planning.pipeline import prepare
from omibuild.planning.plan import Plan
from omibuild.planning.weight import HEAVY_BYTES, Weighing, Weight, note
from omibuild.progress import Progress
from omibuild.store.cache import Cache
from omibuild.units import human

if TYPE_CHECKING:
    from omibuild.engine.apply import ApplyResult, Target
    from omibuild.planning.pipeline import Prepared


def _summary(results: list[ApplyResult], stream: TextIO) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="omibuild apply")
    for col in ("model", "status", "image", "seconds", "cached steps"):
        table.add_column(col)
    for r in results:
        steps = f"{r.cached_steps}/{r.total_steps}" if r.total_steps else "-"
        table.add_row(r.name, r.status, "\n".join(r.refs), f"{r.seconds:.1f}", steps)
    Console(file=stream, width=160).print(table)


def _next_steps(r: ApplyResult, output: str, executor: Any, weight: Weight | None) -> None:
    """What a person sees after a build: size, digest, cache hits, and how to try it."""
    facts = []
    size = executor.image_size(r.refs[0]) if output == "load" and r.refs else None
    if size:
        facts.append(f"{human(size)}")
    if r.venv_bytes:
        expected = f" (plan: {weight.line()})" if weight else ""
        facts.append(f"venv {human(r.venv_bytes)}{expected}")
    if r.digest:
        facts.append(f"digest {r.digest}")
    if r.total_steps:
        facts.append(f"{r.cached_steps}/{r.total_steps} steps cached")
    if facts:
        print("  " + ", ".join(facts))
    if r.refs and output in ("load", "push"):
        ref = next((t for t in r.refs if t.endswith(":latest")), r.refs[-1])
        pull = f"docker pull {ref} && " if output == "push" else ""  # pushed, not loaded here
        print(f"  try it: {pull}omibuild run {ref} --predict request.json")


def _record(
    r: ApplyResult, plan_digest: str, output: str, executor: Any, weight: Weight | None
) -> dict[str, Any]:
    """One target as CI reads it: what was built, its digest, and where it went."""
    digest = r.digest
    if digest is None and r.status == "up to date" and output == "load":
        digest = executor.image_digest(r.refs[0])
    return {
        "name": r.name,
        "status": r.status,
        "image_digest": digest,
        "plan_digest": plan_digest,
        "tags": list(r.refs),
        "pushed": list(r.refs) if output == "push" and r.status != "failed" else [],
        "output": output,
        "seconds": round(r.seconds, 3),
        "downloaded_bytes": r.downloaded_bytes,
        # model bytes read to learn new layers' digests, and streamed to the engine or a file
        "model_bytes_read": r.model_bytes_read,
        "model_bytes_sent": r.model_bytes_sent,
        "cached_steps": r.cached_steps,
        "total_steps": r.total_steps,
        # the venv's layer as built, and the wheels plan expected it from (pip's resolution)
        "venv_bytes": r.venv_bytes,
        "venv_wheel_bytes_expected": weight.wheel_bytes if weight else None,
        "error": r.error,
        # what kind of failure: disk, memory, requirements, base, missing file, registry, auth,
        # example, build (BuildKit's); model files changed, image, load, push, write (omibuild's)
        "failure_kind": r.failure_kind,
    }


def target_of(prepared: Prepared) -> Target:
    """What the engine needs of a prepared manifest: its plan and what staging reads."""
    m = prepared.manifest
    return Target(
        prepared.plan,
        prepared.resolved,
        m.file,
        m.root,
        m.code_path,
        m.build.secrets,
        prepared.inputs.analysis,
    )


def run(args: argparse.Namespace) -> int:
    if args.output and not args.output.startswith("oci:"):
        raise UsageError(f"--output {args.output!r}: use oci:PATH (the default loads the image)")
    if args.push and args.output:
        raise UsageError("--push and --output cannot be combined")
    targets = expand_targets(args.files)
    if args.plan_file and len(targets) != 1:
        raise UsageError("--plan applies one reviewed plan: pass exactly one manifest")
    # a builder that is a docker context is another engine: build there, and keep the image
    # (tags, the up-to-date check) there too
    context = docker_context(args.builder) if args.builder else None
    executor = BuildxExecutor(context=context)
    no_engine = executor.unreachable()  # said after a stale reviewed plan, which needs none
    cache = Cache()
    progress = Progress(enabled=args.progress != "quiet")  # quiet: the error line only
    prepared = [
        prepare(
            t,
            cache,
            progress,
            locked=args.locked,
            offline=args.offline,
            base_digest=executor.image_digest,
            save_lock=True,
            notes=args.progress != "quiet" and no_engine is None,
        )
        for t in targets
    ]
    if args.plan_file:
        try:
            reviewed = Plan.from_dict(json.loads(Path(args.plan_file).read_text("utf-8")))
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise UsageError(
                f"{args.plan_file}: not a plan saved by `omibuild plan --out` ({err})"
            ) from None
        check_reviewed_plan(reviewed, prepared[0].plan)
    options = ApplyOptions(
        output="push" if args.push else (args.output or "load"),
        platforms=tuple(p for spec in args.platform or [] for p in spec.split(",") if p),
        builder=None if context else args.builder,
        cache_to=args.cache_to,
        no_cache=args.no_cache,
        offline=args.offline,
        progress=args.progress,
        sbom=args.sbom,
    )
    if no_engine is not None:
        raise no_engine  # exit 2, the same line as every verb
    weighing = Weighing([p.plan for p in prepared], cache)  # beside the build, off its path
    results = apply_all([target_of(p) for p in prepared], executor, cache, progress, options)
    built = {r.name for r in results if r.status == "built"}
    weights = weighing.results(built)
    failed = [r for r in results if r.status == "failed"]
    if args.format == "json":
        plans = {p.plan.name: p.plan for p in prepared}
        report = [
            _record(r, plans[r.name].digest, options.output, executor, weights.get(r.name))
            for r in results
        ]
        print(json.dumps(report, indent=2))
        return EXIT_INVALID if failed else EXIT_OK
    if len(results) == 1 and not failed:
        r = results[0]
        print(
            f"{r.name}: {r.status}"
            + ("" if r.status == "up to date" else f" in {r.seconds:.1f}s")
            + f": {', '.join(r.refs)}"
        )
        if r.status == "built":
            _next_steps(r, options.output, executor, weights.get(r.name))
            weight = weights.get(r.name)
            if weight is not None and weight.wheel_bytes >= HEAVY_BYTES:
                print(f"omibuild: warning: {note(weight)}", file=sys.stderr)
    elif len(results) > 1:
        _summary(results, sys.stdout)
    for r in failed:
        print(f"omibuild: error: {r.name}: {r.error}", file=sys.stderr)
        if os.environ.get("GITHUB_ACTIONS") == "true":  # an annotation on the run's summary
            print(f"::error title=omibuild apply {r.name}::{workflow_text(r.error or '')}")
    return EXIT_INVALID if failed else EXIT_OK


def check_reviewed_plan(reviewed: Plan, current: Plan) -> None:
    """apply --plan: refuse when anything that shapes the image changed since the review."""
    if reviewed.digest == current.digest:
        return
    reasons = []
    if reviewed.model_digest != current.model_digest:
        reasons.append(
            f"the model changed ({reviewed.model_digest[:19]} → {current.model_digest[:19]})"
        )
    if dict(reviewed.origin) != dict(current.origin):
        reasons.append(
            f"the origin changed ({dict(reviewed.origin).get('id', '')[:16]} → "
            f"{dict(current.origin).get('id', '')[:16]})"
        )
    if reviewed.code_files != current.code_files:
        reasons.append("the code changed")
    if reviewed.requirements != current.requirements:
        reasons.append("the requirements changed")
    if (
        reviewed.omibuild_version != current.omibuild_version
        or reviewed.runtime_digest != current.runtime_digest
    ):
        reasons.append("omibuild itself changed")
    reasons += _other_changes(reviewed, current)
    if not reasons:
        reasons.append(
            "the runtime config (omi.json) changed"
            if reviewed.omi_json != current.omi_json
            else "the plan format changed"
        )
    raise BuildError(
        f"the reviewed plan {reviewed.digest[:19]} is stale: " + "; ".join(reasons),
        hint="run `omibuild plan --out plan.json` again and have it reviewed",
    )


_DERIVED = {PLAN_DIGEST_LABEL, PLAN_STATE_LABEL}  # labels made from the plan itself
_COVERED = {"model_digest", "model_layers", "origin", "code_files", "requirements"}
_IGNORED = {"digest", "options", "omibuild_version", "runtime_digest", "omi_json"}


def _short(value: Any) -> str:
    text = "(none)" if value in (None, "", [], ()) else str(value)
    return text if len(text) <= 40 else text[:37] + "…"


def _other_changes(reviewed: Plan, current: Plan) -> list[str]:
    """What else moved, by name: each label by its key, every other field by its own."""
    old, new = reviewed.to_dict(), current.to_dict()
    changes = []
    old_labels, new_labels = dict(reviewed.labels), dict(current.labels)
    for key in sorted(set(old_labels) | set(new_labels)):
        if key not in _DERIVED and old_labels.get(key) != new_labels.get(key):
            changes.append(
                f"label {key}: {_short(old_labels.get(key))} → {_short(new_labels.get(key))}"
            )
    for key in sorted(set(old) - _COVERED - _IGNORED - {"labels"}):
        if old[key] != new.get(key):
            changes.append(f"{key.replace('_', ' ')}: {_short(old[key])} → {_short(new.get(key))}")
    return changes


def expand_targets(paths: list[str]) -> list[Path]:
    """Files as given; a directory means every omi.yaml below it."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(p.glob("**/omi.yaml"))
            if not found:
                raise UsageError(f"{p}: no omi.yaml below this directory")
            out += found
        else:
            out.append(p)
    seen: set[str] = set()
    unique = []
    for p in out:
        key = os.path.realpath(p)
        if key not in seen:
            seen.add(key)
            unique.append(p)
    return unique
