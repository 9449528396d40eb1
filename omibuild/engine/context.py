"""Stage the build context for a plan.

The context lives at a stable path per manifest under the cache (``contexts/<key>``), so
BuildKit's file sync sends only what changed between builds. Model files are staged as hard
links (same inode as the verified cache entry or the repository file) under ``model/``, for the
model layers omibuild makes from them (store/layers.py); ``.dockerignore`` keeps them out of
what BuildKit reads. It is rebuilt in a sibling ``.new`` directory and swapped in whole,
so an interrupted run never leaves a half-written context: only a ``.new`` directory, removed
at once (or by the next run if the process was killed)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

from omibuild.engine.jobs import Target
from omibuild.planning.plan import Plan, state_file
from omibuild.progress import Progress
from omibuild.render.dockerfile import (
    CTX_ANALYSIS,
    CTX_CODE,
    CTX_MODEL,
    CTX_REQUIREMENTS,
    CTX_RUNTIME,
    CTX_STATE,
    render,
)
from omibuild.sources.local import LocalModelSource
from omibuild.sources.resolve import stage
from omibuild.sources.runtime import runtime_files
from omibuild.store.cache import Cache, atomic_write, link_or_copy

STALE_SECONDS = 3600


def context_dir(cache: Cache, manifest_file: Path) -> Path:
    key = hashlib.sha256(str(manifest_file.resolve()).encode()).hexdigest()[:16]
    return cache.root / "contexts" / key


def _sweep(parent: Path) -> None:
    cutoff = time.time() - STALE_SECONDS
    for entry in parent.glob("*.new-*"):
        with contextlib.suppress(OSError):
            if entry.stat().st_mtime < cutoff:
                shutil.rmtree(entry)


@contextlib.contextmanager
def staged_context(
    target: Target, plan: Plan, cache: Cache, progress: Progress, *, offline: bool = False
) -> Iterator[tuple[Path, int]]:
    """Yield (context dir, bytes downloaded) for the target, built as ``plan`` (the target's
    plan with this run's platforms). The Dockerfile is at context/Dockerfile."""
    final = context_dir(cache, target.manifest_file)
    final.parent.mkdir(parents=True, exist_ok=True)
    _sweep(final.parent)
    new = final.with_name(f"{final.name}.new-{os.getpid()}")
    shutil.rmtree(new, ignore_errors=True)
    # the repository's model files, which the new context links and the old one unlinks
    local = LocalModelSource.paths(target.resolved) if target.resolved.kind == "local" else []
    before = [(path, path.stat()) for path in local]
    try:
        downloaded = _populate(new, target, plan, cache, progress, offline)
        old = final.with_name(f"{final.name}.old-{os.getpid()}")
        if final.exists():
            os.rename(final, old)
        os.rename(new, final)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(new, ignore_errors=True)
    for path, status in before:
        cache.relinked(path, status)
    cache.save()
    yield final, downloaded


def _populate(
    ctx: Path, target: Target, plan: Plan, cache: Cache, progress: Progress, offline: bool
) -> int:
    ctx.mkdir(parents=True)
    downloaded = stage(target.resolved, cache, progress, ctx / CTX_MODEL, offline=offline)
    for rel, path in runtime_files():
        link_or_copy(path, ctx / CTX_RUNTIME / rel)
    if target.code_path is not None:
        base = target.manifest_root / target.code_path
        for f in plan.code_files:
            link_or_copy(base / f.path, ctx / CTX_CODE / f.path)
    (ctx / CTX_CODE).mkdir(exist_ok=True)
    reqs = ctx / CTX_REQUIREMENTS
    reqs.mkdir()
    (reqs / "runtime.txt").write_text("\n".join(plan.runtime_requirements) + "\n")
    (reqs / "model.txt").write_text("".join(f"{r}\n" for r in plan.requirements))
    for rel, body in target.analysis:
        dest = ctx / CTX_ANALYSIS / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(body)
    (ctx / "omi.json").write_text(plan.omi_json)
    state = state_file(plan)
    (ctx / CTX_STATE).write_bytes(state)
    # kept by its sha256 (the label names it), so that `plan` on this machine reads it back
    # without opening the image
    kept = cache.root / "plans" / f"{hashlib.sha256(state).hexdigest()}.json.gz"
    if not kept.is_file():
        kept.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(kept, state)
    (ctx / "Dockerfile").write_text(render(plan))
    (ctx / ".dockerignore").write_text(f"Dockerfile\n.dockerignore\n{CTX_MODEL}\n")
    return downloaded
