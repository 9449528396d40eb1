"""The CI that ships in the repository (examples/ci/, .pre-commit-hooks.yaml), run against a
stranger's model repository: the workflow templates validate against their platforms'
schemas, the GitHub workflow's omibuild steps run as written, and pre-commit runs the hooks."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT
from tests.integration.test_first_model import committed_repo

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent
WORKFLOW = ROOT / "examples" / "ci" / "github-workflow.yml"


@pytest.mark.parametrize(
    ("template", "schema"),
    [("github-workflow.yml", "vendor.github-workflows"), ("gitlab-ci.yml", "vendor.gitlab-ci")],
)
def test_the_templates_validate_against_their_platform_schemas(template: str, schema: str) -> None:
    proc = subprocess.run(
        [
            str(BIN / "check-jsonschema"),
            "--builtin-schema",
            schema,
            str(ROOT / "examples/ci" / template),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def omibuild_steps() -> list[tuple[str, str]]:
    """(name, script) of the pull-request job's steps that run omibuild, as the file says."""
    jobs = yaml.safe_load(WORKFLOW.read_text())["jobs"]
    steps = [s for s in jobs["plan"]["steps"] if "run" in s and "omibuild " in s["run"]]
    return [(s["name"], s["run"]) for s in steps if "pip install" not in s["run"]]


def run_step(repo: Path, script: str, outputs: Path) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PATH": f"{BIN}:{os.environ['PATH']}",
        "GITHUB_OUTPUT": str(outputs / "output"),
        "GITHUB_STEP_SUMMARY": str(outputs / "summary.md"),
        # no engine, as on a lint-only runner: omi.lock pins what the engine would say
        "DOCKER_HOST": f"unix://{outputs}/no-engine.sock",
    }
    return subprocess.run(
        ["bash", "-e", "-c", script], cwd=repo, env=env, capture_output=True, text=True, check=False
    )


def test_the_github_workflow_steps_run_as_written(tmp_path: Path, unique: str) -> None:
    steps = omibuild_steps()
    assert [name for name, _ in steps] == ["Validate", "omi.lock is current", "Plan"]
    repo = committed_repo(tmp_path, f"ci-{unique}")
    outputs = tmp_path / "gh"
    outputs.mkdir()
    for name, script in steps:
        done = run_step(repo, script, outputs)
        assert done.returncode == 0, (name, done.stdout, done.stderr[-2000:])
    assert "exitcode=2" in (outputs / "output").read_text()  # a new image: changes pending
    summary = (outputs / "summary.md").read_text()
    assert summary.startswith(f"**omibuild plan** `ci-{unique}` 0.1.0") and "every stage" in summary

    # a manifest with a problem: the validate step fails with an annotation on its line
    text = (repo / "omi.yaml").read_text()
    (repo / "omi.yaml").write_text(text.replace("flavor: sklearn", "flavor: sklearnn"))
    line = 1 + text[: text.index("flavor: sklearn")].count("\n")
    name, script = steps[0]
    failed = run_step(repo, script, outputs)
    assert failed.returncode == 1, failed.stdout + failed.stderr
    annotation = re.search(
        r"^::error file=omi\.yaml,line=(\d+),col=(\d+),title=[^:]*::(.*)$", failed.stdout, re.M
    )
    assert annotation, failed.stdout
    assert int(annotation.group(1)) == line and "sklearnn" in annotation.group(3)


@pytest.fixture(scope="module")
def pre_commit_home() -> Path:
    """pre-commit's own cache (the hooks' virtualenv), kept across runs like a developer's."""
    home = ROOT / ".cache" / "pre-commit"
    home.mkdir(parents=True, exist_ok=True)
    return home


def test_pre_commit_try_repo_runs_the_shipped_hooks(
    tmp_path: Path, unique: str, pre_commit_home: Path
) -> None:
    repo = committed_repo(tmp_path, f"hooks-{unique}")
    # this checkout, hooks and all, as pre-commit would clone it (its uncommitted work too)
    source = tmp_path / "omibuild-src"
    shutil.copytree(
        ROOT,
        source,
        ignore=shutil.ignore_patterns(
            ".venv",
            ".cache",
            ".clients",
            "build",
            "*.egg-info",
            "__pycache__",
            ".*_cache",
            ".hypothesis",
        ),
    )
    subprocess.run(["git", "add", "-A"], cwd=source, check=True, capture_output=True)
    subprocess.run(
        [
            "git",
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@t",
            "commit",
            "-qm",
            "wip",
            "--allow-empty",
        ],
        cwd=source,
        check=True,
    )

    def try_repo() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / "pre-commit"), "try-repo", str(source), "--all-files"],
            cwd=repo,
            env={
                **os.environ,
                "PRE_COMMIT_HOME": str(pre_commit_home),
                "DOCKER_HOST": f"unix://{tmp_path}/none.sock",
            },
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )

    passing = try_repo()
    assert passing.returncode == 0, passing.stdout[-3000:] + passing.stderr[-2000:]
    assert re.search(r"omibuild validate\.+Passed", passing.stdout), passing.stdout
    assert re.search(r"omibuild lock --check\.+Passed", passing.stdout), passing.stdout

    text = (repo / "omi.yaml").read_text()
    (repo / "omi.yaml").write_text(text.replace("flavor: sklearn", "flavor: sklearnn"))
    failing = try_repo()
    assert failing.returncode == 1, failing.stdout[-3000:]
    assert re.search(r"omibuild validate\.+Failed", failing.stdout), failing.stdout
    assert "omi.yaml:" in failing.stdout and "sklearnn" in failing.stdout
