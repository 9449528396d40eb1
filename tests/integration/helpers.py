from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import EXAMPLES


def omibuild(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None, timeout: float = 900
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "omibuild", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        timeout=timeout,
    )


def copy_example(name: str, dest: Path, repository: str, **edits: str) -> Path:
    """A private copy of an example model repository, pointing at a test repository."""
    repo = dest / name
    shutil.copytree(EXAMPLES / name, repo, ignore=shutil.ignore_patterns("omi.lock"))
    manifest = repo / "omi.yaml"
    text = manifest.read_text()
    lines = [ln for ln in text.splitlines() if not ln.startswith("  repository:")]
    text = "\n".join(lines) + "\n"
    text = text.replace("image:\n", f"image:\n  repository: {repository}\n", 1)
    for old, new in edits.items():
        text = text.replace(old, new)
    manifest.write_text(text)
    return manifest


def image_json(ref: str) -> dict:  # type: ignore[type-arg]
    out = subprocess.run(
        ["docker", "image", "inspect", ref], capture_output=True, text=True, check=True
    ).stdout
    return json.loads(out)[0]  # type: ignore[no-any-return]
