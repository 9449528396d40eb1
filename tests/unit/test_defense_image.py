"""omi.yaml's defense from the manifest to the serving process: validated with line-numbered
errors, reduced into the analysis layer and the plan (manifest/sections.py,
planning/analysis.py), and served by a real runtime process on a real plan: `/defense`, the
Prometheus counters, V1's flag, V2's outputs, Modzy's results and guard: reject."""

from __future__ import annotations

import json
import subprocess
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from omibuild.cli import main
from tests.unit.test_analysis import one_error, write_csv
from tests.unit.test_first_model_errors import HEAD

COLUMNS = ["a", "b", "c", "d"]


def correlated(n: int, seed: int = 0) -> np.ndarray:
    """Four features: two strongly correlated pairs."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, 2))
    noise = rng.normal(scale=0.2, size=(n, 4))
    return np.column_stack([z[:, 0], z[:, 0], z[:, 1], -z[:, 1]]) + noise


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "model.joblib").write_bytes(b"a model")
    write_csv(tmp_path / "train.csv", correlated(300))
    return tmp_path


# -- validation -------------------------------------------------------------------------------
def test_too_few_rows_for_alpha_names_the_field_the_count_and_the_fix(
    repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (repo / "omi.yaml").write_text(HEAD + "defense:\n  reference: train.csv\n  alpha: 0.01\n")
    assert main(["validate"]) == 1
    line = one_error(capsys)
    assert line.startswith("omi.yaml:11:10: $.defense.alpha: alpha 0.01 needs 1000 calibration")
    assert "train.csv gives 300 complete rows" in line and "raise alpha to 0.0667" in line
    (repo / "omi.yaml").write_text(HEAD + "defense:\n  reference: train.csv\n  alpha: 0.1\n")
    assert main(["validate"]) == 0


def test_a_defense_without_a_table_or_hook_is_one_line(
    repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (repo / "omi.yaml").write_text(HEAD + "defense:\n  guard: reject\n")
    assert main(["validate"]) == 1
    assert "defense needs a reference table" in one_error(capsys)


def test_the_reference_defaults_to_drift_s_and_its_errors_name_drift_s_line(
    repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = HEAD + "drift:\n  reference: missing.csv\ndefense:\n  alpha: 0.1\n"
    (repo / "omi.yaml").write_text(text)
    assert main(["validate"]) == 1
    lines = capsys.readouterr().err.splitlines()
    assert all(ln.startswith("omi.yaml:10:14: $.drift.reference:") for ln in lines[:-1])


def test_a_hook_must_exist_and_replaces_the_score(
    repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (repo / "omi.yaml").write_text(HEAD + "defense:\n  hook: detector:p_values\n  guard: off\n")
    assert main(["validate"]) == 1
    assert "module `detector` not found" in one_error(capsys)
    (repo / "detector.py").write_text("def p_values(inputs):\n    return [0.5] * len(inputs)\n")
    assert main(["validate"]) == 0


def test_an_unknown_guard_is_the_schema_s_one_line(
    repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = HEAD + "defense:\n  reference: train.csv\n  guard: block\n  alpha: 0.1\n"
    (repo / "omi.yaml").write_text(text)
    assert main(["validate"]) == 1
    assert one_error(capsys).startswith("omi.yaml:11:10: $.defense.guard: `block` is not allowed")


# -- the plan ---------------------------------------------------------------------------------
def prepared(repo: Path, tmp_path: Path, section: str) -> Any:
    from omibuild.planning.pipeline import prepare
    from omibuild.progress import QUIET
    from omibuild.store.cache import Cache

    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    (repo / "omi.yaml").write_text(HEAD + section)
    return prepare(repo / "omi.yaml", Cache(tmp_path / "cache"), QUIET)


def test_the_guard_s_facts_cover_every_row_and_the_sample_is_split_in_the_plan(
    tmp_path: Path,
) -> None:
    repo = tmp_path / "repo"
    (repo / "model").mkdir(parents=True)
    (repo / "model" / "model.joblib").write_bytes(b"a model")
    rows = correlated(3000)
    rows[2999, 0] = 50.0  # one row far out: the sample of 400 may miss it, the facts may not
    write_csv(repo / "train.csv", rows)
    p = prepared(
        repo, tmp_path, "defense:\n  reference: train.csv\n  samples: 400\n  alpha: 0.05\n"
    )
    files = dict(p.inputs.analysis)
    reference = json.loads(files["defense/reference.json"])
    assert reference["rows"] == 3000
    assert reference["features"][0] == {
        "name": "a",
        "kind": "numeric",
        "missing": False,
        "low": float(rows[:, 0].min()),
        "high": 50.0,
    }
    score = reference["score"]
    assert score["columns"] == COLUMNS and len(score["fit"]) == len(score["calibration"]) == 200
    omi = json.loads(p.plan.omi_json)
    assert omi["defense"] == {
        "reference": "defense/reference.json",
        "alpha": 0.05,
        "guard": "flag",
        "score": "mahalanobis",
        "hook": None,
    }
    labels = dict(p.plan.labels)
    assert json.loads(labels["io.omibuild.defense"]) == {
        "guard": "flag",
        "score": "mahalanobis",
        "alpha": 0.05,
    }
    again = prepared(
        repo, tmp_path, "defense:\n  reference: train.csv\n  samples: 400\n  alpha: 0.05\n"
    )
    assert again.plan.digest == p.plan.digest  # a fixed seed: the same bytes everywhere
    other = prepared(
        repo, tmp_path, "defense:\n  reference: train.csv\n  samples: 400\n  alpha: 0.1\n"
    )
    assert other.plan.digest != p.plan.digest


# -- the serving process ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def image_tree(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    """A real plan's /opt/omi for a logistic regression on the correlated table, with drift
    and the defense (guard: flag), as the image would hold it."""
    import joblib
    from sklearn.linear_model import LogisticRegression

    tmp_path = tmp_path_factory.mktemp("defense")
    repo = tmp_path / "repo"
    (repo / "model").mkdir(parents=True)
    x = correlated(2400)
    joblib.dump(LogisticRegression().fit(x, x[:, 0] > 0), repo / "model" / "model.joblib")
    write_csv(repo / "train.csv", x)
    p = prepared(
        repo, tmp_path, "drift:\n  reference: train.csv\n  window: 50\ndefense:\n  alpha: 0.01\n"
    )
    tree = tmp_path / "opt-omi"
    (tree / "model").mkdir(parents=True)
    (tree / "code").mkdir()
    (tree / "model" / "model.joblib").write_bytes((repo / "model" / "model.joblib").read_bytes())
    for path, body in p.inputs.analysis:
        (tree / "analysis" / path).parent.mkdir(parents=True, exist_ok=True)
        (tree / "analysis" / path).write_bytes(body)
    (tree / "omi.json").write_text(p.plan.omi_json)
    return tree, x


def call(url: str, body: Any = None, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        url, data, headers={"Content-Type": "application/json", **(headers or {})}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as r:
            text = r.read()
            return r.status, json.loads(text) if r.headers.get_content_type().endswith(
                "json"
            ) else text.decode()
    except urllib.error.HTTPError as err:
        text = err.read()
        try:
            return err.code, json.loads(text)
        except ValueError:
            return err.code, text.decode()


def variant(tree: Path, name: str, change: Callable[[dict[str, Any]], None]) -> Path:
    """A copy of the image's tree beside it whose omi.json ``change`` edited."""
    copy = tree.parent / name
    if not copy.exists():
        subprocess.run(["cp", "-r", str(tree), str(copy)], check=True)
    document = json.loads((tree / "omi.json").read_text())
    change(document)
    (copy / "omi.json").write_text(json.dumps(document))
    return copy


FAR = [40.0, 40.0, 0.0, 0.0]  # out of every range
BROKEN = [2.0, -2.0, 0.0, 0.0]  # within the ranges, against the correlation


def test_kfserving_v1_and_v2_screen_count_and_export(image_tree: tuple[Path, np.ndarray]) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    from tests.conformance.conftest import start_process

    tree, x = image_tree
    server = start_process(tree, "kfserving", "v2")
    try:
        base = server.url
        status, plain = call(f"{base}/v1/models/demo:predict", {"instances": x[:3].tolist()})
        assert status == 200 and "defense" not in plain  # nothing changes for who does not ask
        status, asked = call(
            f"{base}/v1/models/demo:predict?defense=true",
            {"instances": [x[0].tolist(), FAR, BROKEN]},
        )
        assert status == 200 and asked["predictions"][:1] == plain["predictions"][:1]
        typical, far, broken = asked["defense"]
        assert not typical["flagged"] and typical["p_value"] > 0.01
        assert far["flagged"] and {v["feature"] for v in far["violations"]} == {"a", "b"}
        assert broken["flagged"] and broken["violations"] == [] and broken["p_value"] <= 0.01
        status, header = call(
            f"{base}/v1/models/demo:predict", {"instances": [BROKEN]}, {"X-OMI-Defense": "true"}
        )
        assert header["defense"][0]["flagged"]
        status, v2 = call(
            f"{base}/v2/models/demo/infer",
            {
                "inputs": [
                    {"name": "x", "datatype": "FP64", "shape": [2, 4], "data": [*x[1], *BROKEN]}
                ],
                "outputs": [
                    {"name": "output-0"},
                    {"name": "omi_defense_p_value"},
                    {"name": "omi_defense_flagged"},
                ],
            },
        )
        assert status == 200, v2
        out = {o["name"]: o for o in v2["outputs"]}
        assert out["omi_defense_flagged"]["data"] == [False, True]
        assert out["omi_defense_flagged"]["datatype"] == "BOOL"
        assert out["omi_defense_p_value"]["data"][1] <= 0.01
        status, meta = call(f"{base}/v2")
        assert "defense" in meta["extensions"]
        status, report = call(f"{base}/defense")
        assert status == 200 and report["rows"] == 3 + 3 + 1 + 2
        assert report["flagged"] == 4 and report["rejected"] == 0
        assert {"feature": "a", "kind": "range", "count": 1} in report["guard_violations"]
        assert "40" not in json.dumps(report["guard_violations"])  # never a request's values
        status, text = call(f"{base}/metrics")
        families = {f.name: f for f in text_string_to_metric_families(text)}
        assert families["omi_defense_rows"].samples[0].value == 9
        assert families["omi_defense_rows_flagged"].samples[0].value == 4
        violations = {
            (s.labels["feature"], s.labels["kind"]): s.value
            for s in families["omi_defense_guard_violations"].samples
        }
        assert violations == {("a", "range"): 1, ("b", "range"): 1}
        buckets = [s for s in families["omi_defense_p_value"].samples if s.name.endswith("_bucket")]
        assert buckets[-1].value == 9
    finally:
        server.stop()


def test_guard_reject_is_a_400_naming_row_feature_and_range_on_every_http_interface(
    image_tree: tuple[Path, np.ndarray],
) -> None:
    from tests.conformance.conftest import start_process

    tree, x = image_tree
    rejecting = variant(tree, "reject", lambda d: d["defense"].update(guard="reject"))
    every = (("kfserving", "v2"), ("mlflow", "v1"), ("sagemaker", "v1"), ("vertex", "v1"))
    for interface, protocol in every:
        server = start_process(rejecting, interface, protocol)
        try:
            base = server.url
            if interface == "kfserving":
                status, body = call(
                    f"{base}/v1/models/demo:predict", {"instances": [x[0].tolist(), FAR]}
                )
                message = body["error"]
                v2 = {"inputs": [{"name": "x", "datatype": "FP64", "shape": [1, 4], "data": FAR}]}
                status2, body2 = call(f"{base}/v2/models/demo/infer", v2)
                assert status2 == 400 and "feature `a`" in body2["error"]
            elif interface == "mlflow":
                status, body = call(f"{base}/invocations", {"inputs": [x[0].tolist(), FAR]})
                message = body["message"]
            else:
                route = "/invocations" if interface == "sagemaker" else "/predict"
                status, body = call(f"{base}{route}", {"instances": [x[0].tolist(), FAR]})
                message = json.dumps(body)
            assert status == 400, (interface, body)
            assert (
                "defense rejected row 1: feature `a` (range): expected within the reference's ["
                in message
            )
            assert "40" not in message.split("[")[0]  # the row's value is not echoed
            status, report = call(f"{base}/defense")
            assert report["rejected"] >= 1
        finally:
            server.stop()


def test_modzy_says_adversarial_defense_and_each_result_carries_its_screening(
    image_tree: tuple[Path, np.ndarray],
) -> None:
    from tests.conformance.conftest import start_process

    tree, x = image_tree
    rest = variant(
        tree, "modzy-rest", lambda d: d["interfaces"]["modzy"].update(protocols=["v1", "v2"])
    )
    server = start_process(rest, "modzy", "v1")
    try:
        base = server.url
        status, _body = call(f"{base}/status")
        assert status == 200
        rows = [x[0].tolist(), BROKEN]
        status, answer = call(f"{base}/run", [rows])  # one item: two rows
        assert status == 200, answer
        result = answer["outputs"][0]
        assert [r["flagged"] for r in result["defense"]] == [False, True]
    finally:
        server.stop()

    def rejecting(document: dict[str, Any]) -> None:
        document["interfaces"]["modzy"]["protocols"] = ["v1", "v2"]
        document["defense"]["guard"] = "reject"

    server = start_process(variant(tree, "modzy-reject", rejecting), "modzy", "v1")
    try:
        status, answer = call(f"{server.url}/run", [[x[0].tolist(), FAR]])
        assert status == 400, answer
        assert "defense rejected row 1: feature `a` (range)" in answer["outputs"][0]["error"]
    finally:
        server.stop()


def test_v2_grpc_gives_the_defense_outputs_it_is_asked_for(
    image_tree: tuple[Path, np.ndarray],
) -> None:
    import tritonclient.grpc as triton

    from tests.conformance.conftest import start_process

    tree, x = image_tree
    server = start_process(tree, "kfserving", "v2")
    try:
        client = triton.InferenceServerClient(url=f"127.0.0.1:{server.grpc_port}")
        data = np.asarray([x[0], BROKEN], dtype=np.float64)
        tensor = triton.InferInput("input-0", list(data.shape), "FP64")
        tensor.set_data_from_numpy(data)
        names = ("output-0", "omi_defense_p_value", "omi_defense_flagged")
        result = client.infer(
            server.model, [tensor], outputs=[triton.InferRequestedOutput(n) for n in names]
        )
        assert result.as_numpy("omi_defense_flagged").tolist() == [False, True]
        assert result.as_numpy("omi_defense_p_value")[1] <= 0.01
        plain = client.infer(server.model, [tensor])
        assert [o.name for o in plain.get_response().outputs] == ["output-0"]
        client.close()
    finally:
        server.stop()


def test_a_team_s_hook_scores_the_rows_and_its_failure_is_one_line(
    image_tree: tuple[Path, np.ndarray],
) -> None:
    from tests.conformance.conftest import start_process

    tree, _ = image_tree

    def hooked(document: dict[str, Any]) -> None:
        document["defense"] = {"reference": None, "alpha": 0.05, "guard": "off",
                               "score": "off", "hook": "detector:p_values"}  # fmt: skip

    copy = variant(tree, "hooked", hooked)
    (copy / "code" / "detector.py").write_text(
        "def p_values(rows):\n"
        "    if abs(rows[0][0]) > 1000:\n"
        "        raise ValueError('secret ' + repr(rows))\n"
        "    return [0.01 if row[0] > 0 else 0.9 for row in rows]\n"
    )
    server = start_process(copy, "kfserving", "v2")
    try:
        url = f"{server.url}/v1/models/demo:predict?defense=true"
        status, body = call(url, {"instances": [[1.0, 1.0, 0.0, 0.0], [-1.0, -1.0, 0.0, 0.0]]})
        assert status == 200, body
        assert [(r["p_value"], r["flagged"]) for r in body["defense"]] == [
            (0.01, True),
            (0.9, False),
        ]
        status, body = call(url, {"instances": [[5000.0, 0.0, 0.0, 0.0]]})
        assert status == 500 and body["error"].startswith("defense hook failed: ValueError: secret")
        assert "\n" not in body["error"]
        status, report = call(f"{server.url}/defense")
        assert (report["score"], report["guard"], report["rows"], report["flagged"]) == (
            "hook", "off", 2, 1,
        )  # fmt: skip
    finally:
        server.stop()
