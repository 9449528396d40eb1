"""Fast, streaming sha256: large blocks, readinto a reused buffer, no subprocess."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

BLOCK = 4 * 1024 * 1024


def sha256_file(path: Path, on_bytes: Callable[[int], None] | None = None) -> str:
    h = hashlib.sha256()
    buf = bytearray(BLOCK)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as fh:
        while n := fh.readinto(buf):
            h.update(view[:n])
            if on_bytes:
                on_bytes(n)
    return h.hexdigest()


def copy_and_hash(src: Path, dst: Path, on_bytes: Callable[[int], None] | None = None) -> str:
    """Copy src to dst, hashing the bytes on the way (one read of the data)."""
    h = hashlib.sha256()
    buf = bytearray(BLOCK)
    view = memoryview(buf)
    with open(src, "rb", buffering=0) as fin, open(dst, "wb") as fout:
        while n := fin.readinto(buf):
            h.update(view[:n])
            fout.write(view[:n])
            if on_bytes:
                on_bytes(n)
    return h.hexdigest()
