"""A custom predictor: any class with load(model_dir) and predict(inputs)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


class IrisPredictor:
    def load(self, model_dir: Path) -> None:
        import joblib

        self.model = joblib.load(model_dir / "model.joblib")

    def predict(self, inputs: Any) -> Any:
        return self.model.predict_proba(inputs)
