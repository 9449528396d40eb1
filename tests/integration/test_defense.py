"""Adversarial defense baked into a stranger's image: a correlated table and an MLP trained in
the test, in a fresh git repository, omibuild from its wheel (with the robustness extra);
`omibuild init`, the defense section added as the README shows it, `omibuild apply`; then the
image is asked over KServe V1 and V2, Modzy gRPC (chassisml's OMIClient), `/defense`,
`/metrics`, and through `omibuild check --robustness`."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.strangers import Stranger, new_stranger, training_venv
from tests.integration.test_analysis import Container, chassis_run
from tests.integration.test_install import SKLEARN

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("defense")]

TRAIN = """\
import joblib, pathlib
import numpy as np
from sklearn.neural_network import MLPClassifier
rng = np.random.default_rng(7)
loadings = np.random.default_rng(99).normal(size=(3, 6))
x = rng.normal(size=(3000, 3)) @ loadings + rng.normal(scale=0.3, size=(3000, 6))
y = (np.sin(x[:, 0]) + x[:, 1] * x[:, 2] > 0).astype(int)
pathlib.Path("model").mkdir()
joblib.dump(MLPClassifier((16,), max_iter=300, random_state=0).fit(x, y), "model/model.joblib")
pathlib.Path("data").mkdir()
with open("data/train.csv", "w") as fh:
    fh.write(",".join([f"f{j}" for j in range(6)] + ["label"]) + "\\n")
    for row, label in zip(x, y):
        fh.write(",".join(repr(float(v)) for v in row) + f",{label}\\n")
"""
SECTION = """
defense:
  reference: data/train.csv
  exclude: [label]
  guard: flag
  score: mahalanobis
  alpha: 0.01
"""


def rows(repo: Path, n: int) -> list[list[float]]:
    lines = (repo / "data" / "train.csv").read_text().splitlines()[1 : n + 1]
    return [[float(v) for v in line.split(",")[:6]] for line in lines]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stranger, str]]:
    unique = tmp_path_factory.mktemp("u").name[-6:].replace("_", "")
    s = new_stranger(
        tmp_path_factory.mktemp("defense"),
        f"stranger-defense-{unique}",
        training_venv("sklearn", SKLEARN),
        extras="robustness",
    )
    s.train(TRAIN)
    s.ok("init")
    manifest = s.repo / "omi.yaml"
    text = manifest.read_text()
    written = next(ln for ln in text.splitlines() if ln.startswith("  example:"))
    example = json.dumps(rows(s.repo, 2))
    manifest.write_text(text.replace(written, f"  example: {{instances: {example}}}") + SECTION)
    subprocess.run(["git", "add", "-A"], cwd=s.repo, check=True)
    subprocess.run(["git", "commit", "-qm", "model"], cwd=s.repo, check=True)
    plan = s.ok("plan")
    assert "defense/reference.json" in plan, plan
    [record] = json.loads(s.ok("apply", "--format", "json", "--progress", "quiet"))
    image = next(t for t in record["tags"] if t.endswith(":latest"))
    yield s, image


def test_kserve_answers_screen_and_count_as_documented(built: tuple[Stranger, str]) -> None:
    s, image = built
    name = s.repo.name
    labels = json.loads(
        subprocess.run(
            ["docker", "image", "inspect", image, "--format", "{{json .Config.Labels}}"],
            capture_output=True, text=True, check=True,
        ).stdout
    )  # fmt: skip
    assert json.loads(labels["io.omibuild.defense"])["alpha"] == 0.01
    box = Container(image)
    try:
        box.wait("/v2/health/ready")
        typical = rows(s.repo, 20)
        far = [*typical[0][:5], 1e6]
        status, plain = box.call("POST", f"/v1/models/{name}:predict", {"instances": typical})
        assert status == 200 and "defense" not in plain
        status, v1 = box.call(
            "POST", f"/v1/models/{name}:predict?defense=true", {"instances": [*typical, far]}
        )
        assert status == 200, v1
        assert v1["predictions"][:20] == plain["predictions"]
        screened = v1["defense"]
        assert sum(r["flagged"] for r in screened[:20]) <= 2  # alpha 0.01: rarely one
        assert screened[20]["flagged"]
        assert screened[20]["violations"] == [{"feature": "f5", "kind": "range"}]
        tensor = {
            "name": "input-0",
            "datatype": "FP64",
            "shape": [2, 6],
            "data": [*typical[1], *far],
        }
        wanted = [{"name": "omi_defense_p_value"}, {"name": "omi_defense_flagged"}]
        status, v2 = box.call(
            "POST", f"/v2/models/{name}/infer", {"inputs": [tensor], "outputs": wanted}
        )
        assert status == 200, v2
        out = {o["name"]: o["data"] for o in v2["outputs"]}
        assert out["omi_defense_flagged"] == [screened[1]["flagged"], True]
        assert out["omi_defense_p_value"][1] == pytest.approx(1 / 1501)  # as far as a row can be
        assert "defense" in box.call("GET", "/v2")[1]["extensions"]
        status, report = box.call("GET", "/defense")
        assert status == 200 and report["rows"] == 20 + 21 + 2 and report["alpha"] == 0.01
        assert {"feature": "f5", "kind": "range", "count": 2} in report["guard_violations"]
        metrics = box.call("GET", "/metrics")[1]
        assert "omi_defense_rows_total 43" in metrics
        assert 'omi_defense_guard_violations_total{feature="f5",kind="range"} 2' in metrics
    finally:
        box.stop()


def test_modzy_grpc_says_adversarial_defense_and_screens_each_item(
    built: tuple[Stranger, str],
) -> None:
    s, image = built
    sent = [*rows(s.repo, 2), [0.0, 0.0, 0.0, 0.0, 0.0, 1e6]]
    answer = chassis_run(image, sent)
    assert answer["adversarial_defense"] is True
    [output] = answer["outputs"]
    results = output["files"]["results.json"]
    assert [r["flagged"] for r in results["defense"]][2] is True
    assert results["defense"][2]["violations"][0]["feature"] == "f5"


def test_check_verifies_the_defense_and_measures_robustness(built: tuple[Stranger, str]) -> None:
    s, image = built
    done = s.cli("check", image, "--robustness", "15", "--format", "json", "--timeout", "120")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    findings = {f["requirement"]: f for f in json.loads(done.stdout)["findings"]}
    defense = [r for r in findings if "defense status" in r or "typical reference row" in r
               or "far outside" in r]  # fmt: skip
    assert len(defense) >= 6 and all(findings[r]["ok"] for r in defense), sorted(findings)
    [robust] = [r for r in findings if "robustness (HopSkipJump on 15" in r]
    detail = findings[robust]["detail"]
    assert findings[robust]["ok"] and "flipped" in detail and "flagged at 1x" in detail, detail
