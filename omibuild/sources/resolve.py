"""Resolve a manifest's model with omi.lock semantics, and stage its files."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from omibuild.errors import UsageError
from omibuild.manifest.model import LocalSource, Manifest
from omibuild.progress import Progress
from omibuild.sources import get_source
from omibuild.sources.base import ResolvedSource
from omibuild.sources.lock import LockFile, LockMismatch, describe_drift, read_lock_file, write_lock
from omibuild.sources.remote import fetch_from_cache
from omibuild.store.cache import Cache


def resolve(
    manifest: Manifest,
    cache: Cache,
    progress: Progress,
    *,
    locked: bool = False,
    offline: bool = False,
    update_lock: bool = True,
    lock_file: LockFile | None = None,
) -> ResolvedSource:
    """The manifest's model: from the source, checked against omi.lock with ``locked``, or
    from the lock alone ``offline``. ``lock_file`` is omi.lock as read already, if it was."""
    lock_file = lock_file or read_lock_file(manifest)
    lock = lock_file.resolved
    if offline:
        if lock is None:
            raise UsageError(
                f"--offline needs an up-to-date {lock_file.path}",
                hint="run `omibuild lock` once with access to the model source",
            )
        return _with_location(lock, manifest)
    fresh = get_source(manifest.source.kind, cache, progress).resolve(
        manifest.source, manifest.root
    )
    if locked:
        if lock is None:
            raise LockMismatch(
                f"--locked: {lock_file.path} is missing or was made for another source",
                hint="run `omibuild lock` to write it",
            )
        if lock != fresh:
            raise LockMismatch(
                f"--locked: {manifest.source.kind} source {fresh.uri} no longer "
                f"matches omi.lock: {describe_drift(lock, fresh)}",
                hint="review the change, then run `omibuild lock` to update omi.lock",
            )
    elif update_lock:
        write_lock(manifest, fresh, lock=lock_file)
    return fresh


def _with_location(lock: ResolvedSource, manifest: Manifest) -> ResolvedSource:
    """A lock read back has no location; only a local source needs one offline."""
    if isinstance(manifest.source, LocalSource):
        return replace(lock, location=str(manifest.root / manifest.source.path))
    return lock


def stage(
    resolved: ResolvedSource, cache: Cache, progress: Progress, dest: Path, *, offline: bool = False
) -> int:
    """Put the model files under dest; returns the bytes downloaded."""
    if offline and resolved.kind != "local":
        missing = fetch_from_cache(cache, resolved.files, dest)
        if missing:
            raise UsageError(
                f"--offline: {len(missing)} file(s) of {resolved.uri} are not in the "
                f"cache (first: {missing[0].path})",
                hint="run once without --offline",
            )
        return 0
    return get_source(resolved.kind, cache, progress).fetch(resolved, dest)
