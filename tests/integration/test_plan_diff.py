"""`omibuild plan` as a reviewer reads it: a stranger's model in a fresh git repository, built
with `apply`, then changed (requirements, model, code, base image, labels) and planned
against the image in the local engine and in the loopback registry. A plan is a dry run: the
repository stays as it was."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.integration.conftest import BASE_IMAGE, docker
from tests.integration.test_first_model import cli, new_repo, train_joblib

pytestmark = pytest.mark.integration

HOOKS = "def postprocess(outputs):\n    return outputs\n"


def retrain(repo: Path) -> None:
    import joblib
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(max_iter=500, C=0.5).fit(*load_iris(return_X_y=True))
    joblib.dump(model, repo / "model" / "model.joblib")


def git_status(repo: Path) -> str:
    return subprocess.run(
        ["git", "status", "--porcelain"], cwd=repo, capture_output=True, text=True, check=True
    ).stdout


def plan(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return cli(repo, "plan", "--detailed-exitcode", *args)


def test_plan_shows_each_change_against_the_built_image_locally_and_in_the_registry(
    tmp_path: Path, unique: str, registry: str, image_cleanup: list[str]
) -> None:
    name = f"diff-{unique}"
    repo = new_repo(tmp_path, name, train_joblib)
    base = f"omibuild.local/base-{unique}:3.11"  # a base image of our own, to move later
    docker("tag", BASE_IMAGE, base)
    image_cleanup.append(base)
    assert cli(repo, "init").returncode == 0
    manifest = (repo / "omi.yaml").read_text()
    (repo / "src").mkdir()
    (repo / "src" / "hooks.py").write_text(HOOKS)
    manifest = manifest.replace("image:\n", f"image:\n  base: {base}\n  labels: {{team: search}}\n")
    manifest += "code:\n  path: src\nprocessing:\n  postprocess: hooks:postprocess\n"
    (repo / "omi.yaml").write_text(manifest)
    subprocess.run(["git", "add", "-A"], cwd=repo, check=True)
    subprocess.run(["git", "commit", "-qm", "model"], cwd=repo, check=True)

    first = plan(repo)  # nothing built yet: everything is new
    assert first.returncode == 2, first.stderr[-2000:]
    assert f"omibuild.local/{name}:latest will be created" in first.stdout
    assert git_status(repo) == ""  # a dry run: no omi.lock, nothing else either

    locked = cli(repo, "lock")  # the lock goes in with the model, as a team would commit it
    assert locked.returncode == 0 and "omi.lock: written" in locked.stdout, locked.stderr
    assert cli(repo, "lock", "--check").returncode == 0
    subprocess.run(["git", "add", "-A"], cwd=repo, check=True)
    subprocess.run(["git", "commit", "-qm", "lock"], cwd=repo, check=True)
    built = cli(repo, "apply", "--progress", "quiet")
    assert built.returncode == 0, built.stderr[-3000:]
    assert git_status(repo) == ""  # the lock was current: apply left it as it was
    same = plan(repo)
    assert same.returncode == 0, same.stdout + same.stderr[-2000:]
    assert "No changes." in same.stdout and "in the local engine" in same.stdout

    # every kind of change at once, each named
    (repo / "omi.yaml").write_text(
        manifest.replace("team: search", "team: ranking").replace(
            "  requirements:", "  requirements:\n    - threadpoolctl>=3"
        )
    )
    retrain(repo)
    (repo / "src" / "hooks.py").write_text(HOOKS + "# tuned\n")
    docker_build_label(base)  # the base image moves under the same name
    changed = plan(repo)
    assert changed.returncode == 2, changed.stdout + changed.stderr[-2000:]
    out = changed.stdout
    for expected in (
        "~ deps     rebuilt: base digest moved; model requirements changed",
        "+ threadpoolctl>=3",
        "~ model    rebuilt: 1 model file(s) changed",
        "~ model.joblib:",
        "~ code     rebuilt: 1 code file(s) changed",
        "~ hooks.py:",
        "~ label team: search → ranking",
        "Plan: 4 of 4 stages change",
    ):
        assert expected in out, (expected, out)
    assert git_status(repo) == " M model/model.joblib\n M omi.yaml\n M src/hooks.py\n"
    stale = cli(repo, "lock", "--check")
    assert stale.returncode == 1 and "omi.lock: out of date: " in stale.stderr
    assert "model digest sha256:" in stale.stderr
    assert "base image" in stale.stderr  # the base moved too, and the lock pins it
    refused = cli(repo, "plan", "--locked")
    assert refused.returncode == 1 and "no longer matches omi.lock" in refused.stderr

    # the same image in the registry, with no local copy: read from its config alone
    repository = f"{registry}/omibuild-test/{name}"
    pushed = manifest.replace("image:\n", f"image:\n  repository: {repository}\n")
    (repo / "omi.yaml").write_text(pushed)
    image_cleanup.append(f"{repository}:latest")
    built = cli(repo, "apply", "--push", "--progress", "quiet")
    assert built.returncode == 0, built.stderr[-3000:]
    for ref in docker(
        "image", "ls", "--format", "{{.Repository}}:{{.Tag}}", repository
    ).stdout.split():
        docker("image", "rm", ref)
    same = plan(repo)
    assert same.returncode == 0 and "No changes." in same.stdout, same.stdout + same.stderr
    assert f"the image {repository}:latest in its registry" in same.stdout
    (repo / "omi.yaml").write_text(pushed.replace("team: search", "team: ranking"))
    moved = plan(repo, "--format", "markdown")
    assert moved.returncode == 2, moved.stderr[-2000:]
    first_line = moved.stdout.splitlines()[0]
    assert first_line.endswith("**1 of 4 stages change (image)**"), first_line
    assert "- label team  search\n+ label team  ranking" in moved.stdout

    # a saved plan works as --against too; an error is exit 1 under --detailed-exitcode
    saved = tmp_path / "before.plan.json"
    assert cli(repo, "plan", "--out", str(saved)).returncode == 0
    assert plan(repo, "--against", str(saved)).returncode == 0
    (repo / "omi.yaml").write_text("apiVersion: omibuild/v1\nname: [\n")
    broken = plan(repo)
    assert broken.returncode == 1, broken.stderr


def docker_build_label(base: str) -> None:
    """Rebuild ``base`` as the same image plus a label: a new digest under the same name."""
    subprocess.run(
        ["docker", "build", "-q", "-t", base, "-"],
        input=f"FROM {BASE_IMAGE}\nLABEL rebuilt=yes\n",
        text=True,
        capture_output=True,
        check=True,
    )
