"""A stranger's own model, first try: a fresh git repository holding only a model trained
here, and the CLI as the README says to run it (`omibuild init`, `apply`, `run --predict`),
with no edits to what init wrote. Never touches examples/."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.integration

OMIBUILD = str(Path(sys.executable).with_name("omibuild"))
ROWS = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]


def cli(
    repo: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [OMIBUILD, *args],
        cwd=repo,
        capture_output=True,
        text=True,
        # the stranger's own omibuild cache, beside the repository in the test's temporary
        # directory, so that it goes with the test
        env={
            "OMIBUILD_CACHE_DIR": str(repo.parent / ".omibuild-cache"),
            **os.environ,
            **(env or {}),
        },
        timeout=900,
        check=False,
    )


def _iris() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_iris

    x, y = load_iris(return_X_y=True)
    return x, y


def train_joblib(repo: Path) -> None:
    import joblib
    from sklearn.ensemble import RandomForestClassifier

    (repo / "model").mkdir()
    joblib.dump(
        RandomForestClassifier(n_estimators=5, random_state=0).fit(*_iris()),
        repo / "model" / "model.joblib",
    )


def train_onnx(repo: Path) -> None:
    from skl2onnx import to_onnx
    from sklearn.linear_model import LogisticRegression

    x, y = _iris()
    onx = to_onnx(LogisticRegression(max_iter=500).fit(x, y), x[:1].astype(np.float32))
    (repo / "classifier.onnx").write_bytes(onx.SerializeToString())  # beside train.py


def train_mlflow(repo: Path) -> None:
    from importlib.metadata import version

    import mlflow.sklearn
    from sklearn.linear_model import LogisticRegression

    # MLflow infers requirements from every module its process has loaded: in this test
    # process that includes torch (with a local +cpu label) and pytest. A user's notebook
    # names its own; so does this one, to keep the image small.
    pins = [f"{d}=={version(d)}" for d in ("mlflow", "scikit-learn", "skops", "numpy")]
    with warnings.catch_warnings():  # MLflow's own notes about type hints while saving
        warnings.simplefilter("ignore")
        mlflow.sklearn.save_model(
            LogisticRegression(max_iter=500).fit(*_iris()),
            str(repo / "artifacts" / "iris"),
            pip_requirements=pins,
        )


def new_repo(tmp_path: Path, name: str, train: Callable[[Path], None]) -> Path:
    """A git repository holding a freshly trained model. Every image of the repository
    ``omibuild.local/<name>`` that `omibuild init` names goes when the test run ends."""
    from tests.conftest import remember_image

    remember_image(f"omibuild.local/{name}")
    repo = tmp_path / name
    repo.mkdir()
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    (repo / "train.py").write_text("# the script that trained the model (not part of it)\n")
    train(repo)
    (repo / "request.json").write_text(json.dumps({"instances": ROWS}))
    return repo


def without_example(text: str) -> str:
    """What init wrote, less its example input (and the comment under it)."""
    lines = text.splitlines(keepends=True)
    return "".join(ln for ln in lines if not ln.lstrip().startswith(("example:", "# ^ ")))


def committed_repo(tmp_path: Path, name: str) -> Path:
    """new_repo after `init` and `lock`, all committed: a model repository as a team keeps it."""
    repo = new_repo(tmp_path, name, train_joblib)
    assert cli(repo, "init").returncode == 0
    assert cli(repo, "lock").returncode == 0
    subprocess.run(["git", "add", "-A"], cwd=repo, check=True)
    subprocess.run(["git", "commit", "-qm", "model"], cwd=repo, check=True)
    return repo


def apply_json(repo: Path, image_cleanup: list[str]) -> dict[str, object]:
    built = cli(repo, "apply", "--format", "json", "--progress", "quiet")
    assert built.returncode == 0, built.stderr[-3000:]
    [record] = json.loads(built.stdout)
    image_cleanup += record["tags"]
    assert record["status"] == "built" and str(record["image_digest"]).startswith("sha256:")
    return record


@pytest.mark.parametrize(
    ("train", "flavor", "source_path"),
    [
        (train_joblib, "sklearn", "model"),
        (train_onnx, "onnx", "classifier.onnx"),
        (train_mlflow, "pyfunc", "artifacts/iris"),
    ],
    ids=["sklearn-joblib", "onnx", "mlflow-dir"],
)
def test_init_apply_run_serves_a_model_trained_here_with_no_edits(
    tmp_path: Path,
    unique: str,
    engine: None,
    cache_dir: Path,
    image_cleanup: list[str],
    train: Callable[[Path], None],
    flavor: str,
    source_path: str,
) -> None:
    repo = new_repo(tmp_path, f"stranger-{flavor}-{unique}", train)
    init = cli(repo, "init")
    assert init.returncode == 0, init.stderr
    manifest = (repo / "omi.yaml").read_text()
    assert f"name: stranger-{flavor}-{unique}\n" in manifest  # the repository's name
    assert f"path: {source_path}\n" in manifest and f"flavor: {flavor} " in manifest
    validate = cli(repo, "validate")
    assert validate.returncode == 0 and "warning" not in validate.stdout + validate.stderr

    record = apply_json(repo, image_cleanup)
    image = next(t for t in record["tags"] if t.endswith(":latest"))  # type: ignore[attr-defined]
    model_files = json.loads(
        subprocess.run(
            ["docker", "run", "--rm", "--entrypoint", "cat", image, "/opt/omi/omi.json"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )["model"]["files"]
    names = {f["path"] for f in model_files}
    assert not names & {"omi.yaml", "omi.lock", "train.py", "request.json"}, names

    ran = cli(repo, "run", "--predict", "request.json", "--format", "json")
    assert ran.returncode == 0, ran.stderr[-2000:]
    answer = json.loads(ran.stdout)
    assert answer["status"] == 200 and answer["interface"] == "kfserving"
    label = answer["response"]["outputs"][0]  # ONNX classifiers add the probabilities
    assert label["shape"][0] == 2 and label["data"][:2] == [0, 2]


def test_a_model_whose_package_is_missing_stops_and_run_names_the_module(
    tmp_path: Path, unique: str, engine: None, cache_dir: Path, image_cleanup: list[str]
) -> None:
    """The flavor's package left out of the image: validate warns, the container stops at
    once, and `run --predict` says which module is missing within 15 s."""
    repo = new_repo(tmp_path, f"stranger-missing-{unique}", train_joblib)
    assert cli(repo, "init").returncode == 0
    text = (repo / "omi.yaml").read_text()
    (repo / "omi.yaml").write_text(
        "".join(ln for ln in text.splitlines(keepends=True) if "scikit-learn==" not in ln)
    )
    validate = cli(repo, "validate")
    assert validate.returncode == 0, validate.stderr
    assert "warning: the sklearn flavor loads the model with scikit-learn" in validate.stdout
    # with the example init wrote, the build's dry prediction stops it, in one line
    failed = cli(repo, "apply", "--progress", "quiet")
    assert failed.returncode == 1
    assert (
        "model failed to load: No module named 'sklearn' (hint: add scikit-learn to "
        "image.requirements in omi.yaml and apply again); full log: "
    ) in failed.stderr, failed.stderr
    (repo / "omi.yaml").write_text(without_example((repo / "omi.yaml").read_text()))
    apply_json(repo, image_cleanup)
    start = time.monotonic()
    ran = cli(repo, "run", "--predict", "request.json")
    seconds = time.monotonic() - start
    assert ran.returncode == 1, ran.stderr
    last = ran.stderr.strip().splitlines()[-1]
    assert last.startswith("omibuild: error: ") and last.endswith(
        "stopped (exit code 1) before it was ready: model failed to load: No module named "
        "'sklearn' (hint: add scikit-learn to image.requirements in omi.yaml and apply again)"
    ), ran.stderr
    assert seconds < 15, seconds

    image = next(t for t in image_cleanup if t.endswith(":latest"))
    start = time.monotonic()
    checked = cli(repo, "check", image, "--format", "json")
    seconds = time.monotonic() - start
    assert checked.returncode == 1, checked.stderr
    ready = [
        f for f in json.loads(checked.stdout)["findings"] if "becomes ready" in f["requirement"]
    ]
    assert ready and all(
        not f["ok"]
        and f["detail"].startswith("container exited with code 1: model failed to load: ")
        and "No module named 'sklearn'" in f["detail"]
        for f in ready
    ), ready
    assert seconds < 30, seconds  # every interface stops at once; none waits out a timeout


def test_plans_of_an_init_manifest_are_stable_and_the_same_without_an_engine(
    tmp_path: Path, unique: str, engine: None, cache_dir: Path
) -> None:
    repo = new_repo(tmp_path, f"stranger-plan-{unique}", train_joblib)
    assert cli(repo, "init").returncode == 0
    assert cli(repo, "lock").returncode == 0  # pins the base image's digest, for engine-less plans
    first = cli(repo, "plan", "--format", "json")
    second = cli(repo, "plan", "--format", "json")
    assert first.returncode == 0, first.stderr
    assert first.stdout == second.stdout  # byte-identical: omi.lock is not a model file
    plan = json.loads(first.stdout)
    assert [f["path"] for layer in plan["model_layers"] for f in layer["files"]] == ["model.joblib"]
    assert dict(plan["labels"])["org.opencontainers.image.base.digest"].startswith("sha256:")

    nowhere = {"DOCKER_HOST": f"unix://{tmp_path}/no-engine.sock"}
    offline = cli(repo, "plan", "--format", "json", env=nowhere)
    assert offline.returncode == 0, offline.stderr
    assert json.loads(offline.stdout)["digest"] == plan["digest"]

    (repo / "omi.lock").unlink()  # nothing pins the base now: the plan says so, and differs
    unpinned = cli(repo, "plan", "--format", "json", env=nowhere)
    assert "the digest of base image" in unpinned.stderr and "does not pin it" in unpinned.stderr
    assert json.loads(unpinned.stdout)["digest"] != plan["digest"]


def test_the_build_learns_the_outputs_from_the_example_and_a_bad_example_fails_it(
    tmp_path: Path, unique: str, engine: None, cache_dir: Path, image_cleanup: list[str]
) -> None:
    """A stranger adds an example input to what init wrote: the build predicts it once, and
    V2 metadata states the outputs before any request. An example the model cannot take
    fails the build, with the reason in one line."""
    from omibuild.conformance.images import free_port

    repo = new_repo(tmp_path, f"stranger-outputs-{unique}", train_joblib)
    assert cli(repo, "init").returncode == 0
    manifest = repo / "omi.yaml"
    written = without_example(manifest.read_text())  # this stranger writes their own
    manifest.write_text(
        written.replace("model:\n", "model:\n  example: {instances: [[5.1, 3.5, 1.4, 0.2]]}\n", 1)
    )
    assert cli(repo, "validate").returncode == 0
    record = apply_json(repo, image_cleanup)
    image = next(t for t in record["tags"] if t.endswith(":latest"))  # type: ignore[attr-defined]
    port = free_port()
    cid = subprocess.run(
        ["docker", "run", "-d", "--rm", "-p", f"127.0.0.1:{port}:8080", image],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    try:
        import urllib.request

        name = f"stranger-outputs-{unique}"
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{port}/v2/models/{name}", timeout=5
                ) as resp:
                    meta = json.load(resp)
                break
            except OSError:
                assert time.monotonic() < deadline, "the image never answered"
                time.sleep(0.3)
    finally:
        subprocess.run(["docker", "rm", "-f", cid], capture_output=True, check=False)
    assert meta["outputs"] == [{"name": "output-0", "datatype": "INT64", "shape": [-1]}]

    manifest.write_text(
        written.replace("model:\n", "model:\n  example: {instances: [[1.0, 2.0]]}\n", 1)
    )
    failed = cli(repo, "apply", "--progress", "quiet")
    assert failed.returncode == 1, failed.stderr
    [line] = failed.stderr.strip().splitlines()  # one line: the reason, and the log's path
    assert line.startswith(
        f"omibuild: error: stranger-outputs-{unique}: omi.yaml example: the model cannot "
        "predict it (the model rejected the input: ValueError: X has 2 features"
    ), line
    assert Path(line.rsplit("; full log: ", 1)[1]).is_file()


def held_by_it(lock: Path, proc: subprocess.Popen[str]) -> None:
    """Wait (bounded) until the process holds the cache, as every omibuild command does."""
    import fcntl

    deadline = time.monotonic() + 60
    while True:
        with open(lock, "a") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                fcntl.flock(fh, fcntl.LOCK_UN)
            except BlockingIOError:
                return
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert time.monotonic() < deadline, "the build never took the cache"
        time.sleep(0.02)


def test_cache_lists_a_build_and_prune_beside_a_running_build_leaves_it_whole(
    tmp_path: Path, unique: str, engine: None, image_cleanup: list[str]
) -> None:
    """A stranger's cache (its own OMIBUILD_CACHE_DIR): `omibuild cache` lists the build's
    context, image layout and layer digests (no BuildKit cache directory: none is exported
    unless asked for); a prune run while another build runs keeps what that build holds and
    the build succeeds; a prune afterwards removes everything and the next apply works."""
    own = {"OMIBUILD_CACHE_DIR": str(tmp_path / "omicache")}
    repo = new_repo(tmp_path, f"stranger-prune-{unique}", train_joblib)
    assert cli(repo, "init", env=own).returncode == 0
    built = cli(repo, "apply", "--format", "json", "--progress", "quiet", env=own)
    assert built.returncode == 0, built.stderr[-2000:]
    image_cleanup += json.loads(built.stdout)[0]["tags"]
    listed = cli(repo, "cache", "--format", "json", env=own)
    assert listed.returncode == 0, listed.stderr
    entries = json.loads(listed.stdout)["entries"]
    assert [e for e in entries if e["kind"] == "build cache"] == []
    for kind in ("build context", "image layout"):
        assert [e["name"] for e in entries if e["kind"] == kind] == [f"stranger-prune-{unique}"]
    assert [e["kind"] for e in entries].count("layer digests") == 1
    engine_cache = json.loads(listed.stdout)["engine_build_cache"]  # the engine's, shown too
    assert 0 < engine_cache["omibuild"] <= engine_cache["total"] and engine_cache["records"] > 0

    (repo / "model" / "extra.txt").write_text(f"retrained {unique}\n")  # a new build's work
    env = {**os.environ, **own}
    running = subprocess.Popen(
        [OMIBUILD, "apply", "--format", "json", "--progress", "quiet"],
        cwd=repo,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        held_by_it(Path(own["OMIBUILD_CACHE_DIR"]) / "locks" / "in-use.lock", running)
        pruned = cli(repo, "cache", "prune", "--keep", "0", "--format", "json", env=own)
        out, err = running.communicate(timeout=600)
    finally:
        if running.poll() is None:
            running.kill()
            running.communicate()
    assert pruned.returncode == 0, pruned.stderr
    report = json.loads(pruned.stdout)
    assert report["removed"] == [] and report["busy"], report
    assert report["not_pruned"] == []
    assert running.returncode == 0, err[-3000:]
    image_cleanup += json.loads(out)[0]["tags"]

    emptied = cli(repo, "cache", "prune", "--keep", "0", env=own)
    # the context, the image layout, the model layer digests, the plan's state and the answer
    assert emptied.returncode == 0 and emptied.stdout.startswith("removed 5 entries"), emptied
    assert "BuildKit cache directories are not pruned" not in emptied.stderr
    after = json.loads(cli(repo, "cache", "--format", "json", env=own).stdout)["entries"]
    assert after == []
    (repo / "model" / "extra.txt").write_text(f"retrained again {unique}\n")
    again = cli(repo, "apply", "--format", "json", "--progress", "quiet", env=own)
    assert again.returncode == 0, again.stderr[-3000:]
    image_cleanup += json.loads(again.stdout)[0]["tags"]

    # bounded by default: an apply over cache_max prunes back to it and says so once
    (repo / "model" / "extra.txt").write_text(f"retrained a third time {unique}\n")
    capped = cli(repo, "apply", "--format", "json", env={**own, "OMIBUILD_CACHE_MAX": "1kB"})
    assert capped.returncode == 0, capped.stderr[-3000:]
    image_cleanup += json.loads(capped.stdout)[0]["tags"]
    [said] = [ln for ln in capped.stderr.splitlines() if "cache_max" in ln]
    assert said.startswith("omibuild: the cache was over cache_max (1.0 kB): removed "), said
    left = json.loads(cli(repo, "cache", "--format", "json", env=own).stdout)["entries"]
    assert sum(e["bytes"] for e in left) <= 1000, left
