"""What apply takes and what it gives back: the options, one target per plan, and each
target's outcome, a status and (when it failed) the failure's kind and line."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from omibuild.manifest.model import Secret
from omibuild.planning.plan import Plan
from omibuild.sources.base import ResolvedSource


@dataclass(frozen=True)
class ApplyOptions:
    output: str = "load"  # load | push | oci:PATH
    platforms: tuple[str, ...] = ()
    exports: tuple[str, ...] = ()  # --export: added to the manifest's export
    builder: str | None = None
    cache_to: str | None = None
    no_cache: bool = False
    offline: bool = False
    progress: str = "auto"
    attest: bool = True  # provenance and SBOM of a pushed or written image (attest.py)
    sign: Path | None = None  # a cosign key: sign what is pushed (signing.py)
    sign_model: Path | None = None  # a PEM key: the model directory signed (modelsig.py)


@dataclass(frozen=True)
class Target:
    """A plan to apply, with what staging its build context reads besides the plan: the
    resolved model files, the manifest's directory and code, and the build's secrets."""

    plan: Plan
    resolved: ResolvedSource
    manifest_file: Path
    manifest_root: Path
    code_path: str | None = None
    secrets: tuple[Secret, ...] = ()
    analysis: tuple[tuple[str, bytes], ...] = ()  # the plan's analysis_files, as bytes


class ApplyStatus(StrEnum):
    PENDING = "pending"  # not decided yet: only while apply runs
    UP_TO_DATE = "up to date"
    BUILT = "built"
    FAILED = "failed"


@dataclass
class ApplyResult:
    name: str
    refs: tuple[str, ...]
    status: ApplyStatus
    seconds: float = 0.0
    digest: str | None = None
    downloaded_bytes: int = 0
    model_bytes_read: int = 0  # model bytes read to learn new layers' digests
    model_bytes_sent: int = 0  # model bytes streamed to the engine or into an OCI file
    cached_steps: int = 0
    total_steps: int = 0
    error: str | None = None
    # what kind of failure: engine/failures.py's kinds of build failure (disk, requirements,
    # base, auth, ...), or the assembly's own (model files changed, image, load, write)
    failure_kind: str | None = None
    venv_bytes: int | None = None  # the venv's layer, as built
    content_bytes: int | None = None  # the image's config and layers as stored: what a pull moves
    exports: dict[str, list[str]] = field(default_factory=dict)  # kind: refs tagged (export)


@dataclass
class Job:
    """One target while apply runs: its plan (with the run's platforms), where it goes, the
    temporary tag it is built under, and the image layout BuildKit writes."""

    target: Target
    plan: Plan
    output: str
    temp: str
    result: ApplyResult
    layout: Path | None = None

    @property
    def model_temp(self) -> str:
        """The name new model layers wait under in the engine until the image holds them."""
        return f"{self.temp}-model"
