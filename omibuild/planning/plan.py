"""Manifest + resolved inputs → Plan. Pure: no I/O, no clock, no environment.

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
import time
import zlib
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from omibuild import __version__, contract
from omibuild.manifest.model import Manifest
from omibuild.manifest.requirements import as_cpu_build
from omibuild.planning.analysis import BACKGROUND, REFERENCE
from omibuild.runtime.requirements import runtime_requirements
from omibuild.settings import any_loopback
from omibuild.sources.base import ModelFile, ResolvedSource, model_digest

PLAN_FORMAT = 1
OMI = "/opt/omi"
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


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
    source_date_epoch: int | None
    runtime_digest: str = ""
    slim: bool = True  # strip debug sections, leave pip out (render: deps stage)
    analysis_files: tuple[ModelFile, ...] = ()  # under /opt/omi/analysis, in their own layer
    index_url: str | None = None  # pip's index instead of PyPI (image.index_url)
    extra_index_urls: tuple[str, ...] = ()
    options: BuildOptions = field(default_factory=BuildOptions)
    digest: str = ""
    format: int = PLAN_FORMAT
    omibuild_version: str = __version__

    @property
    def dry_run(self) -> bool:
        """The build predicts omi.yaml's example once (render: the describe stage)."""
        return bool(json.loads(self.omi_json).get("example")) if self.omi_json else False

    @property
    def image_refs(self) -> tuple[str, ...]:
        return tuple(f"{self.repository}:{t}" for t in self.tags)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        # what most plans leave at its default is left out, so that their digests stay put
        for key in ("analysis_files", "index_url", "extra_index_urls"):
            if not d[key]:
                del d[key]
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
        def files(items: list[dict[str, Any]]) -> tuple[ModelFile, ...]:
            return tuple(ModelFile(i["path"], int(i["size"]), i["sha256"]) for i in items)

        def pairs(items: list[list[str]]) -> tuple[tuple[str, str], ...]:
            return tuple((str(a), str(b)) for a, b in items)

        opts = d.get("options", {})
        return cls(
            name=d["name"],
            version=d["version"],
            repository=d["repository"],
            tags=tuple(d["tags"]),
            base_image=d["base_image"],
            python=d["python"],
            user=d["user"],
            uid=int(d["uid"]),
            model_layers=tuple(Layer(files(layer["files"])) for layer in d["model_layers"]),
            model_digest=d["model_digest"],
            code_files=files(d["code_files"]),
            requirements=tuple(d["requirements"]),
            runtime_requirements=tuple(d["runtime_requirements"]),
            system_packages=tuple(d["system_packages"]),
            env=pairs(d["env"]),
            ports=tuple(int(p) for p in d["ports"]),
            labels=pairs(d["labels"]),
            platforms=tuple(d["platforms"]),
            omi_json=d["omi_json"],
            origin=pairs(d["origin"]),
            source_date_epoch=d.get("source_date_epoch"),
            runtime_digest=d.get("runtime_digest", ""),
            slim=bool(d.get("slim", True)),
            analysis_files=files(d.get("analysis_files", [])),
            index_url=d.get("index_url"),
            extra_index_urls=tuple(d.get("extra_index_urls", ())),
            options=BuildOptions(
                caches=tuple(CacheSpec.parse(s) for s in opts.get("cache_to", ())),
                cache_enabled=bool(opts.get("cache_enabled", True)),
                builder=opts.get("builder"),
                push=bool(opts.get("push", False)),
                secrets=tuple(opts.get("secrets", ())),
                host_network=bool(opts.get("host_network", False)),
            ),
            digest=d["digest"],
            format=d["format"],
            omibuild_version=d["omibuild_version"],
        )


_DERIVED_LABELS = (contract.PLAN_DIGEST_LABEL, contract.PLAN_STATE_LABEL)
MAX_STATE_BYTES = 32 << 20  # a plan state label is decompressed no further than this


def state_file(plan: Plan) -> bytes:
    """The plan as the image keeps it (``contract.PLAN_STATE_FILE``): all of it but how it
    is built, its digest and the labels made from it, as gzip'd JSON (mtime 0: the same plan,
    the same bytes). Its own labels are in it, because an image's config also holds the
    labels of its base image."""
    body = {k: v for k, v in plan.to_dict().items() if k not in ("options", "digest")}
    body["labels"] = [kv for kv in body["labels"] if kv[0] not in _DERIVED_LABELS]
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
        derived = [[k, labels[k]] for k in _DERIVED_LABELS if k in labels]
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
    body["labels"] = [kv for kv in body["labels"] if kv[0] not in _DERIVED_LABELS]
    text = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def split_layers(files: tuple[ModelFile, ...], threshold: int) -> tuple[Layer, ...]:
    """Group files (in path order) into layers of about ``threshold`` bytes.

    Registries and containerd pull layers in parallel (3 at a time by default), so a 4 GiB
    model in 512 MiB layers downloads several times faster than as one blob, and a change to
    one shard re-pushes only its layer. Below the threshold, one layer: per-layer overhead
    (a request, a gzip/zstd stream, a snapshot) is not worth paying for small models."""
    layers: list[list[ModelFile]] = [[]]
    size = 0
    for f in sorted(files):
        if layers[-1] and size + f.size > threshold:
            layers.append([])
            size = 0
        layers[-1].append(f)
        size += f.size
    return tuple(Layer(tuple(group)) for group in layers if group)


def _dedupe(items: list[str]) -> tuple[str, ...]:
    seen: dict[str, None] = {}
    for item in items:
        seen.setdefault(item.strip(), None)
    return tuple(k for k in seen if k)


def _model_requirements(inputs: BuildInputs) -> tuple[str, ...]:
    """The model's own requirements, then the manifest's. MLflow models list ``mlflow``; the
    skinny client serves them and is a fraction of the size. A framework with a CPU build on
    PyPI gets it (``xgboost`` → ``xgboost-cpu``, which installs the same module)."""
    reqs = []
    for line in (
        *inputs.source.requirements,
        *inputs.manifest.image.packages,
        *inputs.requirement_lines,
    ):
        if line.startswith("mlflow==") or line == "mlflow":
            line = line.replace("mlflow", "mlflow-skinny", 1)
        reqs.append(as_cpu_build(line))
    if inputs.manifest.flavor == "pyfunc":
        # mlflow.pyfunc imports pandas, which full mlflow brings and the skinny client does not.
        names = {_name(r) for r in reqs}
        if not names & {"mlflow", "mlflow-skinny"}:
            reqs.append("mlflow-skinny")
        if not names & {"mlflow", "pandas"}:
            reqs.append("pandas")
    return _dedupe(reqs)


def _name(line: str) -> str:
    try:
        return str(canonicalize_name(Requirement(line).name))
    except InvalidRequirement:
        return line


def _interfaces(m: Manifest) -> dict[str, dict[str, Any]]:
    out = {}
    for i in m.runtimes.interfaces:
        body: dict[str, Any] = {"protocols": list(i.protocols), "port": i.port}
        if i.grpc_port is not None and "v2" in i.protocols:
            body["grpc_port"] = i.grpc_port
        out[i.name] = body
    return out


def _omi_json(inputs: BuildInputs, layers: tuple[Layer, ...], env: dict[str, str]) -> str:
    m, src = inputs.manifest, inputs.source
    metadata = dict(src.metadata)
    declared = metadata.pop(
        contract.OUTPUTS_KEY, None
    )  # the model's signature: checked by the build
    takes = metadata.pop(
        contract.INPUTS_KEY, None
    )  # the signature's inputs: V2 metadata states them
    config = {
        "format": 1,
        "name": m.name,
        "version": m.version,
        "flavor": m.flavor,
        "predictor": m.predictor,
        "task": m.task,
        "model_file": m.model_file,
        "hooks": {"preprocess": m.preprocess, "postprocess": m.postprocess},
        "interfaces": _interfaces(m),
        "default_interface": m.runtimes.default,
        "env_defaults": env,
        "runtime": {
            "workers": m.runtimes.workers,
            "max_body_bytes": m.runtimes.max_body_bytes,
            "max_batch_size": m.runtimes.max_batch_size,
            "max_latency_ms": m.runtimes.max_latency_ms,
        },
        "origin": {
            "source": src.kind,
            "uri": src.uri,
            "id": src.origin_id,
            "version": src.version,
            "metadata": metadata,
        },
        "model": {
            "digest": model_digest(tuple(f for layer in layers for f in layer.files)),
            "files": [
                {"path": f.path, "size": f.size, "sha256": f.sha256}
                for layer in layers
                for f in layer.files
            ],
        },
        "example": m.example,
    }
    if declared:
        config["outputs"] = json.loads(declared)
    if takes:
        config["inputs"] = json.loads(takes)
    if m.explain is not None:
        config["explain"] = (
            {"method": "hook", "hook": m.explain.hook}
            if m.explain.hook
            else {"method": m.explain.method, "output": m.explain.output, "background": BACKGROUND}
        )
    if m.drift is not None:
        config["drift"] = {
            "reference": REFERENCE,
            "window": m.drift.window,
            "threshold": m.drift.threshold,
            "correction": m.drift.correction,
        }
    return json.dumps(config, indent=2, sort_keys=True) + "\n"


def _labels(
    inputs: BuildInputs, plan_interfaces: dict[str, dict[str, Any]], default_port: int
) -> dict[str, str]:
    m, src = inputs.manifest, inputs.source
    spec = [name for name in plan_interfaces if name in contract.SPEC_INTERFACES]
    ext = [name for name in plan_interfaces if name not in contract.SPEC_INTERFACES]
    labels = {
        contract.INTERFACES_LABEL: json.dumps(spec, separators=(",", ":")),
        contract.PROTOCOLS_LABEL: json.dumps(
            [plan_interfaces[n]["protocols"] for n in spec], separators=(",", ":")
        ),
        contract.PORT_LABEL: str(default_port),
        contract.MODEL_NAME_LABEL: json.dumps(m.name),
        contract.EXTENSIONS_LABEL: json.dumps(ext, separators=(",", ":")),
        contract.ORIGIN_SOURCE_LABEL: src.kind,
        contract.ORIGIN_URI_LABEL: src.uri,
        contract.ORIGIN_ID_LABEL: src.origin_id,
        contract.MODEL_DIGEST_LABEL: src.digest,
        contract.DEFAULT_INTERFACE_LABEL: m.runtimes.default,
        "org.opencontainers.image.title": m.name,
        "org.opencontainers.image.version": m.version,
        "org.opencontainers.image.base.name": m.image.base,
    }
    optional = {
        "org.opencontainers.image.description": m.description or None,
        "org.opencontainers.image.licenses": m.license,
        "org.opencontainers.image.authors": ", ".join(m.authors) or None,
        "org.opencontainers.image.source": inputs.git_url,
        "org.opencontainers.image.revision": inputs.git_revision,
        "org.opencontainers.image.base.digest": inputs.base_digest,
        "org.opencontainers.image.created": _rfc3339(inputs.source_date_epoch),
    }
    if m.explain is not None:
        optional[contract.EXPLAIN_LABEL] = m.explain.method
    if m.drift is not None:
        optional[contract.DRIFT_LABEL] = json.dumps(
            {
                "window": m.drift.window,
                "threshold": m.drift.threshold,
                "correction": m.drift.correction,
            },
            separators=(",", ":"),
        )
    labels |= {k: v for k, v in optional.items() if v}
    return dict(m.image.labels) | labels  # the user's own labels never override ours


def _rfc3339(epoch: int | None) -> str | None:
    if epoch is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def make_plan(inputs: BuildInputs) -> Plan:
    m = inputs.manifest
    layers = split_layers(inputs.source.files, m.image.layer_split_bytes)
    interfaces = _interfaces(m)
    default = m.runtimes.get(m.runtimes.default)
    env = {
        "INTERFACE": default.name,
        "PROTOCOL": default.protocols[-1] if default.protocols else "v1",
        "HTTP_PORT": str(default.port),
        "MODEL_NAME": m.name,
    }
    image_env = {
        # glibc raises its mmap threshold each time a large block is freed (up to 32 MiB), so
        # a server that decoded a few large bodies keeps their size in its heap for good
        # (measured: +100 MB after two 42 MB bodies); fixed at glibc's start value, freed
        # buffers go back to the kernel. image.env can set another.
        "MALLOC_MMAP_THRESHOLD_": "131072",
        **dict(m.image.env),
        **env,
        "OMI_CONFIG": f"{OMI}/omi.json",
        "PATH": f"{OMI}/venv/bin:{SYSTEM_PATH}",
        "PYTHONPATH": f"{OMI}/runtime:{OMI}/code",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONUNBUFFERED": "1",
    }
    ports = sorted(
        {p for body in interfaces.values() for p in (body["port"], body.get("grpc_port")) if p}
    )
    repository = m.image.repository or f"omibuild.local/{m.name}"
    tags = []
    if m.origin_tag == "id":
        tags.append(contract.origin_tag(inputs.source.origin_id))
    tags += [t for t in m.tags if t not in tags]
    if not tags:
        tags.append(m.version)
    protocols = {name: body["protocols"] for name, body in interfaces.items()}
    caches: list[CacheSpec] = []
    # By default no cache is exported: the engine's own build cache serves local rebuilds (an
    # export to a directory cost 7-17 s per changed apply and grew without bound). A registry
    # cache serves runners that start empty; a local directory is there when asked for.
    if m.build.cache_enabled:
        if m.build.cache_registry:
            caches.append(CacheSpec("registry", m.build.cache_registry))
        elif m.build.cache_local:
            caches.append(CacheSpec("local", m.build.cache_local))
    plan = Plan(
        name=m.name,
        version=m.version,
        repository=repository,
        tags=tuple(tags),
        base_image=m.image.base,
        python=m.image.python,
        user=m.image.user,
        uid=m.image.uid,
        model_layers=layers,
        model_digest=inputs.source.digest,
        code_files=tuple(sorted(inputs.code)),
        requirements=_model_requirements(inputs),
        runtime_requirements=runtime_requirements(
            protocols,
            m.flavor,
            explain=m.explain is not None and not m.explain.hook,
            drift=m.drift is not None,
        ),
        system_packages=tuple(sorted(m.image.system_packages)),
        env=tuple(sorted(image_env.items())),
        ports=tuple(ports),
        labels=tuple(sorted(_labels(inputs, interfaces, default.port).items())),
        platforms=m.image.platforms,
        omi_json=_omi_json(inputs, layers, env),
        origin=(
            ("id", inputs.source.origin_id),
            ("source", inputs.source.kind),
            ("uri", inputs.source.uri),
            ("version", inputs.source.version),
        ),
        source_date_epoch=inputs.source_date_epoch,
        runtime_digest=inputs.runtime_digest,
        slim=m.image.slim,
        analysis_files=tuple(
            ModelFile(path, len(body), hashlib.sha256(body).hexdigest())
            for path, body in inputs.analysis
        ),
        index_url=m.image.index_url,
        extra_index_urls=m.image.extra_index_urls,
        options=BuildOptions(
            caches=tuple(caches),
            cache_enabled=m.build.cache_enabled,
            builder=m.build.builder,
            push=m.build.push,
            secrets=("ca", "pipconf", *(s.id for s in m.build.secrets)),
            host_network=any_loopback(
                [
                    *filter(None, [m.image.index_url]),
                    *m.image.extra_index_urls,
                    *inputs.host_index_urls,
                ]
            ),
        ),
    )
    digest = compute_digest(plan)
    labels = (
        *plan.labels,
        (contract.PLAN_DIGEST_LABEL, digest),
        (contract.PLAN_STATE_LABEL, state_label(plan)),
    )
    return replace(plan, digest=digest, labels=tuple(sorted(labels)))
