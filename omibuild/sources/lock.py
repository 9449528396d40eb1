"""omi.lock: the resolved origin and digests of a manifest's model, next to the manifest.

``--locked`` refuses when resolving now gives something else (an alias that moved);
``--offline`` uses only the lock and the cache.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
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


def _read(manifest: Manifest) -> dict[str, Any] | None:
    path = lock_path(manifest)
    try:
        data = json.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        raise UsageError(
            f"{path}: unreadable lock file ({err})",
            hint="delete it and run `omibuild lock` to write it again",
        ) from None
    if not isinstance(data, dict) or data.get("lockVersion") != LOCK_VERSION:
        return None
    return data


def read_lock(manifest: Manifest) -> ResolvedSource | None:
    data = _read(manifest)
    if data is None or data.get("source_spec") != spec_fingerprint(manifest):
        return None
    return ResolvedSource.from_dict(data["resolved"])


def read_base_digest(manifest: Manifest) -> str | None:
    """The digest omi.lock pins for the manifest's base image, if it pins that image."""
    data = _read(manifest)
    base = data.get("base") if data else None
    if isinstance(base, dict) and base.get("image") == manifest.image.base:
        digest = base.get("digest")
        return digest if isinstance(digest, str) else None
    return None


def write_lock(
    manifest: Manifest, resolved: ResolvedSource, base_digest: str | None = None
) -> bool:
    """Write omi.lock if its content changes; returns whether it did."""
    path = lock_path(manifest)
    body: dict[str, Any] = {
        "lockVersion": LOCK_VERSION,
        "source_spec": spec_fingerprint(manifest),
        "resolved": resolved.to_dict(),
    }
    base_digest = base_digest or read_base_digest(manifest)  # keep a pin nobody re-resolved
    if base_digest:
        body["base"] = {"image": manifest.image.base, "digest": base_digest}
    text = json.dumps(body, indent=2, sort_keys=True) + "\n"
    try:
        if path.read_text("utf-8") == text:
            return False
    except OSError:
        pass
    atomic_write(path, text)
    return True


def lock_drift(manifest: Manifest, resolved: ResolvedSource, base_digest: str | None) -> str | None:
    """What writing the lock now would change, in a few words; None when it is current."""
    if _read(manifest) is None:
        return f"there is no {lock_path(manifest).name} yet"
    old = read_lock(manifest)
    if old is None:
        return "it was made for another model source"
    moved = [] if old == resolved else [describe_drift(old, resolved)]
    pinned = read_base_digest(manifest)
    if base_digest and pinned != base_digest:
        was = pinned[:19] if pinned else "unpinned"
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
