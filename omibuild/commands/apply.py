"""omibuild apply FILE|DIR... — build (and push) OMI images; several manifests build together."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omibuild.engine.apply import ApplyOptions, Target, apply_all
from omibuild.engine.buildx import BuildxExecutor
from omibuild.engine.images import docker_context
from omibuild.engine.jobs import ApplyResult, ApplyStatus
from omibuild.errors import EXIT_INVALID, EXIT_OK, BuildError, UsageError
from omibuild.planning.diff import diff_plans, stale_reasons
from omibuild.planning.pipeline import prepare
from omibuild.planning.plan import Plan
from omibuild.planning.weight import Weighing, Weight
from omibuild.progress import Progress
from omibuild.reports.applies import FORMATS, Applied
from omibuild.reports.caches import bounded_text
from omibuild.settings import cache_max
from omibuild.store.cache import Cache
from omibuild.store.usage import bound

if TYPE_CHECKING:
    from omibuild.planning.pipeline import Prepared


def _applied(
    r: ApplyResult,
    plan: Plan,
    output: str,
    executor: Any,
    weights: dict[str, Weight | None],
    count: int,
) -> Applied:
    """A target's outcome with what its report shows: the image's size in the engine (one
    target built and loaded), the digest of an image that was up to date already."""
    size = None
    if count == 1 and r.status == ApplyStatus.BUILT and output == "load" and r.refs:
        size = executor.image_size(r.refs[0])
    digest = None
    if r.digest is None and r.status == ApplyStatus.UP_TO_DATE and output == "load":
        digest = executor.image_digest(r.refs[0])
    return Applied(r, plan.digest, output, weights.get(r.name), size, digest, plan.accelerator)


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
    cap = cache_max(os.environ)  # a bad setting is said before anything is built
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
        exports=tuple(args.export or ()),
        builder=None if context else args.builder,
        cache_to=args.cache_to,
        no_cache=args.no_cache,
        offline=args.offline,
        progress=args.progress,
        attest=not args.no_attest,
        sign=_signing_key(args.sign, "--sign"),
        sign_model=_signing_key(args.sign_model, "--sign-model"),
    )
    if no_engine is not None:
        raise no_engine  # exit 2, the same line as every verb
    weighing = Weighing([p.plan for p in prepared], cache)  # beside the build, off its path
    results = apply_all([target_of(p) for p in prepared], executor, cache, progress, options)
    built = {r.name for r in results if r.status == ApplyStatus.BUILT}
    weights = weighing.results(built)
    plans = {p.plan.name: p.plan for p in prepared}
    applied = [
        _applied(r, plans[r.name], options.output, executor, weights, len(results)) for r in results
    ]
    FORMATS[args.format](applied, sys.stdout, sys.stderr)
    if built:  # something new came into the cache: keep it within its cap
        cache.release()  # this apply is done with it: the prune may take it alone
        pruned = bound(Cache(cache.root, hold=False), cap)
        if pruned is not None and args.progress != "quiet":
            bounded_text(pruned, cap, sys.stderr)
    failed = [r for r in results if r.status == ApplyStatus.FAILED]
    return EXIT_INVALID if failed else EXIT_OK


def check_reviewed_plan(reviewed: Plan, current: Plan) -> None:
    """apply --plan: refuse when anything that shapes the image changed since the review, by
    the same comparison `plan --diff` shows."""
    if reviewed.digest == current.digest:
        return
    reasons = stale_reasons(diff_plans(reviewed, current, "the reviewed plan"))
    raise BuildError(
        f"the reviewed plan {reviewed.digest[:19]} is stale: "
        + "; ".join(reasons or ["the plan format changed"]),
        hint="run `omibuild plan --out plan.json` again and have it reviewed",
    )


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


def _signing_key(given: str | None, flag: str) -> Path | None:
    """The key a signing flag names: a readable file, or exit 2 naming it."""
    if given is None:
        return None
    key = Path(given)
    if not key.is_file():
        how = (
            "cosign generate-key-pair"
            if flag == "--sign"
            else "openssl ecparam -name prime256v1 -genkey -noout -out key.pem"
        )
        raise UsageError(f"{flag} {given}: no such key file", hint=f"make one with `{how}`")
    return key.resolve()
