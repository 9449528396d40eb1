"""Explanations and drift baked into a stranger's image: a model and its training table made
in the test, in a fresh git repository; `omibuild init`, two sections added to omi.yaml,
`omibuild apply`; then the image is served and asked, over KServe V1, the V2 extension and
Modzy gRPC (chassisml's OMIClient), and through `omibuild check` and `omibuild run`."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conformance.conftest import free_port, run_client
from tests.integration.test_first_model import _iris, apply_json, cli, new_repo, train_joblib

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("analysis")]

FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
WINDOW = 200
# Bonferroni over 4 features at 0.001: a window drawn from the reference distribution is
# flagged with probability at most 0.001 (KS on tied values is conservative), so 20 windows at
# most 2%. The stream below is seeded, so the test itself is deterministic.
THRESHOLD = 0.001
SECTIONS = f"""
explain:
  background: data/train.csv
  exclude: [species]
drift:
  reference: data/train.csv
  exclude: [species]
  window: {WINDOW}
  threshold: {THRESHOLD}
"""
EXAMPLE = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]


def write_table(repo: Path) -> None:
    x, y = _iris()
    (repo / "data").mkdir()
    lines = [",".join([*FEATURES, "species"])]
    lines += [
        ",".join([*(str(float(v)) for v in row), str(int(label))])
        for row, label in zip(x, y, strict=True)
    ]
    (repo / "data" / "train.csv").write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """(repository, image) built once for the module."""
    from tests.conftest import remember_image

    unique = tmp_path_factory.mktemp("u").name[-6:].replace("_", "")
    repo = new_repo(tmp_path_factory.mktemp("analysis"), f"stranger-explain-{unique}", write)
    cleanup: list[str] = []
    yield repo, build(repo, cleanup)
    remember_image(*cleanup)


def write(repo: Path) -> None:
    train_joblib(repo)
    write_table(repo)


def build(repo: Path, cleanup: list[str]) -> str:
    assert cli(repo, "init").returncode == 0
    manifest = repo / "omi.yaml"
    text = manifest.read_text()
    written = next(ln for ln in text.splitlines() if ln.startswith("  example:"))
    text = text.replace(written, f"  example: {{instances: {json.dumps(EXAMPLE)}}}")
    manifest.write_text(text + SECTIONS)
    subprocess.run(["git", "add", "-A"], cwd=repo, check=True)
    subprocess.run(["git", "commit", "-qm", "model"], cwd=repo, check=True)
    plan = cli(repo, "plan")
    assert plan.returncode == 0, plan.stderr
    assert "explain/background.json" in plan.stdout and "drift/reference.json" in plan.stdout
    record = apply_json(repo, cleanup)
    return next(t for t in record["tags"] if t.endswith(":latest"))  # type: ignore[attr-defined]


def model(repo: Path) -> Any:
    import joblib

    return joblib.load(repo / "model" / "model.joblib")


class Container:
    def __init__(self, image: str, **env: str) -> None:
        self.port = free_port()
        inner = env.get("PSC_MODEL_PORT", "8080")
        flags = [x for k, v in env.items() for x in ("-e", f"{k}={v}")]
        self.cid = subprocess.run(
            ["docker", "run", "-d", "--rm", "--read-only", "--tmpfs", "/tmp", "--memory", "2g",
             "-p", f"127.0.0.1:{self.port}:{inner}", *flags, image],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip

    def wait(self, path: str) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=2).read()
                return
            except OSError:
                time.sleep(0.3)
        logs = subprocess.run(["docker", "logs", self.cid], capture_output=True, text=True)
        pytest.fail(f"the container did not start: {logs.stderr[-2000:]}")

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}",
            data=data,
            method=method,
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                text = response.read()
                status = response.status
        except urllib.error.HTTPError as err:
            text, status = err.read(), err.code
        try:
            return status, json.loads(text)
        except ValueError:
            return status, text.decode()

    def stop(self) -> None:
        subprocess.run(["docker", "stop", "-t", "10", self.cid], capture_output=True, check=False)


@pytest.fixture
def kfserving(built: tuple[Path, str]) -> Iterator[Container]:
    box = Container(built[1])
    box.wait("/v2/health/ready")
    yield box
    box.stop()


def assert_additive(document: dict[str, Any], rows: list[list[float]], repo: Path) -> None:
    """Each output's attributions sum to its value less the expected value, and the value is
    the model's own probability for that row."""
    proba = model(repo).predict_proba(np.asarray(rows))
    assert document["feature_names"] == FEATURES and document["output_names"] == ["0", "1", "2"]
    assert len(document["explanations"]) == len(rows)
    for i, row in enumerate(document["explanations"]):
        for o, out in enumerate(row["outputs"]):
            assert out["value"] == pytest.approx(proba[i, o], abs=1e-9)
            gap = abs(out["base_value"] + sum(out["attributions"]) - out["value"])
            assert gap < 1e-6, (i, o, gap)


def test_kserve_v1_and_the_v2_extension_explain_additively(
    built: tuple[Path, str], kfserving: Container
) -> None:
    repo, _ = built
    name = repo.name
    rows = [[5.1, 3.5, 1.4, 0.2], [6.0, 2.7, 5.1, 1.6], [6.7, 3.0, 5.2, 2.3]]
    status, v1 = kfserving.call("POST", f"/v1/models/{name}:explain", {"instances": rows})
    assert status == 200, v1
    assert v1["model_name"] == name and v1["method"] == "shap.exactexplainer"
    assert_additive(v1, rows, repo)

    tensor = {
        "name": "input-0",
        "shape": [3, 4],
        "datatype": "FP64",
        "data": [v for r in rows for v in r],
    }
    status, v2 = kfserving.call("POST", f"/v2/models/{name}/explain", {"inputs": [tensor]})
    assert status == 200, v2
    assert v2["explanations"] == v1["explanations"]
    status, meta = kfserving.call("GET", "/v2")
    assert {"explain", "drift"} <= set(meta["extensions"])

    status, bad = kfserving.call("POST", f"/v1/models/{name}:explain", {"instances": [[1, 2]]})
    # refused as infer refuses it: the rows go through predict first, whose 400 names the width
    assert status == 400 and "expecting 4 features" in bad["error"], bad
    assert kfserving.call("GET", "/v2/health/ready")[0] == 200  # still up


def predict(box: Container, name: str, rows: np.ndarray) -> None:
    status, body = box.call("POST", f"/v1/models/{name}:predict", {"instances": rows.tolist()})
    assert status == 200, body


def settled(box: Container, rows: int) -> dict[str, Any]:
    """The drift status once the detector has taken ``rows`` rows."""
    deadline = time.monotonic() + 30
    while True:
        status, body = box.call("GET", "/drift")
        assert status == 200, body
        if body["rows"] >= rows and body["rows_pending"] < WINDOW:
            return body  # type: ignore[no-any-return]
        assert time.monotonic() < deadline, body
        time.sleep(0.1)


def test_drift_stays_quiet_on_the_reference_and_names_a_shifted_feature(
    built: tuple[Path, str], kfserving: Container
) -> None:
    repo, _ = built
    x, _ = _iris()
    rng = np.random.default_rng(20261201)
    for _ in range(20):  # 20 windows drawn from the reference, in requests of 50 rows
        for _ in range(WINDOW // 50):
            predict(kfserving, repo.name, x[rng.integers(0, len(x), 50)])
    quiet = settled(kfserving, 20 * WINDOW)
    assert (quiet["windows"], quiet["windows_drifted"], quiet["drift"]) == (20, 0, False)

    sd = x[:, 2].std()
    flagged_at = None
    for window in range(1, 3):  # within 2 windows
        shifted = x[rng.integers(0, len(x), WINDOW)].copy()
        shifted[:, 2] += sd  # petal_length moved by one standard deviation
        predict(kfserving, repo.name, shifted)
        status = settled(kfserving, (20 + window) * WINDOW)
        if status["drift"]:
            flagged_at = window
            break
    assert flagged_at is not None, status
    assert status["features_drifted"] == ["petal_length"]
    p = {f["name"]: f["p_adjusted"] for f in status["last_window"]["features"]}
    assert (
        p["petal_length"] < THRESHOLD
        and min(p[n] for n in FEATURES if n != "petal_length") > THRESHOLD
    )

    metrics = urllib.request.urlopen(f"http://127.0.0.1:{kfserving.port}/metrics").read().decode()
    assert "omi_drift_detected 1" in metrics
    assert 'omi_drift_feature_detected{feature="petal_length"} 1' in metrics
    assert 'omi_drift_feature_detected{feature="sepal_width"} 0' in metrics
    assert f"omi_drift_windows_total {20 + flagged_at}" in metrics


def chassis_run(image: str, rows: list[list[float]]) -> dict[str, Any]:
    """One Modzy gRPC Run of ``rows`` (explain and detect_drift on) through chassisml's
    OMIClient, against the image started as Modzy v2: what chassis_explain.py prints."""
    box = Container(image, INTERFACE="modzy", PROTOCOL="v2", PSC_MODEL_PORT="45000")
    try:
        deadline = time.monotonic() + 60
        while True:  # gRPC: the client itself is the readiness probe
            try:
                return run_client(
                    "chassis", "chassis_explain.py", "127.0.0.1", str(box.port), json.dumps(rows)
                )
            except AssertionError:
                assert time.monotonic() < deadline, "the modzy container did not answer"
                time.sleep(1)
    finally:
        box.stop()


def test_modzy_run_explains_and_reports_drift_through_chassisml(built: tuple[Path, str]) -> None:
    repo, image = built
    answer = chassis_run(image, EXAMPLE)
    assert answer["explanation_format"] == "omibuild.explanation.v1+json"
    assert answer["drift_format"] == "omibuild.drift.v1+json"
    assert answer["run_status"] == 200
    [output] = answer["outputs"]
    results = output["files"]["results.json"]
    assert output["success"] and "predictions" in results
    assert_additive(results["explanation"], EXAMPLE, repo)
    assert results["drift"]["window"] == WINDOW and results["drift"]["rows"] >= len(EXAMPLE)


def test_check_and_run_exercise_what_the_image_carries(built: tuple[Path, str]) -> None:
    repo, image = built
    checked = cli(repo, "check", image, "--format", "json", "--timeout", "120")
    assert checked.returncode == 0, checked.stdout[-3000:] + checked.stderr[-2000:]
    findings = {f["requirement"]: f for f in json.loads(checked.stdout)["findings"]}
    explained = [r for r in findings if r.endswith(": explains the example input")]
    additive = [r for r in findings if "attributions sum to the output" in r]
    drift = [r for r in findings if r.endswith(": serves the drift status")]
    assert explained and additive and drift, sorted(findings)
    assert all(findings[r]["ok"] for r in explained + additive + drift)

    (repo / "rows.json").write_text(json.dumps({"instances": EXAMPLE}))
    ran = cli(repo, "run", image, "--explain", "rows.json", "--format", "json")
    assert ran.returncode == 0, ran.stderr[-2000:]
    answer = json.loads(ran.stdout)
    assert answer["status"] == 200
    assert_additive(answer["response"], EXAMPLE, repo)


def test_the_image_s_explain_refuses_what_its_infer_refuses(
    built: tuple[Path, str], kfserving: Container
) -> None:
    """The hostile cases of tests/unit/test_runtime_hostile.py against the built image: the
    same status from infer and explain, in JSON, never a plain-text 500."""
    from tests.unit.test_runtime_hostile import EXPLAIN_LIKE_INFER

    name = built[0].name
    for case, (infer, explain, body) in EXPLAIN_LIKE_INFER.items():
        paths = [p.replace("/models/m", f"/models/{name}") for p in (infer, explain)]
        answers = []
        for path in paths:
            req = urllib.request.Request(
                f"http://127.0.0.1:{kfserving.port}{path}", data=body,
                headers={"Content-Type": "application/json"},
            )  # fmt: skip
            try:
                with urllib.request.urlopen(req, timeout=60) as resp:
                    answers.append((resp.status, resp.read()))
            except urllib.error.HTTPError as err:
                answers.append((err.code, err.read()))
        (infer_status, _), (explain_status, reply) = answers
        assert 400 <= infer_status < 500 and explain_status == infer_status, (case, answers)
        assert json.loads(reply), (case, reply[:300])
