"""omibuild check IMAGE — is this image OMI-compliant? Table, JSON or JUnit XML."""

from __future__ import annotations

import argparse
import sys

from omibuild.conformance.check import check_image
from omibuild.errors import EXIT_INVALID, EXIT_OK, UsageError
from omibuild.reports.checks import FORMATS


def run(args: argparse.Namespace) -> int:
    findings, exists = check_image(args.image, args.timeout)
    if not exists:
        raise UsageError(
            f"no image {args.image} in the local engine", hint="pull or build it first"
        )
    FORMATS[args.format](args.image, findings, sys.stdout)
    return EXIT_OK if all(f.ok for f in findings) else EXIT_INVALID
