"""Slim the image's venv, at build time, inside the image build (``python slim.py VENV REQS``).

It runs with the venv's own interpreter in the ``deps`` stage, where the base image has no
binutils, on the standard library and ``packaging`` (the venv's own, or else the copy pip
vendors: pip is in the venv until this script removes it). It removes what no code reads when
a model serves:

- Debug sections (``.debug_*`` and their relocations) leave every ELF shared object, as
  ``strip --strip-debug`` would. Wheels often ship them: uvloop's extension is 13.6 MB, 1.9 MB
  without them. Symbol tables stay, so backtraces and ``dladdr`` still name functions. Files
  that are not 64-bit little-endian ELF, or whose layout is not the usual one (loaded segments
  first), are left as they are.
- Cython sources (``.pyx``, ``.pxd``, ``.pxi``): inputs to building an extension, never read
  by one.
- The test suites packages ship inside themselves: a ``tests`` directory within a package
  (``pandas/tests`` is 46 MB, scipy's 33 MB, numpy's 17 MB, scikit-learn's 16 MB), never a
  top-level one and never a ``tests.py`` module.
- pip (an image never installs at run time), and setuptools and wheel unless an installed
  distribution or the model's requirements ask for them.

``image: {slim: false}`` in omi.yaml turns all of it off.
Every rewrite goes to a temporary file that replaces the original only when complete."""

from __future__ import annotations

import contextlib
import json
import mmap
import os
import re
import shutil
import struct
import subprocess
import sys
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path
from typing import Any

_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")  # Elf64_Ehdr
_SHDR = struct.Struct("<IIQQQQIIQQ")  # Elf64_Shdr: name type flags addr offset size link info
_PHDR = struct.Struct("<IIQQQQQQ")  # Elf64_Phdr: type flags offset vaddr paddr filesz memsz align
_SHF_ALLOC = 0x2
_SHT_NOBITS = 8
_SHT_REL, _SHT_RELA = 9, 4
_ELF64_LE = b"\x7fELF\x02\x01"


def _is_debug(name: str) -> bool:
    for prefix in ("", ".rela", ".rel"):
        if name.startswith(prefix + ".debug") or name.startswith(prefix + ".zdebug"):
            return True
    return False


def strip_debug(path: Path) -> int:
    """Drop the debug sections of one ELF file in place. Returns the bytes saved (0: untouched).

    The file is mapped, not read: one without debug sections (most of them; torch's 434 MB
    ``libtorch_cpu.so`` is one) costs only the pages of its headers."""
    with open(path, "rb") as f:
        head = f.read(_EHDR.size)
        if len(head) < _EHDR.size or not head.startswith(_ELF64_LE):
            return 0
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            return _strip_mapped(path, data)


def _strip_mapped(path: Path, data: mmap.mmap) -> int:
    (_, _, _, _, _, phoff, shoff, _, _, phentsize, phnum, shentsize, shnum, shstrndx) = (
        _EHDR.unpack_from(data)
    )
    if shoff == 0 or shnum == 0 or shentsize != _SHDR.size or shstrndx >= shnum:
        return 0
    if shoff + shnum * shentsize > len(data) or phoff + phnum * phentsize > len(data):
        return 0
    sections = [list(_SHDR.unpack_from(data, shoff + i * shentsize)) for i in range(shnum)]
    names_at = sections[shstrndx][4]

    def name(section: list[int]) -> str:
        start = names_at + section[0]
        return data[start : data.find(b"\0", start)].decode("ascii", "replace")

    drop = {i for i, s in enumerate(sections) if i and not s[2] & _SHF_ALLOC and _is_debug(name(s))}
    if not drop or shstrndx in drop:
        return 0
    # Everything the loader maps (segments, allocated sections) must sit before the first byte
    # we remove, so that it keeps its offset; otherwise leave the file alone.
    loaded_end = _EHDR.size
    for i in range(phnum):
        _, _, offset, _, _, filesz, _, _ = _PHDR.unpack_from(data, phoff + i * phentsize)
        loaded_end = max(loaded_end, offset + filesz, phoff + phnum * phentsize)
    for s in sections:
        if s[2] & _SHF_ALLOC and s[1] != _SHT_NOBITS:
            loaded_end = max(loaded_end, s[4] + s[5])
    if min(sections[i][4] for i in drop) < loaded_end:
        return 0
    out = bytearray(data[:loaded_end])
    index: dict[int, int] = {}
    kept: list[list[int]] = []
    for i, s in enumerate(sections):
        if i in drop:
            continue
        index[i] = len(kept)
        s = list(s)
        if i and not s[2] & _SHF_ALLOC and s[1] != _SHT_NOBITS and s[4] >= loaded_end:
            align = max(1, s[8])
            out += b"\0" * (-len(out) % align)
            body = data[s[4] : s[4] + s[5]]
            s[4] = len(out)
            out += body
        kept.append(s)
    for s in kept:
        s[6] = index.get(s[6], 0)  # sh_link
        if s[1] in (_SHT_REL, _SHT_RELA):  # sh_info: the section the relocations apply to
            s[7] = index.get(s[7], 0)
    out += b"\0" * (-len(out) % 8)
    new_shoff = len(out)
    for s in kept:
        out += _SHDR.pack(*s)
    header = list(_EHDR.unpack_from(data))
    header[6], header[12], header[13] = new_shoff, len(kept), index[shstrndx]
    out[: _EHDR.size] = _EHDR.pack(*header)
    saved = len(data) - len(out)
    if saved <= 0:
        return 0
    tmp = path.with_name(f".{path.name}.omi-slim")
    try:
        with open(tmp, "wb") as w:
            w.write(out)
        os.chmod(tmp, path.stat().st_mode & 0o7777)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return saved


CYTHON_SOURCES = (".pyx", ".pxd", ".pxi")


def _tree_size(path: Path) -> int:
    total = 0
    for dirpath, _, filenames in os.walk(path):
        for filename in filenames:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, filename)).st_size
    return total


def strip_tree(root: Path) -> tuple[int, int]:
    """Slim everything under ``root``: strip shared objects, remove Cython sources and the test
    suites that packages ship inside themselves (a ``tests`` directory within a package, never
    a top-level one). Returns (files and directories changed or removed, bytes saved)."""
    changed = saved = 0
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        if "site-packages" in here.parts and here.name != "site-packages" and "tests" in dirnames:
            tests = here / "tests"
            if not tests.is_symlink():
                size = _tree_size(tests)
                shutil.rmtree(tests)
                changed, saved = changed + 1, saved + size
            dirnames.remove("tests")
        for filename in filenames:
            path = here / filename
            if path.is_symlink() or not path.is_file():
                continue
            if filename.endswith(CYTHON_SOURCES):
                changed, saved = changed + 1, saved + path.stat().st_size
                path.unlink()
            elif ".so" in filename:
                gained = strip_debug(path)
                if gained:
                    changed, saved = changed + 1, saved + gained
    return changed, saved


def _packaging() -> Any:
    """packaging's requirements module and canonicalize_name: the venv's own, or the copy pip
    vendors (pip stays in the venv until removable_tools has decided). Imported here, not at
    the top: the image's final venv has neither, and strip_debug still runs there."""
    try:
        from packaging import requirements, utils
    except ImportError:  # the model did not install packaging
        from pip._vendor.packaging import requirements, utils  # type: ignore[no-redef]
    return requirements, utils.canonicalize_name


def _requirement(text: str) -> Any:
    """A requirement line pip would install by name; None for options (``-r``, ``--index-url``),
    comments, paths and URLs, which name no tool this script could remove."""
    text = text.split(" #", 1)[0].strip()
    if not text or text.startswith(("#", "-")):
        return None
    requirements, _ = _packaging()
    try:
        return requirements.Requirement(text)
    except requirements.InvalidRequirement:
        return None


def removable_tools(
    requirements: list[Path], installed: Iterable[metadata.Distribution] | None = None
) -> list[str]:
    """pip, plus setuptools and wheel when nothing installed and no requirement asks for them.

    A distribution's requirement counts only where its marker holds here; one behind an extra
    counts only if a requirements file asked for that extra (``name[extra]``, compared as PEP
    685 normalises extra names)."""
    _, canonicalize_name = _packaging()
    dists = list(metadata.distributions() if installed is None else installed)
    wanted: set[str] = set()
    extras: dict[str, set[str]] = {}
    for file in requirements:
        for line in file.read_text("utf-8").splitlines():
            req = _requirement(line)
            if req is not None:
                name = canonicalize_name(req.name)
                wanted.add(name)
                extras.setdefault(name, set()).update(canonicalize_name(e) for e in req.extras)
    for dist in dists:
        chosen = extras.get(canonicalize_name(dist.metadata["Name"] or ""), set())
        for text in dist.requires or ():
            req = _requirement(text)
            if req is None:
                continue
            if req.marker is not None:
                asked = chosen or {""}  # "": the distribution installed with no extra
                if not any(req.marker.evaluate({"extra": e}) for e in asked):
                    continue
            wanted.add(canonicalize_name(req.name))
    present = {canonicalize_name(d.metadata["Name"] or "") for d in dists}
    tools: list[str] = [t for t in ("setuptools", "wheel") if t in present and t not in wanted]
    return [*tools, "pip"] if "pip" in present and "pip" not in wanted else tools


INSTALLED_FILE = ".omi-installed.json"  # in the venv: what the SBOM and provenance list


def record_installed(venv: Path, pip_report: Path | None) -> int:
    """Write ``VENV/.omi-installed.json``: every distribution the venv holds now (after any
    slimming), each with the URL and sha256 of the archive pip installed it from where pip's
    ``--report`` names one. Returns how many."""

    def canonicalize_name(name: str) -> str:  # PEP 503 (pip may be gone by now)
        return re.sub(r"[-_.]+", "-", name).lower()

    got: dict[str, dict[str, str]] = {}
    try:
        report = json.loads(pip_report.read_text("utf-8")) if pip_report else {}
    except (OSError, ValueError):
        report = {}
    for item in report.get("install") or ():
        info = item.get("download_info") or {}
        hashes = (info.get("archive_info") or {}).get("hashes") or {}
        name = canonicalize_name(str((item.get("metadata") or {}).get("name", "")))
        pairs = (("url", info.get("url")), ("sha256", hashes.get("sha256")))
        got[name] = {k: str(v) for k, v in pairs if v}
    site = [p for p in venv.glob("lib/python*/site-packages") if p.is_dir()]
    dists = []
    for dist in metadata.distributions(path=[str(p) for p in site]):
        name, version = dist.metadata["Name"] or "", dist.version
        dists.append({"name": name, "version": version, **got.get(canonicalize_name(name), {})})
    dists.sort(key=lambda d: canonicalize_name(d["name"]))
    data = json.dumps({"format": 1, "distributions": dists}, indent=1, sort_keys=True) + "\n"
    tmp = venv / f"{INSTALLED_FILE}.tmp"
    tmp.write_text(data, "utf-8")
    os.replace(tmp, venv / INSTALLED_FILE)
    return len(dists)


def main(argv: list[str]) -> int:
    """``slim.py [--no-slim] [--pip-report FILE] VENV REQS...``"""
    slim, report = True, None
    while argv and argv[0].startswith("--"):
        flag = argv.pop(0)
        if flag == "--no-slim":
            slim = False
        elif flag == "--pip-report":
            report = Path(argv.pop(0))
    venv, requirements = Path(argv[0]), [Path(a) for a in argv[1:]]
    if slim:
        _slim(venv, requirements)
    count = record_installed(venv, report)
    print(f"omibuild: recorded {count} installed distributions for the SBOM")
    return 0


def _slim(venv: Path, requirements: list[Path]) -> None:
    tools = removable_tools(requirements)
    if tools:
        subprocess.run(
            [sys.executable, "-m", "pip", "uninstall", "--yes", "--quiet", *tools], check=True
        )
    files, saved = strip_tree(venv)
    removed = ", ".join(tools) or "nothing"
    print(
        f"omibuild slim: removed {removed}; stripped debug sections, Cython sources and "
        f"packaged test suites ({files} entries, {saved / 1e6:.1f} MB)"
    )


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
