"""omi.json, the one contract between the planner and the image: the planner builds an
``OmiDocument`` and writes ``to_json()``; the runtime reads it back with ``from_dict`` and
reads only its fields. It lives on the runtime's side (the runtime imports only itself) and
both ends import it, so a field one end writes is the field the other reads."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

FORMAT = 1  # omi.json's own version: a runtime refuses a document of a format it lacks


class DocumentError(ValueError):
    """omi.json is not one this runtime reads: the field, and what is wrong with it."""


@dataclass(frozen=True)
class Interface:
    protocols: tuple[str, ...]
    port: int
    grpc_port: int | None = None  # gRPC beside HTTP (KServe v2)

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"protocols": list(self.protocols), "port": self.port}
        if self.grpc_port is not None:
            body["grpc_port"] = self.grpc_port
        return body


@dataclass(frozen=True)
class Hooks:
    preprocess: str | None = None  # "module:function" in the image's code
    postprocess: str | None = None


@dataclass(frozen=True)
class Limits:
    """The runtime's own settings decided at build time (the environment may override)."""

    workers: int = 1
    max_body_bytes: int = 64 << 20
    max_batch_size: int = 0
    max_latency_ms: float = 5.0  # as the manifest wrote it (an int stays an int)


@dataclass(frozen=True)
class Origin:
    """Where the model came from: the source kind, its URI and id, and what it said."""

    source: str
    uri: str
    id: str
    version: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class File:
    path: str  # POSIX, under the model directory
    size: int
    sha256: str


@dataclass(frozen=True)
class OmiDocument:
    name: str
    version: str
    flavor: str
    interfaces: dict[str, Interface]
    default_interface: str
    origin: Origin
    model_digest: str
    files: tuple[File, ...]
    predictor: str | None = None
    task: str | None = None
    model_file: str | None = None
    authors: tuple[str, ...] = ()
    hooks: Hooks = Hooks()
    env_defaults: dict[str, str] = field(default_factory=dict)
    limits: Limits = Limits()
    example: Any = None  # the manifest's example input, as written there
    outputs: list[dict[str, Any]] | None = None  # V2 tensors the model's signature declares
    inputs: list[dict[str, Any]] | None = None
    explain: dict[str, Any] | None = None  # {"method", "output", "background"} or a hook
    drift: dict[str, Any] | None = None  # {"reference", "window", "threshold", "correction"}
    defense: dict[str, Any] | None = None  # {"reference", "alpha", "guard", "score", "hook"}

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "format": FORMAT,
            "name": self.name,
            "version": self.version,
            "flavor": self.flavor,
            "predictor": self.predictor,
            "task": self.task,
            "model_file": self.model_file,
            "authors": list(self.authors),
            "hooks": {"preprocess": self.hooks.preprocess, "postprocess": self.hooks.postprocess},
            "interfaces": {name: i.to_dict() for name, i in self.interfaces.items()},
            "default_interface": self.default_interface,
            "env_defaults": dict(self.env_defaults),
            "runtime": {
                "workers": self.limits.workers,
                "max_body_bytes": self.limits.max_body_bytes,
                "max_batch_size": self.limits.max_batch_size,
                "max_latency_ms": self.limits.max_latency_ms,
            },
            "origin": {
                "source": self.origin.source,
                "uri": self.origin.uri,
                "id": self.origin.id,
                "version": self.origin.version,
                "metadata": dict(self.origin.metadata),
            },
            "model": {
                "digest": self.model_digest,
                "files": [{"path": f.path, "size": f.size, "sha256": f.sha256} for f in self.files],
            },
            "example": self.example,
        }
        for key in ("outputs", "inputs", "explain", "drift", "defense"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> OmiDocument:
        """The document in ``d``; a missing or mistyped field is a DocumentError naming it."""
        if not isinstance(d, dict):
            raise DocumentError("omi.json is not a JSON object")
        if d.get("format", FORMAT) != FORMAT:
            raise DocumentError(
                f"omi.json has format {d.get('format')!r}; this runtime reads format {FORMAT}"
            )
        try:
            return _document(d)
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise DocumentError(f"omi.json is malformed ({type(err).__name__}: {err})") from None


def _document(d: dict[str, Any]) -> OmiDocument:
    hooks, runtime, origin, model = (
        d.get("hooks") or {},
        d.get("runtime") or {},
        d["origin"],
        d["model"],
    )
    interfaces = {
        str(name): Interface(
            tuple(str(p) for p in body["protocols"]),
            int(body["port"]),
            None if body.get("grpc_port") is None else int(body["grpc_port"]),
        )
        for name, body in d["interfaces"].items()
    }
    return OmiDocument(
        name=str(d["name"]),
        version=str(d.get("version", "1")),
        flavor=str(d["flavor"]),
        interfaces=interfaces,
        default_interface=str(d["default_interface"]),
        origin=Origin(
            str(origin["source"]),
            str(origin["uri"]),
            str(origin["id"]),
            origin.get("version"),
            {str(k): str(v) for k, v in (origin.get("metadata") or {}).items()},
        ),
        model_digest=str(model["digest"]),
        files=tuple(File(str(f["path"]), int(f["size"]), str(f["sha256"])) for f in model["files"]),
        predictor=d.get("predictor"),
        task=d.get("task"),
        model_file=d.get("model_file"),
        authors=tuple(str(a) for a in d.get("authors") or ()),
        hooks=Hooks(hooks.get("preprocess"), hooks.get("postprocess")),
        env_defaults={str(k): str(v) for k, v in (d.get("env_defaults") or {}).items()},
        limits=Limits(
            int(runtime.get("workers", 1)),
            int(runtime.get("max_body_bytes", 64 << 20)),
            int(runtime.get("max_batch_size", 0)),
            runtime.get("max_latency_ms", 5.0),
        ),
        example=d.get("example"),
        outputs=d.get("outputs"),
        inputs=d.get("inputs"),
        explain=d.get("explain"),
        drift=d.get("drift"),
        defense=d.get("defense"),
    )
