"""Manifest + resolved inputs → Plan. Pure: no I/O, no clock, no environment."""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import replace
from typing import Any

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from omibuild import contract
from omibuild.manifest.model import Manifest
from omibuild.manifest.requirements import as_cpu_build, as_cuda_build
from omibuild.planning.analysis import BACKGROUND, DEFENSE, REFERENCE
from omibuild.planning.plan import (
    MODELS,
    OMI,
    BuildInputs,
    BuildOptions,
    CacheSpec,
    Layer,
    Plan,
    compute_digest,
    state_label,
)
from omibuild.runtime.document import File, Hooks, Interface, Limits, OmiDocument, Origin
from omibuild.runtime.requirements import runtime_requirements
from omibuild.settings import any_loopback
from omibuild.sources.base import ModelFile, model_digest

SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


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
    PyPI gets it (``xgboost`` → ``xgboost-cpu``, which installs the same module), unless the
    image is for CUDA (accelerator: cuda), which keeps the CUDA build."""
    reqs = []
    for line in (
        *inputs.source.requirements,
        *inputs.manifest.image.packages,
        *inputs.requirement_lines,
    ):
        if line.startswith("mlflow==") or line == "mlflow":
            line = line.replace("mlflow", "mlflow-skinny", 1)
        cpu = inputs.manifest.accelerator.kind == "cpu"
        reqs.append(as_cpu_build(line) if cpu else as_cuda_build(line))
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


def _omi_document(inputs: BuildInputs, layers: tuple[Layer, ...], env: dict[str, str]) -> str:
    """omi.json, the image's runtime configuration (runtime/document.py is its type)."""
    m, src = inputs.manifest, inputs.source
    metadata = dict(src.metadata)
    declared = metadata.pop(contract.OUTPUTS_KEY, None)  # the signature: checked by the build
    takes = metadata.pop(contract.INPUTS_KEY, None)  # the signature's inputs: V2 metadata
    files = tuple(f for layer in layers for f in layer.files)
    explain = None
    if m.explain is not None:
        explain = (
            {"method": "hook", "hook": m.explain.hook}
            if m.explain.hook
            else {"method": m.explain.method, "output": m.explain.output, "background": BACKGROUND}
        )
    drift = None
    if m.drift is not None:
        drift = {
            "reference": REFERENCE,
            "window": m.drift.window,
            "threshold": m.drift.threshold,
            "correction": m.drift.correction,
        }
    defense = None
    if m.defense is not None:
        d = m.defense
        defense = {
            "reference": DEFENSE if d.reference else None,
            "alpha": d.alpha,
            "guard": d.guard,
            "score": d.score,
            "hook": d.hook,
        }
    document = OmiDocument(
        name=m.name,
        version=m.version,
        flavor=m.flavor,
        interfaces={
            i.name: Interface(
                tuple(i.protocols), i.port, i.grpc_port if "v2" in i.protocols else None
            )
            for i in m.runtimes.interfaces
        },
        default_interface=m.runtimes.default,
        origin=Origin(src.kind, src.uri, src.origin_id, src.version, metadata),
        model_digest=model_digest(files),
        files=tuple(File(f.path, f.size, f.sha256) for f in files),
        predictor=m.predictor,
        task=m.task,
        model_file=m.model_file,
        authors=tuple(m.authors),
        hooks=Hooks(m.preprocess, m.postprocess),
        env_defaults=env,
        limits=Limits(
            m.runtimes.workers,
            m.runtimes.max_body_bytes,
            m.runtimes.max_batch_size,
            m.runtimes.max_latency_ms,
        ),
        example=m.example,
        outputs=json.loads(declared) if declared else None,
        inputs=json.loads(takes) if takes else None,
        explain=explain,
        drift=drift,
        defense=defense,
    )
    return document.to_json()


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
    if m.defense is not None:
        d = m.defense
        optional[contract.DEFENSE_LABEL] = json.dumps(
            {"guard": d.guard, "score": d.score, "alpha": d.alpha}
            | ({"hook": d.hook} if d.hook else {}),
            separators=(",", ":"),
        )
    if m.accelerator.kind == "cuda" and m.accelerator.cuda is not None:
        optional[contract.ACCELERATOR_LABEL] = str(m.accelerator)
        optional[contract.CUDA_DRIVER_LABEL] = contract.CUDA_MIN_DRIVER.get(m.accelerator.cuda)
    labels |= {k: v for k, v in optional.items() if v}
    return dict(m.image.labels) | labels  # the user's own labels never override ours


def _accelerator_env(m: Manifest) -> dict[str, str]:
    """A CUDA image asks the NVIDIA container toolkit for every GPU, compute and nvidia-smi
    only, and refuses a driver too old for its CUDA major (NVIDIA_REQUIRE_CUDA, as NVIDIA's
    own images do); OMI_ACCELERATOR tells the runtime to put the model on a GPU it sees."""
    if m.accelerator.kind != "cuda" or m.accelerator.cuda is None:
        return {}
    return {
        "NVIDIA_VISIBLE_DEVICES": "all",
        "NVIDIA_DRIVER_CAPABILITIES": "compute,utility",
        "NVIDIA_REQUIRE_CUDA": f"cuda>={m.accelerator.cuda}.0",
        "OMI_ACCELERATOR": "cuda",
    }


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
        "OMI_MODEL_DIR": MODELS,
        "PATH": f"{OMI}/venv/bin:{SYSTEM_PATH}",
        "PYTHONPATH": f"{OMI}/runtime:{OMI}/code",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONUNBUFFERED": "1",
        **_accelerator_env(m),
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
        omi_json=_omi_document(inputs, layers, env),
        origin=(
            ("id", inputs.source.origin_id),
            ("source", inputs.source.kind),
            ("uri", inputs.source.uri),
            ("version", inputs.source.version),
        ),
        source_date_epoch=inputs.source_date_epoch,
        runtime_digest=inputs.runtime_digest,
        slim=m.image.slim,
        image_format=m.image.format,
        exports=m.exports,
        accelerator=str(m.accelerator),
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
