"""omi.lock: the resolved origin and digests of a manifest's model, next to the manifest.

``--locked`` refuses when resolving now gives something else (an alias that moved);
``--offline`` uses only the lock and the cache.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omibuild.errors import OmiError, UsageError
from omibuild.manifest.model import Manifest
from omibuild.sources.base import ResolvedSource
from omibuild.store.cache import atomic_write

LOCK_VERSION = 1


def lock_path(manifest: Manifest) -> Path:
    return manifest.file.with_name("omi.lock")


def spec_fingerprint(manifest: Manifest) -> str:
    """What the lock was made for: the source section, as declared."""
    data = dataclasses.asdict(manifest.source)
    return "sha256:" + hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class LockFile:
    """omi.lock as read once for a manifest: what it pins for this manifest's source and
    base image (None where it pins nothing for them), and its text as it is on disk."""

    path: Path
    present: bool  # a lock of this version is there (perhaps for another source)
    resolved: ResolvedSource | None  # the model it pins, when made for this source
    base_digest: str | None  # the digest it pins for this manifest's base image
    text: str | None = None


def read_lock_file(manifest: Manifest) -> LockFile:
    """omi.lock next to the manifest; an unreadable one is a UsageError naming it."""
    path = lock_path(manifest)
    try:
        text = path.read_text("utf-8")
        data = json.loads(text)
    except FileNotFoundError:
        return LockFile(path, False, None, None)
    except (OSError, ValueError) as err:
        raise UsageError(
            f"{path}: unreadable lock file ({err})",
            hint="delete it and run `omibuild lock` to write it again",
        ) from None
    if not isinstance(data, dict) or data.get("lockVersion") != LOCK_VERSION:
        return LockFile(path, False, None, None, text)
    resolved = None
    if data.get("source_spec") == spec_fingerprint(manifest):
        resolved = ResolvedSource.from_dict(data["resolved"])
    base, digest = data.get("base"), None
    if isinstance(base, dict) and base.get("image") == manifest.image.base:
        digest = base.get("digest") if isinstance(base.get("digest"), str) else None
    return LockFile(path, True, resolved, digest, text)


def write_lock(
    manifest: Manifest,
    resolved: ResolvedSource,
    base_digest: str | None = None,
    lock: LockFile | None = None,
) -> bool:
    """Write omi.lock if its content changes; returns whether it did. ``lock`` is the file as
    read before (read again when not given)."""
    lock = lock or read_lock_file(manifest)
    body: dict[str, Any] = {
        "lockVersion": LOCK_VERSION,
        "source_spec": spec_fingerprint(manifest),
        "resolved": resolved.to_dict(),
    }
    base_digest = base_digest or lock.base_digest  # keep a pin nobody re-resolved
    if base_digest:
        body["base"] = {"image": manifest.image.base, "digest": base_digest}
    text = json.dumps(body, indent=2, sort_keys=True) + "\n"
    if lock.text == text:
        return False
    atomic_write(lock.path, text)
    return True


def lock_drift(
    manifest: Manifest, resolved: ResolvedSource, base_digest: str | None, lock: LockFile
) -> str | None:
    """What writing the lock now would change, in a few words; None when it is current."""
    if not lock.present:
        return f"there is no {lock.path.name} yet"
    if lock.resolved is None:
        return "it was made for another model source"
    moved = [] if lock.resolved == resolved else [describe_drift(lock.resolved, resolved)]
    if base_digest and lock.base_digest != base_digest:
        was = lock.base_digest[:19] if lock.base_digest else "unpinned"
        moved.append(f"base image {manifest.image.base} {was} → {base_digest[:19]}")
    return "; ".join(moved) or None


def describe_drift(old: ResolvedSource, new: ResolvedSource) -> str:
    changes = []
    if old.version != new.version:
        changes.append(f"version {old.version} → {new.version}")
    if old.origin_id != new.origin_id:
        changes.append(f"origin {old.origin_id[:16]} → {new.origin_id[:16]}")
    if old.digest != new.digest:
        changes.append(f"model digest {old.digest[:19]} → {new.digest[:19]}")
    return ", ".join(changes) or "metadata changed"


class LockMismatch(OmiError):
    pass
