"""Requirement lines as omibuild reads them: a requirements file's lines, and the CPU build
of a distribution whose PyPI wheel is a CUDA build (xgboost), both with `packaging`."""

from __future__ import annotations

from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.version import Version


def read_requirements(path: Path) -> tuple[str, ...]:
    lines = []
    for line in path.read_text("utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            lines.append(line)
    return tuple(lines)


# CPU builds of a framework on PyPI, and the first release each has: a CPU image installs
# them instead (xgboost's own Linux wheel brings NCCL and CUDA code, 645 MB of it).
CPU_BUILDS = {"xgboost": ("xgboost-cpu", (2, 1, 0))}


def cpu_build(distribution: str, version: str | None) -> str:
    """The distribution a CPU image installs for ``distribution`` at ``version`` (None: any)."""
    cpu = CPU_BUILDS.get(distribution.lower())
    if cpu is None:
        return distribution
    try:
        release = tuple(int(p) for p in (version or "0").split(".")[:3])
    except ValueError:
        return distribution
    return cpu[0] if version is None or release >= cpu[1] else distribution


def as_cpu_build(line: str) -> str:
    """A requirement line with the framework's CPU build where PyPI has one
    (``xgboost==3.2.0`` → ``xgboost-cpu==3.2.0``); other lines as they are."""
    try:
        req = Requirement(line)
    except InvalidRequirement:
        return line
    pins = [s.version for s in req.specifier if s.operator in ("==", "===")]
    if req.url or req.extras or len(req.specifier) > 1 or (req.specifier and not pins):
        return line
    name = cpu_build(req.name, pins[0] if pins else None)
    if name == req.name:
        return line
    marker = f"; {req.marker}" if req.marker else ""
    return f"{name}{req.specifier}{marker}"


def as_cuda_build(line: str) -> str:
    """A requirement line with the framework's own (CUDA) build where it names the CPU one
    (``xgboost-cpu==3.2.0`` → ``xgboost==3.2.0``): what a CUDA image installs."""
    try:
        req = Requirement(line)
    except InvalidRequirement:
        return line
    full = {cpu: name for name, (cpu, _) in CPU_BUILDS.items()}.get(req.name.lower())
    if full is None or req.url:
        return line
    extras = f"[{','.join(sorted(req.extras))}]" if req.extras else ""
    marker = f"; {req.marker}" if req.marker else ""
    return f"{full}{extras}{req.specifier}{marker}"


def without_local_label(line: str) -> str:
    """``torch==2.13.0+cpu`` → ``torch==2.13.0``. MLflow records the local build label of
    what was installed where the model was saved; PyPI serves no such version, so pip would
    fail on it. (A requirements file the user writes is left alone: it may name an index
    that serves local builds.)"""
    try:
        req = Requirement(line)
    except InvalidRequirement:
        return line
    specs = [
        f"{s.operator}{Version(s.version).public}"
        if s.operator == "==" and "+" in s.version and "*" not in s.version
        else str(s)
        for s in req.specifier
    ]
    if specs == [str(s) for s in req.specifier]:
        return line
    extras = f"[{','.join(sorted(req.extras))}]" if req.extras else ""
    marker = f"; {req.marker}" if req.marker else ""
    return f"{req.name}{extras}{','.join(sorted(specs))}{marker}"
