"""What a model directory says about itself: its Python requirements and its flavor."""

from __future__ import annotations

from pathlib import Path

import yaml
from packaging.requirements import InvalidRequirement, Requirement
from packaging.version import Version

_MLFLOW_FLAVORS = {
    "sklearn": "sklearn",
    "onnx": "onnx",
    "transformers": "transformers",
    "python_function": "pyfunc",
}


def read_requirements(path: Path) -> tuple[str, ...]:
    lines = []
    for line in path.read_text("utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            lines.append(line)
    return tuple(lines)


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


def model_metadata(model_dir: Path) -> tuple[tuple[str, ...], str | None, dict[str, str]]:
    """(requirements, flavor hint, metadata) from MLmodel / requirements.txt / config.json."""
    meta: dict[str, str] = {}
    requirements: tuple[str, ...] = ()
    flavor: str | None = None
    req = model_dir / "requirements.txt"
    if req.is_file():
        requirements = tuple(without_local_label(line) for line in read_requirements(req))
    mlmodel = model_dir / "MLmodel"
    if mlmodel.is_file():
        try:
            spec = yaml.safe_load(mlmodel.read_text("utf-8")) or {}
        except yaml.YAMLError:
            spec = {}
        flavors = spec.get("flavors", {}) if isinstance(spec, dict) else {}
        flavor = "pyfunc" if "python_function" in flavors else None
        for name in flavors:
            if name in _MLFLOW_FLAVORS and name != "python_function":
                meta["mlflow_flavor"] = name
        if spec.get("mlflow_version"):
            meta["mlflow_version"] = str(spec["mlflow_version"])
    elif (model_dir / "config.json").is_file():
        flavor = "transformers"
    return requirements, flavor, meta
