"""What omibuild keeps on disk, and pruning it to a size (`omibuild cache`).

Eight kinds, under the cache root: source files (model files fetched from MLflow or the Hugging
Face Hub, blobs/sha256), BuildKit cache directories (buildkit/NAME, one per model, written by
each build's cache export: since the model layers are omibuild's own, they hold only the
small layers), build contexts (contexts/KEY, the last context staged for each manifest), image
layouts (images/KEY: the image BuildKit last built for each manifest, less the model, so the
next export writes only new blobs), model layer digests (layers/, a few bytes per model seen),
the plans' states (plans/), the dry predictions' answers (answers/) and scratch (tmp/).

Pruning keeps the most recently used entries within a size and removes the rest, oldest first,
and is safe while builds run: source files, contexts and scratch go only when no omibuild
command holds the cache (Cache holds a shared lock for its life); otherwise they are kept and
reported. BuildKit cache directories are listed and never removed: the engine keeps lazy
records that point into them, and removing one (even whole, under the build's own lock) broke
another model's build of the same dependencies in the test suite ("failed to compute cache
key: failed to get state for index 0 on [deps 4/6]"). Bounding them safely needs the engine's
records to go with them."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from omibuild.store.cache import Cache

KINDS = (
    "source file",
    "build cache",
    "build context",
    "image layout",
    "layer digests",
    "plan states",
    "dry predictions",
    "scratch",
)


@dataclass(frozen=True)
class CacheEntry:
    kind: str
    name: str
    path: Path
    size: int
    last_use: float  # seconds since the epoch

    def to_dict(self) -> dict[str, object]:
        return {
            "kind": self.kind,
            "name": self.name,
            "path": str(self.path),
            "bytes": self.size,
            "last_use": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.last_use)),
        }


@dataclass
class Pruned:
    removed: list[CacheEntry]
    kept: list[CacheEntry]
    busy: list[CacheEntry]  # over the size, but in use by a running build
    engine: list[CacheEntry]  # BuildKit cache directories: the engine's records point into them


def _tree(path: Path) -> tuple[int, float]:
    """Bytes (each inode once: contexts hard-link model files) and the newest mtime."""
    seen: set[tuple[int, int]] = set()
    size, newest = 0, 0.0
    for root, _dirs, files in os.walk(path):
        for name in (".", *files):
            try:
                st = os.lstat(os.path.join(root, name))
            except OSError:
                continue
            newest = max(newest, st.st_mtime)
            if name != "." and (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                size += st.st_size
    return size, newest


def _context_name(path: Path) -> str:
    try:
        return str(json.loads((path / "omi.json").read_text("utf-8"))["name"])
    except (OSError, ValueError, KeyError, TypeError):
        return path.name


def entries(cache: Cache) -> list[CacheEntry]:
    """Everything under the cache root that a prune may remove, most recently used first."""
    found: list[CacheEntry] = []
    blobs = cache.root / "blobs" / "sha256"
    for blob in blobs.iterdir() if blobs.is_dir() else ():
        try:
            st = blob.stat()
        except OSError:
            continue
        found.append(CacheEntry("source file", blob.name[:12], blob, st.st_size, st.st_mtime))
    for kind, sub in (
        ("build cache", "buildkit"),
        ("build context", "contexts"),
        ("image layout", "images"),
    ):
        parent = cache.root / sub
        for path in parent.iterdir() if parent.is_dir() else ():
            if not path.is_dir() or ".new-" in path.name or ".old-" in path.name:
                continue
            size, newest = _tree(path)
            name = path.name
            if kind != "build cache":  # named by the manifest whose context has that key
                name = _context_name(cache.root / "contexts" / path.name)
            found.append(CacheEntry(kind, name, path, size, newest))
    memos = cache.root / "layers"
    if memos.is_dir():
        size, newest = _tree(memos)
        found.append(CacheEntry("layer digests", "layers", memos, size, newest))
    answers = cache.root / "answers"  # the dry predictions' answers, by image (engine/assemble)
    if answers.is_dir():
        size, newest = _tree(answers)
        found.append(CacheEntry("dry predictions", "answers", answers, size, newest))
    states = cache.root / "plans"  # the plans of images built here, by their state's sha256
    if states.is_dir():
        size, newest = _tree(states)
        found.append(CacheEntry("plan states", "plans", states, size, newest))
    for path in (cache.root / "tmp").iterdir() if (cache.root / "tmp").is_dir() else ():
        size, newest = _tree(path) if path.is_dir() else (path.stat().st_size, path.stat().st_mtime)
        found.append(CacheEntry("scratch", path.name, path, size, newest))
    return sorted(found, key=lambda e: e.last_use, reverse=True)


@contextmanager
def _exclusive(lock: Path) -> Iterator[bool]:
    """Yield whether the lock was free (and is now held), without waiting."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _remove(entry: CacheEntry) -> None:
    if entry.path.is_dir() and not entry.path.is_symlink():
        shutil.rmtree(entry.path, ignore_errors=True)
    else:
        entry.path.unlink(missing_ok=True)


def bound(cache: Cache, cap: int) -> Pruned | None:
    """After an apply: when everything prunable weighs more than ``cap`` (omibuild's
    ``cache_max`` setting), prune to it, least recently used first; None when under it."""
    if sum(e.size for e in entries(cache) if e.kind != "build cache") <= cap:
        return None
    return prune(cache, cap)


def prune(cache: Cache, keep_bytes: int) -> Pruned:
    """Keep the most recently used entries within ``keep_bytes``; remove the others that no
    running omibuild command uses. BuildKit cache directories are listed, never removed (see
    the module's docstring): they are reported in ``engine``."""
    result = Pruned([], [], [], [])
    over: list[CacheEntry] = []
    total = 0
    for entry in entries(cache):
        if entry.kind == "build cache":
            result.engine.append(entry)
        elif total + entry.size <= keep_bytes:
            total += entry.size
            result.kept.append(entry)
        else:
            over.append(entry)
    with _exclusive(cache.in_use_lock) as idle:
        for entry in over:
            if idle:
                _remove(entry)
                result.removed.append(entry)
            else:
                result.busy.append(entry)
    return result
