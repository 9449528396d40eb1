"""The validated manifest as frozen data, with every default filled in ("complete")."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omibuild.settings import PUBLIC_BASE_IMAGE

DEFAULT_LAYER_SPLIT = 512 * 1024 * 1024

# interface -> (protocols, port, grpc port). Order is the canonical order everywhere.
INTERFACE_DEFAULTS: dict[str, tuple[tuple[str, ...], int, int | None]] = {
    "kfserving": (("v1", "v2"), 8080, 8081),
    "modzy": (("v2",), 45000, None),
    "sagemaker": (("v1",), 8080, None),
    "vertex": (("v1",), 8080, None),
    "mlflow": (("v1",), 8080, None),
}


@dataclass(frozen=True)
class LocalSource:
    path: str
    ignore: tuple[str, ...] = ()
    include: tuple[str, ...] = ()
    kind: str = field(default="local", init=False)


@dataclass(frozen=True)
class MlflowSource:
    uri: str
    tracking_uri: str | None = None
    kind: str = field(default="mlflow", init=False)


@dataclass(frozen=True)
class HuggingFaceSource:
    repo: str
    revision: str = "main"
    repo_type: str = "model"
    allow: tuple[str, ...] = ()
    ignore: tuple[str, ...] = ()
    endpoint: str | None = None
    kind: str = field(default="huggingface", init=False)


SourceSpec = LocalSource | MlflowSource | HuggingFaceSource


@dataclass(frozen=True)
class Interface:
    name: str
    protocols: tuple[str, ...]
    port: int
    grpc_port: int | None = None


@dataclass(frozen=True)
class Runtimes:
    interfaces: tuple[Interface, ...]
    default: str
    workers: int = 1
    max_body_bytes: int = 64 * 1024 * 1024
    max_batch_size: int = 0  # 0: batching off
    max_latency_ms: float = 5.0

    def get(self, name: str) -> Interface:
        return next(i for i in self.interfaces if i.name == name)


@dataclass(frozen=True)
class Secret:
    id: str
    env: str | None = None
    file: str | None = None


@dataclass(frozen=True)
class Image:
    repository: str | None
    base: str = PUBLIC_BASE_IMAGE  # convert() fills in the configured default
    python: str = "python3"
    requirement_files: tuple[str, ...] = ()
    packages: tuple[str, ...] = ()
    system_packages: tuple[str, ...] = ()
    index_url: str | None = None
    extra_index_urls: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    user: str = "omi"
    uid: int = 10001
    platforms: tuple[str, ...] = ()
    labels: tuple[tuple[str, str], ...] = ()
    layer_split_bytes: int = DEFAULT_LAYER_SPLIT
    slim: bool = True
    format: str = "oci"  # oci | docker (one Docker v2 manifest, no index)


@dataclass(frozen=True)
class Build:
    cache_local: str | None = None
    cache_registry: str | None = None
    cache_enabled: bool = True
    builder: str | None = None
    push: bool = False
    secrets: tuple[Secret, ...] = ()


@dataclass(frozen=True)
class Explain:
    method: str  # "shap" or "hook"
    background: str | None = None  # a table in the repository (shap)
    samples: int = 100
    output: str = "auto"
    hook: str | None = None
    columns: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()


@dataclass(frozen=True)
class Drift:
    reference: str
    samples: int = 5000
    categorical: tuple[str, ...] = ()
    window: int = 500
    threshold: float = 0.05
    correction: str = "bonferroni"
    columns: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()


@dataclass(frozen=True)
class Defense:
    """defense: the guard and the score over ``reference`` (drift's when omitted), or a hook."""

    reference: str | None
    samples: int = 5000
    categorical: tuple[str, ...] = ()
    guard: str = "flag"  # flag, reject or off (validation refuses a guard without a table)
    score: str = "mahalanobis"  # or off
    alpha: float = 0.01
    hook: str | None = None
    columns: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()


EXPORTS = ("modelpack", "modelcar")  # export: in the order the index lists them


@dataclass(frozen=True)
class Accelerator:
    """accelerator: ``cpu``, or ``cuda`` with its major version (``cuda:12``; 12 by default)."""

    kind: str = "cpu"
    cuda: int | None = None

    @classmethod
    def parse(cls, text: str | None) -> Accelerator:
        kind, _, major = (text or "cpu").partition(":")
        if kind != "cuda":
            return cls()
        return cls("cuda", int(major or DEFAULT_CUDA))

    def __str__(self) -> str:
        return f"cuda:{self.cuda}" if self.kind == "cuda" else "cpu"


DEFAULT_CUDA = 12


@dataclass(frozen=True)
class Manifest:
    file: Path  # the omi.yaml
    root: Path  # the model repository: the directory holding omi.yaml
    name: str
    version: str
    description: str
    license: str | None
    authors: tuple[str, ...]
    source: SourceSpec
    flavor: str
    predictor: str | None
    task: str | None
    model_file: str | None
    example: Any  # JSON-able instances, or None
    code_path: str | None  # None: no user code
    code_ignore: tuple[str, ...]
    code_include: tuple[str, ...]
    preprocess: str | None
    postprocess: str | None
    runtimes: Runtimes
    image: Image
    origin_tag: str
    tags: tuple[str, ...]
    build: Build
    explain: Explain | None = None
    drift: Drift | None = None
    defense: Defense | None = None
    exports: tuple[str, ...] = ()  # export: what else reads the model bytes (EXPORTS order)
    accelerator: Accelerator = Accelerator()


def _source(spec: dict[str, Any]) -> SourceSpec:
    kind, body = next(iter(spec.items()))
    if kind == "local":
        return LocalSource(
            body["path"], tuple(body.get("ignore", ())), tuple(body.get("include", ()))
        )
    if kind == "mlflow":
        return MlflowSource(body["uri"], body.get("tracking_uri"))
    return HuggingFaceSource(
        repo=body["repo"],
        revision=body.get("revision", "main"),
        repo_type=body.get("repo_type", "model"),
        allow=tuple(body.get("allow", ())),
        ignore=tuple(body.get("ignore", ())),
        endpoint=body.get("endpoint"),
    )


def _runtimes(spec: dict[str, Any]) -> Runtimes:
    declared = spec.get("interfaces") or {name: {} for name in INTERFACE_DEFAULTS}
    interfaces = []
    for name, (protocols, port, grpc_port) in INTERFACE_DEFAULTS.items():
        if name not in declared:
            continue
        body = declared[name] or {}
        interfaces.append(
            Interface(
                name=name,
                protocols=tuple(body.get("protocols", protocols)),
                port=body.get("port", port),
                grpc_port=body.get("grpc_port", grpc_port) if name == "kfserving" else None,
            )
        )
    default = spec.get("default") or interfaces[0].name
    batching = spec.get("batching", {})
    return Runtimes(
        interfaces=tuple(interfaces),
        default=default,
        workers=spec.get("workers", 1),
        max_body_bytes=spec.get("max_body_bytes", 64 * 1024 * 1024),
        max_batch_size=batching.get("max_batch_size", 0),
        max_latency_ms=float(batching.get("max_latency_ms", 5.0)),
    )


def requirements_of(spec: Any) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(files, packages) from the three allowed forms of image.requirements."""
    if spec is None:
        return (), ()
    if isinstance(spec, str):
        return (spec,), ()
    if isinstance(spec, list):
        return (), tuple(spec)
    return tuple(spec.get("files", ())), tuple(spec.get("packages", ()))


def _image(spec: dict[str, Any], default_base: str) -> Image:
    files, packages = requirements_of(spec.get("requirements"))
    user = spec.get("user", {})
    return Image(
        repository=spec.get("repository"),
        base=spec.get("base", default_base),
        python=spec.get("python", "python3"),
        requirement_files=files,
        packages=packages,
        system_packages=tuple(spec.get("system_packages", ())),
        index_url=spec.get("index_url"),
        extra_index_urls=tuple(spec.get("extra_index_urls", ())),
        env=tuple(sorted((k, _env_text(v)) for k, v in spec.get("env", {}).items())),
        user=user.get("name", "omi"),
        uid=user.get("uid", 10001),
        platforms=tuple(spec.get("platforms", ())),
        labels=tuple(sorted(spec.get("labels", {}).items())),
        layer_split_bytes=spec.get("layer_split_bytes", DEFAULT_LAYER_SPLIT),
        slim=spec.get("slim", True),
        format=spec.get("format", "oci"),
    )


def _env_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _build(spec: dict[str, Any]) -> Build:
    cache = spec.get("cache", {})
    return Build(
        cache_local=cache.get("local"),
        cache_registry=cache.get("registry"),
        cache_enabled=cache.get("enabled", True),
        builder=spec.get("builder"),
        push=spec.get("push", False),
        secrets=tuple(
            Secret(s["id"], s.get("env"), s.get("file")) for s in spec.get("secrets", ())
        ),
    )


def _explain(spec: dict[str, Any] | None) -> Explain | None:
    if spec is None:
        return None
    return Explain(
        method="hook" if spec.get("hook") else spec.get("method", "shap"),
        background=spec.get("background"),
        samples=spec.get("samples", 100),
        output=spec.get("output", "auto"),
        hook=spec.get("hook"),
        columns=tuple(spec.get("columns", ())),
        exclude=tuple(spec.get("exclude", ())),
    )


def _drift(spec: dict[str, Any] | None) -> Drift | None:
    if spec is None:
        return None
    return Drift(
        reference=spec["reference"],
        samples=spec.get("samples", 5000),
        categorical=tuple(spec.get("categorical", ())),
        window=spec.get("window", 500),
        threshold=float(spec.get("threshold", 0.05)),
        correction=spec.get("correction", "bonferroni"),
        columns=tuple(spec.get("columns", ())),
        exclude=tuple(spec.get("exclude", ())),
    )


def _defense(spec: dict[str, Any] | None, drift: Drift | None) -> Defense | None:
    if spec is None:
        return None
    return Defense(
        reference=spec.get("reference") or (drift.reference if drift is not None else None),
        samples=spec.get("samples", 5000),
        categorical=tuple(spec.get("categorical", ())),
        guard=spec.get("guard", "flag") or "off",  # YAML reads an unquoted off as false
        score="off" if spec.get("hook") else spec.get("score", "mahalanobis") or "off",
        alpha=float(spec.get("alpha", 0.01)),
        hook=spec.get("hook"),
        columns=tuple(spec.get("columns", ())),
        exclude=tuple(spec.get("exclude", ())),
    )


def convert(data: dict[str, Any], file: Path, example: Any, default_base: str) -> Manifest:
    """Turn schema-valid data into a complete Manifest. Pure: ``example`` and the configured
    ``default_base`` image are read by the caller."""
    model = data["model"]
    code = data.get("code")
    processing = data.get("processing", {})
    origin = data.get("origin", {})
    return Manifest(
        file=file,
        root=file.parent,
        name=data["name"],
        version=str(data.get("version", "0.0.0")),
        # folded into one line: YAML block scalars (| and >) are natural for prose
        description=" ".join(str(data.get("description", "")).split()),
        license=data.get("license"),
        authors=tuple(data.get("authors", ())),
        source=_source(model["source"]),
        flavor=model["flavor"],
        predictor=model.get("predictor"),
        task=model.get("task"),
        model_file=model.get("file"),
        example=example,
        code_path=(code or {}).get("path", ".")
        if code is not None
        or processing
        or model.get("predictor")
        or (data.get("explain") or {}).get("hook")
        or (data.get("defense") or {}).get("hook")
        else None,
        code_ignore=tuple((code or {}).get("ignore", ())),
        code_include=tuple((code or {}).get("include", ())),
        preprocess=processing.get("preprocess"),
        postprocess=processing.get("postprocess"),
        runtimes=_runtimes(data.get("runtimes", {})),
        image=_image(data.get("image", {}), default_base),
        origin_tag=origin.get("tag", "id"),
        tags=tuple(origin.get("tags", ())),
        build=_build(data.get("build", {})),
        explain=_explain(data.get("explain")),
        drift=_drift(data.get("drift")),
        defense=_defense(data.get("defense"), _drift(data.get("drift"))),
        exports=tuple(k for k in EXPORTS if (data.get("export") or {}).get(k)),
        accelerator=Accelerator.parse(data.get("accelerator")),
    )
