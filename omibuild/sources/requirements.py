"""What a model directory says about itself: its Python requirements and its flavor."""

from __future__ import annotations

from pathlib import Path

import yaml

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


def model_metadata(model_dir: Path) -> tuple[tuple[str, ...], str | None, dict[str, str]]:
    """(requirements, flavor hint, metadata) from MLmodel / requirements.txt / config.json."""
    meta: dict[str, str] = {}
    requirements: tuple[str, ...] = ()
    flavor: str | None = None
    req = model_dir / "requirements.txt"
    if req.is_file():
        requirements = read_requirements(req)
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
