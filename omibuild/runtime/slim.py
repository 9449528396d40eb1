"""Slim the image's venv, at build time, inside the image build (``python slim.py VENV REQS``).

It runs with the venv's own interpreter in the ``deps`` stage, where the base image has no
binutils, on the standard library and ``packaging`` (the venv's own, or else the copy pip
vendors: pip is in the venv until this script removes it). It removes what no code reads when
a model serves:

- Debug sections (``.debug_*`` and their relocations) and the full symbol table (``.symtab``
  and its strings) leave every ELF shared object, as Debian's packaging strips its libraries
  (``strip --strip-unneeded``). Wheels often ship them: uvloop's extension is 13.6 MB, 1.9 MB
  without them; the symbol tables of an XGBoost image's venv are 16 MB. The dynamic symbol
  table (``.dynsym``) stays: the loader, ``dlsym``, ``dladdr`` and glibc's backtraces read only
  that. What the loader maps keeps its bytes, moved back page-aligned where patchelf put it
  after the symbol table. Files that are not 64-bit little-endian ELF, or where a section to
  drop lies inside what the loader maps, are left as they are.
- Identical files (numpy and scipy each ship the same libgfortran, 2.8 MB) become hard links
  of one another, where their permissions agree.
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
import hashlib
import json
import mmap
import os
import re
import shutil
import stat
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
_SHT_SYMTAB, _SHT_NOBITS, _SHT_SYMTAB_SHNDX = 2, 8, 18
_SHT_REL, _SHT_RELA = 9, 4
_PT_LOAD = 1
_ELF64_LE = b"\x7fELF\x02\x01"


def _is_debug(name: str) -> bool:
    for prefix in ("", ".rela", ".rel"):
        if name.startswith(prefix + ".debug") or name.startswith(prefix + ".zdebug"):
            return True
    return False


def strip_unneeded(path: Path) -> int:
    """Drop the debug sections and the full symbol table of one ELF file in place, as
    ``strip --strip-unneeded`` would. Returns the bytes saved (0: untouched).

    The file is mapped, not read: one without them (most of the large ones; torch's 434 MB
    ``libtorch_cpu.so`` is one) costs only the pages of its headers."""
    with open(path, "rb") as f:
        head = f.read(_EHDR.size)
        if len(head) < _EHDR.size or not head.startswith(_ELF64_LE):
            return 0
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            return _strip_mapped(path, data)


def _strip_mapped(path: Path, data: mmap.mmap) -> int:
    tables = _tables(data)
    if tables is None:
        return 0
    header, sections, segments = tables
    shstrndx = header[13]
    names_at = sections[shstrndx][4]

    def name(section: list[int]) -> str:
        start = names_at + section[0]
        return data[start : data.find(b"\0", start)].decode("ascii", "replace")

    unloaded = [i for i, s in enumerate(sections) if i and not s[2] & _SHF_ALLOC]
    drop = {i for i in unloaded if _is_debug(name(sections[i]))}
    drop |= _symbol_table(sections, unloaded, drop, shstrndx)
    if not drop or shstrndx in drop:
        return 0
    out = _rewritten(data, header, sections, segments, drop)
    if out is None or len(out) >= len(data):
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
    return len(data) - len(out)


def _tables(data: mmap.mmap) -> tuple[list[int], list[list[int]], list[list[int]]] | None:
    """(the ELF header's fields, the section headers, the program headers); None when they
    are not where and what a 64-bit ELF file keeps them."""
    header = list(_EHDR.unpack_from(data))
    phoff, shoff, phentsize, phnum, shentsize, shnum, shstrndx = header[5:7] + header[9:14]
    if shoff == 0 or shnum == 0 or shentsize != _SHDR.size or shstrndx >= shnum:
        return None
    if shoff + shnum * shentsize > len(data) or phoff + phnum * phentsize > len(data):
        return None
    if phnum and phentsize != _PHDR.size:
        return None
    sections = [list(_SHDR.unpack_from(data, shoff + i * shentsize)) for i in range(shnum)]
    segments = [list(_PHDR.unpack_from(data, phoff + i * phentsize)) for i in range(phnum)]
    return header, sections, segments


class _Runs:
    """What the loader maps keeps its bytes and order, each run of it moved back by a multiple
    of the segments' alignment (so offsets stay congruent to addresses, as mmap needs): the
    header, the program headers, every segment's file bytes and every allocated section.
    patchelf (auditwheel) appends loaded segments after the symbol table, so most wheels'
    libraries have some after it."""

    def __init__(self, header: list[int], sections: list[list[int]], segments: list[list[int]]):
        phoff, phnum = header[5], header[10]
        self.runs = _runs(
            [(0, _EHDR.size), (phoff, phoff + phnum * _PHDR.size)]
            + [(seg[2], seg[2] + seg[5]) for seg in segments if seg[5]]
            + [(s[4], s[4] + s[5]) for s in sections if s[2] & _SHF_ALLOC and s[1] != _SHT_NOBITS]
        )
        self.align = max([4096] + [seg[7] for seg in segments if seg[0] == _PT_LOAD])
        self.moves: list[tuple[int, int, int]] = []  # (start, end, how far back)

    def overlaps(self, start: int, end: int) -> bool:
        return any(start < r_end and r_start < end for r_start, r_end in self.runs)

    def copy(self, data: mmap.mmap) -> bytearray:
        out = bytearray()
        for r_start, r_end in self.runs:  # each moves back (never forward): they are in order
            at = len(out) + (r_start - len(out)) % self.align
            out += b"\0" * (at - len(out))
            out += data[r_start:r_end]
            self.moves.append((r_start, r_end, r_start - at))
        return out

    def moved(self, offset: int, size: int = 0) -> int | None:
        """Where bytes [offset, offset + size) of a run are now; None: not in a run."""
        for r_start, r_end, back in self.moves:
            if r_start <= offset and offset + size <= r_end and (size == 0 or offset < r_end):
                return offset - back
        return None


def _rewritten(
    data: mmap.mmap,
    header: list[int],
    sections: list[list[int]],
    segments: list[list[int]],
    drop: set[int],
) -> bytearray | None:
    """The file without the sections in ``drop``; None where its layout is unusual."""
    runs = _Runs(header, sections, segments)
    if any(runs.overlaps(sections[i][4], sections[i][4] + sections[i][5]) for i in drop):
        return None  # a section to drop inside what is loaded: leave the file alone
    out = runs.copy(data)
    index: dict[int, int] = {}
    kept: list[list[int]] = []
    for i, s in enumerate(sections):
        if i in drop:
            continue
        index[i] = len(kept)
        s = list(s)
        new = runs.moved(s[4], 0 if s[1] == _SHT_NOBITS else s[5])
        if i and s[1] != _SHT_NOBITS and s[5] and not s[2] & _SHF_ALLOC and new is None:
            out += b"\0" * (-len(out) % max(1, s[8]))  # an unloaded section: after the runs
            body = data[s[4] : s[4] + s[5]]
            s[4] = len(out)
            out += body
        elif new is not None:
            s[4] = new
        kept.append(s)
    for s in kept:
        s[6] = index.get(s[6], 0)  # sh_link
        if s[1] in (_SHT_REL, _SHT_RELA):  # sh_info: the section the relocations apply to
            s[7] = index.get(s[7], 0)
    for seg in segments:
        new = runs.moved(seg[2], seg[5]) if seg[5] or seg[2] else 0
        if new is None:
            return None
        seg[2] = new
    out += b"\0" * (-len(out) % 8)
    new_shoff = len(out)
    for s in kept:
        out += _SHDR.pack(*s)
    new_phoff = runs.moved(header[5]) if segments else header[5]
    if new_phoff is None:
        return None
    for i, seg in enumerate(segments):
        out[new_phoff + i * _PHDR.size : new_phoff + (i + 1) * _PHDR.size] = _PHDR.pack(*seg)
    header = list(header)
    header[5], header[6], header[12], header[13] = (
        new_phoff,
        new_shoff,
        len(kept),
        index[header[13]],
    )
    out[: _EHDR.size] = _EHDR.pack(*header)
    return out


def _runs(intervals: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The intervals merged where they overlap or touch, in file order."""
    merged: list[tuple[int, int]] = []
    for start, end in sorted(i for i in intervals if i[1] > i[0]):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def _symbol_table(
    sections: list[list[int]], unloaded: list[int], debug: set[int], shstrndx: int
) -> set[int]:
    """The full symbol table's sections (``.symtab``, its string table, its index extension)
    when nothing that stays refers to them; else none (the file keeps its symbol table)."""
    tables = {i for i in unloaded if sections[i][1] == _SHT_SYMTAB}
    if len(tables) != 1:
        return set()
    (symtab,) = tables
    group = {symtab}
    strings = sections[symtab][6]  # sh_link: the symbol names
    if strings in unloaded and strings != shstrndx:
        group.add(strings)
    group |= {
        i for i in unloaded if sections[i][1] == _SHT_SYMTAB_SHNDX and sections[i][6] == symtab
    }
    for i, s in enumerate(sections):  # e.g. relocations kept for a tool: they name symbols
        if i not in group and i not in debug and s[6] in group:
            return set()
    return group


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
                gained = strip_unneeded(path)
                if gained:
                    changed, saved = changed + 1, saved + gained
    return changed, saved


def link_duplicates(root: Path, smallest: int = 64 * 1024) -> tuple[int, int]:
    """Make identical files under ``root`` (at least ``smallest`` bytes, the same permissions
    and owner) hard links of the first of them. Returns (files linked, bytes saved). A layer's
    tar keeps hard links, and a container sees one file's worth of disk."""
    groups: dict[tuple[int, int, int, int], list[Path]] = {}
    for dirpath, _, filenames in os.walk(root):
        for filename in filenames:
            path = Path(dirpath, filename)
            st = os.lstat(path)
            if stat.S_ISREG(st.st_mode) and st.st_size >= smallest:
                key = (st.st_size, st.st_mode, st.st_uid, st.st_gid)
                groups.setdefault(key, []).append(path)
    linked = saved = 0
    for (size, *_), paths in groups.items():
        if len(paths) < 2:
            continue
        first: dict[bytes, Path] = {}
        for path in sorted(paths):
            h = hashlib.sha256()
            with open(path, "rb") as f:  # not hashlib.file_digest: the image's Python may be 3.10
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
            digest = h.digest()
            original = first.setdefault(digest, path)
            if original is path or os.path.samefile(original, path):
                continue
            tmp = path.with_name(f".{path.name}.omi-link")
            try:
                os.link(original, tmp)
                os.replace(tmp, path)
            finally:
                if tmp.exists():
                    tmp.unlink()
            linked, saved = linked + 1, saved + size
    return linked, saved


def _packaging() -> Any:
    """packaging's requirements module and canonicalize_name: the venv's own, or the copy pip
    vendors (pip stays in the venv until removable_tools has decided). Imported here, not at
    the top: the image's final venv has neither, and strip_unneeded still runs there."""
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
    linked, shared = link_duplicates(venv)
    removed = ", ".join(tools) or "nothing"
    print(
        f"omibuild slim: removed {removed}; stripped debug sections, symbol tables, Cython "
        f"sources and packaged test suites ({files} entries, {saved / 1e6:.1f} MB); linked "
        f"{linked} identical files ({shared / 1e6:.1f} MB)"
    )


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
