"""Model flavors: how a model directory becomes something with ``predict``.

A flavor is a small class behind the Flavor protocol; FLAVORS maps the manifest's
``model.flavor`` names to them (a unit test keeps the schema's enum equal to its keys)."""

from __future__ import annotations

import importlib
import pickle
import sys
from pathlib import Path
from typing import Any, Protocol

from omibuild.runtime.device import torch_placement
from omibuild.runtime.faults import SignatureMismatch, detach
from omibuild.runtime.frameworks import (
    CatBoostFlavor,
    KerasFlavor,
    LightGBMFlavor,
    PyTorchFlavor,
    XGBoostFlavor,
    torch_rejects,
)
from omibuild.runtime.modelfiles import find_file, named_columns, transformers_task

SKLEARN_SUFFIXES = (".joblib", ".pkl", ".pickle", ".skops")


class Flavor(Protocol):
    """A model file made servable. ``vectorised``: predict on a batch of N rows equals N
    predicts on one row. A flavor may also say which of its framework's errors mean the input
    was wrong (a 400): ``rejected``, a tuple of exception types, and ``rejects(exc)``."""

    vectorised: bool

    def load(self, model_dir: Path, config: dict[str, Any]) -> None: ...

    def predict(self, inputs: Any) -> Any: ...


class SklearnFlavor:
    vectorised = True
    names: list[str] | None = None  # the columns the model was fit on, when it records them

    def load(self, model_dir: Path, config: dict[str, Any]) -> None:
        path = find_file(model_dir, config, SKLEARN_SUFFIXES)
        if path.suffix == ".skops":
            import skops.io

            self.model = skops.io.load(path, trusted=skops.io.get_untrusted_types(file=path))
        else:
            try:  # joblib reads plain pickles too, and people save joblib files as .pkl
                import joblib
            except ImportError:
                if path.suffix == ".joblib":
                    raise
                with open(path, "rb") as fh:
                    self.model = pickle.load(fh)
            else:
                self.model = joblib.load(path)
        names = getattr(self.model, "feature_names_in_", None)
        if names is not None:
            self.names = [str(n) for n in names]

    def predict(self, inputs: Any) -> Any:
        if (
            self.names is not None
            or isinstance(inputs, dict)
            or (isinstance(inputs, list) and inputs and isinstance(inputs[0], dict))
        ):
            inputs = named_columns(inputs, self.names)
        return self.model.predict(inputs)


def _numeric(value: Any) -> bool:
    kind = getattr(getattr(value, "dtype", None), "kind", None)
    return kind is not None and kind in "fiub"


class PyfuncFlavor:
    vectorised = True

    def load(self, model_dir: Path, config: dict[str, Any]) -> None:
        import mlflow.pyfunc
        from mlflow.exceptions import MlflowException

        self.rejected = MlflowException
        root = model_dir
        if not (root / "MLmodel").exists():
            candidates = sorted(p.parent for p in model_dir.rglob("MLmodel"))
            root = candidates[0] if candidates else model_dir
        self.model = mlflow.pyfunc.load_model(str(root))
        schema = self.model.metadata.get_input_schema()
        # a column-based signature takes a DataFrame: rows, records and named tensors become one
        self.columns: list[str] | None = (
            [str(n) for n in schema.input_names()]
            if schema is not None and not schema.is_tensor_spec() and schema.has_input_names()
            else None
        )
        self.integral = (
            {
                str(c.name)
                for c in schema.inputs
                if getattr(c.type, "name", "") in ("integer", "long")
            }
            if self.columns
            else set()
        )
        # one unnamed tensor: rows of numbers arrive as float64, which MLflow will not narrow
        tensors = schema.inputs if schema is not None and schema.is_tensor_spec() else []
        self.dtype = tensors[0].type if len(tensors) == 1 and not tensors[0].name else None

    def rejects(self, exc: BaseException) -> bool:
        """A torch model's shape guard or shape error is the input's fault (MLflow's pytorch
        flavor saves torch.export programs whose batch size is the input example's)."""
        return torch_rejects(exc)

    def _frame(self, inputs: Any) -> Any:
        frame = named_columns(inputs, self.columns)
        for name in self.integral & set(getattr(frame, "columns", ())):
            column = frame[name]
            # rows of numbers arrive as one float array: 3.0 is the 3 a `long` column takes
            if column.dtype.kind == "f" and bool((column == column.round()).all()):
                frame[name] = column.astype("int64")
        return frame

    def predict(self, inputs: Any) -> Any:
        # named inputs become the DataFrame a column signature takes; plain rows go as they
        # came, and MLflow refuses them as `mlflow models serve` does
        named = isinstance(inputs, dict) or (
            isinstance(inputs, list) and bool(inputs) and isinstance(inputs[0], dict)
        )
        if self.columns is not None and named:
            inputs = self._frame(inputs)
        elif self.dtype is not None and _numeric(inputs) and self.dtype.kind in "fiub":
            inputs = inputs.astype(self.dtype, copy=False)
        try:
            return self.model.predict(inputs)
        except self.rejected as exc:
            if exc.error_code != "INVALID_PARAMETER_VALUE":
                raise
            # its frames hold the request's data, and this frame holds it: a cycle that only a
            # full collection frees (rare once the heap is frozen). Raised after this block.
            detach(exc)
        del inputs
        raise SignatureMismatch(self._takes())

    def _takes(self) -> str:
        """What the model's signature takes, in words (MLflow's own message quotes the
        request's data)."""
        schema = self.model.metadata.get_input_schema()
        names = [str(n) for n in schema.input_names()] if schema else []
        if schema is not None and schema.is_tensor_spec():
            names = [f"{t.name or 'a tensor'} of {t.type} {list(t.shape)}" for t in schema.inputs]
        takes = ", ".join(names[:8]) or "what its signature says"
        if len(names) > 8:
            takes += f", … ({len(names)} in all)"
        return f"the input does not fit the model's signature (inputs: {takes})"


class OnnxFlavor:
    vectorised = True

    def load(self, model_dir: Path, config: dict[str, Any]) -> None:
        import onnxruntime

        path = find_file(model_dir, config, (".onnx",))
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 1
        self.session = onnxruntime.InferenceSession(
            str(path), options, providers=["CPUExecutionProvider"]
        )
        self.inputs = self.session.get_inputs()
        self.outputs = [o.name for o in self.session.get_outputs()]

    def _dtype(self, onnx_type: str) -> str:
        return {
            "tensor(float)": "float32",
            "tensor(double)": "float64",
            "tensor(int64)": "int64",
            "tensor(int32)": "int32",
            "tensor(string)": "object",
            "tensor(bool)": "bool",
        }.get(onnx_type, "float32")

    def predict(self, inputs: Any) -> Any:
        import numpy as np

        if isinstance(inputs, dict):
            feed = {
                i.name: np.asarray(inputs[i.name], dtype=self._dtype(i.type)) for i in self.inputs
            }
        else:
            first = self.inputs[0]
            feed = {first.name: np.asarray(inputs, dtype=self._dtype(first.type))}
        results = self.session.run(None, feed)
        if len(results) == 1:
            return results[0]
        return dict(zip(self.outputs, results, strict=True))


class TransformersFlavor:
    vectorised = True

    def load(self, model_dir: Path, config: dict[str, Any]) -> None:
        import torch
        from transformers import pipeline

        task: Any = config.get("task") or transformers_task(model_dir)
        self.placement = torch_placement(torch)
        self.pipe = pipeline(task, model=str(model_dir), device=self.placement.device)

    def predict(self, inputs: Any) -> Any:
        items = inputs.tolist() if hasattr(inputs, "tolist") else inputs
        return self.pipe(list(items))


def import_object(ref: str, code_dir: Path) -> Any:
    """``module:attr`` from the user's code directory."""
    if str(code_dir) not in sys.path:
        sys.path.insert(0, str(code_dir))
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


class CustomFlavor:
    vectorised = False

    def __init__(self, code_dir: Path | None = None) -> None:
        self.code_dir = code_dir

    def load(self, model_dir: Path, config: dict[str, Any]) -> None:
        cls = import_object(config["predictor"], self.code_dir or model_dir.parent / "code")
        self.instance = cls()
        if hasattr(self.instance, "load"):
            self.instance.load(model_dir)
        self.vectorised = bool(getattr(self.instance, "vectorised", False))

    def predict(self, inputs: Any) -> Any:
        return self.instance.predict(inputs)


FLAVORS: dict[str, type[Flavor]] = {
    "sklearn": SklearnFlavor,
    "pyfunc": PyfuncFlavor,
    "onnx": OnnxFlavor,
    "transformers": TransformersFlavor,
    "xgboost": XGBoostFlavor,
    "lightgbm": LightGBMFlavor,
    "catboost": CatBoostFlavor,
    "pytorch": PyTorchFlavor,
    "keras": KerasFlavor,
    "custom": CustomFlavor,
}
