"""Attestations of the final image (engine/attest.py): each statement names a manifest the
index holds, the SBOM is valid SPDX 2.3 (as spdx-tools reads it) listing the venv's
distributions and each model file with its checksums, and BuildKit's stale ones go."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

import pytest
from spdx_tools.spdx.parser.parse_anything import parse_file
from spdx_tools.spdx.validation.document_validator import validate_full_spdx_document

from omibuild.engine.attest import PROVENANCE, SPDX, Inputs, attach, model_sums
from omibuild.engine.oci import ATTESTS, Appended, Layout
from omibuild.planning.plan import Plan
from omibuild.sources.base import ModelFile
from omibuild.store.cache import Cache
from omibuild.store.layers import Blob, LayerFileChanged, StagedLayer, layer_blob, remember_sha1s

GOLDEN = Path(__file__).parents[1] / "golden" / "sklearn-iris.plan.json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
INSTALLED = {
    "format": 1,
    "distributions": [
        {
            "name": "numpy",
            "version": "2.1.0",
            "url": "https://files.example.org/numpy.whl",
            "sha256": "cd" * 32,
        },
        {"name": "setuptools", "version": "70.0", "url": "file:///wheels/setuptools.whl"},
    ],
}


def _venv_layer() -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for name, data in (
            ("opt/omi/venv/.omi-installed.json", json.dumps(INSTALLED).encode()),
            ("opt/omi/venv/bin/python", b"#!"),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return gzip.compress(raw.getvalue())


def _image(layout: Layout, arch: str) -> dict:  # type: ignore[type-arg]
    venv = _venv_layer()
    digest = "sha256:" + hashlib.sha256(venv).hexdigest()
    layout.blob_path(digest).parent.mkdir(parents=True, exist_ok=True)
    layout.blob_path(digest).write_bytes(venv)
    config = layout.put_json(
        {
            "architecture": arch,
            "os": "linux",
            "created": "2026-12-05T10:11:12.123456789Z",
            "rootfs": {"type": "layers", "diff_ids": ["sha256:" + "2" * 64]},
            "history": [{"created_by": "COPY --link --from=deps /opt/omi/venv /opt/omi/venv"}],
        },
        "application/vnd.oci.image.config.v1+json",
    )
    layer = {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": digest,
             "size": len(venv)}  # fmt: skip
    manifest = layout.put_json(
        {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config, "layers": [layer]},
        OCI_MANIFEST,
    )
    return manifest | {"platform": {"architecture": arch, "os": "linux"}}


def test_each_platform_gets_statements_naming_its_final_manifest(tmp_path: Path) -> None:
    layout = Layout(tmp_path / "layout")
    images = [_image(layout, arch) for arch in ("amd64", "arm64")]
    stale = layout.put_json({"schemaVersion": 2, "layers": []}, OCI_MANIFEST)
    stale["annotations"] = {ATTESTS: "sha256:" + "9" * 64}  # BuildKit's, naming a lost image
    index = layout.put_json(
        {"schemaVersion": 2, "manifests": [*images, stale]},
        "application/vnd.oci.image.index.v1+json",
    )
    (tmp_path / "m").mkdir()
    weights = b"weights" * 1000
    (tmp_path / "m" / "w.bin").write_bytes(weights)
    files = (ModelFile("w.bin", len(weights), hashlib.sha256(weights).hexdigest()),)
    cache = Cache(tmp_path / "cache", hold=False)
    layer = StagedLayer(files, tmp_path / "m")
    blob, _ = layer_blob(cache, layer)
    plan = Plan.from_dict(json.loads(GOLDEN.read_text()))
    sums = model_sums(cache, [Appended(blob, "model", layer=layer)])
    assert sums[0].sha1 == hashlib.sha1(weights, usedforsecurity=False).hexdigest()
    top, made = attach(layout, index, Inputs(plan, "omi.yaml", "ef" * 32, sums))
    assert [(s.subject, s.predicate_type) for s in made] == [
        (i["digest"], k) for i in images for k in (PROVENANCE, SPDX)
    ]

    children = layout.read_json(top["digest"])["manifests"]
    assert [c["digest"] for c in children[:2]] == [i["digest"] for i in images]
    attestations = children[2:]
    assert [a["annotations"][ATTESTS] for a in attestations] == [i["digest"] for i in images]
    for image, att in zip(images, attestations, strict=True):
        manifest = layout.read_json(att["digest"])
        kinds = []
        for layer_desc in manifest["layers"]:
            statement = json.loads(layout.blob_path(layer_desc["digest"]).read_bytes())
            assert statement["subject"][0]["digest"] == {"sha256": image["digest"][7:]}
            kinds.append(statement["predicateType"])
            if statement["predicateType"] == SPDX:
                sbom = tmp_path / f"{image['platform']['architecture']}.spdx.json"
                sbom.write_text(json.dumps(statement["predicate"]))
                document = parse_file(str(sbom))
                assert validate_full_spdx_document(document) == []
                [model_file] = document.files
                assert model_file.name == "./models/w.bin"
                sums_by = {c.algorithm.name: c.value for c in model_file.checksums}
                assert sums_by["SHA256"] == files[0].sha256
                assert {p.name for p in document.packages} >= {"numpy", "setuptools"}
            else:
                deps = statement["predicate"]["buildDefinition"]["resolvedDependencies"]
                named = {d["name"]: d for d in deps}
                assert named["/models/w.bin"]["digest"] == {"sha256": files[0].sha256}
                assert named["pkg:pypi/numpy@2.1.0"]["digest"] == {"sha256": "cd" * 32}
                params = statement["predicate"]["buildDefinition"]["externalParameters"]
                assert params["plan"]["digest"] == plan.digest
        assert kinds == [PROVENANCE, SPDX]
    # the same image attested again is the same index: statements carry no clock
    assert attach(layout, index, Inputs(plan, "omi.yaml", "ef" * 32, sums))[0] == top


def test_a_model_file_changed_since_planning_stops_the_attestation(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "w.bin").write_bytes(b"planned")
    files = (ModelFile("w.bin", 7, hashlib.sha256(b"planned").hexdigest()),)
    layer = StagedLayer(files, tmp_path / "m")
    cache = Cache(tmp_path / "cache", hold=False)
    blob, _ = layer_blob(cache, layer)
    (tmp_path / "m" / "w.bin").write_bytes(b"changed")
    with pytest.raises(LayerFileChanged, match=r"w\.bin changed"):
        model_sums(cache, [Appended(blob, "model", layer=layer)])


def test_the_upload_s_pass_records_each_file_s_sha1_so_the_sbom_reads_nothing(
    tmp_path: Path,
) -> None:
    """The pass that uploads a layer also takes each file's SHA1 (SPDX asks for it); the
    attestation then finds them memoised and reads no model file (they are gone here)."""
    (tmp_path / "m" / "sub").mkdir(parents=True)
    data = {"w.bin": os.urandom(3 << 20), "sub/c.json": b"{}"}
    for rel, content in data.items():
        (tmp_path / "m" / rel).write_bytes(content)
    files = tuple(
        ModelFile(rel, len(b), hashlib.sha256(b).hexdigest()) for rel, b in sorted(data.items())
    )
    layer = StagedLayer(files, tmp_path / "m")
    cache = Cache(tmp_path / "cache", hold=False)
    sha1s: dict[str, str] = {}
    tar = b"".join(layer.chunks(sha1s=sha1s))
    expected = {rel: hashlib.sha1(b, usedforsecurity=False).hexdigest() for rel, b in data.items()}
    assert sha1s == expected
    remember_sha1s(cache, layer, sha1s)
    blob = Blob("sha256:" + hashlib.sha256(tar).hexdigest(), len(tar))
    for rel in data:
        (tmp_path / "m" / rel).unlink()
    sums = model_sums(cache, [Appended(blob, "model", layer=layer)])
    assert {s.path: s.sha1 for s in sums} == {f"models/{k}": v for k, v in expected.items()}


def test_a_model_signed_verifies_and_one_changed_byte_does_not(tmp_path: Path) -> None:
    from omibuild.engine.modelsig import sign_model, verify_model

    model = tmp_path / "model"
    (model / "weights").mkdir(parents=True)
    (model / "weights" / "w.bin").write_bytes(b"weights" * 1000)
    (model / "config.json").write_text("{}")
    key, pub = ec_key_pair(tmp_path, "model")
    bundle = tmp_path / "model.sig"
    bundle.write_bytes(sign_model(key, model))
    assert verify_model(pub, model, bundle) == ""
    _, other = ec_key_pair(tmp_path, "other")
    assert verify_model(other, model, bundle)  # another key: refused
    with open(model / "weights" / "w.bin", "ab") as fh:
        fh.write(b"x")
    assert "w.bin" in verify_model(pub, model, bundle)


def ec_key_pair(directory: Path, name: str) -> tuple[Path, Path]:
    """A P-256 key pair as model-signing takes it: NAME-key.pem (PKCS#8) and NAME-pub.pem."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    private = ec.generate_private_key(ec.SECP256R1())
    key, pub = directory / f"{name}-key.pem", directory / f"{name}-pub.pem"
    key.write_bytes(private.private_bytes(serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))  # fmt: skip
    pub.write_bytes(private.public_key().public_bytes(serialization.Encoding.PEM,
        serialization.PublicFormat.SubjectPublicKeyInfo))  # fmt: skip
    return key, pub
