"""omibuild deploy --target kubernetes|kserve|sagemaker|vertex [FILE] — the platform's
manifest for the image the plan describes (render/deploy.py), on standard output or --out:
YAML documents for Kubernetes and KServe, JSON requests for SageMaker and Vertex AI."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

from omibuild.errors import EXIT_OK, UsageError
from omibuild.planning.pipeline import prepare
from omibuild.progress import Progress
from omibuild.render import deploy
from omibuild.store.cache import Cache, atomic_write

# a role SageMaker's CreateModel must be given; the user's own replaces it (--role)
ROLE_PLACEHOLDER = "arn:aws:iam::000000000000:role/REPLACE-WITH-YOUR-SAGEMAKER-ROLE"


def run(args: argparse.Namespace) -> int:
    prepared = prepare(Path(args.file), Cache(), Progress(enabled=False), notes=False)
    plan = prepared.plan
    image = args.image or plan.image_refs[0]
    try:
        if args.target == "kubernetes":
            text = yaml.safe_dump_all(
                deploy.kubernetes(plan, image, args.interface), sort_keys=False
            )
        elif args.target == "kserve":
            car = f"{plan.image_refs[0]}-modelcar" if args.modelcar else None
            text = yaml.safe_dump_all(deploy.kserve(plan, image, car), sort_keys=False)
        elif args.target == "sagemaker":
            text = json.dumps(
                deploy.sagemaker(plan, image, args.role or ROLE_PLACEHOLDER), indent=2
            )
        else:
            text = json.dumps(deploy.vertex(plan, image), indent=2)
    except ValueError as err:
        raise UsageError(f"{args.file}: {err}") from None
    if args.modelcar and "modelcar" not in plan.exports:
        print(
            f"omibuild: note: {plan.name} does not export a modelcar yet: add export: "
            "{modelcar: true} to omi.yaml (or apply --push --export modelcar)",
            file=sys.stderr,
        )
    text = text.rstrip("\n") + "\n"
    if args.out:
        atomic_write(Path(args.out), text)
    else:
        sys.stdout.write(text)
    return EXIT_OK
