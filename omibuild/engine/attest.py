"""Attestations of the image omibuild actually made: in-toto statements whose subject is each
final image manifest (after the model layers and the dry prediction's answer were appended),
attached to the image index the way BuildKit and cosign read them (an attestation manifest
per image manifest, ``vnd.docker.reference.digest`` naming it).

- SLSA provenance v1: the manifest and the plan as external parameters; as resolved
  dependencies the base image, every distribution the venv holds (with the sha256 of the
  archive pip installed it from, where pip reported one) and every model file (its sha256 and
  its origin: the MLflow run, the Hugging Face commit or the content digest).
- An SPDX 2.3 document: the image, its base, the venv's distributions as packages, and the
  model as a package whose files carry their SHA1 and SHA256.

What the venv holds is read from the image itself: the deps stage writes it
(``runtime/slim.py``, ``.omi-installed.json``) and it is read here from the venv's layer.
Statements carry no clock of their own (the image config's ``created`` stands for when), so
the same image gives the same attestations, and the same index digest, on every build."""

from __future__ import annotations

import gzip
import hashlib
import json
import re
import tarfile
from concurrent import futures
from dataclasses import dataclass
from typing import IO, Any

from packaging.utils import canonicalize_name

from omibuild import __version__
from omibuild.engine.oci import (
    ATTESTS,
    INDEX_TYPES,
    MANIFEST_TYPES,
    Appended,
    Layout,
    step_layer,
)
from omibuild.planning.plan import OMI, Plan
from omibuild.runtime.slim import INSTALLED_FILE
from omibuild.store.cache import Cache
from omibuild.store.layers import (
    MODEL_ROOT,
    LayerFileChanged,
    StagedLayer,
    known_sha1s,
    remember_sha1s,
)

STATEMENT = "https://in-toto.io/Statement/v1"
PROVENANCE = "https://slsa.dev/provenance/v1"
SPDX = "https://spdx.dev/Document"
BUILDER = "https://pypi.org/project/omibuild/"
BUILD_TYPE = "https://pypi.org/project/omibuild/#omi-image/v1"
TOTO_MEDIA = "application/vnd.in-toto+json"
PREDICATE_TYPE = "in-toto.io/predicate-type"
REFERENCE_TYPE = "vnd.docker.reference.type"
_CONFIG_MEDIA = "application/vnd.oci.image.config.v1+json"
_VENV_MARKER = f"{OMI}/venv"
_INSTALLED_MEMBER = f"{OMI}/venv/{INSTALLED_FILE}".lstrip("/")
_INSTALLED_LIMIT = 8 << 20


@dataclass(frozen=True)
class ModelFileSums:
    path: str  # inside the image
    size: int
    sha256: str
    sha1: str


@dataclass(frozen=True)
class Inputs:
    """What the statements say besides the image: the plan, the manifest's bytes, the files."""

    plan: Plan
    manifest_name: str
    manifest_sha256: str
    files: tuple[ModelFileSums, ...]


@dataclass(frozen=True)
class Statement:
    """One statement made: the manifest it names, its predicate type and predicate."""

    subject: str  # sha256:<hex> of an image manifest
    predicate_type: str
    predicate: dict[str, Any]


def attach(
    layout: Layout, top: dict[str, Any], inputs: Inputs
) -> tuple[dict[str, Any], list[Statement]]:
    """``top`` (an index) with an attestation manifest for each image manifest it holds, and
    none of the attestation manifests it had (BuildKit's name manifests that are gone); and
    the statements made, for signing."""
    if top.get("mediaType") not in INDEX_TYPES:
        raise ValueError("attestations attach to an image index")
    index = layout.read_json(top["digest"])
    images = [
        dict(m)
        for m in index.get("manifests") or []
        if m.get("mediaType") in MANIFEST_TYPES and ATTESTS not in (m.get("annotations") or {})
    ]
    children = list(images)
    made: list[Statement] = []
    for image in images:
        manifest = layout.read_json(image["digest"])
        config = layout.read_json(manifest["config"]["digest"])
        installed = _installed(layout, manifest, config)
        subject = {"name": inputs.plan.repository, "digest": {"sha256": image["digest"][7:]}}
        created = _when(config.get("created"))
        statements = [
            (PROVENANCE, provenance(inputs, installed, config)),
            (SPDX, spdx(inputs, image["digest"], installed, created, image.get("platform"))),
        ]
        children.append(_attestation_manifest(layout, image["digest"], subject, statements))
        made += [Statement(image["digest"], kind, predicate) for kind, predicate in statements]
    index["manifests"] = children
    return {**top, **layout.put_json(index, top["mediaType"])}, made


def _attestation_manifest(
    layout: Layout, subject_digest: str, subject: dict[str, Any], statements: list[Any]
) -> dict[str, Any]:
    layers = []
    for predicate_type, predicate in statements:
        statement = {
            "_type": STATEMENT,
            "subject": [subject],
            "predicateType": predicate_type,
            "predicate": predicate,
        }
        desc = layout.put_json(statement, TOTO_MEDIA)
        layers.append({**desc, "annotations": {PREDICATE_TYPE: predicate_type}})
    config = {
        "architecture": "unknown",
        "os": "unknown",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": [d["digest"] for d in layers]},
    }
    manifest = {
        "schemaVersion": 2,
        "mediaType": MANIFEST_TYPES[0],
        "config": layout.put_json(config, _CONFIG_MEDIA),
        "layers": layers,
    }
    desc = layout.put_json(manifest, MANIFEST_TYPES[0])
    return {
        **desc,
        "platform": {"architecture": "unknown", "os": "unknown"},
        "annotations": {ATTESTS: subject_digest, REFERENCE_TYPE: "attestation-manifest"},
    }


# -- what the image holds -------------------------------------------------------------------
def _installed(
    layout: Layout, manifest: dict[str, Any], config: dict[str, Any]
) -> list[dict[str, str]]:
    """The venv's distributions, as the deps stage recorded them in the venv's own layer."""
    layer = step_layer(manifest, config, _VENV_MARKER)
    if layer is None:
        return []
    with open(layout.blob_path(layer["digest"]), "rb") as fh:
        data = _member(fh, _INSTALLED_MEMBER)
    found = (json.loads(data).get("distributions") or []) if data is not None else []
    return [
        {k: str(v) for k, v in d.items() if k in ("name", "version", "url", "sha256")}
        for d in found
        if isinstance(d, dict) and d.get("name") and d.get("version")
    ]


def _member(fh: IO[bytes], name: str) -> bytes | None:
    """One file of a layer (gzip or plain tar), read until it is found (the recorded file
    sorts before the venv's directories, so little of the layer is read)."""
    magic = fh.read(2)
    fh.seek(0)
    stream: IO[bytes] = gzip.GzipFile(fileobj=fh) if magic == b"\x1f\x8b" else fh  # type: ignore[assignment]
    with tarfile.open(fileobj=stream, mode="r|") as tar:
        for member in tar:
            if member.name.lstrip("./") == name and member.isfile():
                if member.size > _INSTALLED_LIMIT:
                    return None
                extracted = tar.extractfile(member)
                return extracted.read() if extracted else None
    return None


def model_sums(cache: Cache, model: list[Appended]) -> tuple[ModelFileSums, ...]:
    """Each model file's SHA256 (the plan's, checked as the files were read) and SHA1 (SPDX
    2.3 asks for it), memoised beside the layer's digest by the pass that uploaded the layer
    (a second read of a 1 GiB model cost 1.2 s of a push); else the files are read here, on
    as many threads as cores."""
    layers = [a.layer for a in model if a.layer is not None]
    out: list[ModelFileSums] = []
    for layer in layers:
        sha1s = known_sha1s(cache, layer)  # the upload's pass records them
        if sha1s is None:
            sha1s = _sha1s(layer)
            remember_sha1s(cache, layer, sha1s)
        out += [
            ModelFileSums(f"{MODEL_ROOT}/{f.path}", f.size, f.sha256, str(sha1s[f.path]))
            for f in layer.files
        ]
    return tuple(sorted(out, key=lambda s: s.path))


def _sha1s(layer: StagedLayer) -> dict[str, str]:
    def both(path: str, expected: str) -> tuple[str, str]:
        sha1, sha256 = hashlib.sha1(usedforsecurity=False), hashlib.sha256()
        with open(layer.root / path, "rb") as fh:
            while chunk := fh.read(4 << 20):
                sha1.update(chunk)
                sha256.update(chunk)
        if sha256.hexdigest() != expected:
            raise LayerFileChanged(
                f"model file {path} changed while the image was attested; nothing was tagged "
                "(hint: run again)"
            )
        return path, sha1.hexdigest()

    with futures.ThreadPoolExecutor(4) as pool:
        return dict(pool.map(lambda f: both(f.path, f.sha256), layer.files))


# -- the statements ----------------------------------------------------------------------
def _origin(plan: Plan) -> dict[str, str]:
    return dict(plan.origin)


def provenance(
    inputs: Inputs, installed: list[dict[str, str]], config: dict[str, Any]
) -> dict[str, Any]:
    """The SLSA v1 provenance predicate of one platform's image."""
    plan = inputs.plan
    origin = _origin(plan)
    deps: list[dict[str, Any]] = []
    base = dict(plan.labels).get("org.opencontainers.image.base.digest", "")
    if base.startswith("sha256:"):
        deps.append(
            {
                "name": "base image",
                "uri": f"oci://{plan.base_image.split('@')[0]}",
                "digest": {"sha256": base[7:]},
            }
        )
    for dist in installed:
        dep: dict[str, Any] = {
            "name": f"pkg:pypi/{canonicalize_name(dist['name'])}@{dist['version']}",
        }
        if dist.get("url"):
            dep["uri"] = dist["url"]
        if dist.get("sha256"):
            dep["digest"] = {"sha256": dist["sha256"]}
        deps.append(dep)
    for f in inputs.files:
        deps.append(
            {
                "name": f"/{f.path}",
                "uri": origin.get("uri", ""),
                "digest": {"sha256": f.sha256},
                "annotations": {f"origin.{k}": v for k, v in sorted(origin.items())},
            }
        )
    return {
        "buildDefinition": {
            "buildType": BUILD_TYPE,
            "externalParameters": {
                "manifest": {"path": inputs.manifest_name, "sha256": inputs.manifest_sha256},
                "plan": {"digest": plan.digest},
            },
            "internalParameters": {
                "platforms": list(plan.platforms),
                "architecture": config.get("architecture", ""),
                "os": config.get("os", ""),
            },
            "resolvedDependencies": deps,
        },
        "runDetails": {
            "builder": {"id": BUILDER, "version": {"omibuild": __version__}},
            "metadata": {"invocationId": plan.digest},
        },
    }


def spdx(
    inputs: Inputs,
    manifest_digest: str,
    installed: list[dict[str, str]],
    created: str,
    platform: dict[str, Any] | None,
) -> dict[str, Any]:
    """The SPDX 2.3 document of one platform's image."""
    plan = inputs.plan
    image_id, model_id = "SPDXRef-Image", "SPDXRef-Model"
    where = plan.repository.rsplit("/", 1)
    purl = f"pkg:oci/{where[-1]}@{manifest_digest.replace(':', '%3A')}"
    if len(where) > 1:
        purl += f"?repository_url={where[0]}/{where[-1]}"
    packages: list[dict[str, Any]] = [
        {
            "SPDXID": image_id,
            "name": plan.repository,
            "versionInfo": plan.version,
            "downloadLocation": "NOASSERTION",
            "filesAnalyzed": False,
            "primaryPackagePurpose": "CONTAINER",
            "checksums": [{"algorithm": "SHA256", "checksumValue": manifest_digest[7:]}],
            "externalRefs": [_purl(purl)],
        }
    ]
    relationships = [_rel("SPDXRef-DOCUMENT", "DESCRIBES", image_id)]
    base = dict(plan.labels).get("org.opencontainers.image.base.digest", "")
    if base.startswith("sha256:"):
        packages.append(
            {
                "SPDXID": "SPDXRef-Base",
                "name": plan.base_image.split("@")[0],
                "downloadLocation": "NOASSERTION",
                "filesAnalyzed": False,
                "checksums": [{"algorithm": "SHA256", "checksumValue": base[7:]}],
            }
        )
        relationships.append(_rel(image_id, "DESCENDANT_OF", "SPDXRef-Base"))
    for dist in installed:
        spdx_id = _spdx_id("SPDXRef-Pypi", dist["name"], dist["version"])
        package: dict[str, Any] = {
            "SPDXID": spdx_id,
            "name": dist["name"],
            "versionInfo": dist["version"],
            "downloadLocation": _download(dist.get("url", "")),
            "filesAnalyzed": False,
            "primaryPackagePurpose": "LIBRARY",
            "externalRefs": [
                _purl(f"pkg:pypi/{canonicalize_name(dist['name'])}@{dist['version']}")
            ],
        }
        if dist.get("sha256"):
            package["checksums"] = [{"algorithm": "SHA256", "checksumValue": dist["sha256"]}]
        packages.append(package)
        relationships.append(_rel(image_id, "CONTAINS", spdx_id))
    files = []
    for n, f in enumerate(inputs.files):
        file_id = f"SPDXRef-ModelFile-{n}"
        files.append(
            {
                "SPDXID": file_id,
                "fileName": f"./{f.path}",
                "checksums": [
                    {"algorithm": "SHA1", "checksumValue": f.sha1},
                    {"algorithm": "SHA256", "checksumValue": f.sha256},
                ],
            }
        )
        relationships.append(_rel(model_id, "CONTAINS", file_id))
    if files:
        origin = _origin(plan)
        # the SPDX 2.3 verification code: SHA1 of the files' SHA1s, sorted and concatenated
        code = hashlib.sha1(
            "".join(sorted(f.sha1 for f in inputs.files)).encode(), usedforsecurity=False
        )
        packages.append(
            {
                "SPDXID": model_id,
                "name": f"{plan.name} model",
                "versionInfo": origin.get("version", plan.version),
                "downloadLocation": "NOASSERTION",
                "filesAnalyzed": True,
                "packageVerificationCode": {"packageVerificationCodeValue": code.hexdigest()},
                "primaryPackagePurpose": "OTHER",
                "comment": f"origin: {json.dumps(origin, sort_keys=True)}",
            }
        )
        relationships.append(_rel(image_id, "CONTAINS", model_id))
    arch = (platform or {}).get("architecture", "")
    return {
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": f"{plan.repository}{'-' + arch if arch else ''}",
        "documentNamespace": f"https://spdx.org/spdxdocs/omibuild-{plan.name}-{manifest_digest[7:]}",
        "creationInfo": {"created": created, "creators": [f"Tool: omibuild-{__version__}"]},
        "packages": packages,
        "files": files,
        "relationships": relationships,
    }


def _download(url: str) -> str:
    """An archive's URL where SPDX takes it as a download location (a local file it does not)."""
    return url if re.fullmatch(r"https?://[^\s/]+\.[^\s]+", url) else "NOASSERTION"


def _rel(a: str, kind: str, b: str) -> dict[str, str]:
    return {"spdxElementId": a, "relationshipType": kind, "relatedSpdxElement": b}


def _purl(locator: str) -> dict[str, str]:
    return {
        "referenceCategory": "PACKAGE-MANAGER",
        "referenceType": "purl",
        "referenceLocator": locator,
    }


def _spdx_id(prefix: str, *parts: str) -> str:
    return "-".join([prefix, *(re.sub(r"[^A-Za-z0-9.]+", ".", p) for p in parts)])


def _when(created: Any) -> str:
    """An image config's ``created`` as SPDX writes times (seconds, UTC, ``Z``)."""
    text = str(created or "")
    match = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)", text)
    return f"{match.group(1)}Z" if match else "1970-01-01T00:00:00Z"
