from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples" / "manifests"


@pytest.fixture(scope="session", autouse=True)
def example_models() -> None:
    """The example models are generated, never committed: make sure they exist."""
    subprocess.run(
        [sys.executable, str(ROOT / "examples" / "generate.py")], check=True, capture_output=True
    )


def example_manifests() -> list[Path]:
    return sorted(EXAMPLES.glob("*/omi.yaml"))
