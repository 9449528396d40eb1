"""Fast, streaming sha256: large blocks, readinto a reused buffer, no subprocess."""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Callable
from pathlib import Path

from omibuild.errors import UsageError

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
    """Copy src to dst, hashing the bytes on the way (one read of the data). A copy that
    cannot fit is refused before it starts, naming the directory and the bytes it needs."""
    ensure_space(dst.parent, src.stat().st_size)
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


def ensure_space(directory: Path, needed: int) -> None:
    """Refuse (one line, exit 2) to write ``needed`` bytes into ``directory`` when its file
    system has less free: a write that fills the disk half-way helps nobody."""
    try:
        free = shutil.disk_usage(directory).free
    except OSError:
        return  # not there yet, or not a real file system: the write will say
    if needed > free:
        raise UsageError(
            f"{directory}: no space for {_size(needed)} (the file system has {_size(free)} free)",
            hint="free some space, or `omibuild cache prune --keep 5GB`",
        )


def _size(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000  # type: ignore[assignment]
    return f"{n} B"
