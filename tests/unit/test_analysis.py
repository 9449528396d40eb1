"""Explain's background and drift's reference: read, validated and reduced at build time
(manifest/tables.py, planning/analysis.py), then used in the serving process
(runtime/explain.py, runtime/drift.py). The statistics run on real scipy and SHAP."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from omibuild.cli import main
from omibuild.manifest.tables import TableError, read_table
from omibuild.runtime.drift import DriftMonitor
from omibuild.runtime.explain import Explainer, ExplainError, ExplainInputError
from tests.unit.test_first_model_errors import HEAD

COLUMNS = ["a", "b", "c", "d"]


def write_csv(path: Path, rows: np.ndarray, header: list[str] = COLUMNS) -> None:
    path.write_text(
        ",".join(header) + "\n" + "".join(",".join(map(repr, r)) + "\n" for r in rows.tolist())
    )


# -- tables ---------------------------------------------------------------------------------
def test_a_csv_row_of_the_wrong_width_is_named_by_its_line(tmp_path: Path) -> None:
    (tmp_path / "t.csv").write_text("a,b,c\n1,2,3\n4,5\n")
    with pytest.raises(TableError) as err:
        read_table(tmp_path / "t.csv", "data/t.csv", samples=10)
    assert str(err.value) == "data/t.csv line 3: 2 values in a table of 3 columns"


def test_a_word_in_a_numeric_only_table_names_line_and_column(tmp_path: Path) -> None:
    (tmp_path / "t.csv").write_text("a,b\n1,2\n3,setosa\n")
    with pytest.raises(TableError, match=r"^t.csv line 3: column `b` is not a number"):
        read_table(tmp_path / "t.csv", "t.csv", samples=10, numeric_only=True)
    table = read_table(tmp_path / "t.csv", "t.csv", samples=10)  # drift: a category
    assert table.kinds == ("numeric", "categorical")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "t.csv: empty; a CSV table starts with a header row naming its columns"),
        ("1,2\n3,4\n", "t.csv line 1: the first row is numbers"),
        ("a,a\n1,2\n", "t.csv line 1: column `a` is named twice"),
        ("a,b\n", "t.csv: no rows below the header"),
        ('a,b\n1,"2\n', "t.csv line 2: not CSV (unexpected end of data)"),
    ],
)
def test_malformed_csv_is_one_line(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "t.csv").write_text(text)
    with pytest.raises(TableError) as err:
        read_table(tmp_path / "t.csv", "t.csv", samples=10)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_the_sample_is_fixed_by_the_file_alone_and_keeps_file_order(tmp_path: Path) -> None:
    rows = np.arange(4000, dtype=float).reshape(1000, 4)
    write_csv(tmp_path / "t.csv", rows)
    first = read_table(tmp_path / "t.csv", "t.csv", samples=50, exclude=["d"])
    second = read_table(tmp_path / "t.csv", "t.csv", samples=50, exclude=["d"])
    assert first == second and first.total_rows == 1000 and first.columns == ("a", "b", "c")
    picked = [r[0] for r in first.rows]
    assert len(picked) == 50 and picked == sorted(picked)
    assert picked[-1] > 2000  # a sample of the whole file, not its head


def test_json_tables_of_objects_and_of_lists(tmp_path: Path) -> None:
    (tmp_path / "o.json").write_text(json.dumps([{"x": 1, "y": "u"}, {"x": 2.5, "y": "v"}]))
    table = read_table(tmp_path / "o.json", "o.json", samples=5)
    assert table.columns == ("x", "y") and table.kinds == ("numeric", "categorical")
    assert table.rows == ((1.0, "u"), (2.5, "v"))
    (tmp_path / "l.json").write_text("[[1, 2], [3]]")
    with pytest.raises(TableError, match=r"^l\.json row 2: 1 values in a table of 2 columns$"):
        read_table(tmp_path / "l.json", "l.json", samples=5)


# -- validation, as a stranger meets it ------------------------------------------------------
@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A model repository with a table of 300 rows beside the model (the current directory)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "model.joblib").write_bytes(b"a model")
    write_csv(tmp_path / "train.csv", np.random.default_rng(0).normal(size=(300, 4)))
    return tmp_path


def one_error(capsys: pytest.CaptureFixture[str]) -> str:
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert lines[1:] == ["1 problem in 1 of 1 file(s)"], lines
    return lines[0]


def test_a_missing_background_file_is_one_line_naming_the_field(
    repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (repo / "omi.yaml").write_text(HEAD + "explain:\n  background: data/train.csv\n")
    assert main(["validate"]) == 1
    line = one_error(capsys)
    assert line.startswith("omi.yaml:10:15: $.explain.background: `data/train.csv` does not exist")


def test_a_malformed_reference_file_names_its_line(
    repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with (repo / "train.csv").open("a") as fh:
        fh.write("1.0,2.0\n")
    (repo / "omi.yaml").write_text(HEAD + "drift:\n  reference: train.csv\n")
    assert main(["validate"]) == 1
    assert one_error(capsys) == (
        "omi.yaml:10:14: $.drift.reference: train.csv line 302: 2 values in a table of 4 columns"
    )


def test_a_reference_outside_the_repository_is_refused(
    repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (repo / "omi.yaml").write_text(HEAD + "drift:\n  reference: ../../etc/passwd.csv\n")
    assert main(["validate"]) == 1
    assert one_error(capsys).startswith("omi.yaml:10:14: $.drift.reference:")


def test_background_and_hook_together_are_refused(
    repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (repo / "hooks.py").write_text("def explain(rows, predict):\n    return []\n")
    text = HEAD + "explain:\n  background: train.csv\n  hook: hooks:explain\n"
    (repo / "omi.yaml").write_text(text)
    assert main(["validate"]) == 1
    assert "explain takes one of `background`" in capsys.readouterr().err


def test_an_unknown_column_names_the_table_columns(
    repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (repo / "omi.yaml").write_text(HEAD + "drift:\n  reference: train.csv\n  exclude: [label]\n")
    assert main(["validate"]) == 1
    assert "train.csv has no column `label` (named in `exclude`); its columns: a, b, c, d" in (
        one_error(capsys)
    )


# -- drift ----------------------------------------------------------------------------------
def monitor(reference: np.ndarray, **spec: Any) -> DriftMonitor:
    features = [
        {"name": n, "kind": "numeric", "values": sorted(reference[:, j].tolist())}
        for j, n in enumerate(COLUMNS)
    ]
    body = {"rows": len(reference), "total_rows": len(reference), "features": features}
    return DriftMonitor(body, {"window": 200, "threshold": 0.001, **spec})


def settle(m: DriftMonitor) -> None:
    deadline = time.monotonic() + 30
    while not m.idle():
        assert time.monotonic() < deadline, "the drift thread did not finish"
        time.sleep(0.01)


@pytest.mark.parametrize("correction", ["bonferroni", "fdr"])
def test_a_stream_from_the_reference_is_not_flagged_and_a_shift_is_named(
    correction: str,
) -> None:
    rng = np.random.default_rng(7)
    m = monitor(rng.normal(size=(5000, 4)), correction=correction)
    for _ in range(20):  # 20 windows of 200 rows, in requests of 25
        for _ in range(8):
            m.offer(rng.normal(size=(25, 4)))
    settle(m)
    assert (m.windows, m.windows_drifted) == (20, 0)
    shifted = rng.normal(size=(200, 4))
    shifted[:, 2] += 1.0  # one standard deviation
    m.offer(shifted)
    settle(m)
    status = m.status()
    assert status["windows"] == 21 and status["drift"] and status["features_drifted"] == ["c"]


def test_rows_that_are_not_a_table_of_the_reference_width_are_skipped_not_fatal() -> None:
    m = monitor(np.random.default_rng(1).normal(size=(500, 4)))
    m.offer(np.zeros((3, 5)))
    m.offer([{"a": 1.0, "b": 2.0, "c": 3.0, "d": 4.0}] * 4)  # objects with its names
    m.offer("text")
    settle(m)
    assert m.skipped == 4 and m.rows == 4


def test_categorical_counts_are_tested_with_chi_squared() -> None:
    reference = {"red": 500, "green": 300, "blue": 200}
    body = {"features": [{"name": "colour", "kind": "categorical", "counts": reference}]}
    m = DriftMonitor(body, {"window": 300, "threshold": 0.01})
    same = m.test([np.asarray(["red"] * 150 + ["green"] * 90 + ["blue"] * 60, dtype=object)])
    moved = m.test([np.asarray(["red"] * 60 + ["green"] * 90 + ["blue"] * 150, dtype=object)])
    assert not same["drift"] and same["features"][0]["test"] == "chi2"
    assert moved["features_drifted"] == ["colour"]


def test_fdr_adjusts_as_benjamini_hochberg() -> None:
    from omibuild.runtime.drift import _corrected

    p = [0.01, 0.04, 0.03, 0.5]
    assert _corrected(p, "bonferroni") == [0.04, 0.16, 0.12, 1.0]
    assert _corrected(p, "fdr") == pytest.approx([0.04, 0.0533333, 0.0533333, 0.5])


def test_metrics_name_each_feature_after_a_window() -> None:
    rng = np.random.default_rng(3)
    m = monitor(rng.normal(size=(1000, 4)))
    assert "omi_drift_p_value" not in "\n".join(m.metrics(str))
    m.offer(rng.normal(size=(200, 4)))
    settle(m)
    text = "\n".join(m.metrics(str))
    assert "omi_drift_windows_total 1" in text and 'omi_drift_p_value{feature="d"}' in text


# -- explanations ---------------------------------------------------------------------------
class SklearnFlavor:
    def __init__(self, model: Any) -> None:
        self.model = model


@pytest.fixture
def iris_explainer(tmp_path: Path) -> tuple[Explainer, SklearnFlavor, np.ndarray]:
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    x, y = load_iris(return_X_y=True)
    (tmp_path / "explain").mkdir()
    body = {"columns": COLUMNS, "rows": x[::3].tolist()}
    (tmp_path / "explain" / "background.json").write_text(json.dumps(body))
    spec = {"method": "shap", "background": "explain/background.json", "output": "auto"}
    explainer = Explainer(spec, tmp_path, tmp_path, "sklearn")
    return explainer, SklearnFlavor(LogisticRegression(max_iter=500).fit(x, y)), x


def test_shap_attributions_add_up_to_the_output_less_the_expected_value(
    iris_explainer: tuple[Explainer, SklearnFlavor, np.ndarray],
) -> None:
    explainer, flavor, x = iris_explainer
    doc = explainer.explain(flavor, x[[0, 60, 120]].tolist(), flavor.model.predict)
    assert doc["feature_names"] == COLUMNS and doc["output_names"] == ["0", "1", "2"]
    proba = flavor.model.predict_proba(x[[0, 60, 120]])
    for i, row in enumerate(doc["explanations"]):
        for o, out in enumerate(row["outputs"]):
            assert out["value"] == pytest.approx(proba[i, o], abs=1e-12)
            assert abs(out["base_value"] + sum(out["attributions"]) - out["value"]) < 1e-6


def test_rows_of_another_width_are_an_input_error(
    iris_explainer: tuple[Explainer, SklearnFlavor, np.ndarray],
) -> None:
    explainer, flavor, _ = iris_explainer
    with pytest.raises(ExplainInputError, match="explain takes rows of 4 numbers"):
        explainer.explain(flavor, [[1.0, 2.0]], flavor.model.predict)


def test_a_hook_that_raises_is_an_error_and_the_next_call_works(tmp_path: Path) -> None:
    (tmp_path / "hooks.py").write_text(
        "def explain(rows, predict):\n"
        "    if rows == 'boom':\n"
        "        raise RuntimeError('no explanation for you')\n"
        "    return [{'rows': len(rows), 'predicted': predict(rows)}]\n"
    )
    explainer = Explainer({"method": "hook", "hook": "hooks:explain"}, tmp_path, tmp_path, "custom")
    with pytest.raises(ExplainError) as err:
        explainer.explain(None, "boom", len)
    assert str(err.value) == "explain hook failed: RuntimeError: no explanation for you"
    answer = explainer.explain(None, [[1], [2]], len)
    assert answer == {"method": "hook", "explanations": [{"rows": 2, "predicted": 2}]}


# -- a served process: the hook's failure is the request's, not the server's -----------------
def test_a_raising_hook_is_a_one_line_500_and_the_server_keeps_serving(tmp_path: Path) -> None:
    import subprocess
    import urllib.error
    import urllib.request

    import joblib
    from sklearn.linear_model import LogisticRegression

    from omibuild.planning.pipeline import prepare
    from omibuild.progress import QUIET
    from omibuild.store.cache import Cache
    from tests.conformance.conftest import start_process

    repo = tmp_path / "repo"
    (repo / "model").mkdir(parents=True)
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 4))
    joblib.dump(LogisticRegression().fit(x, x[:, 0] > 0), repo / "model" / "model.joblib")
    write_csv(repo / "train.csv", x)
    (repo / "hooks.py").write_text(
        "def explain(rows, predict):\n"
        "    if rows[0][0] > 100:\n"
        "        raise ValueError('the secret row ' + repr(rows))\n"
        "    return {'predicted': predict(rows).tolist()}\n"
    )
    (repo / "omi.yaml").write_text(
        HEAD + "explain:\n  hook: hooks:explain\ndrift:\n  reference: train.csv\n  window: 50\n"
    )
    prepared = prepare(repo / "omi.yaml", Cache(tmp_path / "cache"), QUIET)
    tree = tmp_path / "opt-omi"
    (tree / "code").mkdir(parents=True)
    (tree / "code" / "hooks.py").write_text((repo / "hooks.py").read_text())
    (tree / "model").mkdir()
    (tree / "model" / "model.joblib").write_bytes((repo / "model" / "model.joblib").read_bytes())
    for path, body in prepared.inputs.analysis:
        (tree / "analysis" / path).parent.mkdir(parents=True, exist_ok=True)
        (tree / "analysis" / path).write_bytes(body)
    (tree / "omi.json").write_text(prepared.plan.omi_json)
    server = start_process(tree, "kfserving", "v1")

    def post(path: str, rows: list[list[float]]) -> tuple[int, dict[str, Any]]:
        body = json.dumps({"instances": rows}).encode()
        request = urllib.request.Request(f"{server.url}{path}", body, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=60) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())

    try:
        status, answer = post("/v1/models/demo:explain", [[1000.0, 0, 0, 0]])
        assert status == 500
        assert answer["error"].startswith("explain hook failed: ValueError: the secret row")
        assert "\n" not in answer["error"] and "Traceback" not in answer["error"]
        status, answer = post("/v1/models/demo:explain", [[1.0, 0, 0, 0]])
        assert (status, answer["explanations"]) == (200, {"predicted": [True]})
        for _ in range(2):
            assert post("/v1/models/demo:predict", x[:25].tolist())[0] == 200
        deadline = time.monotonic() + 30
        while True:
            with urllib.request.urlopen(f"{server.url}/drift", timeout=10) as r:
                drift = json.loads(r.read())
            if drift["windows"] == 1 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert drift["windows"] == 1 and drift["features_drifted"] == []
    finally:
        server.stop()


def test_a_category_coded_as_a_number_is_one_category_in_a_csv_and_in_a_request() -> None:
    """A CSV's "1", a JSON 1 and a V1 request's 1.0 (a float array) are the same category:
    a window drawn from the reference is not flagged for spelling."""
    from omibuild.runtime.categories import category_key

    assert {category_key(v) for v in ("1", 1, 1.0, np.float64(1.0), " 1")} == {"1"}
    assert category_key("gold") == "gold" and category_key(float("nan")) is None
    assert category_key(2.5) == "2.5" and category_key(True) == "true"


def test_an_oversized_request_keeps_the_rows_that_fit_in_drift_s_queue() -> None:
    from omibuild.runtime.drift import MAX_PENDING_ROWS

    m = monitor(np.random.default_rng(2).normal(size=(500, 4)), window=MAX_PENDING_ROWS * 2)
    m.offer(np.zeros((MAX_PENDING_ROWS + 50_000, 4)))  # a window it never completes
    assert m.dropped == 50_000  # the part over the bound, not the whole request
    m.offer(np.zeros((10, 4)))  # the queue is full now: this one goes whole
    assert m.dropped == 50_010
