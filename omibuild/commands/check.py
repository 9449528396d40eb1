"""omibuild check IMAGE — is this image OMI-compliant? Table, JSON or JUnit XML."""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
from pathlib import Path

from omibuild.conformance.check import Finding, check_image
from omibuild.engine.containers import Containers
from omibuild.engine.modelsig import HINT as MODEL_SIGNING_HINT
from omibuild.engine.modelsig import MODEL_DIR, SIGNATURE, ModelSigningError, verify_model
from omibuild.engine.signing import COSIGN_HINT, SigningError, verify
from omibuild.errors import EXIT_INVALID, EXIT_OK, UsageError
from omibuild.reports.checks import FORMATS

MAX_ROBUSTNESS_ROWS = 1000  # each row costs the attack about a thousand predictions


def run(args: argparse.Namespace) -> int:
    verified = _verified(args.verify, args.image) if args.verify else []
    if args.verify_model:
        verified.append(_model_verified(args.verify_model, args.image))
    if not all(f.ok for f in verified):  # an image that fails verification is not run
        FORMATS[args.format](args.image, verified, sys.stdout)
        return EXIT_INVALID
    if args.robustness < 0 or args.robustness > MAX_ROBUSTNESS_ROWS:
        raise UsageError(f"--robustness takes 1 to {MAX_ROBUSTNESS_ROWS} rows")
    if args.robustness and importlib.util.find_spec("art") is None:
        raise UsageError(
            "--robustness needs ART (the Adversarial Robustness Toolbox)",
            hint="pip install 'omibuild[robustness]'",
        )
    findings, exists = check_image(
        args.image, args.timeout, args.platform, args.gpus, args.robustness
    )
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


def _model_verified(pub: str, image: str) -> Finding:
    """The model files in the local image against the bundle beside them (modelsig.py)."""
    key = Path(pub)
    if not key.is_file():
        raise UsageError(f"--verify-model {pub}: no such public key file")
    what = f"the model's signature ({SIGNATURE}, model-signing)"
    with tempfile.TemporaryDirectory(prefix="omibuild-verify-model-") as tmp:
        if not Containers().copy_out(image, [MODEL_DIR, SIGNATURE], Path(tmp)):
            return Finding(what, False, f"no {SIGNATURE} beside the model in {image}")
        try:
            reason = verify_model(key, Path(tmp) / Path(MODEL_DIR).name, Path(tmp) / "model.sig")
        except ModelSigningError as err:
            raise UsageError(str(err), hint=MODEL_SIGNING_HINT) from None
    return Finding(what, not reason, reason or "every model file is what was signed")
