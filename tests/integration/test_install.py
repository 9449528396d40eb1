"""The door a stranger walks through: omibuild from its wheel (pip-installed into a clean venv,
with each extra set the README names), a fresh git repository with a model trained there in
the user's own training venv, then `init`, `apply`, `run --predict` and `check`, with no edit
to what init wrote. Never touches examples/."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.integration.strangers import Stranger, clean_env, new_stranger, training_venv

pytestmark = pytest.mark.integration

SKLEARN = ["scikit-learn", "pandas", "joblib"]

IRIS_JOBLIB = """\
import joblib, pathlib
from sklearn.datasets import load_iris
from sklearn.ensemble import RandomForestClassifier
x, y = load_iris(return_X_y=True)
pathlib.Path("model").mkdir()
joblib.dump(RandomForestClassifier(n_estimators=5, random_state=0).fit(x, y), "model/model.joblib")
"""

# A Pipeline whose own step lives in the repository's features.py, fit on named columns.
FEATURES = """\
import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin


class AddRatio(BaseEstimator, TransformerMixin):
    \"\"\"Adds the ratio of the first two columns.\"\"\"

    def fit(self, x, y=None):
        return self

    def transform(self, x):
        x = np.asarray(x, dtype=float)
        return np.c_[x, x[:, 0] / (np.abs(x[:, 1]) + 1.0)]
"""
PIPELINE = """\
import joblib, pathlib
import pandas as pd
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from features import AddRatio

frame = load_iris(as_frame=True).frame
frame.columns = ["sepal_length", "sepal_width", "petal_length", "petal_width", "target"]
x, y = frame.drop(columns="target"), frame["target"]
frame.to_csv("train.csv", index=False)
steps = [("scale", StandardScaler()), ("ratio", AddRatio())]
model = Pipeline([*steps, ("clf", LogisticRegression(max_iter=500))])
pathlib.Path("models").mkdir()
joblib.dump(model.fit(x, y), "models/churn.joblib")
"""

MLFLOW_NAMED = """\
import warnings
import mlflow.sklearn
from mlflow.models import infer_signature
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

frame = load_iris(as_frame=True).frame
frame.columns = ["sepal_length", "sepal_width", "petal_length", "petal_width", "target"]
x, y = frame.drop(columns="target"), frame["target"]
model = LogisticRegression(max_iter=1000).fit(x, y)
warnings.simplefilter("ignore")
mlflow.sklearn.save_model(model, "artifacts/iris", signature=infer_signature(x, model.predict(x)),
                          input_example=x.head(2))
"""

LIGHTGBM = """\
import joblib, pathlib
from lightgbm import LGBMClassifier
from sklearn.datasets import load_iris
x, y = load_iris(return_X_y=True)
pathlib.Path("model").mkdir()
joblib.dump(LGBMClassifier(n_estimators=10, verbose=-1).fit(x, y), "model/model.pkl")
"""

ROWS = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]
NAMES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]


def built(s: Stranger, image_cleanup: list[str]) -> str:
    """`omibuild apply` as the README says it; the image's :latest reference."""
    out = s.ok("apply", "--format", "json", "--progress", "quiet")
    [record] = json.loads(out)
    image_cleanup += record["tags"]
    assert record["status"] == "built", record
    return next(t for t in record["tags"] if t.endswith(":latest"))


def predicted(s: Stranger, body: object, name: str = "request.json") -> dict[str, object]:
    (s.repo / name).write_text(body if isinstance(body, str) else json.dumps(body))
    answer = json.loads(s.ok("run", "--predict", name, "--format", "json"))
    assert answer["status"] == 200, answer
    return answer  # type: ignore[no-any-return]


def checked(s: Stranger, image: str) -> None:
    report = s.cli("check", image, "--format", "json")
    assert report.returncode == 0, report.stdout[-3000:] + report.stderr[-2000:]
    assert all(f["ok"] for f in json.loads(report.stdout)["findings"])


@pytest.mark.parametrize("extras", ["", "mlflow,huggingface"], ids=["plain", "all-extras"])
def test_the_wheel_alone_serves_a_stranger_s_model(
    tmp_path: Path, unique: str, engine: None, image_cleanup: list[str], extras: str
) -> None:
    """omibuild from the wheel (each extra set) in a venv of its own, with no checkout on
    its path: init → apply → run --predict → check all work, and so does the image's default
    interface (its gRPC descriptors ship in the wheel)."""
    venv = training_venv("sklearn", SKLEARN)
    s = new_stranger(tmp_path, f"door-{unique}-{len(extras)}", venv, extras)
    where = subprocess.run(
        [str(s.omibuild.parent / "python"), "-c", "import omibuild; print(omibuild.__file__)"],
        capture_output=True, text=True, env=clean_env(), cwd=tmp_path, check=True,
    ).stdout  # fmt: skip
    assert where.startswith(str(s.omibuild.parent.parent)), where
    s.train(IRIS_JOBLIB)
    assert "wrote omi.yaml" in s.ok("init")
    manifest = (s.repo / "omi.yaml").read_text()
    # pinned from the training venv, each saying so; the example is the model's width
    assert "scikit-learn==" in manifest and "# recorded in model.joblib" in manifest
    assert f"the version in the active virtual environment ({venv})" in manifest
    assert 'example: {"instances": [[0.0, 0.0, 0.0, 0.0]]}' in manifest
    image = built(s, image_cleanup)
    answer = predicted(s, {"instances": ROWS})
    assert answer["interface"] == "kfserving" and answer["protocol"] == "v2"
    assert answer["response"]["outputs"][0]["data"] == [0, 2]  # type: ignore[index]
    checked(s, image)


def test_a_pickle_that_imports_the_repository_s_own_module_serves_with_no_edits(
    tmp_path: Path, unique: str, engine: None, image_cleanup: list[str]
) -> None:
    venv = training_venv("sklearn", SKLEARN)
    s = new_stranger(tmp_path, f"door-own-{unique}", venv, files={"features.py": FEATURES})
    s.train(PIPELINE)
    s.ok("init")
    manifest = (s.repo / "omi.yaml").read_text()
    assert "code:" in manifest and "include: [features.py]" in manifest, manifest
    assert "path: models\n" in manifest
    assert '"sepal_length": 5.1' in manifest  # the first row of train.csv, by column name
    assert "features==" not in manifest and "- features" not in manifest
    image = built(s, image_cleanup)
    answer = predicted(s, {"instances": [dict(zip(NAMES, r, strict=True)) for r in ROWS]})
    assert answer["response"]["outputs"][0]["data"] == [0, 2]  # type: ignore[index]
    rows = predicted(s, {"instances": ROWS})  # plain rows take the columns' order
    assert rows["response"]["outputs"][0]["data"] == [0, 2]  # type: ignore[index]
    checked(s, image)

    # Without the code block, the model cannot load: apply says so in one line whose hint
    # names the repository's code, never a requirement called `features`.
    text = (s.repo / "omi.yaml").read_text()
    start = text.index("code:")
    (s.repo / "omi.yaml").write_text(text[:start] + text[text.index("runtimes:") :])
    failed = s.cli("apply", "--progress", "quiet")
    assert failed.returncode == 1
    [line] = failed.stderr.strip().splitlines()
    assert "model failed to load: No module named 'features'" in line, line
    assert "list it under code: in omi.yaml" in line, line
    assert "add features to image.requirements" not in line and "fix the example" not in line


def _metadata(image: str, name: str) -> dict[str, object]:
    from omibuild.conformance.images import free_port

    port = free_port()
    cid = subprocess.run(
        ["docker", "run", "-d", "--rm", "-p", f"127.0.0.1:{port}:8080", image],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                url = f"http://127.0.0.1:{port}/v2/models/{name}"
                with urllib.request.urlopen(url, timeout=5) as resp:
                    return json.load(resp)  # type: ignore[no-any-return]
            except OSError:
                assert time.monotonic() < deadline, "the image never answered"
                time.sleep(0.3)
    finally:
        subprocess.run(["docker", "rm", "-f", cid], capture_output=True, check=False)


def test_an_mlflow_model_with_named_columns_answers_dataframe_split_and_named_tensors(
    tmp_path: Path, unique: str, engine: None, image_cleanup: list[str]
) -> None:
    venv = training_venv("mlflow", ["mlflow-skinny", "skops", *SKLEARN])
    name = f"door-mlflow-{unique}"
    s = new_stranger(tmp_path, name, venv, "mlflow")
    s.train(MLFLOW_NAMED)
    s.ok("init")
    manifest = (s.repo / "omi.yaml").read_text()
    assert "flavor: pyfunc" in manifest and "serving_input_example.json" in manifest
    image = built(s, image_cleanup)
    split = {"dataframe_split": {"columns": NAMES, "data": ROWS}}
    answer = predicted(s, split)
    assert answer["interface"] == "mlflow"  # the body's own interface, as it is
    assert answer["response"] == {"predictions": [0, 2]}
    tensors = {
        "inputs": [
            {"name": n, "shape": [2], "datatype": "FP64", "data": [r[i] for r in ROWS]}
            for i, n in enumerate(NAMES)
        ]
    }
    v2 = predicted(s, tensors, "tensors.json")
    assert v2["interface"] == "kfserving" and v2["protocol"] == "v2"
    assert v2["response"]["outputs"][0]["data"] == [0, 2]  # type: ignore[index]
    records = predicted(s, {"instances": [dict(zip(NAMES, r, strict=True)) for r in ROWS]})
    assert records["response"]["outputs"][0]["data"] == [0, 2]  # type: ignore[index]
    meta = _metadata(image, name)
    assert meta["inputs"] == [{"name": n, "datatype": "FP64", "shape": [-1]} for n in NAMES]
    checked(s, image)


def test_a_model_that_needs_a_system_library_gets_it_in_the_image(
    tmp_path: Path, unique: str, engine: None, image_cleanup: list[str]
) -> None:
    """LightGBM's wheel loads libgomp.so.1 at run time: init names the Debian package, and it
    reaches the final image (not only the stage that builds the venv)."""
    venv = training_venv("lightgbm", ["lightgbm", *SKLEARN])
    s = new_stranger(tmp_path, f"door-gomp-{unique}", venv)
    s.train(LIGHTGBM)
    s.ok("init")
    manifest = (s.repo / "omi.yaml").read_text()
    assert "system_packages: [libgomp1]" in manifest and "lightgbm==" in manifest, manifest
    image = built(s, image_cleanup)
    answer = predicted(s, {"instances": ROWS})
    assert answer["response"]["outputs"][0]["data"] == [0, 2]  # type: ignore[index]
    found = subprocess.run(
        ["docker", "run", "--rm", "--entrypoint", "sh", image, "-c",
         "ls /usr/lib/x86_64-linux-gnu/libgomp.so.1 && ls /var/lib/apt/lists | wc -l"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert found.returncode == 0, found.stderr
    assert found.stdout.split()[-1] in ("0", "1"), found.stdout  # apt's lists stay out (lock)
    checked(s, image)


def test_init_writes_a_predictor_to_fill_in_when_no_format_is_known(tmp_path: Path) -> None:
    """No format init knows: the model folder (not the repository) is the model, and a
    predictor.py skeleton sits beside omi.yaml, never over one the user wrote."""
    s = new_stranger(tmp_path, "door-custom", Path(sys.prefix))
    (s.repo / "weights").mkdir()
    (s.repo / "weights" / "net.pt").write_bytes(b"\0" * 64)
    s.ok("init")
    manifest = (s.repo / "omi.yaml").read_text()
    assert "path: weights\n" in manifest and "predictor: predictor:Predictor" in manifest
    skeleton = (s.repo / "predictor.py").read_text()
    assert "class Predictor" in skeleton and "def load(self, model_dir" in skeleton
    assert "valid" in s.ok("validate")
    (s.repo / "predictor.py").write_text("class Predictor: ...\n")
    s.ok("init", "--force")
    assert (s.repo / "predictor.py").read_text() == "class Predictor: ...\n"
