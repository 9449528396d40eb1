"""omi.json's one type (runtime/document.py): every example's omi.json, as the planner
writes it, reads back into the type and writes out byte for byte; a malformed one is a
one-line error naming what is wrong; Modzy's author is the manifest's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from omibuild.manifest.model import Manifest
from omibuild.manifest.validate import load_manifest
from omibuild.planning.make import make_plan
from omibuild.runtime.config import ConfigError, load_config
from omibuild.runtime.document import FORMAT, DocumentError, OmiDocument
from omibuild.store.cache import Cache
from tests.conftest import example_manifests
from tests.unit.test_plan import canonical_inputs

pytestmark = pytest.mark.usefixtures("example_models")


def planned(path: Path, tmp_path: Path) -> tuple[Manifest, str]:
    """(the manifest, the omi.json its plan holds), with a fixed resolution (test_plan.py)."""
    m = load_manifest(path, env={"OMIBUILD_BASE_IMAGE": "omibuild.local/python:3.11-slim"})
    return m, make_plan(canonical_inputs(m, Cache(tmp_path / "cache"))).omi_json


def iris(tmp_path: Path) -> tuple[Manifest, str]:
    return planned(
        next(p for p in example_manifests() if p.parent.name == "sklearn-iris"), tmp_path
    )


@pytest.mark.parametrize("manifest", example_manifests(), ids=lambda p: p.parent.name)
def test_every_example_s_omi_json_round_trips_through_its_type(
    manifest: Path, tmp_path: Path
) -> None:
    m, text = planned(manifest, tmp_path)
    document = OmiDocument.from_dict(json.loads(text))
    assert document.to_json() == text
    assert json.loads(text)["format"] == FORMAT
    assert document.authors == tuple(m.authors)


def test_what_the_runtime_reads_is_what_the_planner_wrote(tmp_path: Path) -> None:
    m, text = iris(tmp_path)
    (tmp_path / "omi.json").write_text(text)
    config = load_config({"OMI_CONFIG": str(tmp_path / "omi.json")})
    assert config.document.authors == tuple(m.authors) and m.authors  # Modzy's model_author
    assert config.model_name == m.name and config.model_version == m.version
    assert config.document.flavor == m.flavor
    assert set(config.document.interfaces) == {i.name for i in m.runtimes.interfaces}


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda d: d.pop("interfaces"), "KeyError: 'interfaces'"),
        (lambda d: d.update(format=99), "format 99; this runtime reads format 1"),
        (lambda d: d["model"].update(files=[{"path": "x"}]), "KeyError: 'size'"),
        (lambda d: d.update(interfaces={"kfserving": {"port": "x", "protocols": []}}), "int()"),
    ],
    ids=["no interfaces", "newer format", "file without size", "port not a number"],
)
def test_a_malformed_omi_json_is_one_line_naming_it(
    tmp_path: Path, change: object, expected: str
) -> None:
    raw = json.loads(iris(tmp_path)[1])
    change(raw)  # type: ignore[operator]
    with pytest.raises(DocumentError) as err:
        OmiDocument.from_dict(raw)
    assert expected in str(err.value) and "\n" not in str(err.value)
    (tmp_path / "omi.json").write_text(json.dumps(raw))
    with pytest.raises(ConfigError) as failed:
        load_config({"OMI_CONFIG": str(tmp_path / "omi.json")})
    assert str(failed.value).startswith(str(tmp_path / "omi.json"))
