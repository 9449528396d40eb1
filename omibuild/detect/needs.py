"""What a model needs to load, named from the model: the distributions its file imports (at
the versions the file records, else the project's environment's), the repository's own
modules it imports (they ship as code), and what init cannot settle, as notes."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from omibuild.detect.environment import STDLIB, Environment
from omibuild.detect.formats import Format
from omibuild.detect.pickles import Scan
from omibuild.manifest.requirements import cpu_build

# import names whose distribution is spelled otherwise, for when no environment at hand has the
# module (then the name is a guess, and init says so): the runtime's own table, so that init and
# a missing module's hint in the image name the same distribution
from omibuild.runtime.faults import KNOWN_DISTRIBUTIONS
from omibuild.sources.local import ignored

MAX_DIRS_SEEN = 5_000  # a bounded look for the repository's own modules
# Debian packages a distribution's wheel loads at run time without shipping them.
SYSTEM_PACKAGES = {
    "lightgbm": ("libgomp1", "lightgbm's wheel loads libgomp.so.1 (OpenMP) at run time"),
}


@dataclass(frozen=True)
class Pin:
    requirement: str
    why: str


@dataclass
class Needs:
    pins: list[Pin] = field(default_factory=list)
    unpinned: list[str] = field(default_factory=list)  # comment lines: imports init cannot name
    code_path: str | None = None
    code_include: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    system_packages: dict[str, str] = field(default_factory=dict)  # package → why
    env: dict[str, str] = field(default_factory=dict)  # image.env
    task: str | None = None  # a transformers pipeline's task

    def pin(self, distribution: str, why: str, version: str | None = None) -> None:
        installs = cpu_build(distribution, version)
        if installs != distribution:
            why += f"; {installs} is {distribution}'s CPU build, without CUDA"
        if any(_dist(p.requirement) in (distribution.lower(), installs) for p in self.pins):
            return
        self.pins.append(Pin(f"{installs}=={version}" if version else installs, why))
        if distribution.lower() in SYSTEM_PACKAGES:
            package, reason = SYSTEM_PACKAGES[distribution.lower()]
            self.system_packages.setdefault(package, reason)


def _dist(requirement: str) -> str:
    return requirement.split("==")[0].lower()


def repository_module(root: Path, module: str) -> tuple[str, str] | None:
    """(import root relative to ``root``, what to include) where the repository holds the
    top-level module ``module``, as a file or a package; the shallowest such place."""
    for seen, (dirpath, dirnames, filenames) in enumerate(os.walk(root)):
        if seen > MAX_DIRS_SEEN:
            return None
        current = Path(dirpath)
        rel = current.relative_to(root).as_posix()
        dirnames[:] = sorted(
            d
            for d in dirnames
            if not d.startswith(".")
            and not ignored((current / d).relative_to(root).as_posix(), ())
            and not (current / d / "pyvenv.cfg").is_file()
        )
        if f"{module}.py" in filenames:
            return rel, f"{module}.py"
        if module in dirnames and any(
            p.suffix == ".py" for p in (current / module).iterdir() if p.is_file()
        ):
            return rel, module
    return None


def pickle_needs(scan: Scan, file_name: str, root: Path, env: Environment, needs: Needs) -> None:
    """Fill ``needs`` with what the pickle ``scan`` imports."""
    tops = sorted({m.split(".")[0] for m in scan.modules} - STDLIB - {"<persistent>"})
    if "__main__" in tops:
        names = sorted(g.name for g in scan.globals if g.module == "__main__")
        needs.notes.append(
            f"{file_name} pickles {', '.join(names[:3])} from __main__, the script that trained "
            "it: no image can import that. Move it into a module of its own, import it from "
            "there, and train again."
        )
    local: dict[str, list[str]] = {}
    for top in tops:
        if top == "__main__":
            continue
        found = repository_module(root, top)
        if found is not None:
            local.setdefault(found[0], []).append(found[1])
            continue
        provider = env.provider(top)
        if provider is not None:
            name = env.name(provider)
            version = (
                sorted(scan.sklearn_versions)[-1]
                if name.lower() == "scikit-learn" and scan.sklearn_versions
                else env.version(provider)
            )
            why = (
                f"recorded in {file_name}"
                if version and version in scan.sklearn_versions and name.lower() == "scikit-learn"
                else f"{file_name} imports {top}; the version in {env.where}"
            )
            needs.pin(name, why, version)
        elif top in KNOWN_DISTRIBUTIONS:
            dist = KNOWN_DISTRIBUTIONS[top]
            version = (
                sorted(scan.sklearn_versions)[-1]
                if top == "sklearn" and scan.sklearn_versions
                else None
            )
            needs.pin(
                dist,
                f"recorded in {file_name}"
                if version
                else f"{file_name} imports {top}; not installed in {env.where}: pin the version "
                "that saved the model",
                version,
            )
        else:
            needs.unpinned.append(
                f"{file_name} imports {top!r}, which is neither a file in this repository nor "
                f"installed in {env.where}: add the distribution that provides it"
            )
    if local:
        path = max(local, key=lambda k: len(local[k]))
        needs.code_path = path
        needs.code_include = sorted(local[path])
        for other, modules in local.items():
            if other != path:
                needs.notes.append(
                    f"{file_name} also imports {', '.join(modules)} from {other}/: code.path "
                    "takes one directory; move them beside the others"
                )


# What a Keras 3 model runs on: the backend's distribution, as a CPU image installs it.
KERAS_BACKENDS = (("tensorflow", "tensorflow-cpu"), ("torch", "torch"), ("jax", "jax"))


def format_needs(fmt: Format, file_name: str, env: Environment, needs: Needs) -> None:
    """Fill ``needs`` with what a framework's own model file needs: the framework at the
    version the file records (else the training environment's), its CPU build where the index
    has one, Keras' backend, and the system packages the framework loads."""
    assert fmt.distribution is not None
    dist = fmt.distribution
    version, why = fmt.version, fmt.version_source
    if version is None and env.version(dist):
        version, why = env.version(dist), f"the version in {env.where}"
    elif version is None:
        why = f"not installed in {env.where}: pin the version that saved the model"
    needs.pin(dist, why, version)
    if fmt.flavor == "keras":
        backend = next(((m, d) for m, d in KERAS_BACKENDS if env.version(m)), None)
        if backend is None:
            needs.notes.append(
                f"{file_name} needs a Keras backend, and {env.where} has none: add "
                "tensorflow-cpu, torch or jax to image.requirements and KERAS_BACKEND to image.env"
            )
        else:
            module, backend_dist = backend
            needs.env["KERAS_BACKEND"] = module
            needs.pin(backend_dist, f"Keras' backend; the version in {env.where}",
                      env.version(module))  # fmt: skip
    if env.version("numpy"):
        needs.pin("numpy", f"the version in {env.where}", env.version("numpy"))
