"""Request bodies the HTTP extensions share: JSON instances, CSV rows, .npy arrays, and
MLflow's dataframe forms."""

from __future__ import annotations

import csv
import io
from typing import Any

from omibuild.runtime.http import HTTPError


def _number(text: str) -> Any:
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            return text


def csv_rows(body: bytes) -> list[list[Any]]:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise HTTPError(400, "CSV body is not UTF-8") from None
    rows = [[_number(cell.strip()) for cell in row] for row in csv.reader(io.StringIO(text)) if row]
    if not rows:
        raise HTTPError(400, "empty CSV body")
    return rows


def npy_array(body: bytes) -> Any:
    import numpy as np

    try:
        return np.load(io.BytesIO(body), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise HTTPError(400, f"body is not a .npy array: {exc}") from None


def json_instances(body: Any) -> list[Any]:
    """SageMaker/Vertex style: a list, or {"instances": [...]}, or {"inputs": [...]}."""
    if isinstance(body, list):
        return body
    if isinstance(body, dict):
        for key in ("instances", "inputs"):
            if key in body:
                value = body[key]
                if not isinstance(value, list):
                    raise HTTPError(400, f"`{key}` must be a list")
                return value
    raise HTTPError(400, 'expected a JSON list or {"instances": [...]}')


def to_csv(predictions: Any) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    for row in predictions:
        writer.writerow(row if isinstance(row, list | tuple) else [row])
    return out.getvalue()
