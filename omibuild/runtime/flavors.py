"""Model flavors: how a model directory becomes something with ``predict``.

A flavor is a small class behind the Flavor protocol; FLAVORS maps the manifest's
``model.flavor`` names to them (a unit test keeps the schema's enum equal to its keys)."""

from __future__ import annotations

import importlib
import pickle
import sys
from pathlib import Path
from typing import Any, Protocol

SKLEARN_SUFFIXES = (".joblib", ".pkl", ".pickle", ".skops")


class Flavor(Protocol):
    vectorised: bool  # predict on a batch of N rows equals N predicts on one row

    def load(self, model_dir: Path, config: dict[str, Any]) -> None: ...

    def predict(self, inputs: Any) -> Any: ...


def _find(model_dir: Path, config: dict[str, Any], suffixes: tuple[str, ...]) -> Path:
    if config.get("model_file"):
        return model_dir / config["model_file"]
    found = sorted(p for p in model_dir.rglob("*") if p.suffix in suffixes)
    if not found:
        raise FileNotFoundError(f"no {'/'.join(suffixes)} file in {model_dir}")
    return found[0]


class SklearnFlavor:
    vectorised = True

    def load(self, model_dir: Path, config: dict[str, Any]) -> None:
        path = _find(model_dir, config, SKLEARN_SUFFIXES)
        if path.suffix == ".skops":
            import skops.io

            self.model = skops.io.load(path, trusted=skops.io.get_untrusted_types(file=path))
        elif path.suffix == ".joblib":
            import joblib

            self.model = joblib.load(path)
        else:
            with open(path, "rb") as fh:
                self.model = pickle.load(fh)

    def predict(self, inputs: Any) -> Any:
        return self.model.predict(inputs)


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

    def predict(self, inputs: Any) -> Any:
        try:
            return self.model.predict(inputs)
        except self.rejected as exc:
            if exc.error_code != "INVALID_PARAMETER_VALUE":
                raise
            # MLflow's message quotes the request's data: say what the model takes instead
            schema = self.model.metadata.get_input_schema()
            names = [str(n) for n in schema.input_names()] if schema else []
            takes = ", ".join(names[:8]) or "what its signature says"
            if len(names) > 8:
                takes += f", … ({len(names)} in all)"
            raise ValueError(
                f"the input does not fit the model's signature (inputs: {takes})"
            ) from None


class OnnxFlavor:
    vectorised = True

    def load(self, model_dir: Path, config: dict[str, Any]) -> None:
        import onnxruntime

        path = _find(model_dir, config, (".onnx",))
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
        from transformers import pipeline

        kwargs = {"task": config["task"]} if config.get("task") else {}
        self.pipe = pipeline(model=str(model_dir), **kwargs)

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
    "custom": CustomFlavor,
}
