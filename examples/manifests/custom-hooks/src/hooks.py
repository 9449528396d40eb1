"""Pre- and post-processing shipped inside the image."""

from __future__ import annotations

import os
from typing import Any

FEATURES = ("sepal_length", "sepal_width", "petal_length", "petal_width")


def preprocess(instances: list[Any]) -> list[list[float]]:
    """Accept named features or plain rows."""
    rows = []
    for item in instances:
        if isinstance(item, dict):
            rows.append([float(item[name]) for name in FEATURES])
        else:
            rows.append([float(v) for v in item])
    return rows


def postprocess(probabilities: Any) -> list[dict[str, Any]]:
    labels = os.environ.get("IRIS_LABELS", "0,1,2").split(",")
    out = []
    for row in probabilities:
        scores = [float(p) for p in row]
        best = max(range(len(scores)), key=scores.__getitem__)
        out.append({"label": labels[best], "score": round(scores[best], 6)})
    return out
