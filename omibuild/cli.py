"""Argument parsing and dispatch only. Each verb lives in ``omibuild.commands.<verb>`` and
returns an exit code; imports are lazy so ``omibuild validate`` starts fast."""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import shutil
import signal
import sys
import tempfile
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

from omibuild import __version__
from omibuild.errors import (
    EXIT_BUG,
    EXIT_INTERRUPTED,
    EXIT_TERMINATED,
    EXIT_USAGE,
    OmiError,
    Terminated,
)
from omibuild.store.cache import default_cache_dir

VERBS = {
    "init": "write a commented omi.yaml for a model file or directory",
    "validate": "check omi.yaml files against the schema and the repository",
    "plan": "show what apply would change, against what the target holds",
    "lock": "write omi.lock: the resolved model source and the base image's digest",
    "apply": "build (and push) the OMI image",
    "run": "start an image locally and try it",
    "check": "check an image against the Open Model Interface spec",
    "deploy": "write a platform's manifest for the image: Kubernetes, KServe, SageMaker, Vertex",
    "cache": "list what omibuild keeps on disk, or prune it to a size",
    "schema": "print the omi.yaml JSON Schema",
    "completion": "print a shell completion script (bash or zsh)",
}

# What each verb's --help shows under its options: a description, then examples.
DETAILS = {
    "init": (
        "Looks for the model below MODEL (default: the current directory): an MLflow model\n"
        "directory, a transformers directory, .onnx or sklearn pickle/joblib/skops files.\n"
        "Writes omi.yaml with the model's flavor and the requirements that load it, each\n"
        "with a comment saying where it came from. The model is named after the directory\n"
        "omi.yaml goes in.",
        ["omibuild init", "omibuild init model/", "omibuild init model.onnx --name churn -o -"],
    ),
    "validate": (
        "Every problem in every file at once, as FILE:LINE:COL, with a hint. Warnings (for\n"
        "example a flavor whose package no requirement names) do not fail validation.",
        [
            "omibuild validate",
            "omibuild validate models/*/omi.yaml --format json",
            "omibuild validate --format github   # annotations in a GitHub Actions run",
        ],
    ),
    "plan": (
        "Resolves the model source, pins the base image's digest and compares the plan with\n"
        "what the target already holds: the image at its first tag (in the local engine,\n"
        "else in its registry, read without pulling layers) or --against a saved plan or\n"
        'image. Says per stage what is rebuilt and why, or "No changes.". A dry run: it\n'
        "builds nothing and writes nothing into the repository.",
        [
            "omibuild plan",
            "omibuild plan --format markdown > plan.md   # a pull-request comment",
            "omibuild plan --detailed-exitcode            # 0 no changes, 2 changes, 1 error",
            "omibuild plan --out reviewed.plan.json && omibuild apply --plan reviewed.plan.json",
        ],
    ),
    "lock": (
        "Resolves each manifest's model source (files and digests) and the base image's\n"
        "digest, and writes them to omi.lock beside it. apply writes it too; plan never\n"
        "does. --check writes nothing and exits 1 naming what moved if a lock is stale.",
        ["omibuild lock", "omibuild lock --check models/"],
    ),
    "apply": (
        "Builds every manifest given (a directory means every omi.yaml below it) through\n"
        "docker buildx with cache layers, and tags each image with its origin id.",
        [
            "omibuild apply",
            "omibuild apply --push",
            "omibuild apply models/ --format json",
        ],
    ),
    "run": (
        "Starts the image (built from omi.yaml, or any image name) in the local engine, waits\n"
        "until it is ready and prints how to call it; --predict sends one request and stops.",
        [
            "omibuild run",
            "omibuild run --predict input.json",
            "omibuild run registry.example.com/models/iris:latest --interface modzy",
        ],
    ),
    "check": (
        "Starts every interface the image declares, each in its own container, and checks\n"
        "labels, readiness, the example prediction and a clean stop.",
        ["omibuild check omibuild.local/iris:latest", "omibuild check IMAGE --format junit"],
    ),
    "cache": (
        "Source files (models fetched from MLflow or the Hugging Face Hub), BuildKit cache\n"
        "directories (one per model), build contexts and scratch, with sizes and last use.\n"
        "prune keeps the most recently used within --keep and removes the rest; it is safe\n"
        "while builds run (what a running build uses is kept, and said so). BuildKit cache\n"
        "directories are listed, not pruned: the engine keeps records that point into them.",
        ["omibuild cache", "omibuild cache prune --keep 20GB", "omibuild cache --format json"],
    ),
    "schema": ("The JSON Schema that editors use to validate and complete omi.yaml.", []),
    "deploy": (
        "From the plan alone: a Kubernetes Deployment and Service, a KServe InferenceService\n"
        "(the image as a custom predictor; --modelcar: its <tag>-modelcar export as the\n"
        "storageUri), SageMaker's CreateModel and CreateEndpointConfig requests, or a Vertex AI\n"
        "Model. Each picks its interface by the OMI variables and probes the routes that\n"
        "interface answers; the image runs as its non-root user, read-only, with the time\n"
        "its drain needs on SIGTERM.",
        [
            "omibuild deploy --target kubernetes | kubectl apply -f -",
            "omibuild deploy --target kserve --modelcar --out isvc.yaml",
            "omibuild deploy --target sagemaker --role arn:aws:iam::123456789012:role/sm",
        ],
    ),
    "completion": (
        "Prints a completion script for your shell.",
        [
            'eval "$(omibuild completion bash)"      # in ~/.bashrc',
            "omibuild completion zsh > ~/.zfunc/_omibuild   # with ~/.zfunc on $fpath",
        ],
    ),
}
MANIFEST_HELP = "the manifest (default: ./omi.yaml)"


def _add_format(p: argparse.ArgumentParser, choices: Sequence[str], default: str) -> None:
    p.add_argument("--format", choices=list(choices), default=default, help="output format")


def _add_source_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--locked", action="store_true", help="fail if resolving differs from omi.lock")
    p.add_argument("--offline", action="store_true", help="use only omi.lock and the cache")


def _verb(sub: Any, name: str) -> argparse.ArgumentParser:
    description, examples = DETAILS[name]
    epilog = "examples:\n" + "\n".join(f"  {e}" for e in examples) if examples else None
    return cast(
        argparse.ArgumentParser,
        sub.add_parser(
            name,
            help=VERBS[name],
            description=f"{VERBS[name][0].upper()}{VERBS[name][1:]}.\n\n{description}",
            epilog=epilog,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        ),
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="omibuild",
        description="Build Open Model Interface (OMI) container images from omi.yaml.",
        epilog="exit codes: 0 ok, 1 invalid input or failed build/check, 2 usage or I/O error, "
        "3 internal error, 130 interrupted",
    )
    parser.add_argument("--version", action="version", version=f"omibuild {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="COMMAND")

    p = _verb(sub, "init")
    p.add_argument("model", nargs="?", default=".", help="model file or directory (default: .)")
    p.add_argument("--name", help="model name (default: the name of omi.yaml's directory)")
    p.add_argument("-o", "--output", default="omi.yaml", help="file to write (- for stdout)")
    p.add_argument("--force", action="store_true", help="overwrite an existing file")

    p = _verb(sub, "validate")
    p.add_argument("files", nargs="*", default=["omi.yaml"], metavar="FILE", help=MANIFEST_HELP)
    _add_format(p, ["text", "json", "github", "gitlab"], "text")

    p = _verb(sub, "plan")
    p.add_argument("file", nargs="?", default="omi.yaml", metavar="FILE", help=MANIFEST_HELP)
    _add_format(p, ["text", "json", "markdown"], "text")
    p.add_argument("--out", help="save the plan as JSON for apply --plan")
    p.add_argument("--dockerfile", action="store_true", help="print only the Dockerfile")
    p.add_argument(
        "--against",
        metavar="PLAN.json|IMAGE",
        help="compare with this saved plan or image (default: the image at the first tag)",
    )
    p.add_argument(
        "--detailed-exitcode",
        action="store_true",
        help="exit 0 when nothing changes, 2 when changes are pending, 1 on any error",
    )
    _add_source_flags(p)

    p = _verb(sub, "lock")
    p.add_argument("files", nargs="*", default=["omi.yaml"], metavar="FILE|DIR", help=MANIFEST_HELP)
    p.add_argument("--check", action="store_true", help="write nothing; exit 1 if a lock is stale")

    p = _verb(sub, "apply")
    p.add_argument("files", nargs="*", default=["omi.yaml"], metavar="FILE|DIR", help=MANIFEST_HELP)
    p.add_argument("--plan", dest="plan_file", help="apply exactly this reviewed plan.json")
    p.add_argument("--push", action="store_true", help="push to the image repository")
    p.add_argument("--output", help="oci:PATH writes an OCI layout tarball instead of loading")
    p.add_argument("--platform", action="append", help="target platform (repeatable)")
    p.add_argument(
        "--export",
        action="append",
        choices=["modelpack", "modelcar"],
        help="add a ModelPack artifact or a KServe modelcar over the same model layers, tagged "
        "<tag>-modelpack / <tag>-modelcar (repeatable; adds to omi.yaml's export)",
    )
    p.add_argument("--builder", help="buildx builder to use")
    p.add_argument("--cache-to", help="registry cache ref (type=registry) or local dir")
    p.add_argument("--no-cache", action="store_true", help="do not use any build cache")
    p.add_argument(
        "--sign",
        metavar="KEY",
        help="sign the pushed image and its provenance and SBOM with this cosign key "
        "(cosign on PATH; the key's password from COSIGN_PASSWORD)",
    )
    p.add_argument(
        "--sign-model",
        metavar="KEY.pem",
        help="sign the model directory with OpenSSF model-signing (an elliptic-curve private "
        "key) and ship the bundle beside the model, at /opt/omi/model.sig",
    )
    p.add_argument(
        "--no-attest",
        action="store_true",
        help="leave out the SLSA provenance and SPDX SBOM that a pushed or written image "
        "carries (each names the final image manifest)",
    )
    p.add_argument("--progress", choices=["auto", "plain", "tty", "quiet"], default="auto")
    _add_format(p, ["text", "json"], "text")
    _add_source_flags(p)

    p = _verb(sub, "run")
    p.add_argument(
        "target", nargs="?", default="omi.yaml", metavar="IMAGE|omi.yaml", help=MANIFEST_HELP
    )
    p.add_argument(
        "--interface",
        help="INTERFACE to start (default: the one --predict's body is written for, else the "
        "image's default)",
    )
    p.add_argument("--protocol", help="PROTOCOL to start")
    p.add_argument("--port", type=int, help="host port to map")
    p.add_argument(
        "--predict",
        metavar="FILE",
        nargs="?",
        const="",
        help='send one request, print the answer, stop: {"instances": [...]}, V2 '
        '{"inputs": [tensors]}, MLflow dataframe_split/dataframe_records/inputs, '
        "SageMaker .csv or .jsonl; without FILE, the example the image was built with",
    )
    p.add_argument(
        "--explain", metavar="FILE", help="ask the baked explainer about FILE's rows, print, stop"
    )
    p.add_argument(
        "--timeout",
        type=float,
        help="seconds to wait for readiness (default: 60; 300 for an emulated --platform)",
    )
    p.add_argument(
        "--platform",
        help="start the image's linux/arm64 (or other) variant, emulated where it is not the "
        "host's (default: the engine's choice, the host's)",
    )
    p.add_argument(
        "--gpus",
        metavar="GPUS",
        help="give the container GPUs as docker's --gpus does (all, 1, device=0): a CUDA "
        "image then runs its model on the first",
    )
    _add_format(p, ["text", "json"], "text")

    p = _verb(sub, "check")
    p.add_argument("image")
    p.add_argument(
        "--verify",
        metavar="KEY.pub",
        help="first verify the image's cosign signature and signed provenance and SBOM in its "
        "registry, and that every attestation names this image; probe only if they hold",
    )
    p.add_argument(
        "--verify-model",
        metavar="PUB.pem",
        help="first verify /opt/omi/model.sig against the model files in the image "
        "(OpenSSF model-signing); probe only if it holds",
    )
    p.add_argument(
        "--platform",
        help="run the image's linux/arm64 (or other) variant, emulated where it is not the "
        "host's (default: the host's); the binaries of every platform are read either way",
    )
    p.add_argument(
        "--gpus",
        metavar="GPUS",
        help="give the container GPUs as docker's --gpus does (all, 1, device=0): a CUDA "
        "image then runs its model on the first; check expects it to say cuda:0 (else cpu)",
    )
    p.add_argument(
        "--robustness",
        type=int,
        default=0,
        metavar="N",
        help="on an image with a defense: run ART's HopSkipJump through its V2 endpoint on N "
        "reference rows and report the attack's success, its median distance and the share "
        "the defense flags at 1x, 2x and 4x it (needs pip install 'omibuild[robustness]')",
    )
    _add_format(p, ["text", "json", "junit"], "text")
    p.add_argument(
        "--timeout",
        type=float,
        help="seconds to wait for readiness (default: 60; 300 for an emulated --platform)",
    )

    p = _verb(sub, "cache")
    p.add_argument("action", nargs="?", choices=["list", "prune"], default="list")
    p.add_argument("--keep", metavar="SIZE", help="prune: keep this much (20GB, 500MiB, 0)")
    _add_format(p, ["text", "json"], "text")

    _verb(sub, "schema")

    p = _verb(sub, "deploy")
    p.add_argument("file", nargs="?", default="omi.yaml", metavar="FILE", help=MANIFEST_HELP)
    p.add_argument(
        "--target", required=True, choices=["kubernetes", "kserve", "sagemaker", "vertex"]
    )
    p.add_argument("--image", help="the image to run (default: the plan's first tag)")
    p.add_argument(
        "--interface", help="kubernetes: the interface to serve (default: the image's own)"
    )
    p.add_argument("--modelcar", action="store_true", help="kserve: the model from the modelcar")
    p.add_argument("--role", help="sagemaker: the execution role's ARN")
    p.add_argument("--out", help="write here instead of standard output")

    p = _verb(sub, "completion")
    p.add_argument("shell", choices=["bash", "zsh"])
    return parser


def _bug_report(exc: BaseException) -> str:
    fd, path = tempfile.mkstemp(prefix="omibuild-crash-", suffix=".log")
    with os.fdopen(fd, "w") as fh:
        traceback.print_exception(exc, file=fh)
    return path


def _terminate(_signum: int, _frame: Any) -> None:
    raise Terminated()


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.verb:
        parser.print_help()
        return EXIT_USAGE
    code = _dispatch(args)
    if getattr(args, "detailed_exitcode", False) and code not in (0, 2):
        return 1  # terraform's convention: 2 means changes pending, so every error is 1
    return code


def _dispatch(args: argparse.Namespace) -> int:
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        module = importlib.import_module(f"omibuild.commands.{args.verb}")
        code: int = module.run(args)
        return code
    except OmiError as err:
        print(f"omibuild: error: {err}", file=sys.stderr)
        return err.exit_code
    except Terminated:
        print("omibuild: terminated", file=sys.stderr)
        return EXIT_TERMINATED
    except KeyboardInterrupt:
        print("omibuild: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except OSError as exc:
        if exc.errno not in _IO_ERRNOS:
            return _bug(exc)
        print(f"omibuild: error: {_io_line(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as exc:
        return _bug(exc)
    finally:
        signal.signal(signal.SIGTERM, previous)


# The machine's trouble, not omibuild's: a full disk, a read-only or forbidden place.
_IO_ERRNOS = {
    errno.ENOSPC,
    errno.EDQUOT,
    errno.EROFS,
    errno.EACCES,
    errno.EPERM,
    errno.EMFILE,
    errno.ENFILE,
    errno.EIO,
}


def _io_line(exc: OSError) -> str:
    """The machine's trouble in one line. A full disk names the directory being written (a
    write() names no file: then omibuild's cache, where it writes) and what is free there."""
    if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
        return f"{exc.filename}: {exc.strerror}" if exc.filename else str(exc.strerror)
    where = Path(exc.filename).parent if exc.filename else default_cache_dir()
    try:
        free = f"{shutil.disk_usage(where).free / 1e6:.0f} MB free"
    except OSError:
        free = "free space unknown"
    return (
        f"{where}: {exc.strerror} ({free}) (hint: free some space, or "
        "`omibuild cache prune --keep 5GB`)"
    )


def _bug(exc: BaseException) -> int:
    """A bug: keep the traceback out of the user's face, in a log they can send."""
    path = _bug_report(exc)
    print(f"omibuild: internal error: {exc!r}; details in {path}", file=sys.stderr)
    return EXIT_BUG


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
