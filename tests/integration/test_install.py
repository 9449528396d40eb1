"""The install path for users who are not on this machine: the built wheel, pip-installed into
a new virtual environment outside this repository, is a working omibuild."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.integration.test_first_model import train_joblib

pytestmark = pytest.mark.integration


def run(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(
        list(args), cwd=cwd, capture_output=True, text=True, timeout=600, env=env, check=False
    )
    assert proc.returncode == 0, f"{args}: {proc.stdout[-1500:]}{proc.stderr[-1500:]}"
    return proc.stdout


def test_the_wheel_installs_into_a_clean_venv_and_plans_a_model(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    run(
        sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
        "-w", str(dist), str(ROOT),
    )  # fmt: skip
    [wheel] = dist.glob("omibuild-*.whl")
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", str(venv))
    run(str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check", str(wheel))
    # The venv knows nothing of this repository: no source tree on its path, no dev tools.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{venv / 'bin'}:{env['PATH']}"
    where = run(str(venv / "bin" / "python"), "-c", "import omibuild; print(omibuild.__file__)",
                cwd=tmp_path, env=env)  # fmt: skip
    assert where.startswith(str(venv)), where
    missing = run(str(venv / "bin" / "python"), "-c",
                  "import importlib.util as u; print([m for m in ('mlflow', 'huggingface_hub', "
                  "'sklearn') if u.find_spec(m)])", env=env)  # fmt: skip
    assert missing.strip() == "[]"  # local-only use pulls in neither client

    repo = tmp_path / "churn-model"
    repo.mkdir()
    run("git", "init", "-q", str(repo))
    train_joblib(repo)
    omibuild = str(venv / "bin" / "omibuild")
    assert "wrote omi.yaml" in run(omibuild, "init", cwd=repo, env=env)
    text = (repo / "omi.yaml").read_text()
    assert "- scikit-learn" in text and "not installed here" in text  # named, not pinned
    assert "valid" in run(omibuild, "validate", cwd=repo, env=env)
    plan = json.loads(run(omibuild, "plan", "--format", "json", cwd=repo, env=env))
    assert plan["name"] == "churn-model"
    assert "scikit-learn" in plan["requirements"]
    assert plan["runtime_digest"].startswith("sha256:")  # the runtime ships inside the wheel
    dockerfile = run(omibuild, "plan", "--dockerfile", cwd=repo, env=env)
    assert "omibuild.runtime" in dockerfile

    mlflow_repo = tmp_path / "registry-model"
    mlflow_repo.mkdir()
    (mlflow_repo / "omi.yaml").write_text(
        "apiVersion: omibuild/v1\nname: m\nmodel:\n"
        "  source: {mlflow: {uri: 'models:/m@champion'}}\n  flavor: pyfunc\n"
    )
    proc = subprocess.run(
        [omibuild, "plan"], cwd=mlflow_repo, capture_output=True, text=True, env=env, check=False
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "omibuild: error: model.source.mlflow needs the mlflow package, which is not "
        "installed (hint: pip install 'omibuild[mlflow]')"
    )
