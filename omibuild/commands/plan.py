"""omibuild plan FILE — exactly what apply will build, for review."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from omibuild.engine.buildx import BuildxExecutor
from omibuild.errors import EXIT_OK
from omibuild.planning.pipeline import prepare
from omibuild.render.dockerfile import render
from omibuild.reports.plans import FORMATS, to_json
from omibuild.sources.cache import Cache, atomic_write
from omibuild.sources.progress import Progress


def run(args: argparse.Namespace) -> int:
    executor = BuildxExecutor()
    prepared = prepare(
        Path(args.file),
        Cache(),
        Progress(),
        locked=args.locked,
        offline=args.offline,
        base_digest=executor.image_digest,
    )
    plan = prepared.plan
    if args.out:
        atomic_write(Path(args.out), to_json(plan))
    if args.dockerfile:
        sys.stdout.write(render(plan))
    else:
        FORMATS[args.format](plan, sys.stdout)
    return EXIT_OK
