"""The in-image runtime's own files: the one source every image has beside its model. The
planner digests them; the engine stages them into the build context."""

from __future__ import annotations

import hashlib
from importlib import resources
from pathlib import Path


def runtime_files() -> list[tuple[str, Path]]:
    """(relative path, file) of the runtime package as shipped in the image."""
    pkg = Path(str(resources.files("omibuild")))
    files = [("omibuild/__init__.py", pkg / "__init__.py")]
    for path in sorted((pkg / "runtime").rglob("*")):
        if (
            path.is_file()
            and "__pycache__" not in path.parts
            and path.suffix in (".py", ".proto", ".desc")
        ):
            files.append((f"omibuild/{path.relative_to(pkg).as_posix()}", path))
    return files


def runtime_digest() -> str:
    h = hashlib.sha256()
    for rel, path in runtime_files():
        h.update(rel.encode() + b"\0" + hashlib.sha256(path.read_bytes()).digest())
    return "sha256:" + h.hexdigest()
