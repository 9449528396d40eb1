"""Request bodies as users already have them: a body in one interface's own shape (V2
tensors, MLflow's dataframe forms, SageMaker CSV or JSON Lines, plain instances), read
from a file, with the rows it means, so it can go as it is to its own interface or be
spelled in another's. Pure Python: the client needs nothing the wheel does not install."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omibuild.errors import UsageError

MAX_BODY_FILE = 64 << 20
_TENSOR_KEYS = {"name", "shape", "datatype"}

# The interface a body's shape belongs to: (interface, protocol or None for any).
NATIVE = {
    "v2": ("kfserving", "v2"),
    "mlflow": ("mlflow", None),
    "csv": ("sagemaker", None),
    "jsonl": ("sagemaker", None),
}
CONTENT_TYPES = {"csv": "text/csv", "jsonl": "application/jsonlines"}


@dataclass(frozen=True)
class Body:
    kind: str  # v2 | mlflow | csv | jsonl | instances
    payload: Any  # what goes on the wire to its own interface: a JSON document or bytes
    rows: list[Any]  # the instances it means: rows, or records (one dict per row)

    @property
    def content_type(self) -> str:
        return CONTENT_TYPES.get(self.kind, "application/json")

    @classmethod
    def of_rows(cls, rows: list[Any]) -> Body:
        return cls("instances", {"instances": rows}, rows)


def _number(text: str) -> Any:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _reshape(flat: list[Any], shape: list[int]) -> Any:
    if len(shape) <= 1:
        return flat
    step = len(flat) // shape[0] if shape[0] else 0
    return [_reshape(flat[i * step : (i + 1) * step], shape[1:]) for i in range(shape[0])]


def _tensor_rows(tensors: list[dict[str, Any]]) -> list[Any]:
    """The rows V2 tensors mean: one tensor's rows, or records of named columns."""
    columns = {}
    for t in tensors:
        data, shape = t.get("data"), t.get("shape")
        if not isinstance(data, list) or not isinstance(shape, list) or not shape:
            raise ValueError(f"tensor {t.get('name')!r} needs a shape and a data list")
        flat = _flatten(data)
        columns[str(t["name"])] = _reshape(flat, [int(d) for d in shape])
    if len(columns) == 1:
        return next(iter(columns.values()))
    count = min(len(v) for v in columns.values())
    return [{k: v[i] for k, v in columns.items()} for i in range(count)]


def _records(split: Any) -> list[Any]:
    if not isinstance(split, dict) or not isinstance(split.get("data"), list):
        raise ValueError("dataframe_split needs a data list")
    columns = split.get("columns")
    if not isinstance(columns, list):
        return list(split["data"])
    return [dict(zip(columns, row, strict=False)) for row in split["data"]]


def parse(document: Any) -> Body:
    """A JSON document as the body of one interface (``ValueError`` when it is none)."""
    if isinstance(document, list):
        return Body("instances", {"instances": document}, document)
    if not isinstance(document, dict):
        raise ValueError("a request is a JSON object or list")
    inputs = document.get("inputs")
    if (
        isinstance(inputs, list)
        and inputs
        and all(isinstance(t, dict) and t.keys() >= _TENSOR_KEYS for t in inputs)
    ):
        return Body("v2", document, _tensor_rows(inputs))
    if "dataframe_split" in document:
        return Body("mlflow", document, _records(document["dataframe_split"]))
    if "dataframe_records" in document:
        rows = document["dataframe_records"]
        if not isinstance(rows, list):
            raise ValueError("dataframe_records must be a list")
        return Body("mlflow", document, rows)
    if isinstance(document.get("instances"), list):
        return Body("instances", document, document["instances"])
    if isinstance(inputs, list):
        return Body("mlflow", document, inputs)
    if isinstance(inputs, dict):  # MLflow's named tensors: {"inputs": {"a": [...], ...}}
        count = min((len(v) for v in inputs.values() if isinstance(v, list)), default=0)
        return Body(
            "mlflow", document, [{k: v[i] for k, v in inputs.items()} for i in range(count)]
        )
    raise ValueError(
        'expected {"instances": [...]}, V2 {"inputs": [tensors]}, MLflow\'s '
        "dataframe_split / dataframe_records / inputs, or a JSON list"
    )


def read_body(path: str) -> Body:
    """A request body from a file: .csv and .jsonl are SageMaker's, anything else JSON."""
    file = Path(path)
    try:
        if file.stat().st_size > MAX_BODY_FILE:
            raise UsageError(f"{path}: over {MAX_BODY_FILE >> 20} MiB; a request is smaller")
        raw = file.read_bytes()
    except OSError as err:
        raise UsageError(f"{path}: cannot read the request: {err.strerror}") from None
    try:
        if file.suffix == ".csv":
            text = raw.decode("utf-8")
            rows = [[_number(c.strip()) for c in r] for r in csv.reader(io.StringIO(text)) if r]
            return Body("csv", raw, rows)
        if file.suffix in (".jsonl", ".jsonlines"):
            lines = [json.loads(ln) for ln in raw.decode("utf-8").splitlines() if ln.strip()]
            return Body("jsonl", raw, lines)
        return parse(json.loads(raw))
    except (ValueError, UnicodeDecodeError, csv.Error) as err:
        raise UsageError(f"{path}: not a request body: {err}") from None


def _flatten(data: Any) -> list[Any]:
    if isinstance(data, list):
        return [x for item in data for x in _flatten(item)]
    return [data]


def _shape(data: Any) -> list[int]:
    """The shape of nested lists, or ValueError when they are ragged."""
    if not isinstance(data, list):
        return []
    shapes = [_shape(item) for item in data]
    if any(s != shapes[0] for s in shapes):
        raise ValueError("the instances do not form a tensor (rows of different lengths)")
    return [len(data), *(shapes[0] if shapes else [])]


def _datatype(values: list[Any]) -> str:
    kinds = {type(v) for v in values}
    if kinds <= {bool}:
        return "BOOL"
    if kinds <= {int}:
        return "INT64"
    if kinds <= {int, float}:
        return "FP64"
    return "BYTES"


def _tensor(name: str, data: Any) -> dict[str, Any]:
    flat = _flatten(data)
    datatype = _datatype(flat)
    if datatype == "BYTES":
        flat = [x if isinstance(x, str) else json.dumps(x) for x in flat]
    return {"name": name, "shape": _shape(data), "datatype": datatype, "data": flat}


def v2_request(rows: list[Any]) -> dict[str, Any]:
    """Rows as V2 tensors: records become one tensor per named column, rows one tensor."""
    if rows and all(isinstance(r, dict) for r in rows):
        names = list(dict.fromkeys(k for r in rows for k in r))
        return {"inputs": [_tensor(str(n), [r.get(n) for r in rows]) for n in names]}
    return {"inputs": [_tensor("input-0", rows)]}


def mlflow_request(rows: list[Any]) -> dict[str, Any]:
    if rows and all(isinstance(r, dict) for r in rows):
        return {"dataframe_records": rows}
    return {"inputs": rows}
