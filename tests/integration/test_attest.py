"""Attestations of the image actually pushed: a stranger's model, omibuild from its wheel,
`apply --push` to the loopback registry; then, read with skopeo and the registry's own API
(never omibuild's code), every statement's subject is a manifest the pushed index holds and
whose bytes hash to it, the SBOM is valid SPDX (pyspdxtools) listing the model file with the
sha256 the test computes, and the provenance names the plan, the base and the model file.
Signed with a cosign key: cosign and `check --verify` pass, and both fail once one byte of
the index changes. Then the same model as one Docker v2 manifest, which still serves."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tarfile
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import remember_image
from tests.integration.strangers import Stranger, iris_for_registry, new_stranger, training_venv
from tests.integration.test_install import IRIS_JOBLIB, SKLEARN
from tests.unit.test_attest import ec_key_pair

pytestmark = pytest.mark.integration
PYSPDXTOOLS = Path(sys.executable).with_name("pyspdxtools")


def raw_manifest(ref: str) -> bytes:
    """A manifest's bytes as the registry holds them (skopeo, not omibuild's code)."""
    return subprocess.run(
        ["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{ref}"],
        capture_output=True,
        check=True,
        timeout=120,
    ).stdout


def _cosign(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=300)


def _put_blob(registry: str, repository: str, data: bytes) -> str:
    """A blob uploaded by the registry's own API (one POST, one monolithic PUT)."""
    post = urllib.request.Request(
        f"http://{registry}/v2/{repository}/blobs/uploads/", method="POST", data=b""
    )
    with urllib.request.urlopen(post, timeout=60) as resp:
        location = resp.headers["Location"]
    if location.startswith("/"):
        location = f"http://{registry}{location}"
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    put = urllib.request.Request(
        f"{location}{'&' if '?' in location else '?'}digest={digest}", data=data, method="PUT",
        headers={"Content-Type": "application/octet-stream"},
    )  # fmt: skip
    assert urllib.request.urlopen(put, timeout=60).status == 201
    return digest


def _put_manifest(registry: str, repository: str, ref: str, data: bytes, media: str) -> str:
    put = urllib.request.Request(
        f"http://{registry}/v2/{repository}/manifests/{ref}", data=data, method="PUT",
        headers={"Content-Type": media},
    )  # fmt: skip
    assert urllib.request.urlopen(put, timeout=60).status == 201
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_a_pushed_image_s_statements_name_its_manifest_and_the_sbom_lists_the_model(
    tmp_path: Path, unique: str, registry: str
) -> None:
    name = f"attest-{unique}"
    s, repository = iris_for_registry(tmp_path, name, registry)
    manifest = s.repo / "omi.yaml"
    s.extra_env["COSIGN_PASSWORD"] = ""  # the user's own, as cosign reads it
    subprocess.run(["cosign", "generate-key-pair"], cwd=tmp_path, env=s.env, check=True,
                   capture_output=True, timeout=120)  # fmt: skip
    key, pub = tmp_path / "cosign.key", tmp_path / "cosign.pub"
    [record] = json.loads(
        s.ok("apply", "--push", "--sign", str(key), "--format", "json", "--progress", "quiet")
    )
    assert record["status"] == "built", record

    index_bytes = raw_manifest(f"{repository}:latest")
    assert "sha256:" + hashlib.sha256(index_bytes).hexdigest() == record["image_digest"]
    index = json.loads(index_bytes)
    images = [m for m in index["manifests"] if m["platform"]["os"] != "unknown"]
    attestations = [m for m in index["manifests"] if m["platform"]["os"] == "unknown"]
    assert len(images) == 1 and len(attestations) == 1, index
    [image] = images
    image_bytes = raw_manifest(f"{repository}@{image['digest']}")
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
    for layer in json.loads(raw_manifest(f"{repository}@{attestations[0]['digest']}"))["layers"]:
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
    assert [f["fileName"] for f in files] == [f"./models/{model.name}"]
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
    assert deps[f"/models/{model.name}"]["digest"] == {"sha256": model_sha}
    base = labels["org.opencontainers.image.base.digest"]
    assert deps["base image"]["digest"] == {"sha256": base.removeprefix("sha256:")}
    wheels = [d for n, d in deps.items() if n.startswith("pkg:pypi/scikit-learn@")]
    assert wheels and len(wheels[0]["digest"]["sha256"]) == 64  # pip's archive hash

    # signed: cosign itself verifies the index and each signed statement, and so does check
    insecure = ["--insecure-ignore-tlog", "--allow-http-registry", "--allow-insecure-registry"]
    cosign = [
        "cosign",
        "verify",
        "--key",
        str(pub),
        *insecure,
        f"{repository}@{record['image_digest']}",
    ]
    assert _cosign(cosign).returncode == 0
    for kind in ("slsaprovenance1", "spdxjson"):
        attested = ["cosign", "verify-attestation", "--key", str(pub), "--type", kind, *insecure,
                    f"{repository}@{image['digest']}"]  # fmt: skip
        assert _cosign(attested).returncode == 0
    for tag in record["tags"]:  # check reads the origin tag among the engine's tags
        subprocess.run(["docker", "pull", tag], capture_output=True, check=True, timeout=600)
    checked = s.cli("check", "--verify", str(pub), f"{repository}:latest", "--format", "json")
    findings = json.loads(checked.stdout)["findings"]
    assert checked.returncode == 0, [f for f in findings if not f["ok"]] or checked.stderr
    assert any(f["requirement"].startswith("signature") and f["ok"] for f in findings)
    # one byte of the index changed (an annotation's value) and put back under the tag:
    # cosign and check both refuse it, and check runs nothing
    changed = index_bytes.replace(
        b'"io.omibuild.default-interface":"', b'"io.omibuild.default-interface":"x', 1
    )
    assert changed != index_bytes
    path = f"omibuild-test/{name}"
    tampered = _put_manifest(registry, path, "latest", changed, index["mediaType"])
    assert _cosign([*cosign[:-1], f"{repository}@{tampered}"]).returncode != 0
    _refused_by_check(s, pub, f"{repository}:latest")

    # one byte of a layer changed (the dry prediction's answer, a plain tar): a new blob, so
    # a new image manifest and index, put under the tag; cosign refuses the index and the
    # statements (they name the manifest signed), and check refuses the tag
    image_manifest = json.loads(image_bytes)
    layer = image_manifest["layers"][-1]
    blob = bytearray(
        urllib.request.urlopen(
            f"http://{registry}/v2/{path}/blobs/{layer['digest']}", timeout=60
        ).read()
    )
    at = blob.index(b"{")  # the first byte of outputs.json
    blob[at + 1] ^= 0x01
    new_layer = _put_blob(registry, path, bytes(blob))
    image_manifest["layers"][-1] = {**layer, "digest": new_layer}
    new_image_bytes = json.dumps(image_manifest).encode()
    new_image = _put_manifest(
        registry, path, "sha256:" + hashlib.sha256(new_image_bytes).hexdigest(), new_image_bytes,
        image_manifest["mediaType"],
    )  # fmt: skip
    index["manifests"] = [
        {**m, "digest": new_image, "size": len(new_image_bytes)} if m is image else m
        for m in index["manifests"]
    ]
    layer_changed = _put_manifest(
        registry, path, "latest", json.dumps(index).encode(), index["mediaType"]
    )
    assert _cosign([*cosign[:-1], f"{repository}@{layer_changed}"]).returncode != 0
    attested = ["cosign", "verify-attestation", "--key", str(pub), "--type", "slsaprovenance1",
                *insecure, f"{repository}@{new_image}"]  # fmt: skip
    assert _cosign(attested).returncode != 0
    _refused_by_check(s, pub, f"{repository}:latest")

    # the same model as one Docker v2 manifest (image.format docker, as SageMaker takes it):
    # no index and no attestation children, said by apply, and the image still serves
    docker_repository = f"{registry}/omibuild-test/{name}-docker"
    remember_image(docker_repository)
    text = manifest.read_text().replace(repository, docker_repository)
    manifest.write_text(text.replace("image:\n", "image:\n  format: docker\n", 1))
    pushed = s.cli("apply", "--push", "--format", "json", "--progress", "plain")
    assert pushed.returncode == 0, pushed.stderr[-3000:]
    assert "one Docker v2 manifest, no index: the SLSA provenance and SBOM are left out" in (
        pushed.stderr
    )
    [record] = json.loads(pushed.stdout)
    raw = raw_manifest(f"{docker_repository}:latest")
    single = json.loads(raw)
    assert single["mediaType"] == "application/vnd.docker.distribution.manifest.v2+json"
    assert "manifests" not in single and "annotations" not in single
    assert single["config"]["mediaType"] == "application/vnd.docker.container.image.v1+json"
    assert "sha256:" + hashlib.sha256(raw).hexdigest() == record["image_digest"]
    subprocess.run(["docker", "rmi", "-f", f"{docker_repository}:latest"], capture_output=True)
    pulled = subprocess.run(
        ["docker", "pull", f"{docker_repository}@{record['image_digest']}"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert pulled.returncode == 0, pulled.stderr
    ran = s.cli("run", f"{docker_repository}@{record['image_digest']}", "--predict", "--format",
                "json")  # fmt: skip
    assert ran.returncode == 0, ran.stdout[-2000:] + ran.stderr[-2000:]
    assert json.loads(ran.stdout)["status"] == 200


def _refused_by_check(s: Stranger, pub: Path, ref: str) -> None:
    """`check --verify` refuses ``ref``: exit 1, the signature finding failed, nothing ran."""
    refused = s.cli("check", "--verify", str(pub), ref, "--format", "json")
    assert refused.returncode == 1, refused.stderr
    findings = json.loads(refused.stdout)["findings"]
    [signature] = [f for f in findings if "signature" in f["requirement"]]
    assert not signature["ok"]
    assert not any("interface" in f["requirement"] for f in findings)


def test_a_signed_model_verifies_in_its_image_and_a_tampered_file_fails(
    tmp_path: Path, unique: str, engine: None, image_cleanup: list[str]
) -> None:
    """`apply --sign-model` (OpenSSF model-signing, omibuild[signing] from the wheel) ships the
    bundle beside the model; `check --verify-model` passes on the image, and fails, running
    nothing, on the same image with one byte of the model appended."""
    name = f"model-sig-{unique}"
    s = new_stranger(tmp_path, name, training_venv("sklearn", SKLEARN), extras="signing")
    s.train(IRIS_JOBLIB)
    s.ok("init")
    key, pub = ec_key_pair(tmp_path, "model")
    applied = s.cli("apply", "--sign-model", str(key), "--format", "json", "--progress", "plain")
    assert applied.returncode == 0, applied.stderr[-3000:]
    assert "signing the model (/opt/omi/model.sig)" in applied.stderr
    [record] = json.loads(applied.stdout)
    image_cleanup += record["tags"]
    image = next(t for t in record["tags"] if t.endswith(":latest"))
    checked = s.cli("check", "--verify-model", str(pub), image, "--format", "json")
    findings = json.loads(checked.stdout)["findings"]
    assert checked.returncode == 0, [f for f in findings if not f["ok"]] or checked.stderr
    assert findings[0]["requirement"].startswith("the model's signature") and findings[0]["ok"]

    tampered = f"omibuild.local/{name}:tampered"
    image_cleanup.append(tampered)
    container = f"tamper-{unique}"
    subprocess.run(["docker", "run", "--name", container, "--user", "0", "--entrypoint", "sh",
                    image, "-c", "printf x >> /models/model.joblib"],
                   check=True, capture_output=True, timeout=120)  # fmt: skip
    try:
        subprocess.run(["docker", "commit", container, tampered], check=True, capture_output=True,
                       timeout=300)  # fmt: skip
    finally:
        subprocess.run(["docker", "rm", "-f", container], capture_output=True)
    refused = s.cli("check", "--verify-model", str(pub), tampered, "--format", "json")
    assert refused.returncode == 1, refused.stderr
    [finding] = json.loads(refused.stdout)["findings"]  # nothing else ran
    assert not finding["ok"] and "model.joblib" in finding["detail"], finding


def test_an_oci_file_keeps_the_attestations_naming_its_manifest(
    tmp_path: Path, unique: str, engine: None, image_cleanup: list[str]
) -> None:
    """`apply --output oci:FILE`: the tarball, read with tarfile and hashlib only, holds every
    blob it names under its digest, and its index holds an attestation manifest whose two
    statements (SLSA provenance v1, SPDX) name the image manifest the index holds."""
    name = f"attest-oci-{unique}"
    s = new_stranger(tmp_path, name, training_venv("sklearn", SKLEARN))
    s.train(IRIS_JOBLIB)
    s.ok("init")
    out = tmp_path / "image.oci.tar"
    applied = s.cli("apply", "--output", f"oci:{out}", "--format", "json", "--progress", "plain")
    assert applied.returncode == 0, applied.stderr[-3000:]
    [record] = json.loads(applied.stdout)
    image_cleanup += record["tags"]
    assert "attesting: SLSA provenance v1, SPDX SBOM" in applied.stderr

    blobs: dict[str, bytes] = {}
    with tarfile.open(out) as tar:
        for member in tar.getmembers():
            fh = tar.extractfile(member) if member.isfile() else None
            if fh is None:
                continue
            data = fh.read()
            if member.name.startswith("blobs/sha256/"):
                assert hashlib.sha256(data).hexdigest() == member.name.rsplit("/", 1)[1]
            blobs[member.name] = data

    def blob(digest: str) -> bytes:
        return blobs["blobs/sha256/" + digest.removeprefix("sha256:")]

    [top] = json.loads(blobs["index.json"])["manifests"]
    assert top["digest"] == record["image_digest"]
    index = json.loads(blob(top["digest"]))
    images = [m for m in index["manifests"] if m["platform"]["os"] != "unknown"]
    attestations = [m for m in index["manifests"] if m["platform"]["os"] == "unknown"]
    assert len(images) == 1 and len(attestations) == 1, index
    for desc in (*images, *attestations):  # every blob a manifest names is in the file
        manifest = json.loads(blob(desc["digest"]))
        for part in (manifest["config"], *manifest["layers"]):
            assert len(blob(part["digest"])) == part["size"]
    assert attestations[0]["annotations"]["vnd.docker.reference.digest"] == images[0]["digest"]
    kinds = set()
    for layer in json.loads(blob(attestations[0]["digest"]))["layers"]:
        statement = json.loads(blob(layer["digest"]))
        assert statement["subject"][0]["digest"] == {"sha256": images[0]["digest"][7:]}
        kinds.add(statement["predicateType"])
    assert kinds == {"https://slsa.dev/provenance/v1", "https://spdx.dev/Document"}
