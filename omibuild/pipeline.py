"""load → validate → resolve → gather → make_plan: what `plan` and `apply` share."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from omibuild.manifest.model import Manifest
from omibuild.manifest.validate import load_manifest
from omibuild.plan import BuildInputs, Plan, make_plan
from omibuild.sources.base import ResolvedSource
from omibuild.sources.cache import Cache
from omibuild.sources.progress import Progress


@dataclass(frozen=True)
class Prepared:
    manifest: Manifest
    resolved: ResolvedSource
    inputs: BuildInputs
    plan: Plan


def local_cache_dir(cache: Cache, name: str) -> Path:
    return cache.root / "buildkit" / name


def prepare(
    path: Path,
    cache: Cache,
    progress: Progress,
    *,
    locked: bool = False,
    offline: bool = False,
    base_digest: Callable[[str], str | None] | None = None,
) -> Prepared:
    from omibuild.inputs import gather
    from omibuild.sources.resolve import resolve

    manifest = load_manifest(path)
    resolved = resolve(manifest, cache, progress, locked=locked, offline=offline)
    inputs = gather(manifest, resolved, cache, base_digest=base_digest)
    plan = make_plan(inputs)
    return Prepared(manifest, resolved, inputs, plan)
