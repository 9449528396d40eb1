"""Check the model files against the digests recorded at build time."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

from omibuild.runtime.document import File


class ModelTampered(Exception):
    pass


def verify_model(model_dir: Path, files: tuple[File, ...]) -> dict[str, float]:
    """Raise ModelTampered on any difference; return what it cost (files, bytes, seconds)."""
    start = time.perf_counter()
    total = 0
    buf = bytearray(4 << 20)
    view = memoryview(buf)
    for entry in files:
        path = model_dir / entry.path
        h = hashlib.sha256()
        try:
            with open(path, "rb", buffering=0) as fh:
                while n := fh.readinto(buf):
                    h.update(view[:n])
                    total += n
        except OSError as err:
            raise ModelTampered(f"model file {entry.path}: {err.strerror}") from None
        if h.hexdigest() != entry.sha256:
            raise ModelTampered(f"model file {entry.path} does not match its build-time sha256")
    return {"files": len(files), "bytes": total, "seconds": round(time.perf_counter() - start, 4)}
