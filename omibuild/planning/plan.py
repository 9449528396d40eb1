"""The Plan: frozen data, made from a manifest and its resolved inputs by planning/make.py,
and kept in the image as its state file (read back here, from the file or an older label).

The plan is frozen data. Its digest covers everything that determines the image (and the
omibuild version that renders it), not how it is built (cache, builder, push), so equal
plans give equal digests on any machine."""

from __future__ import annotations

import base64
import binascii
import gzip
import hashlib
import json
import re
import zlib
from collections.abc import Callable
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any

from omibuild import __version__, contract
from omibuild.manifest.model import Manifest
from omibuild.sources.base import ModelFile, ResolvedSource

PLAN_FORMAT = 1
OMI = "/opt/omi"
MODELS = "/models"  # the model files (store/layers.py MODEL_ROOT makes the layers there)


@dataclass(frozen=True)
class BuildInputs:
    """Everything make_plan needs, gathered at the edges (inputs.py)."""

    manifest: Manifest
    source: ResolvedSource
    code: tuple[ModelFile, ...] = ()
    requirement_lines: tuple[str, ...] = ()  # the contents of image.requirements files
    git_url: str | None = None
    git_revision: str | None = None
    base_digest: str | None = None
    source_date_epoch: int | None = None
    runtime_digest: str = ""  # the in-image runtime's files
    # explain's background and drift's reference as the image holds them (planning/analysis.py)
    analysis: tuple[tuple[str, bytes], ...] = ()
    host_index_urls: tuple[str, ...] = ()  # the indexes the host's pip settings give a build


@dataclass(frozen=True)
class Layer:
    files: tuple[ModelFile, ...]

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)


# attributes that only a cache export takes (buildx's --cache-to), dropped from its import
_EXPORT_ONLY = ("mode", "compression", "compression-level", "force-compression", "ignore-error")
_REF_KEY = {"registry": ("ref", "ref"), "local": ("src", "dest")}  # (importing, exporting)


@dataclass(frozen=True)
class CacheSpec:
    """One BuildKit layer cache, read (``--cache-from``) and written (``--cache-to``).

    ``ref`` is the registry ref or the directory; the plan writes ``local:<name>`` for omibuild's
    cache directory <name> on whichever machine applies it. ``extra`` keeps any other attribute
    of a cache given in buildx's own syntax (``type=gha,scope=x``). The buildx strings are made
    only by ``importing`` and ``exporting``."""

    type: str
    ref: str = ""
    extra: tuple[tuple[str, str], ...] = ()

    @classmethod
    def parse(cls, spec: str) -> CacheSpec:
        """buildx's syntax (``type=local,dest=DIR``), or a bare directory or registry ref."""
        if "=" not in spec:
            return cls("local" if spec.startswith(("/", ".")) else "registry", spec)
        fields = dict(f.split("=", 1) for f in spec.split(",") if "=" in f)
        kind = fields.pop("type", "local")
        if fields.get("mode") == "max":
            del fields["mode"]  # what exporting writes anyway
        ref = ""
        for key in ("ref", "dest", "src"):
            ref = fields.pop(key, "") or ref
        return cls(kind, ref, tuple(fields.items()))

    def importing(self) -> str:
        keep = [(k, v) for k, v in self.extra if k not in _EXPORT_ONLY]
        return self._render(0, keep)

    def exporting(self) -> str:
        mode = [] if any(k == "mode" for k, _ in self.extra) else [("mode", "max")]
        return self._render(1, [*mode, *self.extra])

    def with_extra(self, **more: str) -> CacheSpec:
        """These attributes added where the spec does not set them already."""
        have = {k for k, _ in self.extra}
        added = [
            (k.replace("_", "-"), v) for k, v in more.items() if k.replace("_", "-") not in have
        ]
        return CacheSpec(self.type, self.ref, (*self.extra, *added))

    def _render(self, direction: int, extra: list[tuple[str, str]]) -> str:
        fields = [("type", self.type)]
        if self.ref:
            fields.append((_REF_KEY.get(self.type, ("ref", "ref"))[direction], self.ref))
        return ",".join(f"{k}={v}" for k, v in [*fields, *extra])


@dataclass(frozen=True)
class BuildOptions:
    """How to build; not part of the plan digest."""

    caches: tuple[CacheSpec, ...] = ()
    cache_enabled: bool = True
    builder: str | None = None
    push: bool = False
    secrets: tuple[str, ...] = ()  # ids only; sources are found on the host at apply time
    host_network: bool = False  # an index on this machine's loopback: pip runs on its network


@dataclass(frozen=True)
class Plan:
    name: str
    version: str
    repository: str
    tags: tuple[str, ...]
    base_image: str
    python: str
    user: str
    uid: int
    model_layers: tuple[Layer, ...]
    model_digest: str
    code_files: tuple[ModelFile, ...]
    requirements: tuple[str, ...]
    runtime_requirements: tuple[str, ...]
    system_packages: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    ports: tuple[int, ...]
    labels: tuple[tuple[str, str], ...]
    platforms: tuple[str, ...]
    omi_json: str
    origin: tuple[tuple[str, str], ...]
    source_date_epoch: int | None = None
    runtime_digest: str = ""
    slim: bool = True  # strip debug sections, leave pip out (render: deps stage)
    analysis_files: tuple[ModelFile, ...] = ()  # under /opt/omi/analysis, in their own layer
    index_url: str | None = None  # pip's index instead of PyPI (image.index_url)
    extra_index_urls: tuple[str, ...] = ()
    image_format: str = "oci"  # oci: an index; docker: one Docker v2 manifest (image.format)
    exports: tuple[str, ...] = ()  # modelpack, modelcar: manifests beside the image (export)
    accelerator: str = "cpu"  # cpu, or cuda:MAJOR (accelerator)
    options: BuildOptions = field(default_factory=BuildOptions)
    digest: str = ""
    format: int = PLAN_FORMAT
    omibuild_version: str = __version__

    @property
    def dry_run(self) -> bool:
        """The build predicts omi.yaml's example once (render: the describe stage)."""
        return bool(json.loads(self.omi_json).get("example")) if self.omi_json else False

    @property
    def annotations(self) -> tuple[tuple[str, str], ...]:
        """Every label but the plan's state pointer, which the config alone holds: what the
        image's manifest and index carry as annotations."""
        return tuple(kv for kv in self.labels if kv[0] != contract.PLAN_STATE_LABEL)

    @property
    def image_refs(self) -> tuple[str, ...]:
        return tuple(f"{self.repository}:{t}" for t in self.tags)

    def export_refs(self, kind: str) -> tuple[str, ...]:
        """Where an export (``modelpack``, ``modelcar``) is tagged: beside each tag."""
        return tuple(f"{self.repository}:{t}-{kind}" for t in self.tags)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        # what most plans leave at its default is left out, so that their digests stay put
        for key in ("analysis_files", "index_url", "extra_index_urls", "exports"):
            if not d[key]:
                del d[key]
        if self.image_format == "oci":
            del d["image_format"]
        if self.accelerator == "cpu":
            del d["accelerator"]
        if not self.options.host_network:
            del d["options"]["host_network"]
        caches = self.options.caches
        d["options"] = {
            "cache_from": [c.importing() for c in caches],
            "cache_to": [c.exporting() for c in caches],
            **{k: v for k, v in d["options"].items() if k != "caches"},
        }
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Plan:
        """The plan ``to_dict`` wrote: each field read by its entry in ``_READ`` (as it is when
        it has none), a field left out taking its default. KeyError names a required field."""
        values = {}
        for f in fields(cls):
            if f.name in d:
                values[f.name] = _READ.get(f.name, _same)(d[f.name])
            elif f.default is MISSING and f.default_factory is MISSING:
                raise KeyError(f.name)
        return cls(**values)


def _same(value: Any) -> Any:
    return value


def _files(items: list[dict[str, Any]]) -> tuple[ModelFile, ...]:
    return tuple(ModelFile(i["path"], int(i["size"]), i["sha256"]) for i in items)


def _pairs(items: list[list[str]]) -> tuple[tuple[str, str], ...]:
    return tuple((str(a), str(b)) for a, b in items)


def _options(opts: dict[str, Any]) -> BuildOptions:
    return BuildOptions(
        caches=tuple(CacheSpec.parse(s) for s in opts.get("cache_to", ())),
        cache_enabled=bool(opts.get("cache_enabled", True)),
        builder=opts.get("builder"),
        push=bool(opts.get("push", False)),
        secrets=tuple(opts.get("secrets", ())),
        host_network=bool(opts.get("host_network", False)),
    )


# How each field of a Plan is read back from its JSON (to_dict): the one declared mapping
_READ: dict[str, Callable[[Any], Any]] = {
    "tags": tuple,
    "uid": int,
    "model_layers": lambda layers: tuple(Layer(_files(layer["files"])) for layer in layers),
    "code_files": _files,
    "requirements": tuple,
    "runtime_requirements": tuple,
    "system_packages": tuple,
    "env": _pairs,
    "ports": lambda ports: tuple(int(p) for p in ports),
    "labels": _pairs,
    "platforms": tuple,
    "origin": _pairs,
    "slim": bool,
    "analysis_files": _files,
    "extra_index_urls": tuple,
    "exports": tuple,
    "options": _options,
}


MAX_STATE_BYTES = 32 << 20  # a plan state label is decompressed no further than this


def state_file(plan: Plan) -> bytes:
    """The plan as the image keeps it (``contract.PLAN_STATE_FILE``): all of it but how it
    is built, its digest and the labels made from it, as gzip'd JSON (mtime 0: the same plan,
    the same bytes). Its own labels are in it, because an image's config also holds the
    labels of its base image."""
    body = {k: v for k, v in plan.to_dict().items() if k not in ("options", "digest")}
    body["labels"] = [kv for kv in body["labels"] if kv[0] not in contract.DERIVED_LABELS]
    raw = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    return gzip.compress(raw, mtime=0)


def state_label(plan: Plan) -> str:
    """The state label: where the plan is and its sha256, the same size for any model."""
    digest = hashlib.sha256(state_file(plan)).hexdigest()
    return json.dumps({"file": contract.PLAN_STATE_FILE, "sha256": digest}, sort_keys=True)


def state_pointer(labels: dict[str, str]) -> dict[str, str] | None:
    """The state label's pointer, or None (no label, or the state itself: an older image)."""
    try:
        pointer = json.loads(labels.get(contract.PLAN_STATE_LABEL) or "")
    except ValueError:
        return None
    if not isinstance(pointer, dict) or not re.fullmatch(
        r"[0-9a-f]{64}", str(pointer.get("sha256"))
    ):
        return None
    return {"file": str(pointer.get("file", contract.PLAN_STATE_FILE)), "sha256": pointer["sha256"]}


def plan_from_state(data: bytes, labels: dict[str, str]) -> Plan | None:
    """The plan an image was built from, from its state file (``data``, checked against the
    label's sha256) and its labels; None when they do not hold one."""
    pointer = state_pointer(labels)
    if pointer is None or hashlib.sha256(data).hexdigest() != pointer["sha256"]:
        return None
    return _plan_of(data, labels)


def _plan_of(gz: bytes, labels: dict[str, str]) -> Plan | None:
    try:
        inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)  # gzip framing
        raw = inflate.decompress(gz, MAX_STATE_BYTES)
        if inflate.unconsumed_tail:
            return None
        body = json.loads(raw)
        derived = [[k, labels[k]] for k in contract.DERIVED_LABELS if k in labels]
        body["labels"] = sorted([*body["labels"], *derived])
        body["digest"] = labels.get(contract.PLAN_DIGEST_LABEL, "")
        return Plan.from_dict(body)
    except (zlib.error, ValueError, KeyError, TypeError, AttributeError):
        return None


def plan_from_labels(labels: dict[str, str]) -> Plan | None:
    """The plan an image from omibuild before 0.2 was built from: its state label holds the
    state itself (base64 of the gzip'd JSON). None for any other image. The label may come from
    any registry: it is decompressed to at most MAX_STATE_BYTES."""
    blob = labels.get(contract.PLAN_STATE_LABEL)
    if not blob or state_pointer(labels) is not None:
        return None
    try:
        gz = base64.b64decode(blob, validate=True)
    except (binascii.Error, ValueError):
        return None
    return _plan_of(gz, labels)


def compute_digest(plan: Plan) -> str:
    body = plan.to_dict()
    body.pop("digest")
    body.pop("options")
    body["labels"] = [kv for kv in body["labels"] if kv[0] not in contract.DERIVED_LABELS]
    text = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()
