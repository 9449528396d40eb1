"""omibuild check IMAGE — is this image OMI-compliant? Table, JSON or JUnit XML."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from omibuild.conformance.check import Finding, check_image
from omibuild.engine.signing import COSIGN_HINT, SigningError, verify
from omibuild.errors import EXIT_INVALID, EXIT_OK, UsageError
from omibuild.reports.checks import FORMATS


def run(args: argparse.Namespace) -> int:
    if args.verify:
        verified = _verified(args.verify, args.image)
        if not all(f.ok for f in verified):  # an image that fails verification is not run
            FORMATS[args.format](args.image, verified, sys.stdout)
            return EXIT_INVALID
    else:
        verified = []
    findings, exists = check_image(args.image, args.timeout)
    findings = [*verified, *findings]
    if not exists:
        raise UsageError(
            f"no image {args.image} in the local engine", hint="pull or build it first"
        )
    FORMATS[args.format](args.image, findings, sys.stdout)
    return EXIT_OK if all(f.ok for f in findings) else EXIT_INVALID


def _verified(pub: str, image: str) -> list[Finding]:
    """cosign's verdicts on the image in its registry, as findings (signing.py)."""
    key = Path(pub)
    if not key.is_file():
        raise UsageError(f"--verify {pub}: no such public key file")
    try:
        return [Finding(what, ok, detail) for what, ok, detail in verify(key, image)]
    except SigningError as err:
        raise UsageError(f"cosign: {err}", hint=COSIGN_HINT) from None
