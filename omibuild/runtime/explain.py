"""Explanations inside the serving process: SHAP over the background the build sampled
(planning/analysis.py), or the user's hook.

SHAP's model-agnostic explainer with an independent masker over the background: exact
Shapley values for up to 10 features, permutation estimates above. Both are additive: for each
explained output, the attributions sum to the model's output minus its expected value over
the background. shap is imported at the first explanation, not at start-up (it brings numba:
seconds of import that a cold start would otherwise carry)."""

from __future__ import annotations

import json
import threading
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from omibuild.runtime.document import OmiDocument
from omibuild.runtime.flavors import import_object

MAX_ROWS = 64  # rows per explanation request: each costs thousands of model evaluations


class ExplainError(Exception):
    """The explainer cannot run (500); the server stays up."""


class ExplainInputError(ValueError):
    """The rows to explain do not fit the background's columns (400)."""


class Explainer:
    def __init__(
        self, spec: dict[str, Any], analysis_dir: Path, code_dir: Path, flavor_name: str
    ) -> None:
        self.spec = spec
        self.method = str(spec.get("method", "shap"))
        self.analysis_dir = analysis_dir
        self.code_dir = code_dir
        self.flavor_name = flavor_name
        self._lock = threading.Lock()
        self._impl: Any = None  # SHAP's explainer, or the hook function: made at first use
        self._function_of: Callable[[np.ndarray], np.ndarray] | None = None
        self.columns: list[str] = []
        self.output_names: list[str] = []
        self.algorithm = self.method

    @classmethod
    def from_config(
        cls, document: OmiDocument, analysis_dir: Path, code_dir: Path
    ) -> Explainer | None:
        spec = document.explain
        return cls(spec, analysis_dir, code_dir, document.flavor) if spec else None

    # -- SHAP ------------------------------------------------------------------------------
    def _function(self, flavor: Any) -> tuple[Callable[[np.ndarray], np.ndarray], list[str]]:
        """The model as a function of a 2-D float array, and the names of its outputs."""
        output = self.spec.get("output", "auto")
        model = getattr(flavor, "model", None)
        if self.flavor_name == "sklearn" and model is not None:
            proba = getattr(model, "predict_proba", None)
            if output == "proba" and proba is None:
                raise ExplainError("explain.output is proba, and the model has no predict_proba")
            if proba is not None and output in ("auto", "proba"):
                classes = getattr(model, "classes_", None)
                names = [str(c) for c in classes] if classes is not None else []
                return lambda x: np.asarray(proba(x), dtype=float), names
            return lambda x: np.asarray(model.predict(x), dtype=float), []
        columns = self.columns
        if self.flavor_name == "pyfunc":
            import pandas as pd

            def pyfunc(x: np.ndarray) -> np.ndarray:
                out = flavor.predict(pd.DataFrame(x, columns=columns))
                return np.asarray(getattr(out, "values", out), dtype=float)

            return pyfunc, []

        def other(x: np.ndarray) -> np.ndarray:
            out = flavor.predict(x)
            if isinstance(out, dict):  # ONNX with several outputs: the first numeric one
                out = next((v for v in out.values() if np.asarray(v).dtype.kind in "biuf"), None)
                if out is None:
                    raise ExplainError("the model's outputs are not numbers: use explain.hook")
            return np.asarray(out, dtype=float)

        return other, []

    def _prepare(self, flavor: Any) -> Any:
        with self._lock:
            if self._impl is None:
                with warnings.catch_warnings():  # its plotting modules' notes about matplotlib
                    warnings.simplefilter("ignore")
                    import shap

                body = json.loads((self.analysis_dir / self.spec["background"]).read_bytes())
                self.columns = list(body["columns"])
                background = np.asarray(body["rows"], dtype=float)
                function, names = self._function(flavor)
                masker = shap.maskers.Independent(background, max_samples=len(background))
                self._impl = shap.Explainer(
                    function, masker, feature_names=self.columns, algorithm="auto"
                )
                self._function_of = function
                self.output_names = names
                self.algorithm = "shap." + type(self._impl).__name__.lower()
            return self._impl

    def explain(self, flavor: Any, instances: Any, predict: Callable[[Any], Any]) -> dict[str, Any]:
        """Runs in a predict slot (the model's own thread budget)."""
        if self.method == "hook":
            return {"method": "hook", "explanations": self._hook(instances, predict)}
        explainer = self._prepare(flavor)
        rows = _rows(instances, len(self.columns), self.columns)
        k = len(self.columns)
        try:
            kwargs = {"max_evals": max(500, 2 * k + 1)} if k > 10 else {}
            result = explainer(rows, silent=True, **kwargs)
            assert self._function_of is not None  # set with the explainer
            outputs = np.asarray(self._function_of(rows), dtype=float)
        except ExplainError:
            raise
        except Exception as exc:
            raise ExplainError(f"the explainer failed: {type(exc).__name__}: {exc}"[:200]) from None
        values = np.asarray(result.values, dtype=float)
        base = np.asarray(result.base_values, dtype=float)
        if values.ndim == 2:  # one output: make it the multi-output shape
            values, base = values[:, :, None], base.reshape(-1, 1)
        if outputs.ndim == 1:
            outputs = outputs.reshape(-1, 1)
        n_out = values.shape[2]
        names = (
            self.output_names
            if len(self.output_names) == n_out
            else [f"output-{i}" for i in range(n_out)]
        )
        explanations = []
        for i in range(len(rows)):
            explanations.append(
                {
                    "outputs": [
                        {
                            "name": names[o],
                            "value": float(outputs[i, o]),
                            "base_value": float(base[i, o]),
                            "attributions": [float(v) for v in values[i, :, o]],
                        }
                        for o in range(n_out)
                    ]
                }
            )
        return {
            "method": self.algorithm,
            "feature_names": self.columns,
            "output_names": names,
            "explanations": explanations,
        }

    # -- a user's hook ---------------------------------------------------------------------
    def _hook(self, instances: Any, predict: Callable[[Any], Any]) -> Any:
        with self._lock:
            if self._impl is None:
                self._impl = import_object(self.spec["hook"], self.code_dir)
        try:
            result = self._impl(instances, predict)
        except Exception as exc:
            raise ExplainError(
                f"explain hook failed: {type(exc).__name__}: {str(exc)[:120]}"
            ) from None
        try:
            json.dumps(result)
        except (TypeError, ValueError) as exc:
            raise ExplainError(f"the explain hook's answer is not JSON: {str(exc)[:120]}") from None
        return result


def _rows(instances: Any, k: int, columns: list[str]) -> np.ndarray:
    try:
        rows = np.asarray(instances, dtype=float)
    except (TypeError, ValueError):
        raise ExplainInputError(
            f"explain takes rows of {k} numbers ({', '.join(columns[:8])})"
        ) from None
    if rows.ndim == 1:
        rows = rows.reshape(1, -1)
    if rows.ndim != 2 or rows.shape[1] != k:
        raise ExplainInputError(
            f"explain takes rows of {k} numbers ({', '.join(columns[:8])}{' …' if k > 8 else ''})"
        )
    if len(rows) > MAX_ROWS:
        raise ExplainInputError(f"at most {MAX_ROWS} rows per explanation request, not {len(rows)}")
    if not np.isfinite(rows).all():
        raise ExplainInputError("explain takes finite numbers")
    return rows
