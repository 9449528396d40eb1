"""omibuild plan FILE — what apply would change, stage by stage, against what the target holds.
A dry run: it writes nothing into the repository (omibuild lock and apply write omi.lock)."""

from __future__ import annotations

import argparse
import json
import sys
import tarfile
from pathlib import Path

from omibuild import contract
from omibuild.engine.apply import refuse_unoffered_platforms
from omibuild.engine.buildx import BuildxExecutor
from omibuild.engine.registry import RegistryError, read_image_file
from omibuild.errors import EXIT_OK, UsageError
from omibuild.planning.diff import PlanDiff, diff_plans, target_tag, unrecorded
from omibuild.planning.pipeline import prepare
from omibuild.planning.plan import (
    MAX_STATE_BYTES as MAX_STATE_FILE,
)
from omibuild.planning.plan import (
    Plan,
    plan_from_labels,
    plan_from_state,
    state_pointer,
)
from omibuild.planning.weight import note, warns, weigh
from omibuild.progress import Progress
from omibuild.render.dockerfile import render
from omibuild.reports.plans import FORMATS, to_json
from omibuild.store.cache import Cache, atomic_write

EXIT_CHANGES = 2  # --detailed-exitcode: changes are pending (terraform plan's convention)


def against(plan: Plan, given: str | None, executor: BuildxExecutor) -> PlanDiff:
    """The change from what ``given`` names (a saved plan file or an image; by default the
    plan's first tag other than the origin tag) to ``plan``. An image is read from the local
    engine, else from its registry (the config only: no layer is pulled)."""
    if given and Path(given).is_file():
        try:
            saved = Plan.from_dict(json.loads(Path(given).read_text("utf-8")))
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise UsageError(
                f"--against {given}: not a plan saved by `omibuild plan --out` ({err})"
            ) from None
        return diff_plans(saved, plan, f"the saved plan {given}")
    ref = given or f"{plan.repository}:{target_tag(plan)}"
    labels, where, looked = executor.image_labels(ref), "in the local engine", "the local engine"
    if labels is None and not ref.startswith("omibuild.local/"):
        labels, where, looked = (
            executor.remote_labels(ref),
            "in its registry",
            f"{looked} or its registry",
        )
    if labels is None:  # none built yet (or the engine or registry did not answer)
        return diff_plans(None, plan, f"nothing: {looked} has no image {ref}")
    described = f"the image {ref} {where}"
    old = plan_from_labels(labels) or image_plan(ref, labels, executor, where == "in its registry")
    if old is None:
        return unrecorded(described, labels.get(contract.PLAN_DIGEST_LABEL, ""), plan)
    return diff_plans(old, plan, described)


def image_plan(
    ref: str, labels: dict[str, str], executor: BuildxExecutor, remote: bool
) -> Plan | None:
    """The plan an image was built from, from the state file its label points at: kept in
    omibuild's cache by the apply that built it (by its sha256), else read from the engine
    (a created, never started container) or the registry (that file's layer only)."""
    pointer = state_pointer(labels)
    if pointer is None:
        return None
    cache = Cache()
    kept = cache.root / "plans" / f"{pointer['sha256']}.json.gz"
    data = kept.read_bytes() if kept.is_file() else None
    if data is None and remote:
        try:
            data = read_image_file(ref, pointer["file"], MAX_STATE_FILE)
        except (RegistryError, KeyError, ValueError, StopIteration, tarfile.TarError):
            data = None
    elif data is None:
        data = executor.image_file(ref, pointer["file"], MAX_STATE_FILE)
    plan = plan_from_state(data, labels) if data is not None else None
    if plan is not None and data is not None and not kept.is_file():
        kept.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(kept, data)
    return plan


def run(args: argparse.Namespace) -> int:
    executor = BuildxExecutor()
    cache = Cache()
    prepared = prepare(
        Path(args.file),
        cache,
        Progress(),
        locked=args.locked,
        offline=args.offline,
        base_digest=executor.image_digest,
    )
    plan = prepared.plan
    if not args.offline:
        refuse_unoffered_platforms(plan, executor)
    weight = weigh(plan, cache) if not args.offline else None
    said = note(weight, plan.accelerator)
    if said:
        kind = "warning" if warns(weight, plan.accelerator) else "note"
        print(f"omibuild: {kind}: {said}", file=sys.stderr)
    if args.out:
        atomic_write(Path(args.out), to_json(plan))
    if args.dockerfile:
        sys.stdout.write(render(plan))
        return EXIT_OK
    diff = against(plan, args.against, executor)
    FORMATS[args.format](plan, diff, sys.stdout)
    if args.detailed_exitcode and diff.changed:
        return EXIT_CHANGES
    return EXIT_OK
