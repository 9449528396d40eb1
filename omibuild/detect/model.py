"""Where a model is in a repository, and which flavor serves it: what `omibuild init` decides
from the files alone (names and headers; nothing is imported or unpickled)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from omibuild.detect.formats import SUFFIXES, Format, recognise
from omibuild.sources.local import walk

MAX_FILES_SEEN = 20_000  # init looks, it does not hash: a bounded walk is enough to decide
SKLEARN_SUFFIXES = (".joblib", ".pkl", ".pickle", ".skops")
_WEIGHTS = (".safetensors", ".bin", ".h5", ".msgpack")
# Where people keep a model, when no file says which format it is (a custom predictor's).
MODEL_DIRS = ("model", "models", "artifacts", "weights", "checkpoints", "saved_model", "output")
MODEL_SUFFIXES = (
    ".pt", ".pth", ".ckpt", ".bin", ".h5", ".hdf5", ".pb", ".npz", ".npy", ".safetensors",
    ".model", ".params", ".tflite", ".gguf", ".msgpack", ".pkl", ".joblib",
)  # fmt: skip


@dataclass(frozen=True)
class Found:
    path: str  # the source path, relative to the manifest's directory
    include: tuple[str, ...]  # file names, when the model files share a directory with others
    flavor: str
    reason: str
    model_dir: Path  # where the model's own metadata (MLmodel, requirements.txt) is
    model_file: Path | None = None  # the one file the flavor loads, where there is one
    format: Format | None = None  # what a framework's own model file records
    file: str | None = None  # model.file: the model file, where the folder holds others


def _flavor_of(names: list[str]) -> tuple[str, str] | None:
    if any(n.endswith(".onnx") for n in names):
        return "onnx", "found an .onnx file"
    if any(n.endswith(SKLEARN_SUFFIXES) for n in names):
        return "sklearn", "found a pickle/joblib/skops file"
    return None


def _depth(path: str) -> int:
    return len(Path(path).parts)


def _join(base: str, sub: Path) -> str:
    joined = (Path(base) / sub).as_posix()
    return os.path.normpath(joined) if joined != "." else "."


def _custom(rel: str, target: Path, files: list[str]) -> Found:
    """No format found: the likeliest folder of model files, for a predictor to load."""
    why = "no known model file found; write a predictor (init wrote predictor.py)"
    tops = {Path(f).parts[0] for f in files if len(Path(f).parts) > 1}
    for name in MODEL_DIRS:
        if name in tops:
            return Found(_join(rel, Path(name)), (), "custom", why, target / name)
    weights = [f for f in files if f.endswith(MODEL_SUFFIXES)]
    if weights:
        common = Path(os.path.commonpath(weights)) if len(weights) > 1 else Path(weights[0]).parent
        if common != Path("."):
            return Found(_join(rel, common), (), "custom", why, target / common)
        return Found(rel, tuple(sorted(weights)), "custom", why, target)
    return Found(rel, (), "custom", why + "; point model.source.local.path at its files", target)


def _framework(rel: str, target: Path, files: list[str]) -> Found | None:
    """A framework's own model file (XGBoost, LightGBM, CatBoost, PyTorch, Keras): the
    shallowest one, its folder as the model (or the file alone, beside other files)."""
    found = [
        (f, fmt)
        for f in sorted((f for f in files if f.endswith(SUFFIXES)), key=lambda f: (_depth(f), f))
        if (fmt := recognise(target / f)) is not None
    ]
    if not found:
        return None
    name, fmt = found[0]
    where = Path(name).parent
    if where == Path("."):
        return Found(_join(rel, Path(name)), (), fmt.flavor, fmt.reason, target, target / name, fmt)
    siblings = [f for f in files if Path(f).parent == where and f.endswith(SUFFIXES)]
    file = Path(name).name if len(siblings) > 1 else None
    return Found(
        _join(rel, where), (), fmt.flavor, fmt.reason, target / where, target / name, fmt, file
    )


def find_model(target: Path, root: Path) -> Found:
    """Where the model is in ``target`` (a file or a directory below ``root``)."""
    rel = Path(os.path.relpath(target.resolve(), root.resolve())).as_posix()
    if target.is_file():
        fmt = recognise(target) if target.name.endswith(SUFFIXES) else None
        if fmt is not None:
            return Found(rel, (), fmt.flavor, fmt.reason, target.parent, target, fmt)
        kind = _flavor_of([target.name])
        if kind is None:
            return Found(rel, (), "custom", "no known model file; write a predictor", target.parent)
        return Found(rel, (), *kind, target.parent, target)
    files = [r for r, _ in walk(target, root, ())[:MAX_FILES_SEEN]]
    mlmodels = sorted((f for f in files if Path(f).name == "MLmodel"), key=_depth)
    if mlmodels:
        where = Path(mlmodels[0]).parent
        return Found(
            _join(rel, where), (), "pyfunc", "found MLmodel (an MLflow model)", target / where
        )
    # A config.json names a transformers model at the top, or below it beside its weights.
    configs = [
        Path(f).parent
        for f in files
        if f == "config.json"
        or (
            Path(f).name == "config.json"
            and any(Path(g).parent == Path(f).parent and g.endswith(_WEIGHTS) for g in files)
        )
    ]
    if configs:
        where = min(configs, key=lambda p: len(p.parts))
        return Found(
            _join(rel, where), (), "transformers", "found config.json and weights", target / where
        )
    framework = _framework(rel, target, files)
    if framework is not None:
        return framework
    models = [f for f in files if _flavor_of([f])]
    if not models:
        return _custom(rel, target, files)
    flavor, reason = _flavor_of(models) or ("custom", "")
    models = sorted(f for f in models if _flavor_of([f]) == (flavor, reason))
    first = target / models[0]
    common = Path(os.path.commonpath(models)) if len(models) > 1 else Path(models[0]).parent
    if common != Path("."):
        return Found(_join(rel, common), (), flavor, reason, target / common, first)
    # The model files sit beside other files (train.py, a README): name just them.
    if len(models) == 1:
        return Found(_join(rel, Path(models[0])), (), flavor, reason, target, first)
    return Found(rel, tuple(models), flavor, reason, target, first)
