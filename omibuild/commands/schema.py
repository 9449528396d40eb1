"""omibuild schema — print the manifest's JSON Schema (for editors and CI)."""

from __future__ import annotations

import argparse
import sys

from omibuild.errors import EXIT_OK
from omibuild.manifest.schema import schema_text


def run(args: argparse.Namespace) -> int:
    sys.stdout.write(schema_text())
    return EXIT_OK
