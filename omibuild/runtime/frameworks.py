"""Flavors for the gradient-boosting and deep-learning frameworks' own model files: XGBoost
(JSON, UBJSON, binary), LightGBM (text), CatBoost (.cbm), PyTorch (TorchScript and
torch.export programs) and Keras 3 (.keras).

Each checks the input's width or shape before the framework sees it, answers a classifier's
class labels (as the framework's scikit-learn wrapper would) and a regressor's values, and
says which of its framework's errors mean the input was wrong (a 400, not a 500)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from omibuild.runtime.device import library_placement, torch_placement
from omibuild.runtime.modelfiles import find_file

XGBOOST_SUFFIXES = (".json", ".ubj", ".bst", ".model", ".deprecated", ".xgb")
TORCH_SUFFIXES = (".pt", ".pth", ".pt2", ".torchscript", ".ptl")


def _matrix(inputs: Any, width: int | None, names: list[str] | None = None) -> Any:
    """Rows as a 2-D float array of the model's width (ValueError otherwise)."""
    import numpy as np

    if isinstance(inputs, list) and inputs and all(isinstance(r, dict) for r in inputs):
        order = names or list(inputs[0])  # records: the model's column order (KeyError: 400)
        inputs = [[row[n] for n in order] for row in inputs]
    elif isinstance(inputs, dict):  # named tensors, one per column
        order = names or list(inputs)
        inputs = np.column_stack([np.asarray(inputs[n]).reshape(-1) for n in order])
    array = np.asarray(inputs, dtype=np.float64)
    if array.ndim == 1 and width is not None and array.shape[0] == width:
        array = array[None, :]
    if array.ndim != 2:
        raise ValueError(f"expected rows of features (a 2-D input), got shape {list(array.shape)}")
    if width is not None and array.shape[1] != width:
        raise ValueError(f"the model takes {width} features per row, got {array.shape[1]}")
    return array


def _labels(scores: Any) -> Any:
    """Class labels from a classifier's scores: one probability per row, or one per class."""
    import numpy as np

    scores = np.asarray(scores)
    if scores.ndim == 2 and scores.shape[1] > 1:
        return scores.argmax(axis=1)
    return (scores.reshape(-1) > 0.5).astype(np.int64)


class XGBoostFlavor:
    vectorised = True

    def load(self, model_dir: Path, config: dict[str, Any]) -> None:
        import xgboost

        self.rejected: tuple[type[BaseException], ...] = (xgboost.core.XGBoostError,)
        booster = xgboost.Booster(model_file=str(find_file(model_dir, config, XGBOOST_SUFFIXES)))
        booster.set_param({"nthread": 1})  # a request is a few rows: threads cost more than give
        self.placement = library_placement("XGBoost")
        if self.placement.gpus:
            booster.set_param({"device": "cuda"})
        self.booster = booster
        self.width = booster.num_features()
        names = booster.feature_names
        self.names = list(names) if names else None
        kind = json.loads(booster.attr("scikit_learn") or "{}").get("_estimator_type")
        objective = json.loads(booster.save_config())["learner"]["objective"]["name"]
        # the sklearn wrapper's predict: labels for classifiers (softmax already gives them)
        self.classify = kind == "classifier" and objective != "multi:softmax"

    def predict(self, inputs: Any) -> Any:
        scores = self.booster.inplace_predict(_matrix(inputs, self.width, self.names))
        return _labels(scores) if self.classify else scores


class LightGBMFlavor:
    vectorised = True

    def load(self, model_dir: Path, config: dict[str, Any]) -> None:
        import lightgbm

        self.rejected = (lightgbm.basic.LightGBMError,)
        path = find_file(model_dir, config, (".txt", ".model", ".lgb", ".lgbm"))
        self.booster = lightgbm.Booster(model_file=str(path))
        self.width = self.booster.num_feature()
        names = self.booster.feature_name()
        self.names = None if all(re.fullmatch(r"Column_\d+", n) for n in names) else names
        objective = str(self.booster.params.get("objective", "")) or _header(path, "objective")
        self.classify = objective.split()[0] in ("binary", "multiclass", "multiclassova", "softmax",
                                                 "ova", "cross_entropy", "xentropy")  # fmt: skip

    def predict(self, inputs: Any) -> Any:
        scores = self.booster.predict(_matrix(inputs, self.width, self.names), num_threads=1)
        return _labels(scores) if self.classify else scores


def _header(path: Path, key: str) -> str:
    with open(path, encoding="utf-8", errors="replace") as fh:
        for _, line in zip(range(40), fh, strict=False):
            if line.startswith(f"{key}="):
                return line.split("=", 1)[1].strip()
    return ""


class CatBoostFlavor:
    vectorised = True

    def load(self, model_dir: Path, config: dict[str, Any]) -> None:
        import catboost

        self.rejected = (catboost.CatboostError,)
        model = catboost.CatBoost()
        model.load_model(str(find_file(model_dir, config, (".cbm", ".bin"))))
        self.model = model
        self.names = list(model.feature_names_ or []) or None
        self.width = len(self.names) if self.names else None
        loss = str(model.get_all_params().get("loss_function", ""))
        self.classify = loss.split(":")[0] in ("Logloss", "CrossEntropy", "MultiClass",
                                               "MultiClassOneVsAll")  # fmt: skip

    def predict(self, inputs: Any) -> Any:
        import numpy as np

        rows = _matrix(inputs, self.width)
        if not self.classify:
            return self.model.predict(rows, thread_count=1)
        labels = np.asarray(self.model.predict(rows, prediction_type="Class", thread_count=1))
        labels = labels.reshape(-1)
        try:
            return labels.astype(np.int64)
        except ValueError:  # class names that are not numbers
            return labels.astype(str)


# torch reports a wrong input as a RuntimeError (an exported program: an AssertionError from
# its shape guards), like any other failure: these are its words for an input of the wrong
# shape or type
_TORCH_INPUT = re.compile(
    r"shape|size mismatch|dimension|dtype|expected scalar type|Expected .* but got|"
    r"must match the size|cannot be multiplied|input\b.*\bexpected|Guard failed",
    re.IGNORECASE,
)


def torch_rejects(exc: BaseException) -> bool:
    """Whether torch's ``exc`` says the input had the wrong shape or type."""
    return isinstance(exc, RuntimeError | AssertionError) and bool(_TORCH_INPUT.search(str(exc)))


class PyTorchFlavor:
    vectorised = True

    def load(self, model_dir: Path, config: dict[str, Any]) -> None:
        import torch

        self.torch = torch
        self.placement = torch_placement(torch)
        device = self.placement.device
        path = find_file(model_dir, config, TORCH_SUFFIXES)
        if path.suffix == ".pt2":  # an exported program is traced in eval mode already
            self.module = torch.export.load(str(path)).module().to(device)
        else:
            self.module = torch.jit.load(str(path), map_location=device).eval()
        self.rejected = ()

    def rejects(self, exc: BaseException) -> bool:
        return torch_rejects(exc)

    def _tensor(self, value: Any) -> Any:
        import numpy as np

        array = np.asarray(value)
        if array.dtype.kind == "f":
            array = array.astype(np.float32)  # what a model's weights are, almost always
        elif array.dtype.kind not in "iub":
            raise ValueError(f"a tensor of numbers, not {array.dtype}")
        return self.torch.from_numpy(np.ascontiguousarray(array)).to(self.placement.device)

    def predict(self, inputs: Any) -> Any:
        with self.torch.inference_mode():
            if isinstance(inputs, dict):
                out = self.module(**{k: self._tensor(v) for k, v in inputs.items()})
            else:
                out = self.module(self._tensor(inputs))
        return _numpy(out)


def _numpy(out: Any) -> Any:
    if hasattr(out, "detach"):
        return out.detach().cpu().numpy()
    if isinstance(out, dict):
        return {str(k): _numpy(v) for k, v in out.items()}
    if isinstance(out, list | tuple):
        return {f"output-{i}": _numpy(v) for i, v in enumerate(out)}
    return out


class KerasFlavor:
    vectorised = True

    def load(self, model_dir: Path, config: dict[str, Any]) -> None:
        import keras

        self.keras = keras
        path = find_file(model_dir, config, (".keras",))
        self.model = keras.saving.load_model(str(path), compile=False)
        self.rejected = ()

    def predict(self, inputs: Any) -> Any:
        import numpy as np

        array = np.asarray(inputs)
        if array.dtype.kind == "f":
            array = array.astype(np.float32)
        # calling the model skips predict()'s per-call set-up (a dataset, callbacks, a progress bar)
        out = self.model(array, training=False)
        if isinstance(out, dict):
            return {k: self.keras.ops.convert_to_numpy(v) for k, v in out.items()}
        if isinstance(out, list | tuple):
            return {f"output-{i}": self.keras.ops.convert_to_numpy(v) for i, v in enumerate(out)}
        return self.keras.ops.convert_to_numpy(out)
