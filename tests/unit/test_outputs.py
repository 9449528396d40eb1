"""The outputs V2 metadata states: declared by an MLflow signature, learnt by the build's dry
prediction (`python -m omibuild.runtime describe`), and checked again at start-up."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from omibuild import contract
from omibuild.runtime import outputs
from omibuild.sources.metadata import model_metadata, signature_outputs
from tests.unit.runtime_config import omi_json
from tests.unit.test_runtime_hostile import Server, runtime_env, start_failing

INTERFACES = {"kfserving": {"protocols": ["v1", "v2"], "port": 8080, "grpc_port": 8081}}
EXAMPLE = [[5.1, 3.5, 1.4, 0.2]]
INT64 = [{"name": "output-0", "datatype": "INT64", "shape": [-1]}]


def test_the_runtime_and_the_renderer_name_the_file_alike() -> None:
    assert outputs.OUTPUTS_FILE == contract.OUTPUTS_FILE


@pytest.mark.parametrize(
    ("declared", "expected"),
    [
        ('[{"type": "long", "required": true}]', INT64),
        ('[{"type": "double"}]', [{"name": "output-0", "datatype": "FP64", "shape": [-1]}]),
        (
            '[{"type": "tensor", "tensor-spec": {"dtype": "float32", "shape": [-1, 3]}}]',
            [{"name": "output-0", "datatype": "FP32", "shape": [-1, 3]}],
        ),
        (
            '[{"name": "probs", "type": "tensor", "tensor-spec": {"dtype": "float64", '
            '"shape": [4, 3]}}]',
            [{"name": "probs", "datatype": "FP64", "shape": [-1, 3]}],
        ),
        ('[{"type": "long", "name": "a"}, {"type": "long", "name": "b"}]', None),  # columns
        ('[{"type": "datetime"}]', None),  # no V2 datatype
        ("not json", None),
        ("[]", None),
    ],
)
def test_an_mlflow_signature_declares_v2_outputs(declared: str, expected: object) -> None:
    assert signature_outputs({"inputs": "[]", "outputs": declared}) == expected


def test_a_local_mlflow_model_s_signature_reaches_its_metadata(tmp_path: Path) -> None:
    (tmp_path / "MLmodel").write_text(
        "flavors:\n  python_function: {}\n  sklearn: {}\n"
        "signature:\n  inputs: '[]'\n  outputs: '[{\"type\": \"long\"}]'\n"
    )
    _, flavor, meta = model_metadata(tmp_path)
    assert flavor == "pyfunc"
    assert json.loads(meta["signature.outputs"]) == INT64


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """An /opt/omi-like tree: an iris model, omi.json with the example input."""
    import joblib
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    (tmp_path / "model").mkdir()
    model = LogisticRegression(max_iter=300).fit(*load_iris(return_X_y=True))
    joblib.dump(model, tmp_path / "model" / "model.joblib")
    omi_json(tmp_path, INTERFACES, model_file="model.joblib", example=EXAMPLE)
    return tmp_path


def describe(tree: Path) -> subprocess.CompletedProcess[str]:
    env, _ = runtime_env(tree, "kfserving", "v2")
    return subprocess.run(
        [sys.executable, "-m", "omibuild.runtime", "describe", str(tree / "outputs.json")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_dry_prediction_writes_what_the_model_answers(tree: Path) -> None:
    done = describe(tree)
    assert done.returncode == 0, done.stderr
    assert json.loads((tree / "outputs.json").read_text()) == {"outputs": INT64}
    assert "output-0 INT64 [-1]" in done.stdout


def test_a_signature_the_model_contradicts_fails_the_dry_prediction(tree: Path) -> None:
    config = json.loads((tree / "omi.json").read_text())
    config["outputs"] = [{"name": "output-0", "datatype": "FP32", "shape": [-1, 3]}]
    (tree / "omi.json").write_text(json.dumps(config))
    done = describe(tree)
    assert done.returncode == 3
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert "INT64 [-1]" in lines[0] and "FP32 [-1, 3]" in lines[0] and "signature" in lines[0]
    assert not (tree / "outputs.json").exists()


def test_an_example_the_model_cannot_take_fails_the_dry_prediction(tree: Path) -> None:
    config = json.loads((tree / "omi.json").read_text())
    config["example"] = [[1.0, 2.0, 3.0]]  # three features for a four-feature model
    (tree / "omi.json").write_text(json.dumps(config))
    done = describe(tree)
    assert done.returncode == 3
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert lines[0].startswith("omibuild: omi.yaml example: the model cannot predict it")
    assert not (tree / "outputs.json").exists()


def test_metadata_states_the_outputs_before_any_request(tree: Path) -> None:
    assert describe(tree).returncode == 0
    server = Server(tree, "kfserving", "v2")
    try:
        status, body = server.get("/v2/models/m")
    finally:
        server.stop()
    assert status == 200 and json.loads(body)["outputs"] == INT64


def test_a_model_that_answers_otherwise_than_at_build_time_does_not_start(tree: Path) -> None:
    built = [{"name": "output-0", "datatype": "FP32", "shape": [-1, 3]}]
    (tree / "outputs.json").write_text(json.dumps({"outputs": built}))
    env, _ = runtime_env(tree, "kfserving", "v2")
    done = start_failing(env)
    assert done.returncode != 0
    assert "Traceback" not in done.stderr, done.stderr
    assert "answers its example with output-0 INT64 [-1]" in done.stderr
    assert "built when it answered output-0 FP32 [-1, 3]" in done.stderr


def test_without_an_example_the_outputs_stay_unknown(tree: Path, tmp_path: Path) -> None:
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copytree(tree / "model", bare / "model")
    omi_json(bare, INTERFACES, model_file="model.joblib")
    server = Server(bare, "kfserving", "v2")
    try:
        status, body = server.get("/v2/models/m")
    finally:
        server.stop()
    assert status == 200 and json.loads(body)["outputs"] == []
