"""omibuild init [MODEL] — write a commented omi.yaml for a model file or directory: where the
model files are, its flavor, the requirements that load it (each saying where its version came
from), the repository's own modules it imports, and an example input the build predicts."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

from omibuild.detect.environment import Environment, find_environment
from omibuild.detect.examples import (
    Example,
    mlflow_example,
    shaped_example,
    tabular_example,
    text_example,
)
from omibuild.detect.model import Found, find_model
from omibuild.detect.needs import Needs, format_needs, pickle_needs
from omibuild.detect.pickles import PickleScanError, input_width, scan_pickle, scan_skops
from omibuild.errors import EXIT_OK, UsageError
from omibuild.manifest.requirements import read_requirements
from omibuild.runtime.modelfiles import transformers_task

SCHEMA_URL = "https://omibuild.dev/schema/omi.schema.json"
PREDICTOR_FILE = "predictor.py"

# The PyPI distributions a flavor needs to load or run its model, beside the runtime's own.
FLAVOR_PACKAGES = {
    "sklearn": ("scikit-learn", "numpy"),
    "onnx": ("onnxruntime", "numpy"),
    "transformers": ("transformers", "torch"),
    "pyfunc": (),
    "custom": (),
}
# torch's PyPI wheels for Linux are its CUDA build; its CPU builds are on PyTorch's own index
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def _shown(path: Path) -> str:
    return os.path.relpath(path, Path.cwd()) if path.is_absolute() else path.as_posix()


def _flavor_pins(found: Found, env: Environment, needs: Needs) -> None:
    packages = list(FLAVOR_PACKAGES.get(found.flavor, ()))
    if found.flavor == "sklearn" and found.model_file and found.model_file.suffix == ".skops":
        packages.append("skops")
    for dist in packages:
        version = env.version(dist)
        needs.pin(
            env.name(dist),
            f"the version in {env.where}"
            if version
            else f"not installed in {env.where}: pin the version that saved the model",
            version,
        )


def _pickled(found: Found, root: Path, env: Environment, needs: Needs) -> Example | None:
    """What the pickle (joblib, skops) init found imports and records."""
    assert found.model_file is not None
    name = found.model_file.name
    try:
        scan = (scan_skops if found.model_file.suffix == ".skops" else scan_pickle)(
            found.model_file
        )
    except PickleScanError as exc:
        needs.notes.append(f"could not read {name}'s imports: {exc}")
        return None
    if not scan.complete:
        needs.notes.append(f"read {name} only in part: add what else it imports")
    pickle_needs(scan, name, root, env, needs)
    width, names = input_width(scan.root)
    if names and env.version("pandas"):  # named columns: the runtime makes a DataFrame
        needs.pin(env.name("pandas"), f"{name} was fit on named columns; the version in "
                  f"{env.where}", env.version("pandas"))  # fmt: skip
    return tabular_example(width, names, root, name)


def suggest(found: Found, root: Path, env: Environment) -> tuple[Needs, Example | None]:
    """What omi.yaml should say beyond where the model is: requirements, code, an example."""
    needs = Needs()
    example: Example | None = None
    own = found.model_dir / "requirements.txt"
    if found.flavor == "pyfunc":
        if own.is_file():
            needs.notes.append(f"the model's own {_shown(own)}, installed as it is:")
            needs.notes += [f"  {line}" for line in read_requirements(own)]
        example = mlflow_example(found.model_dir)
    elif found.flavor == "sklearn" and found.model_file is not None:
        example = _pickled(found, root, env, needs)
    elif found.format is not None and found.model_file is not None:
        format_needs(found.format, found.model_file.name, env, needs)
        example = shaped_example(found.format, found.model_file.name)
    elif found.flavor == "transformers":
        needs.task = transformers_task(found.model_dir)
        example = text_example(needs.task)
    _flavor_pins(found, env, needs)
    return needs, example


def manifest_name(directory: Path) -> str:
    name = re.sub(r"[^a-z0-9._-]+", "-", directory.resolve().name.lower()).strip("-._")
    return name or "model"


def _flow(value: object) -> str:
    """A value as a YAML flow (JSON is YAML): one line, whatever the keys hold."""
    return json.dumps(value, ensure_ascii=False)


def _image_block(name: str, needs: Needs) -> str:
    lines = [f"# repository: registry.example.com/models/{name}"]
    lines.append("# base: python:3.11-slim     # the default (or the one omibuild's config names)")
    if needs.pins:
        width = max(len(p.requirement) for p in needs.pins)
        lines.append("requirements:   # what loads the model (the runtime's own come too)")
        lines += [f"  - {p.requirement.ljust(width)}  # {p.why}" for p in needs.pins]
        lines += [f"  # {line}" for line in needs.unpinned]
    else:
        lines += [f"# {line}" for line in needs.notes if line.startswith(("the model's own", "  "))]
        lines += [f"# {line}" for line in needs.unpinned]
        lines.append("requirements: []   # add package==version lines here")
    if needs.system_packages:
        packages = ", ".join(needs.system_packages)
        lines.append(
            f"system_packages: [{packages}]   # {'; '.join(needs.system_packages.values())}"
        )
    else:
        lines.append("# system_packages: [libgomp1]   # Debian packages the model's libraries load")
    if needs.env:
        lines.append("env:   # the image's environment")
        lines += [f"  {k}: {_flow(v)}" for k, v in needs.env.items()]
    if any(p.requirement.split("==")[0] == "torch" for p in needs.pins):
        lines.append(
            f"# extra_index_urls: [{TORCH_CPU_INDEX}]   # torch's CPU build (PyPI's is CUDA's)"
        )
    lines.append("# slim: false   # keep debug sections, Cython sources, packaged tests and pip")
    return "image:\n" + "".join(f"  {ln}\n" for ln in lines)


def _code_block(found: Found, needs: Needs) -> str:
    if found.flavor == "custom":
        return (
            f"code:                          # {PREDICTOR_FILE}, and what it imports\n"
            "  path: .\n"
            f"  include: [{PREDICTOR_FILE}]\n\n"
        )
    if needs.code_path is None:
        return ""
    assert found.model_file is not None
    return (
        f"code:                          # the repository's own modules "
        f"{found.model_file.name} imports\n"
        f"  path: {needs.code_path}\n"
        f"  include: [{', '.join(needs.code_include)}]\n\n"
    )


def render_manifest(name: str, found: Found, needs: Needs, example: Example | None) -> str:
    include = (
        "\n      include: [" + ", ".join(found.include) + "]    # the model files; not the rest"
        if found.include
        else ""
    )
    predictor = (
        f"\n  predictor: predictor:Predictor    # module:Class, in {PREDICTOR_FILE}"
        if found.flavor == "custom"
        else ""
    )
    if found.file:
        predictor += f"\n  file: {found.file}    # the model file, among others in {found.path}"
    if needs.task:
        predictor += f"\n  task: {needs.task}    # the pipeline's, from config.json's architecture"
    if example is not None:
        example_line = (
            f"  example: {_flow({'instances': example.instances})}\n"
            f"  # ^ {example.why}: apply predicts it once, so a model that cannot load fails "
            "the build\n"
        )
    else:
        example_line = (
            "  # example: {instances: [[1.0, 2.0]]}   # one valid input: apply predicts it once\n"
        )
    notes = "".join(
        f"# {line}\n" for line in needs.notes if not line.startswith(("the model's own", "  "))
    )
    return f"""\
# yaml-language-server: $schema={SCHEMA_URL}
# omibuild manifest: `omibuild validate`, `omibuild plan`, then `omibuild apply`.
{notes}apiVersion: omibuild/v1
name: {name}
version: 0.1.0

model:
  source:            # one of local, mlflow or huggingface
    local:
      path: {found.path}{include}
  flavor: {found.flavor}    # {found.reason}{predictor}
{example_line}
{_code_block(found, needs)}runtimes:
  default: kfserving           # INTERFACE at run time picks any declared one
  # interfaces: {{kfserving: {{protocols: [v1, v2], port: 8080}}, modzy: {{protocols: [v2]}}}}

{_image_block(name, needs)}
origin:
  tag: id                      # tag the image with the upstream model id
  tags: [latest]

# More (hooks, explain, drift, defense, other sources): `omibuild schema`, or the README.
"""


PREDICTOR_SKELETON = '''\
"""The predictor omibuild serves: omi.yaml names it (model.predictor: predictor:Predictor).

In the image, omibuild imports this module (code.path is on the import path), makes one
Predictor(), calls load() once with the folder that holds model.source.local.path's files,
then predict() for every request. See the README's "A custom predictor" section."""

from pathlib import Path


class Predictor:
    # True: predict() gets a batch (a list of rows, as one numpy array where they are numbers)
    # and returns one answer per row, so requests may be merged. False: each request's
    # instances arrive exactly as the client sent them.
    vectorised = True

    def load(self, model_dir: Path) -> None:
        """Load the model once, from the files in model_dir (read-only)."""
        raise NotImplementedError(f"load the model from {model_dir}")

    def predict(self, inputs):
        """Return one prediction per row of inputs (a list, or a numpy array)."""
        raise NotImplementedError("predict")
'''


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
    needs, example = suggest(found, root, find_environment(root))
    text = render_manifest(args.name or manifest_name(root), found, needs, example)
    if args.output == "-":
        sys.stdout.write(text)
        return EXIT_OK
    if out.exists() and not args.force:
        raise UsageError(f"{out}: already exists", hint="pass --force to overwrite")
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(text, "utf-8")
    tmp.replace(out)
    print(f"wrote {out} for the model at {found.path} (flavor {found.flavor}: {found.reason})")
    skeleton = root / PREDICTOR_FILE
    if found.flavor == "custom" and not skeleton.exists():
        skeleton.write_text(PREDICTOR_SKELETON, "utf-8")
        print(f"wrote {_shown(skeleton)}: fill in load() and predict()")
    for line in needs.notes:
        if not line.startswith(("the model's own", "  ")):
            print(f"note: {line}", file=sys.stderr)
    return EXIT_OK
