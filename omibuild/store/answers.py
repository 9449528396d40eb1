"""The dry prediction's answers, kept by image (engine/assemble.py asks before it starts one)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from omibuild.store.cache import Cache

# The dry prediction's answer (outputs.json) for an image, by the digest of its manifest before
# that answer is appended: the same bytes give the same answer, so a rebuild of an unchanged
# image (removed from the engine, retagged, pushed again) need not start it to ask.
ANSWERS = "answers"
_MAX_ANSWER = 4 << 20


def _answer_path(cache: Cache, digest: str) -> Path:
    return cache.root / ANSWERS / (digest.removeprefix("sha256:") + ".json")


def known_answer(cache: Cache, digest: str) -> bytes | None:
    try:
        with open(_answer_path(cache, digest), "rb") as fh:
            data = fh.read(_MAX_ANSWER + 1)
    except OSError:
        return None
    return data if 0 < len(data) <= _MAX_ANSWER else None


def remember_answer(cache: Cache, digest: str, outputs: bytes) -> None:
    """Kept whole or not at all: written beside its place, then renamed."""
    path = _answer_path(cache, digest)
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_bytes(outputs)
        os.replace(tmp, path)
