"""omibuild init [MODEL] — write a commented omi.yaml for a model file or directory: where the
model files are, its flavor, and the requirements that load it, each saying where it came from."""

from __future__ import annotations

import argparse
import os
import re
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from packaging.version import InvalidVersion, Version

from omibuild.errors import EXIT_OK, UsageError
from omibuild.sources.local import walk
from omibuild.sources.requirements import read_requirements

SCHEMA_URL = "https://omibuild.dev/schema/omi.schema.json"
_SKLEARN = (".joblib", ".pkl", ".pickle", ".skops")
_WEIGHTS = (".safetensors", ".bin", ".h5", ".msgpack")
MAX_FILES_SEEN = 20_000  # init looks, it does not hash: a bounded walk is enough to decide

# The PyPI distributions a flavor needs to unpickle or run its model, beside the runtime's own.
FLAVOR_PACKAGES = {
    "sklearn": ("scikit-learn", "numpy"),
    "onnx": ("onnxruntime", "numpy"),
    "transformers": ("transformers", "torch"),
    "pyfunc": (),
    "custom": (),
}


@dataclass(frozen=True)
class Found:
    path: str  # the source path, relative to the manifest's directory
    include: tuple[str, ...]  # file names, when the model files share a directory with others
    flavor: str
    reason: str
    model_dir: Path  # where the model's own metadata (MLmodel, requirements.txt) is


def _flavor_of(names: list[str]) -> tuple[str, str] | None:
    if any(n.endswith(".onnx") for n in names):
        return "onnx", "found an .onnx file"
    if any(n.endswith(_SKLEARN) for n in names):
        return "sklearn", "found a pickle/joblib/skops file"
    return None


def find_model(target: Path, root: Path) -> Found:
    """Where the model is in ``target`` (a file or a directory below ``root``)."""
    rel = Path(os.path.relpath(target.resolve(), root.resolve())).as_posix()
    if target.is_file():
        kind = _flavor_of([target.name]) or ("custom", "no known model file; write a predictor")
        return Found(rel, (), *kind, target.parent)
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
    models = [f for f in files if _flavor_of([f])]
    if not models:
        return Found(rel, (), "custom", "no known model file found; write a predictor", target)
    flavor, reason = _flavor_of(models) or ("custom", "")
    models = [f for f in models if _flavor_of([f]) == (flavor, reason)]
    common = Path(os.path.commonpath(models)) if len(models) > 1 else Path(models[0]).parent
    if common != Path("."):
        return Found(_join(rel, common), (), flavor, reason, target / common)
    # The model files sit beside other files (train.py, a README): name just them.
    if len(models) == 1:
        return Found(_join(rel, Path(models[0])), (), flavor, reason, target)
    return Found(rel, tuple(models), flavor, reason, target)


def _depth(path: str) -> int:
    return len(Path(path).parts)


def _join(base: str, sub: Path) -> str:
    joined = (Path(base) / sub).as_posix()
    return os.path.normpath(joined) if joined != "." else "."


def requirement_lines(found: Found) -> tuple[list[str], list[str]]:
    """(YAML list items with comments, comment lines about automatic requirements)."""
    own = found.model_dir / "requirements.txt"
    if found.flavor == "pyfunc" and own.is_file():
        shown = os.path.relpath(own, Path.cwd()) if own.is_absolute() else own.as_posix()
        notes = [f"the model's own {shown}, installed as it is:"]
        notes += [f"  {line}" for line in read_requirements(own)]
        return [], notes
    packages = list(FLAVOR_PACKAGES[found.flavor])
    if found.flavor == "sklearn" and any(f.endswith(".skops") for f in _names(found)):
        packages.append("skops")
    items = []
    for dist in packages:
        try:  # a local label (torch's +cpu) names a build, not a release PyPI serves
            version = Version(metadata.version(dist)).public
            items.append((f"{dist}=={version}", "the version installed where init ran"))
        except (metadata.PackageNotFoundError, InvalidVersion):
            items.append((dist, "not installed here: pin the version that saved the model"))
    width = max((len(req) for req, _ in items), default=0)
    return [f"- {req.ljust(width)}  # {why}" for req, why in items], []


def _names(found: Found) -> list[str]:
    return [*found.include, found.path, *(p.name for p in found.model_dir.glob("*"))]


def manifest_name(directory: Path) -> str:
    name = re.sub(r"[^a-z0-9._-]+", "-", directory.resolve().name.lower()).strip("-._")
    return name or "model"


def render_manifest(name: str, found: Found) -> str:
    items, notes = requirement_lines(found)
    include = (
        "\n      include: [" + ", ".join(found.include) + "]    # the model files; not the rest"
        if found.include
        else ""
    )
    predictor = (
        "\n  predictor: predictor:Model    # module:Class with load() and predict()"
        if found.flavor == "custom"
        else ""
    )
    image = [
        "# repository: registry.example.com/models/" + name,
        "# base: python:3.11-slim     # the default (or the one omibuild's config names)",
        *(f"# {line}" for line in notes),
    ]
    if items:
        image += ["requirements:   # what loads the model (the runtime's own come too)"]
        image += [f"  {line}" for line in items]
    else:
        image += ["# requirements: [package==1.2.3]   # what loads the model"]
    image += ["# slim: false   # keep debug sections, Cython sources, packaged tests and pip"]
    # With nothing but comments under it, `image:` would be null: comment it out too.
    image_block = ("image:\n" if items else "# image:\n") + "".join(f"  {ln}\n" for ln in image)
    return f"""\
# yaml-language-server: $schema={SCHEMA_URL}
# omibuild manifest: `omibuild validate`, `omibuild plan`, then `omibuild apply`.
apiVersion: omibuild/v1
name: {name}
version: 0.1.0

model:
  source:
    local:
      path: {found.path}{include}
    # mlflow: {{uri: "models:/{name}@champion"}}        # MLFLOW_TRACKING_URI or tracking_uri
    # huggingface: {{repo: org/{name}, revision: main}}
  flavor: {found.flavor}    # {found.reason}{predictor}
  # example: {{instances: [[1.0, 2.0]]}}   # used by `omibuild check` and smoke tests

# processing:                  # optional hooks, module:function in code.path
#   preprocess: hooks:preprocess
#   postprocess: hooks:postprocess

runtimes:
  default: kfserving           # INTERFACE at run time picks any declared one
  # interfaces: {{kfserving: {{protocols: [v1, v2], port: 8080}}, modzy: {{protocols: [v2]}}}}

{image_block}
origin:
  tag: id                      # tag the image with the upstream model id
  tags: [latest]
"""


def run(args: argparse.Namespace) -> int:
    target = Path(args.model)
    if not target.exists():
        raise UsageError(
            f"{target}: no such file or directory", hint="name the model file or its directory"
        )
    out = Path(args.output)
    root = (out.parent if args.output != "-" else Path.cwd()).resolve()
    if not target.resolve().is_relative_to(root):
        raise UsageError(
            f"{target}: outside {root}, where omi.yaml goes; a manifest's paths stay inside "
            "its directory",
            hint="run init in a directory that holds the model, or pass -o DIR/omi.yaml",
        )
    found = find_model(target, root)
    text = render_manifest(args.name or manifest_name(root), found)
    if args.output == "-":
        sys.stdout.write(text)
        return EXIT_OK
    if out.exists() and not args.force:
        raise UsageError(f"{out}: already exists", hint="pass --force to overwrite")
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(text, "utf-8")
    tmp.replace(out)
    print(f"wrote {out} for the model at {found.path} (flavor {found.flavor}: {found.reason})")
    return EXIT_OK
