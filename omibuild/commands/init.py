"""omibuild init [MODEL_DIR] — write a commented omi.yaml, detecting the flavor."""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

from omibuild.errors import EXIT_OK, UsageError

SCHEMA_URL = "https://omibuild.dev/schema/omi.schema.json"
_SKLEARN = (".joblib", ".pkl", ".pickle", ".skops")


def detect_flavor(model_dir: Path) -> tuple[str, str]:
    """(flavor, reason) from the files in a model directory."""
    if (model_dir / "MLmodel").is_file():
        return "pyfunc", "found MLmodel (an MLflow model)"
    if (model_dir / "config.json").is_file():
        return "transformers", "found config.json (a transformers model)"
    files = (
        sorted(p.name for p in model_dir.rglob("*") if p.is_file()) if model_dir.is_dir() else []
    )
    if any(f.endswith(".onnx") for f in files):
        return "onnx", "found an .onnx file"
    if any(f.endswith(_SKLEARN) for f in files):
        return "sklearn", "found a pickle/joblib/skops file"
    return "custom", "no known model file found; write a predictor class"


def render_manifest(name: str, model_path: str, flavor: str, reason: str) -> str:
    predictor = (
        "\n  predictor: predictor:Model    # module:Class with load() and predict()"
        if flavor == "custom"
        else ""
    )
    return f"""\
# yaml-language-server: $schema={SCHEMA_URL}
# omibuild manifest: `omibuild validate`, `omibuild plan`, then `omibuild apply`.
apiVersion: omibuild/v1
name: {name}
version: 0.1.0

model:
  source:
    local:
      path: {model_path}
    # mlflow: {{uri: "models:/{name}@champion"}}        # MLFLOW_TRACKING_URI or tracking_uri
    # huggingface: {{repo: org/{name}, revision: main}}
  flavor: {flavor}    # {reason}{predictor}
  # example: {{instances: [[1.0, 2.0]]}}   # used by `omibuild check` and smoke tests

# processing:                  # optional hooks, module:function in code.path
#   preprocess: hooks:preprocess
#   postprocess: hooks:postprocess

runtimes:
  default: kfserving           # INTERFACE at run time picks any declared one
  # interfaces: {{kfserving: {{protocols: [v1, v2], port: 8080}}, modzy: {{protocols: [v2]}}}}

image:
  # repository: registry.example.com/models/{name}
  base: omibuild.local/python:3.11-slim
  # requirements: requirements.txt
  # slim: false                # keep debug sections, Cython sources, packaged tests and pip

origin:
  tag: id                      # tag the image with the upstream model id
  tags: [latest]
"""


def run(args: argparse.Namespace) -> int:
    model_dir = Path(args.model_dir)
    if not model_dir.is_dir():
        raise UsageError(f"{model_dir}: not a directory")
    out = Path(args.output)
    base = out.parent if args.output != "-" else Path.cwd()
    name = args.name or re.sub(r"[^a-z0-9._-]+", "-", model_dir.resolve().name.lower()).strip("-._")
    flavor, reason = detect_flavor(model_dir)
    rel = os.path.relpath(model_dir.resolve(), base.resolve())
    text = render_manifest(name or "model", rel, flavor, reason)
    if args.output == "-":
        sys.stdout.write(text)
        return EXIT_OK
    if out.exists() and not args.force:
        raise UsageError(f"{out}: already exists", hint="pass --force to overwrite")
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(text, "utf-8")
    tmp.replace(out)
    print(f"wrote {out} (flavor {flavor}: {reason})")
    return EXIT_OK
