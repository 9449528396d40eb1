"""What one build asks of an executor, and what comes back."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from omibuild.planning.plan import CacheSpec

if TYPE_CHECKING:
    from omibuild.engine.containerd import ContentStore


@dataclass(frozen=True)
class BuildSecret:
    """One BuildKit secret: a file that already exists on the host (the CA bundle, a file the
    manifest names), or a value held only in this process's memory. A value reaches buildx
    through its environment (``--secret id=...,env=...``), so it is never written to disk:
    nothing is left behind when omibuild is killed."""

    id: str
    file: Path | None = None
    value: str | None = field(default=None, repr=False)

    @property
    def env_name(self) -> str:
        return "OMIBUILD_SECRET_" + self.id.encode().hex().upper()  # distinct for every id

    @property
    def spec(self) -> str:
        return f"id={self.id},src={self.file}" if self.file else f"id={self.id},env={self.env_name}"


@dataclass(frozen=True)
class BuildRequest:
    context: Path
    dockerfile: Path
    tags: tuple[str, ...]  # full references
    annotations: tuple[tuple[str, str], ...] = ()
    output: str = "load"  # load | push | oci:PATH | layout:DIR (BuildKit's part, assembled after)
    platforms: tuple[str, ...] = ()
    cache_from: tuple[CacheSpec, ...] = ()
    cache_to: tuple[CacheSpec, ...] = ()
    no_cache: bool = False
    secrets: tuple[BuildSecret, ...] = ()
    builder: str | None = None
    compression: str = "uncompressed"  # of the image's layers; pushes ask for gzip
    source_date_epoch: int | None = None
    progress: str = "auto"
    host_network: bool = False  # a step may run on the host's network (RUN --network=host)
    step_ids: tuple[tuple[str, str], ...] = ()  # the view's names (render/dockerfile.py)


@dataclass
class BuildResult:
    ok: bool
    digest: str | None = None
    log_tail: list[str] = field(default_factory=list)
    error: str | None = None
    failure_kind: str | None = None  # engine/failures.py's kinds, or assembly's own
    cached_steps: int = 0
    total_steps: int = 0
    log_path: str | None = None  # the whole build log (structured progress modes)
    failed_step: str | None = None  # the name of the step that failed (structured modes)


class Executor(Protocol):
    def build(self, request: BuildRequest) -> BuildResult: ...

    def bake(self, requests: list[BuildRequest]) -> list[BuildResult]:
        """Build several requests in one invocation, in parallel, sharing the cache."""
        ...

    def image_labels(self, ref: str) -> dict[str, str] | None:
        """Labels of a local image, or None if there is no such image."""
        ...

    def remote_annotations(self, ref: str) -> dict[str, str] | None:
        """Index/manifest annotations of an image in a registry, or None if absent."""
        ...

    def remote_labels(self, ref: str) -> dict[str, str] | None:
        """Labels of an image in a registry (its config only, no layers), or None."""
        ...

    def image_digest(self, ref: str) -> str | None: ...

    def tag(self, source: str, target: str) -> None: ...

    def image_platforms(self, ref: str) -> tuple[str, ...] | None:
        """The platforms an image the engine holds offers; None when it holds none."""
        ...

    def image_layers(self, ref: str) -> list[str]:
        """The diff ids of a local image's layers (none when there is no such image)."""
        ...

    def keeps_blobs(self) -> bool:
        """Does the engine keep its images' blobs, so a load may leave out those it has?"""
        ...

    def importer(self) -> list[str] | None:
        """containerd's import command when loads go through it, else None (`docker load`)."""
        ...

    def content_blobs(self) -> frozenset[str]:
        """The digests containerd's content store holds, where its import is used (a load
        may leave them out); else none."""
        ...

    def load(self, chunks: Iterator[bytes], platforms: int = 1) -> str | None:
        """Stream an OCI archive (of an image for ``platforms`` platforms) into the engine:
        None, or why it failed."""
        ...

    def content_store(self) -> ContentStore | None:
        """containerd's content store over its socket, where its import is used; else None."""
        ...

    def ingest(self, chunks: Iterator[bytes]) -> str | None:
        """Stream an OCI archive into containerd, not unpacked (where its import is used):
        None, or why not."""
        ...

    def describe(self, image: str) -> tuple[bytes | None, str]:
        """The dry prediction in the image: (outputs.json, its line) or (None, why not)."""
        ...

    def remove_tag(self, ref: str) -> None: ...
