"""export, as a stranger meets it: a model trained in a fresh git repository, omibuild from
its wheel, `export: {modelpack: true, modelcar: true}` in omi.yaml and `apply --push` to the
loopback registry. Then, with the readers' own tools (never omibuild's code): PyPI's
modelpack-client pulls the ModelPack tag and gets the model file byte for byte; its config
passes model-spec's own schema; skopeo reads both manifests, which name the image's own model
layer; a container from the modelcar tag finds the model through /proc/$$/root/models as
KServe's sidecar does; and the OMI tag still passes `omibuild check`."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import jsonschema
import pytest

from tests.integration.strangers import iris_for_registry
from tests.integration.test_attest import raw_manifest

pytestmark = pytest.mark.integration
SCHEMA = Path(__file__).parents[1] / "fixtures" / "modelpack" / "config-schema.json"


def _raw(ref: str) -> dict:  # type: ignore[type-arg]
    return json.loads(raw_manifest(ref))  # type: ignore[no-any-return]


def test_modelpack_and_modelcar_exports_read_the_image_s_own_model_layer(
    tmp_path: Path, unique: str, registry: str
) -> None:
    from modelpack_client import ModelPackClient

    s, repository = iris_for_registry(tmp_path, f"export-{unique}", registry)
    manifest = s.repo / "omi.yaml"
    manifest.write_text(manifest.read_text() + "export:\n  modelpack: true\n  modelcar: true\n")
    plan = s.ok("plan", "--format", "json")
    assert json.loads(plan)["exports"] == ["modelpack", "modelcar"]
    [record] = json.loads(s.ok("apply", "--push", "--format", "json", "--progress", "quiet"))
    assert record["status"] == "built", record
    assert record["exports"] == {
        kind: [f"{ref}-{kind}" for ref in record["tags"]] for kind in ("modelpack", "modelcar")
    }
    model = s.repo / "model" / "model.joblib"
    model_sha = hashlib.sha256(model.read_bytes()).hexdigest()

    latest = f"{repository}:latest"
    index = _raw(latest)
    [image] = [m for m in index["manifests"] if m["platform"]["os"] == "linux"]
    image_layers = [layer["digest"] for layer in _raw(f"{repository}@{image['digest']}")["layers"]]
    pack = _raw(f"{latest}-modelpack")
    assert pack["artifactType"] == "application/vnd.cncf.model.manifest.v1+json"
    assert pack["config"]["mediaType"] == "application/vnd.cncf.model.config.v1+json"
    [weights] = pack["layers"]
    assert weights["mediaType"] == "application/vnd.cncf.model.weight.v1.tar"
    assert weights["annotations"]["org.cncf.model.filepath"] == "models/model.joblib"
    assert weights["digest"] in image_layers  # the same blob: no model byte stored twice
    car = _raw(f"{latest}-modelcar")
    assert weights["digest"] == car["layers"][-1]["digest"]
    # counted: what the exports name beyond the image's own blobs is their two configs
    named = {p["digest"] for m in (pack, car) for p in (m["config"], *m["layers"])}
    assert named - set(image_layers) == {pack["config"]["digest"], car["config"]["digest"]}
    in_index = {m["annotations"].get("io.omibuild.export"): m["digest"]
                for m in index["manifests"] if m.get("annotations")}  # fmt: skip
    digest = hashlib.sha256
    assert (
        in_index["modelpack"] == "sha256:" + digest(raw_manifest(f"{latest}-modelpack")).hexdigest()
    )

    # PyPI's ModelPack client pulls it as any ModelPack reader would
    host = registry.split("/")[0]
    pulled = ModelPackClient(host, insecure=True, tls_verify=False).pull(
        f"{latest}-modelpack", tmp_path / "pulled"
    )
    got = tmp_path / "pulled" / "models" / "model.joblib"
    assert got.read_bytes() == model.read_bytes(), pulled.files
    config = dict(pulled.config)
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft202012Validator(schema).validate(config)
    assert config["modelfs"]["diffIds"] == [weights["digest"]]
    with pytest.raises(jsonschema.ValidationError):  # the schema does refuse a broken one
        jsonschema.Draft202012Validator(schema).validate({**config, "modelfs": {"type": "x"}})

    # the modelcar, as KServe's sidecar reaches it: the files through its own root
    subprocess.run(["docker", "pull", "-q", f"{latest}-modelcar"], check=True,
                   capture_output=True, timeout=600)  # fmt: skip
    sums = subprocess.run(
        ["docker", "run", "--rm", "--entrypoint", "sh", f"{latest}-modelcar", "-c",
         "ln -sf /proc/$$/root/models /tmp/m && sha256sum /tmp/m/*"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert sums.returncode == 0, sums.stderr
    assert f"{model_sha}  /tmp/m/model.joblib" in sums.stdout

    # and the OMI tag is still the OMI image
    for tag in record["tags"]:  # check reads the origin tag among the engine's tags
        subprocess.run(["docker", "pull", "-q", tag], check=True, capture_output=True,
                       timeout=600)  # fmt: skip
    checked = s.cli("check", latest, "--format", "json")
    findings = json.loads(checked.stdout)["findings"]
    assert checked.returncode == 0, [f for f in findings if not f["ok"]] or checked.stderr
    [binaries] = [f for f in findings if f["requirement"].startswith("its binaries are built")]
    assert binaries["ok"] and binaries["detail"].startswith("/opt/omi/venv/bin/python: "), binaries
