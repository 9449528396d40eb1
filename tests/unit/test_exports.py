"""export: a ModelPack artifact and a KServe modelcar beside the OMI image, in its index,
over the very model layers it holds: one config and one manifest each are all that is new.
The ModelPack config is checked against model-spec's own schema (tests/fixtures/modelpack)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from omibuild.engine.exports import (
    EXPORT,
    FILEPATH,
    MODELPACK_ARTIFACT,
    MODELPACK_CONFIG,
    ExportError,
    add_exports,
)
from omibuild.engine.oci import MANIFEST_TYPES, Appended, Layout
from omibuild.planning.plan import Plan
from omibuild.sources.base import ModelFile
from omibuild.store.cache import Cache
from omibuild.store.layers import StagedLayer, layer_blob

ROOT = Path(__file__).parents[2]
SCHEMA = json.loads((ROOT / "tests/fixtures/modelpack/config-schema.json").read_text())
GOLDEN = ROOT / "tests/golden/sklearn-iris.plan.json"
CONFIG_TYPE = "application/vnd.oci.image.config.v1+json"


def _put(layout: Layout, obj: Any, media: str) -> dict[str, Any]:
    return layout.put_json(obj, media)


def _image(tmp_path: Path, own_step: str) -> tuple[Layout, dict[str, Any], list[Appended]]:
    """An index of one image: a base layer, one layer of the image's own (``own_step``
    made it), then a model layer of two files appended as assembly does."""
    layout = Layout(tmp_path / "layout")
    base = {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "size": 10,
            "digest": "sha256:" + "b" * 64}  # fmt: skip
    own = {**base, "digest": "sha256:" + "c" * 64}
    config = _put(
        layout,
        {
            "architecture": "amd64",
            "os": "linux",
            "created": "2026-12-06T00:00:00Z",
            "config": {"User": "10001:10001", "Env": ["PATH=/opt/omi/venv/bin:/usr/bin"],
                       "Labels": {"io.omibuild.origin.id": "sha256:" + "d" * 64}},
            "rootfs": {"type": "layers", "diff_ids": ["sha256:" + "e" * 64, "sha256:" + "f" * 64]},
            "history": [
                {"created_by": "debootstrap"},
                {"created_by": "ENV LANG=C.UTF-8", "empty_layer": True},
                {"created_by": own_step},
            ],
        },
        CONFIG_TYPE,
    )  # fmt: skip
    body = {"schemaVersion": 2, "mediaType": MANIFEST_TYPES[0], "config": config,
            "layers": [base, own]}  # fmt: skip
    manifest = _put(layout, body, MANIFEST_TYPES[0])
    manifest["platform"] = {"architecture": "amd64", "os": "linux"}
    index = _put(
        layout,
        {"schemaVersion": 2, "manifests": [manifest]},
        "application/vnd.oci.image.index.v1+json",
    )
    model = tmp_path / "model"
    files = []
    for rel, data in {"model.safetensors": b"w" * 300, "config.json": b"{}"}.items():
        (model / rel).parent.mkdir(parents=True, exist_ok=True)
        (model / rel).write_bytes(data)
        files.append(ModelFile(rel, len(data), hashlib.sha256(data).hexdigest()))
    appended = []
    for group in ((files[0],), (files[1],)):
        layer = StagedLayer(group, model)
        blob, _ = layer_blob(Cache(tmp_path / "cache", hold=False), layer)
        appended.append(Appended(blob, f"omibuild: model layer {group[0].path}", layer=layer))
    return layout, layout.append(index, appended), appended


def _plan(**changes: Any) -> Plan:
    plan = Plan.from_dict(json.loads(GOLDEN.read_text()))
    return dataclasses.replace(plan, **{"exports": ("modelpack", "modelcar"), **changes})


def test_both_exports_name_the_image_s_own_blobs(tmp_path: Path) -> None:
    layout, top, model = _image(tmp_path, "RUN useradd --system --uid 10001 omi")
    before = {d for d, _ in layout.blobs(top)}
    top, made = add_exports(layout, top, _plan(), model)
    assert set(made) == {"modelpack", "modelcar"}
    index = layout.read_json(top["digest"])
    entries = {m["annotations"][EXPORT]: m for m in index["manifests"][1:]}
    assert {e["platform"]["os"] for e in entries.values()} == {
        "unknown"
    }  # never pulled as the image
    assert entries["modelpack"]["artifactType"] == MODELPACK_ARTIFACT
    # no blob but two configs and two manifests is new: the model layers are the same blobs
    new = {d for d, _ in layout.blobs(top)} - before - {top["digest"]}
    assert len(new) == 4 and all(d not in {a.blob.digest for a in model} for d in new)

    pack = layout.read_json(made["modelpack"])
    assert pack["artifactType"] == MODELPACK_ARTIFACT
    assert pack["config"]["mediaType"] == MODELPACK_CONFIG
    assert [layer["digest"] for layer in pack["layers"]] == [a.blob.digest for a in model]
    assert [layer["mediaType"] for layer in pack["layers"]] == [
        "application/vnd.cncf.model.weight.v1.tar",
        "application/vnd.cncf.model.weight.config.v1.tar",
    ]
    assert [layer["annotations"][FILEPATH] for layer in pack["layers"]] == [
        "models/model.safetensors",
        "models/config.json",
    ]
    config = layout.read_json(pack["config"]["digest"])
    jsonschema.Draft202012Validator(SCHEMA).validate(config)
    assert config["modelfs"]["diffIds"] == [a.blob.digest for a in model]
    assert config["config"]["format"] == "safetensors"  # the largest file's
    assert config["descriptor"]["name"] == "iris-classifier"
    assert config["descriptor"]["licenses"] == ["Apache-2.0"]
    broken = {**config, "modelfs": {"type": "layers", "diffIds": []}}  # the schema refuses it
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft202012Validator(SCHEMA).validate(broken)

    car = layout.read_json(made["modelcar"])
    car_config = layout.read_json(car["config"]["digest"])
    assert [layer["digest"] for layer in car["layers"]] == [
        "sha256:" + "b" * 64,  # the base's layer, not the image's own
        *(a.blob.digest for a in model),
    ]
    assert car_config["rootfs"]["diff_ids"] == [
        "sha256:" + "e" * 64,
        *(a.blob.digest for a in model),
    ]
    made_layers = [h for h in car_config["history"] if not h.get("empty_layer")]
    assert len(made_layers) == len(car["layers"])  # history matches the layers it describes
    assert car_config["config"]["Cmd"] == ["sleep", "infinity"]
    assert car_config["config"]["User"] == "10001:10001"
    assert car_config["config"]["Labels"]["io.omibuild.origin.id"] == "sha256:" + "d" * 64


def test_a_modelcar_needs_to_tell_the_base_from_the_image(tmp_path: Path) -> None:
    layout, top, model = _image(tmp_path, "COPY something")
    with pytest.raises(ExportError, match="base image's layers"):
        add_exports(layout, top, _plan(), model)
    top, made = add_exports(layout, top, _plan(exports=("modelpack",)), model)
    assert list(made) == ["modelpack"]
