"""The Python environment a model was made in: which distributions it holds, at which
versions, and which import names each provides. Read from the environment's own
``*.dist-info`` folders (nothing in it is imported or run)."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version


@dataclass
class Environment:
    """One Python environment's installed distributions."""

    where: str  # how a comment names it: "the project's venv .venv", ...
    prefix: Path | None
    versions: dict[str, tuple[str, str]] = field(default_factory=dict)  # canonical → (name, ver)
    providers: dict[str, str] = field(default_factory=dict)  # top-level import name → canonical

    def version(self, distribution: str) -> str | None:
        found = self.versions.get(canonicalize_name(distribution))
        return found[1] if found else None

    def name(self, distribution: str) -> str:
        found = self.versions.get(canonicalize_name(distribution))
        return found[0] if found else distribution

    def provider(self, module: str) -> str | None:
        """The distribution that installs the top-level module ``module``, if any here."""
        return self.providers.get(module.split(".")[0])


def _public(version: str) -> str:
    """A release PyPI serves: a local label (torch's ``+cpu``) names a build, not a release."""
    try:
        return Version(version).public
    except InvalidVersion:
        return version


def _top_levels(dist: metadata.Distribution) -> set[str]:
    text = dist.read_text("top_level.txt")
    if text:
        return {line.strip() for line in text.splitlines() if line.strip()}
    names = set()
    for entry in dist.files or ():
        parts = entry.parts
        if not parts or parts[0].startswith("..") or parts[0].endswith((".dist-info", ".data")):
            continue
        first = parts[0]
        if len(parts) == 1:
            if first.endswith(".py"):
                names.add(first[:-3])
            elif first.endswith((".so", ".pyd")):
                names.add(first.split(".")[0])
        elif first != "__pycache__":
            names.add(first)
    return names


def read_environment(where: str, site_packages: list[Path], prefix: Path | None) -> Environment:
    env = Environment(where, prefix)
    # each dist-info read directly: discovery through sys.meta_path would also ask whatever
    # finders the libraries omibuild has imported installed
    found = [
        metadata.PathDistribution(info)
        for site in site_packages
        if site.is_dir()
        for info in sorted(site.glob("*.dist-info"))
    ]
    for dist in found:
        name = dist.metadata["Name"] if dist.metadata else None
        if not name or not dist.version:
            continue
        key = canonicalize_name(name)
        if key in env.versions:  # the first on the path wins, as at import time
            continue
        env.versions[key] = (name, _public(dist.version))
        for module in _top_levels(dist):
            env.providers.setdefault(module, key)
    return env


def _site_packages(prefix: Path) -> list[Path]:
    found = sorted(prefix.glob("lib/python3*/site-packages")) + sorted(
        prefix.glob("lib64/python3*/site-packages")
    )
    return found or [prefix / "Lib" / "site-packages"]


def _is_env(path: Path) -> bool:
    return (path / "pyvenv.cfg").is_file() or (path / "conda-meta").is_dir()


def find_environment(root: Path, env: Mapping[str, str] | None = None) -> Environment:
    """Where the model was most likely made: the active virtual environment (``VIRTUAL_ENV``,
    or a conda one), else a venv inside the repository (``.venv``, ``venv``, ``env``), else the
    environment omibuild itself runs in."""
    env = os.environ if env is None else env
    candidates: list[tuple[str, Path]] = []
    for var, what in (("VIRTUAL_ENV", "the active virtual environment"),
                      ("CONDA_PREFIX", "the active conda environment")):  # fmt: skip
        if env.get(var):
            candidates.append((f"{what} ({env[var]})", Path(env[var])))
    for name in (".venv", "venv", "env"):
        candidates.append((f"the repository's {name}", root / name))
    for where, prefix in candidates:
        if prefix.is_dir() and _is_env(prefix):
            return read_environment(where, _site_packages(prefix), prefix)
    paths = [Path(p) for p in sys.path if p and Path(p).name in ("site-packages", "dist-packages")]
    return read_environment("the environment omibuild runs in", paths, Path(sys.prefix))


# what pickles name from the standard library (protocol 0-2 spell a few by their Python 2 names)
STDLIB = frozenset(sys.stdlib_module_names) | {"__builtin__", "copy_reg"}
