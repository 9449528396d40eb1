from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from omibuild.cli import main
from omibuild.manifest.load import interpolate
from omibuild.manifest.schema import schema
from omibuild.manifest.validate import validate_file
from tests.conftest import example_manifests

from .test_manifest_malformed import GOOD_HEAD

pytestmark = pytest.mark.usefixtures("example_models")  # reads examples/


@pytest.mark.parametrize("path", example_manifests(), ids=lambda p: p.parent.name)
def test_every_example_validates(path: Path) -> None:
    result = validate_file(path, env={})
    assert result.ok, [i.text() for i in result.issues]
    assert result.manifest is not None
    assert result.manifest.name


def test_there_are_at_least_six_examples() -> None:
    assert len(example_manifests()) >= 6


def test_interpolation() -> None:
    env = {"A": "1", "EMPTY": ""}
    assert interpolate("x${A}y", env) == ("x1y", None)
    assert interpolate("${B:-dflt}", env) == ("dflt", None)
    assert interpolate("${EMPTY:-dflt}", env) == ("dflt", None)
    assert interpolate("$${A}", env) == ("${A}", None)
    _text, err = interpolate("${B}", env)
    assert err and "B is not set" in err


def test_interpolated_values_reach_the_manifest(tmp_path: Path) -> None:
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "m.joblib").write_bytes(b"x")
    (tmp_path / "omi.yaml").write_text(
        GOOD_HEAD + "image:\n  repository: ${REG:-localhost:5000}/iris\n"
    )
    m = validate_file(tmp_path / "omi.yaml", env={"REG": "r.example.com"}).manifest
    assert m is not None and m.image.repository == "r.example.com/iris"


def test_schema_enums_match_the_code_registries() -> None:
    from omibuild.runtime.adapters import ADAPTERS
    from omibuild.runtime.flavors import FLAVORS
    from omibuild.sources import SOURCES

    s = schema()
    assert set(s["$defs"]["source"]["properties"]) == set(SOURCES)
    assert set(s["$defs"]["model"]["properties"]["flavor"]["enum"]) == set(FLAVORS)
    assert set(s["$defs"]["runtimes"]["properties"]["interfaces"]["properties"]) == set(ADAPTERS)
    assert set(s["$defs"]["runtimes"]["properties"]["default"]["enum"]) == set(ADAPTERS)


def test_validate_cli_json_and_exit_codes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "omi.yaml"
    bad.write_text("name: 3\n")
    assert main(["validate", "--format", "json", str(bad)]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report[0]["valid"] is False and report[0]["issues"][0]["line"] >= 1
    assert main(["validate", str(tmp_path / "missing.yaml")]) == 2
    assert main(["validate", str(example_manifests()[0])]) == 0


def test_schema_command_prints_the_schema(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema"]) == 0
    assert json.loads(capsys.readouterr().out)["title"].startswith("omibuild manifest")


@pytest.mark.parametrize(
    ("files", "flavor"),
    [
        (["MLmodel"], "pyfunc"),
        (["config.json"], "transformers"),
        (["m.onnx"], "onnx"),
        (["m.skops"], "sklearn"),
        (["m.pkl"], "sklearn"),
        (["readme.txt"], "custom"),
    ],
)
def test_init_detects_flavor_and_writes_a_valid_manifest(
    tmp_path: Path, files: list[str], flavor: str
) -> None:
    model = tmp_path / "model"
    model.mkdir()
    for f in files:
        (model / f).write_text("x")
    out = tmp_path / "omi.yaml"
    assert main(["init", str(model), "-o", str(out), "--name", "demo"]) == 0
    text = out.read_text()
    assert text.startswith("# yaml-language-server: $schema=")
    assert f"flavor: {flavor}" in text
    result = validate_file(out, env={})
    assert result.ok, [i.text() for i in result.issues]
    assert main(["init", str(model), "-o", str(out)]) == 2  # refuses to overwrite


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.one_of(st.text(max_size=300), st.binary(max_size=300)))
def test_arbitrary_input_never_crashes(tmp_path: Path, blob: str | bytes) -> None:
    path = tmp_path / "omi.yaml"
    path.write_bytes(blob.encode("utf-8", "surrogatepass") if isinstance(blob, str) else blob)
    result = validate_file(path, env={})
    assert not result.ok or result.manifest is not None
    for issue in result.issues:
        assert issue.line >= 1 and issue.message


def test_cli_never_prints_a_traceback_on_junk(tmp_path: Path) -> None:
    path = tmp_path / "omi.yaml"
    path.write_bytes(b"\x00\xff{[:: !!python/object:os.system\n")
    proc = subprocess.run(
        [sys.executable, "-m", "omibuild", "validate", str(path)], capture_output=True, text=True
    )
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr and str(path) in proc.stderr


def test_a_models_own_requirements_lose_local_version_labels(tmp_path: Path) -> None:
    """MLflow writes `torch==2.13.0+cpu`; PyPI serves no such version."""
    from omibuild.sources.metadata import model_metadata

    (tmp_path / "requirements.txt").write_text(
        "mlflow==3.17.2\ntorch==2.13.0+cpu\n"
        "torchvision[extra]==0.28.0+cu121 ; python_version >= '3.9'\n"
    )
    requirements, _, _ = model_metadata(tmp_path)
    assert requirements == (
        "mlflow==3.17.2",
        "torch==2.13.0",
        'torchvision[extra]==0.28.0; python_version >= "3.9"',
    )
