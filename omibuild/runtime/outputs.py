"""What the model answers: each output's name, V2 datatype and shape, learnt from a dry
prediction on omi.yaml's example input.

The build makes that prediction once (`python -m omibuild.runtime describe`, a step of the
image build) and bakes the result into the image as outputs.json, beside omi.json, after
checking it against the outputs the model's signature declares, if it has one. The runtime
states them from the first moment, and makes the same prediction once the model is ready (off
the path to readiness: it cost cold start 3%, measured) and stops if the answer has changed:
V2 metadata then always states what every infer returns."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from omibuild.runtime import log
from omibuild.runtime.adapters.kserve import outputs_of
from omibuild.runtime.codec import encode_output
from omibuild.runtime.config import DEFAULT_CONFIG, ConfigError, RuntimeConfig, load_config
from omibuild.runtime.faults import MissingModule, brief, load_failure_line
from omibuild.runtime.model import ModelService

OUTPUTS_FILE = "outputs.json"


class OutputsChanged(Exception):
    """The model's answer to the example differs from what the image was built with."""


def example_input(config: RuntimeConfig) -> Any:
    """omi.yaml's example input, as the model takes it (rows of numbers as one array)."""
    example = config.document.example
    if isinstance(example, list) and example and isinstance(example[0], list):
        try:
            array = np.asarray(example)
        except ValueError:
            return example
        if array.dtype.kind in "fiub":
            return array
    return example


def specs_of(result: Any) -> list[dict[str, Any]]:
    """Each output's name, datatype and shape, the batch dimension left open (-1)."""
    specs = []
    for name, value in outputs_of(result).items():
        spec, _ = encode_output(name, value, False)
        shape = [-1, *spec["shape"][1:]] if spec["shape"] else []
        specs.append({"name": name, "datatype": spec["datatype"], "shape": shape})
    return specs


def shown_specs(specs: list[dict[str, Any]]) -> str:
    return ", ".join(f"{s['name']} {s['datatype']} {s['shape']}" for s in specs) or "nothing"


def conflict(declared: list[dict[str, Any]], learnt: list[dict[str, Any]]) -> str | None:
    """Where the learnt outputs break the declared ones: the datatypes must match, and each
    declared dimension that is not -1 must be the learnt one."""
    if len(declared) != len(learnt):
        return f"{len(learnt)} outputs, where {len(declared)} are declared"
    for want, got in zip(declared, learnt, strict=True):
        dims_ok = len(want["shape"]) == len(got["shape"]) and all(
            w in (-1, g) for w, g in zip(want["shape"], got["shape"], strict=True)
        )
        if want["datatype"] != got["datatype"] or not dims_ok:
            return f"{shown_specs([got])}, where {shown_specs([want])} is declared"
    return None


def built_outputs(config: RuntimeConfig) -> list[dict[str, Any]] | None:
    """The outputs the build learnt, or None when it learnt none (no example input)."""
    path = Path(config.env.get("OMI_CONFIG", DEFAULT_CONFIG)).parent / OUTPUTS_FILE
    try:
        doc = json.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        raise ConfigError(f"cannot read {path}: {err}") from None
    return list(doc["outputs"])


def learn(service: ModelService) -> None:
    """Once the model is ready: predict the example and keep what it answers as the service's
    outputs. If the image was built knowing other outputs, raise (the server stops). What
    the build learnt is already the service's outputs (read once, when the app was made)."""
    built = service.outputs
    if not service.config.document.example:
        return
    try:
        # through the predict slots: requests may already be in flight, and a model that is
        # not thread-safe must not see two calls at once
        learnt = specs_of(service.predict_blocking(example_input(service.config), client=False))
    except Exception as exc:
        if built is None:  # an image built without a dry prediction: outputs stay unknown
            return
        raise OutputsChanged(f"the model no longer takes its example input: {brief(exc)}") from None
    if built is not None and learnt != built:
        raise OutputsChanged(
            f"the model answers its example with {shown_specs(learnt)}; the image was built "
            f"when it answered {shown_specs(built)}"
        )
    service.outputs = learnt


def describe(out: Path | None) -> int:
    """The build's dry prediction: load the model, predict the example, check the answer
    against the declared outputs (the model's signature), and write outputs.json to ``out``
    (None: to stdout, the line saying so to stderr). Exit 0, or 3 with one line saying why
    the model and the manifest disagree."""
    try:
        config = load_config()
    except ConfigError as err:
        print(f"omibuild: {err}", file=sys.stderr)
        return 2
    log.silence()  # the build log gets this command's one line, not the server's records
    service = ModelService(config)
    try:
        service.load()
    except Exception as exc:  # not the example's fault: say what stopped the load
        print(f"omibuild: {load_failure_line(exc)}", file=sys.stderr)
        return 3
    try:
        learnt = specs_of(service.predict(example_input(config)))
    except MissingModule as exc:  # the image's fault, not the example's
        print(f"omibuild: the model cannot predict without a module: {exc}", file=sys.stderr)
        return 3
    except Exception as exc:
        print(
            f"omibuild: omi.yaml example: the model cannot predict it ({brief(exc)}); fix the "
            "example input, or the model",
            file=sys.stderr,
        )
        return 3
    declared = config.document.outputs
    problem = conflict(declared, learnt) if declared else None
    if problem:
        print(
            f"omibuild: the model answers its example input with {problem} by its signature; "
            "fix the signature or the model",
            file=sys.stderr,
        )
        return 3
    text = json.dumps({"outputs": learnt}, sort_keys=True) + "\n"
    said = f"omibuild: the model answers its example with {shown_specs(learnt)}"
    if out is None:
        sys.stdout.write(text)
        print(said, file=sys.stderr)
    else:
        out.write_text(text, "utf-8")
        print(said)
    return 0
