"""Two platforms asked of a base that offers one: refused before any build, in one line
naming the base and what it offers (BuildKit would take the other platform's base and say
nothing: the arm64 image held x86-64 binaries). A stranger's model, omibuild from its wheel,
the engine's own record of the base."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.integration.strangers import new_stranger, training_venv
from tests.integration.test_install import IRIS_JOBLIB, SKLEARN

pytestmark = pytest.mark.integration


def test_a_platform_the_base_lacks_is_refused_by_plan_and_apply(
    tmp_path: Path, unique: str, engine: None
) -> None:
    s = new_stranger(tmp_path, f"platforms-{unique}", training_venv("sklearn", SKLEARN))
    s.train(IRIS_JOBLIB)
    s.ok("init")
    manifest = s.repo / "omi.yaml"
    plan = json.loads(s.ok("plan", "--format", "json"))
    base = plan["base_image"]
    offered = subprocess.run(
        ["docker", "image", "inspect", "--format", "{{.Os}}/{{.Architecture}}", base],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    other = "linux/arm64" if offered != "linux/arm64" else "linux/amd64"
    text = manifest.read_text()
    assert "image:\n" in text
    manifest.write_text(text.replace("image:\n", f"image:\n  platforms: [{offered}, {other}]\n", 1))
    for verb in (("plan",), ("apply", "--progress", "plain")):
        done = s.cli(*verb)
        assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
        lines = [ln for ln in done.stderr.splitlines() if ln.startswith("omibuild: error:")]
        assert lines and f"base image {base} offers {offered}, not {other}" in lines[0], done.stderr
        assert "Traceback" not in done.stderr and "#1 " not in done.stderr  # nothing was built
    # the platform it offers alone is fine
    manifest.write_text(text.replace("image:\n", f"image:\n  platforms: [{offered}]\n", 1))
    s.ok("plan")
