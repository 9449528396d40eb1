"""Attestations of the image actually pushed: a stranger's model, omibuild from its wheel,
`apply --push` to the loopback registry; then, read with skopeo and the registry's own API
(never omibuild's code), every statement's subject is a manifest the pushed index holds and
whose bytes hash to it, the SBOM is valid SPDX (pyspdxtools) listing the model file with the
sha256 the test computes, and the provenance names the plan, the base and the model file."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import remember_image
from tests.integration.strangers import new_stranger, training_venv
from tests.integration.test_install import IRIS_JOBLIB, SKLEARN

pytestmark = pytest.mark.integration
PYSPDXTOOLS = Path(sys.executable).with_name("pyspdxtools")


def _raw(ref: str) -> bytes:
    return subprocess.run(
        ["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{ref}"],
        capture_output=True,
        check=True,
        timeout=120,
    ).stdout


def test_a_pushed_image_s_statements_name_its_manifest_and_the_sbom_lists_the_model(
    tmp_path: Path, unique: str, registry: str
) -> None:
    name = f"attest-{unique}"
    s = new_stranger(tmp_path, name, training_venv("sklearn", SKLEARN))
    s.train(IRIS_JOBLIB)
    s.ok("init")
    manifest = s.repo / "omi.yaml"
    repository = f"{registry}/omibuild-test/{name}"
    remember_image(repository)
    text, commented = manifest.read_text(), f"# repository: registry.example.com/models/{name}"
    assert commented in text
    manifest.write_text(text.replace(commented, f"repository: {repository}"))
    [record] = json.loads(s.ok("apply", "--push", "--format", "json", "--progress", "quiet"))
    assert record["status"] == "built", record

    index_bytes = _raw(f"{repository}:latest")
    assert "sha256:" + hashlib.sha256(index_bytes).hexdigest() == record["image_digest"]
    index = json.loads(index_bytes)
    images = [m for m in index["manifests"] if m["platform"]["os"] != "unknown"]
    attestations = [m for m in index["manifests"] if m["platform"]["os"] == "unknown"]
    assert len(images) == 1 and len(attestations) == 1, index
    [image] = images
    image_bytes = _raw(f"{repository}@{image['digest']}")
    assert "sha256:" + hashlib.sha256(image_bytes).hexdigest() == image["digest"]
    assert attestations[0]["annotations"]["vnd.docker.reference.digest"] == image["digest"]

    model = s.repo / "model" / "model.joblib"
    model_sha = hashlib.sha256(model.read_bytes()).hexdigest()
    config_digest = json.loads(image_bytes)["config"]["digest"]  # the config holds the labels
    config = json.loads(
        urllib.request.urlopen(
            f"http://{registry}/v2/omibuild-test/{name}/blobs/{config_digest}", timeout=60
        ).read()
    )
    labels = config["config"]["Labels"]
    found = {}
    for layer in json.loads(_raw(f"{repository}@{attestations[0]['digest']}"))["layers"]:
        blob = urllib.request.urlopen(
            f"http://{registry}/v2/omibuild-test/{name}/blobs/{layer['digest']}", timeout=60
        ).read()
        statement = json.loads(blob)
        assert statement["_type"] == "https://in-toto.io/Statement/v1"
        assert [sub["digest"] for sub in statement["subject"]] == [{"sha256": image["digest"][7:]}]
        found[statement["predicateType"]] = statement["predicate"]
    assert set(found) == {"https://slsa.dev/provenance/v1", "https://spdx.dev/Document"}

    sbom = tmp_path / "sbom.spdx.json"
    sbom.write_text(json.dumps(found["https://spdx.dev/Document"]))
    validated = subprocess.run(
        [str(PYSPDXTOOLS), "-i", str(sbom)], capture_output=True, text=True, timeout=300
    )
    assert validated.returncode == 0, validated.stdout[-3000:] + validated.stderr[-3000:]
    files = found["https://spdx.dev/Document"]["files"]
    assert [f["fileName"] for f in files] == [f"./opt/omi/model/{model.name}"]
    sums = {c["algorithm"]: c["checksumValue"] for c in files[0]["checksums"]}
    assert sums["SHA256"] == model_sha
    packages = {p["name"] for p in found["https://spdx.dev/Document"]["packages"]}
    assert {"scikit-learn", "numpy", "starlette"} <= packages, packages

    build = found["https://slsa.dev/provenance/v1"]["buildDefinition"]
    assert build["externalParameters"]["plan"]["digest"] == labels["io.omibuild.plan.digest"]
    assert (
        build["externalParameters"]["manifest"]["sha256"]
        == hashlib.sha256(manifest.read_bytes()).hexdigest()
    )
    deps = {d["name"]: d for d in build["resolvedDependencies"]}
    assert deps[f"/opt/omi/model/{model.name}"]["digest"] == {"sha256": model_sha}
    base = labels["org.opencontainers.image.base.digest"]
    assert deps["base image"]["digest"] == {"sha256": base.removeprefix("sha256:")}
    wheels = [d for n, d in deps.items() if n.startswith("pkg:pypi/scikit-learn@")]
    assert wheels and len(wheels[0]["digest"]["sha256"]) == 64  # pip's archive hash
