"""omibuild validate FILE... — every problem in every file, at once, with line numbers."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from omibuild.errors import EXIT_INVALID, EXIT_OK
from omibuild.manifest.validate import validate_file
from omibuild.reports.validation import FORMATS


def run(args: argparse.Namespace) -> int:
    results = [validate_file(Path(f)) for f in args.files]
    ok = all(r.ok for r in results)
    # problems as text go to stderr, where a person looks; the other formats are the output
    FORMATS[args.format](results, sys.stdout if args.format != "text" or ok else sys.stderr)
    return EXIT_OK if ok else EXIT_INVALID
