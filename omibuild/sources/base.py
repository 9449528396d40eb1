"""The Source protocol and the data every source returns."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from omibuild.manifest.model import SourceSpec


@dataclass(frozen=True, order=True)
class ModelFile:
    path: str  # POSIX, relative to the model root
    size: int
    sha256: str


def model_digest(files: tuple[ModelFile, ...]) -> str:
    """sha256 over the sorted (path, sha256) list: equal models, equal digests."""
    h = hashlib.sha256()
    for f in sorted(files):
        h.update(f"{f.path}\0{f.sha256}\n".encode())
    return "sha256:" + h.hexdigest()


@dataclass(frozen=True)
class ResolvedSource:
    kind: str  # local | mlflow | huggingface
    uri: str  # human-readable, e.g. models:/iris@champion
    origin_id: str  # MLflow run id, Hugging Face commit sha, or the model digest
    version: str
    files: tuple[ModelFile, ...]
    metadata: tuple[tuple[str, str], ...] = ()
    requirements: tuple[str, ...] = ()  # the model's own requirements, when it declares them
    flavor_hint: str | None = None
    # Where fetch() finds the bytes; not part of identity (a lock read back has none).
    location: str = field(default="", compare=False)

    @property
    def digest(self) -> str:
        return model_digest(self.files)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "uri": self.uri,
            "origin_id": self.origin_id,
            "version": self.version,
            "digest": self.digest,
            "metadata": dict(self.metadata),
            "requirements": list(self.requirements),
            "flavor_hint": self.flavor_hint,
            "files": [{"path": f.path, "size": f.size, "sha256": f.sha256} for f in self.files],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], location: str = "") -> ResolvedSource:
        return cls(
            kind=d["kind"],
            uri=d["uri"],
            origin_id=d["origin_id"],
            version=d["version"],
            files=tuple(
                sorted(ModelFile(f["path"], int(f["size"]), f["sha256"]) for f in d["files"])
            ),
            metadata=tuple(sorted(d.get("metadata", {}).items())),
            requirements=tuple(d.get("requirements", ())),
            flavor_hint=d.get("flavor_hint"),
            location=location,
        )


class Source(Protocol):
    def resolve(self, spec: SourceSpec, root: Path) -> ResolvedSource:
        """Pin the manifest's reference: origin id, version, files with sha256."""
        ...

    def fetch(self, resolved: ResolvedSource, dest: Path) -> int:
        """Write the model files under ``dest`` (verified); return bytes downloaded."""
        ...
