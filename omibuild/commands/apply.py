"""omibuild apply FILE|DIR... — build (and push) OMI images; several manifests build together."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from omibuild.errors import EXIT_INVALID, EXIT_OK, UsageError
from omibuild.sources.cache import Cache
from omibuild.sources.progress import Progress

if TYPE_CHECKING:
    from omibuild.engine.apply import ApplyResult


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


def _record(r: ApplyResult, plan_digest: str, output: str, executor: Any) -> dict[str, Any]:
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
        "cached_steps": r.cached_steps,
        "total_steps": r.total_steps,
        "error": r.error,
    }


def run(args: argparse.Namespace) -> int:
    from omibuild.engine.apply import ApplyOptions, apply_all, check_reviewed_plan, expand_targets
    from omibuild.engine.buildx import BuildxExecutor
    from omibuild.planning.pipeline import prepare
    from omibuild.planning.plan import Plan

    if args.output and not args.output.startswith("oci:"):
        raise UsageError(f"--output {args.output!r}: use oci:PATH (the default loads the image)")
    if args.push and args.output:
        raise UsageError("--push and --output cannot be combined")
    targets = expand_targets(args.files)
    if args.plan_file and len(targets) != 1:
        raise UsageError("--plan applies one reviewed plan: pass exactly one manifest")
    executor = BuildxExecutor()
    cache = Cache()
    progress = Progress()
    prepared = [
        prepare(
            t,
            cache,
            progress,
            locked=args.locked,
            offline=args.offline,
            base_digest=executor.image_digest,
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
        builder=args.builder,
        cache_to=args.cache_to,
        no_cache=args.no_cache,
        offline=args.offline,
        progress=args.progress,
        sbom=args.sbom,
    )
    results = apply_all(prepared, executor, cache, progress, options)
    failed = [r for r in results if r.status == "failed"]
    if args.format == "json":
        plans = {p.plan.name: p.plan for p in prepared}
        report = [_record(r, plans[r.name].digest, options.output, executor) for r in results]
        print(json.dumps(report, indent=2))
        return EXIT_INVALID if failed else EXIT_OK
    for r in failed:
        print(f"omibuild: error: {r.name}: {r.error}", file=sys.stderr)
    if len(results) == 1 and not failed:
        r = results[0]
        print(
            f"{r.name}: {r.status}"
            + ("" if r.status == "up to date" else f" in {r.seconds:.1f}s")
            + f": {', '.join(r.refs)}"
        )
    else:
        _summary(results, sys.stdout)
    return EXIT_INVALID if failed else EXIT_OK
