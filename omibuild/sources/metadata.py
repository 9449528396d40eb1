"""What a model's own files say about it: MLflow's MLmodel (flavor, version, signature as
V2 tensors) and requirements.txt, or a transformers config.json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from omibuild.contract import INPUTS_KEY, OUTPUTS_KEY
from omibuild.manifest.requirements import read_requirements, without_local_label

_MLFLOW_FLAVORS = {
    "sklearn": "sklearn",
    "onnx": "onnx",
    "transformers": "transformers",
    "python_function": "pyfunc",
}


# MLflow signature types (mlflow.types.DataType) and tensor dtypes → V2 datatypes
_V2_TYPES = {
    "boolean": "BOOL",
    "integer": "INT32",
    "long": "INT64",
    "float": "FP32",
    "double": "FP64",
    "string": "BYTES",
    "binary": "BYTES",
    "bool": "BOOL",
    "int8": "INT8",
    "int16": "INT16",
    "int32": "INT32",
    "int64": "INT64",
    "uint8": "UINT8",
    "uint16": "UINT16",
    "uint32": "UINT32",
    "uint64": "UINT64",
    "float16": "FP16",
    "float32": "FP32",
    "float64": "FP64",
    "object": "BYTES",
    "str": "BYTES",
}


def _specs(signature: object, key: str) -> list[dict[str, Any]] | None:
    """The signature's ``inputs`` or ``outputs``: MLflow keeps each as a JSON list of specs."""
    if not isinstance(signature, dict) or not isinstance(signature.get(key), str):
        return None
    try:
        specs = json.loads(signature[key])
    except ValueError:
        return None
    if not isinstance(specs, list) or not specs or not all(isinstance(x, dict) for x in specs):
        return None
    return specs


def _tensor(spec: dict[str, Any], default_name: str) -> dict[str, object] | None:
    """A tensor spec as a V2 tensor of any batch size; None without a V2 datatype or shape."""
    tensor = spec.get("tensor-spec") or {}
    datatype, shape = _V2_TYPES.get(str(tensor.get("dtype"))), tensor.get("shape")
    if not datatype or not isinstance(shape, list) or not shape:
        return None
    return {"name": str(spec.get("name") or default_name), "datatype": datatype,
            "shape": [-1, *shape[1:]]}  # fmt: skip


def signature_outputs(signature: object) -> list[dict[str, object]] | None:
    """The V2 outputs an MLflow signature declares: one unnamed column (what a predict returning
    one value per row declares), or tensors. None for anything else (several columns, types
    without a V2 datatype): the build's dry prediction alone then says what the model answers."""
    specs = _specs(signature, "outputs")
    if specs is None:
        return None
    out: list[dict[str, object]] = []
    for index, spec in enumerate(specs):
        if spec.get("type") == "tensor":
            tensor = _tensor(spec, f"output-{index}")
            if tensor is None:
                return None
            out.append(tensor)
        elif len(specs) == 1 and spec.get("type") in _V2_TYPES:
            out.append({"name": "output-0", "datatype": _V2_TYPES[spec["type"]], "shape": [-1]})
        else:
            return None
    return out


def signature_inputs(signature: object) -> list[dict[str, object]] | None:
    """The V2 inputs an MLflow signature declares: a named column is a tensor of one value
    per row, a tensor spec keeps its shape. None where a type has no V2 datatype."""
    specs = _specs(signature, "inputs")
    if specs is None:
        return None
    out: list[dict[str, object]] = []
    for index, spec in enumerate(specs):
        if spec.get("type") == "tensor":
            tensor = _tensor(spec, f"input-{index}")
            if tensor is None:
                return None
            out.append(tensor)
        elif spec.get("type") in _V2_TYPES and spec.get("name"):
            out.append({"name": str(spec["name"]), "datatype": _V2_TYPES[spec["type"]],
                        "shape": [-1]})  # fmt: skip
        else:
            return None
    return out


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
        outputs = signature_outputs(spec.get("signature"))
        if outputs:
            meta[OUTPUTS_KEY] = json.dumps(outputs, separators=(",", ":"))
        inputs = signature_inputs(spec.get("signature"))
        if inputs:
            meta[INPUTS_KEY] = json.dumps(inputs, separators=(",", ":"))
    elif (model_dir / "config.json").is_file():
        flavor = "transformers"
    return requirements, flavor, meta
