"""Argument parsing and dispatch only. Each verb lives in ``omibuild.commands.<verb>`` and
returns an exit code; imports are lazy so ``omibuild validate`` starts fast."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import tempfile
import traceback
from collections.abc import Sequence

from omibuild import __version__
from omibuild.errors import EXIT_BUG, EXIT_INTERRUPTED, EXIT_USAGE, OmiError

VERBS = {
    "validate": "check omi.yaml files against the schema and the repository",
    "schema": "print the omi.yaml JSON Schema",
    "init": "write a commented omi.yaml, detecting the model flavor",
    "plan": "show exactly what apply will build",
    "apply": "build (and push) the OMI image",
    "check": "check an image against the Open Model Interface spec",
    "run": "start an image locally and try it",
}


def _add_format(p: argparse.ArgumentParser, choices: Sequence[str], default: str) -> None:
    p.add_argument("--format", choices=list(choices), default=default, help="output format")


def _add_source_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--locked", action="store_true", help="fail if resolving differs from omi.lock")
    p.add_argument("--offline", action="store_true", help="use only omi.lock and the cache")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="omibuild",
        description="Build Open Model Interface (OMI) container images from omi.yaml.",
        epilog="exit codes: 0 ok, 1 invalid input or failed build/check, 2 usage or I/O error, "
        "3 internal error, 130 interrupted",
    )
    parser.add_argument("--version", action="version", version=f"omibuild {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="COMMAND")

    p = sub.add_parser("validate", help=VERBS["validate"])
    p.add_argument("files", nargs="+", metavar="FILE")
    _add_format(p, ["text", "json"], "text")

    p = sub.add_parser("schema", help=VERBS["schema"])

    p = sub.add_parser("init", help=VERBS["init"])
    p.add_argument("model_dir", nargs="?", default=".", help="model directory to inspect")
    p.add_argument("--name", help="model name (default: the directory name)")
    p.add_argument("-o", "--output", default="omi.yaml", help="file to write (- for stdout)")
    p.add_argument("--force", action="store_true", help="overwrite an existing file")

    p = sub.add_parser("plan", help=VERBS["plan"])
    p.add_argument("file", metavar="FILE")
    _add_format(p, ["text", "json", "markdown"], "text")
    p.add_argument("--out", help="save the plan as JSON for apply --plan")
    p.add_argument("--dockerfile", action="store_true", help="print only the Dockerfile")
    _add_source_flags(p)

    p = sub.add_parser("apply", help=VERBS["apply"])
    p.add_argument("files", nargs="+", metavar="FILE|DIR")
    p.add_argument("--plan", dest="plan_file", help="apply exactly this reviewed plan.json")
    p.add_argument("--push", action="store_true", help="push to the image repository")
    p.add_argument("--output", help="oci:PATH writes an OCI layout tarball instead of loading")
    p.add_argument("--platform", action="append", help="target platform (repeatable)")
    p.add_argument("--builder", help="buildx builder to use")
    p.add_argument("--cache-to", help="registry cache ref (type=registry) or local dir")
    p.add_argument("--no-cache", action="store_true", help="do not use any build cache")
    p.add_argument(
        "--sbom",
        action="store_true",
        help="attach an SBOM attestation (the builder "
        "must be able to run BuildKit's scanner image)",
    )
    p.add_argument("--progress", choices=["auto", "plain", "tty", "quiet"], default="auto")
    _add_source_flags(p)

    p = sub.add_parser("check", help=VERBS["check"])
    p.add_argument("image")
    _add_format(p, ["text", "json", "junit"], "text")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for readiness")

    p = sub.add_parser("run", help=VERBS["run"])
    p.add_argument("target", metavar="IMAGE|omi.yaml")
    p.add_argument("--interface", help="INTERFACE to start (default: the image's default)")
    p.add_argument("--protocol", help="PROTOCOL to start")
    p.add_argument("--port", type=int, help="host port to map")
    p.add_argument("--predict", metavar="FILE", help="send one request, print it, stop")
    p.add_argument("--timeout", type=float, default=60.0)
    return parser


def _bug_report(exc: BaseException) -> str:
    fd, path = tempfile.mkstemp(prefix="omibuild-crash-", suffix=".log")
    with os.fdopen(fd, "w") as fh:
        traceback.print_exception(exc, file=fh)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.verb:
        parser.print_help()
        return EXIT_USAGE
    try:
        module = importlib.import_module(f"omibuild.commands.{args.verb}")
        code: int = module.run(args)
        return code
    except OmiError as err:
        print(f"omibuild: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("omibuild: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # a bug: keep the traceback out of the user's face
        path = _bug_report(exc)
        print(f"omibuild: internal error: {exc!r}; details in {path}", file=sys.stderr)
        return EXIT_BUG


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
