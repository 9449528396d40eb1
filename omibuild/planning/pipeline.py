"""load → validate → resolve → gather → make_plan: what `plan` and `apply` share."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from omibuild.manifest.model import Manifest
from omibuild.manifest.validate import load_manifest
from omibuild.planning.inputs import gather
from omibuild.planning.make import make_plan
from omibuild.planning.plan import BuildInputs, Plan
from omibuild.progress import Progress
from omibuild.sources.base import ResolvedSource
from omibuild.sources.lock import LockFile, LockMismatch, read_lock_file, write_lock
from omibuild.sources.resolve import resolve
from omibuild.store.cache import Cache


@dataclass(frozen=True)
class Prepared:
    manifest: Manifest
    resolved: ResolvedSource
    inputs: BuildInputs
    plan: Plan


def prepare(
    path: Path,
    cache: Cache,
    progress: Progress,
    *,
    locked: bool = False,
    offline: bool = False,
    base_digest: Callable[[str], str | None] | None = None,
    save_lock: bool = False,
    notes: bool = True,
) -> Prepared:
    """The plan for one manifest. Only ``save_lock`` (apply, lock) writes omi.lock: a plan is
    a dry run and leaves the repository as it found it."""
    manifest = load_manifest(path)
    lock = read_lock_file(manifest)  # once: resolving, pinning the base and writing read it
    resolved = resolve(
        manifest, cache, progress, locked=locked, offline=offline, update_lock=False, lock_file=lock
    )
    engine = None if offline else base_digest
    base = pin_base(manifest, engine, locked=locked, notes=notes, lock=lock)
    if save_lock and not (locked or offline):
        write_lock(manifest, resolved, base, lock)
    inputs = gather(manifest, resolved, cache, base_digest=lambda _: base)
    plan = make_plan(inputs)
    return Prepared(manifest, resolved, inputs, plan)


def pin_base(
    manifest: Manifest,
    engine: Callable[[str], str | None] | None,
    *,
    locked: bool = False,
    notes: bool = True,
    lock: LockFile | None = None,
) -> str | None:
    """The base image's digest: the engine's when it answers, else the one omi.lock pins, so
    a plan made without an engine (a reviewer's laptop, a lint-only CI job) is the same plan.
    Says on stderr when neither knows it."""
    lock = lock or read_lock_file(manifest)
    pinned = lock.base_digest
    found = engine(manifest.image.base) if engine else None
    if locked and pinned and found and found != pinned:
        raise LockMismatch(
            f"--locked: base image {manifest.image.base} moved: {pinned[:19]} → {found[:19]}",
            hint="review the change, then run `omibuild lock` to update omi.lock",
        )
    if found or pinned:
        return found or pinned
    if not notes:
        return None
    print(
        f"omibuild: note: the digest of base image {manifest.image.base} is unknown (not in "
        f"the local engine, not in {lock.path.name}); the plan does not pin it",
        file=sys.stderr,
    )
    return None
