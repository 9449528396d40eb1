"""Other readers of the same model bytes (``export:`` in omi.yaml), added to the image's
index beside the OMI image and tagged ``<tag>-<kind>`` at a push, since those readers resolve
a tag to one manifest:

- ``modelpack``: a CNCF ModelPack artifact (modelpack/model-spec ``docs/spec.md``): an image
  manifest with ``artifactType: application/vnd.cncf.model.manifest.v1+json``, a config of
  ``application/vnd.cncf.model.config.v1+json`` (descriptor, config, ``modelfs.diffIds``) and
  the model layers themselves, typed as weights, weight configs or docs, each with
  ``org.cncf.model.filepath``. KitOps, modctl, Docker Model Runner and CRI-O read it.
- ``modelcar``: the model layers at ``/models`` over the OMI image's own base layers, which
  have ``sh``, ``ln`` and ``sleep``: KServe's ``storageUri: oci://`` runs it as a sidecar
  (``ln -s /proc/$$/root/models``), and ``oci+native://`` mounts it as an image volume with
  ``subPath: models``. The base layers are those the OMI image already holds, so the sidecar
  mode costs no byte the registry lacks; the model layers alone (enough for the image
  volume) would save nothing and lose the sidecar.

Both name blobs the image already has: one config and one manifest each are all that is
new. Their index entries carry the platform ``unknown/unknown``, as attestations do, so an
engine pulling the OMI image by its tag never picks them."""

from __future__ import annotations

import json
from pathlib import PurePosixPath
from typing import Any

from omibuild.engine.oci import ATTESTS, INDEX_TYPES, MANIFEST_TYPES, Appended, Layout
from omibuild.planning.plan import Plan
from omibuild.store.layers import MODEL_ROOT

MODELPACK_ARTIFACT = "application/vnd.cncf.model.manifest.v1+json"
MODELPACK_CONFIG = "application/vnd.cncf.model.config.v1+json"
FILEPATH = "org.cncf.model.filepath"
UNTESTED = "org.cncf.model.file.mediatype.untested"
EXPORT = "io.omibuild.export"  # the index entry's annotation: which export it is
_WEIGHT = "application/vnd.cncf.model.weight.v1.tar"
_WEIGHT_CONFIG = "application/vnd.cncf.model.weight.config.v1.tar"
_DOC = "application/vnd.cncf.model.doc.v1.tar"
_CONFIG_SUFFIXES = (".json", ".yaml", ".yml", ".txt", ".model", ".tiktoken", ".vocab", ".merges")
_DOC_NAMES = ("readme", "license", "licence", "notice", "model_card", "modelcard")
# the model's format, by the suffix of its largest file (the spec's examples: onnx,
# safetensors, gguf, pt); else the flavor
_FORMATS = {
    ".safetensors": "safetensors",
    ".onnx": "onnx",
    ".gguf": "gguf",
    ".pt": "pt",
    ".pth": "pt",
    ".joblib": "joblib",
    ".pkl": "pickle",
    ".pickle": "pickle",
    ".keras": "keras",
    ".h5": "h5",
    ".ubj": "ubjson",
    ".cbm": "catboost",
}
# the OMI image's first own step (render/dockerfile.py): the layers before it are the base's
_FIRST_OWN_STEP = "useradd --system --uid"


class ExportError(Exception):
    """An export cannot be made from this image."""


def add_exports(
    layout: Layout, top: dict[str, Any], plan: Plan, model: list[Appended]
) -> tuple[dict[str, Any], dict[str, str]]:
    """``top`` (an index) with a manifest for each of the plan's exports, and each export's
    manifest digest by kind."""
    if top.get("mediaType") not in INDEX_TYPES:
        raise ExportError("exports are manifests in an image index")
    index = layout.read_json(top["digest"])
    images = [
        m
        for m in index.get("manifests") or []
        if m.get("mediaType") in MANIFEST_TYPES and ATTESTS not in (m.get("annotations") or {})
    ]
    if not images:
        raise ExportError("the index holds no image manifest")
    layers = [a for a in model if a.layer is not None]
    made: dict[str, str] = {}
    for kind in plan.exports:
        if kind == "modelpack":
            desc = _modelpack(layout, images[0], plan, layers)
        else:
            desc = _modelcar(layout, images[0], layers)
        made[kind] = desc["digest"]
        index["manifests"].append(
            {**desc, "platform": {"os": "unknown", "architecture": "unknown"},
             "annotations": {EXPORT: kind}}
        )  # fmt: skip
    return {**top, **layout.put_json(index, top["mediaType"])}, made


def _created(layout: Layout, image: dict[str, Any]) -> dict[str, Any]:
    manifest = layout.read_json(image["digest"])
    return layout.read_json(manifest["config"]["digest"])


def _modelpack(
    layout: Layout, image: dict[str, Any], plan: Plan, layers: list[Appended]
) -> dict[str, Any]:
    labels = dict(plan.labels)
    try:
        document = json.loads(plan.omi_json)
    except ValueError:
        document = {}
    descriptor: dict[str, Any] = {"name": plan.name, "version": plan.version}
    if created := _created(layout, image).get("created"):
        descriptor["createdAt"] = created
    if authors := labels.get("org.opencontainers.image.authors"):
        descriptor["authors"] = [a.strip() for a in authors.split(",") if a.strip()]
    if text := labels.get("org.opencontainers.image.description"):
        descriptor["description"] = text
    if licence := labels.get("org.opencontainers.image.licenses"):
        descriptor["licenses"] = [licence]
    descriptor["revision"] = labels.get("io.omibuild.origin.id", "")
    config = {
        "descriptor": {k: v for k, v in descriptor.items() if v},
        "config": {"format": model_format(layers, str(document.get("flavor") or ""))},
        "modelfs": {"type": "layers", "diffIds": [a.blob.digest for a in layers]},
    }
    config_desc = layout.put_json(config, MODELPACK_CONFIG)
    manifest = {
        "schemaVersion": 2,
        "mediaType": MANIFEST_TYPES[0],
        "artifactType": MODELPACK_ARTIFACT,
        "config": config_desc,
        "layers": [_modelpack_layer(a) for a in layers],
        "annotations": {"org.opencontainers.image.title": plan.name},
    }
    return {**layout.put_json(manifest, MANIFEST_TYPES[0]), "artifactType": MODELPACK_ARTIFACT}


def _modelpack_layer(appended: Appended) -> dict[str, Any]:
    assert appended.layer is not None
    paths = [f.path for f in appended.layer.files]
    names = [PurePosixPath(p).name.lower() for p in paths]
    if all(n.startswith(_DOC_NAMES) or n.endswith(".md") for n in names):
        media = _DOC
    elif all(n.endswith(_CONFIG_SUFFIXES) for n in names):
        media = _WEIGHT_CONFIG
    else:
        media = _WEIGHT
    # one file: its path in the tar; several: the directory they share there
    where = paths[0] if len(paths) == 1 else _common_dir(paths)
    filepath = "/".join(p for p in (MODEL_ROOT, where) if p)
    blob = appended.blob
    return {
        "mediaType": media,
        "digest": blob.digest,
        "size": blob.size,
        "annotations": {FILEPATH: filepath, UNTESTED: "true"},  # typed by file names
    }


def _common_dir(paths: list[str]) -> str:
    parts = [PurePosixPath(p).parent.parts for p in paths]
    common: list[str] = []
    for group in zip(*parts, strict=False):
        if len(set(group)) != 1:
            break
        common.append(group[0])
    return "/".join(common)


def model_format(layers: list[Appended], flavor: str) -> str:
    """The model's format, as ModelPack's config names it: by its largest file's suffix."""
    files = [f for a in layers if a.layer is not None for f in a.layer.files]
    if not files:
        return flavor
    largest = max(files, key=lambda f: f.size)
    return _FORMATS.get(PurePosixPath(largest.path).suffix.lower(), flavor)


def _modelcar(layout: Layout, image: dict[str, Any], layers: list[Appended]) -> dict[str, Any]:
    manifest = layout.read_json(image["digest"])
    config = layout.read_json(manifest["config"]["digest"])
    history = config.get("history") or []
    made = [h for h in history if not h.get("empty_layer")]
    base = next(
        (i for i, h in enumerate(made) if _FIRST_OWN_STEP in str(h.get("created_by", ""))),
        None,
    )
    if base is None:
        raise ExportError("cannot tell the base image's layers from the image's own")
    first_own = made[base]
    kept_history = history[: history.index(first_own)]
    base_layers = (manifest.get("layers") or [])[:base]
    base_ids = (config.get("rootfs") or {}).get("diff_ids", [])[:base]
    inner = dict(config.get("config") or {})
    car = {
        "architecture": config.get("architecture"),
        "os": config.get("os"),
        **({"variant": config["variant"]} if config.get("variant") else {}),
        **({"created": config["created"]} if config.get("created") else {}),
        "config": {
            "Env": [e for e in inner.get("Env") or [] if e.startswith("PATH=")][:1]
            or ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": ["sleep", "infinity"],
            "WorkingDir": "/",
            "User": inner.get("User") or "65532",
            "Labels": inner.get("Labels") or {},
        },
        "rootfs": {
            "type": "layers",
            "diff_ids": [*base_ids, *(a.blob.digest for a in layers)],
        },
        "history": [
            *kept_history,
            *({"created_by": a.created_by, "comment": "omibuild"} for a in layers),
        ],
    }
    config_desc = layout.put_json(car, manifest["config"]["mediaType"])
    out = {
        "schemaVersion": 2,
        "mediaType": MANIFEST_TYPES[0],
        "config": config_desc,
        "layers": [
            *base_layers,
            *(
                {"mediaType": a.blob.media_type, "digest": a.blob.digest, "size": a.blob.size}
                for a in layers
            ),
        ],
    }
    return layout.put_json(out, MANIFEST_TYPES[0])
