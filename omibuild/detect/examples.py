"""An example input init can vouch for: what the model's own files show (MLflow's saved
example, the width and column names a fitted estimator records), so that `apply` predicts it
once and a model that cannot load fails the build, not the first request."""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omibuild.detect.formats import Format
from omibuild.sources.local import ignored

MAX_EXAMPLE_BYTES = 64 * 1024  # an example is one or two rows: a larger file is not one
MAX_TABLES_SEEN = 200


@dataclass(frozen=True)
class Example:
    instances: list[Any]
    why: str


def _read_json(path: Path) -> Any:
    if not path.is_file() or path.stat().st_size > MAX_EXAMPLE_BYTES:
        return None
    try:
        return json.loads(path.read_text("utf-8"))
    except (OSError, ValueError):
        return None


def _records(split: Any) -> list[Any] | None:
    """``{"columns": [...], "data": [[...]]}`` (pandas' split orient) as records."""
    if not isinstance(split, dict):
        return None
    columns, data = split.get("columns"), split.get("data")
    if not isinstance(data, list) or not data:
        return None
    if not isinstance(columns, list):
        return data
    rows = [r for r in data if isinstance(r, list) and len(r) == len(columns)]
    return [dict(zip(columns, r, strict=True)) for r in rows] or None


def mlflow_example(model_dir: Path) -> Example | None:
    """The example MLflow saved beside the model (``serving_input_example.json``, else
    ``input_example.json``), as omi.yaml's instances."""
    serving = _read_json(model_dir / "serving_input_example.json")
    if isinstance(serving, dict):
        for key, convert in (
            ("dataframe_split", _records),
            ("dataframe_records", lambda v: v if isinstance(v, list) and v else None),
            ("instances", lambda v: v if isinstance(v, list) and v else None),
            ("inputs", lambda v: v if isinstance(v, list) and v else None),
        ):
            if key in serving:
                rows = convert(serving[key])
                if rows:
                    return Example(rows, "MLflow's serving_input_example.json")
    saved = _read_json(model_dir / "input_example.json")
    rows = _records(saved) if isinstance(saved, dict) else saved
    if isinstance(rows, list) and rows:
        return Example(rows, "MLflow's input_example.json")
    return None


def _matching_row(root: Path, names: list[str]) -> tuple[dict[str, Any], str] | None:
    """The first data row of a CSV in the repository whose header holds every name."""
    seen = 0
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = Path(dirpath).relative_to(root)
        dirnames[:] = sorted(
            d
            for d in dirnames
            if not d.startswith(".") and not ignored((rel_dir / d).as_posix(), ())
        )
        for name in sorted(filenames):
            if not name.endswith(".csv"):
                continue
            seen += 1
            if seen > MAX_TABLES_SEEN:
                return None
            path = Path(dirpath) / name
            try:
                with open(path, newline="", encoding="utf-8") as fh:
                    reader = csv.reader(fh)
                    header, row = next(reader, None), next(reader, None)
            except (OSError, UnicodeDecodeError, csv.Error):
                continue
            if header and row and len(row) == len(header) and set(names) <= set(header):
                cells = dict(zip(header, row, strict=True))
                return {n: _number(cells[n]) for n in names}, (rel_dir / name).as_posix()
    return None


def _number(text: str) -> Any:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def tabular_example(
    width: int | None, names: list[str] | None, root: Path, file_name: str
) -> Example | None:
    """One row of the width the fitted model records: named columns (the first row of a CSV
    here that has them all, else zeros), or a row of zeros."""
    if names:
        found = _matching_row(root, names)
        if found is not None:
            return Example(
                [found[0]], f"the first row of {found[1]}, the columns {file_name} was fit on"
            )
        return Example(
            [dict.fromkeys(names, 0.0)], f"the {len(names)} columns {file_name} was fit on"
        )
    if width:
        return Example([[0.0] * width], f"{width} features (n_features_in_ in {file_name})")
    return None


MAX_EXAMPLE_VALUES = 256  # a larger zero tensor says nothing a smaller one does not


def shaped_example(fmt: Format, file_name: str) -> Example | None:
    """One input of the width or shape a framework's file records, all zeros."""
    zero: Any = 0 if fmt.dtype == "int" else 0.0
    if fmt.width:
        if fmt.names:
            return Example([dict.fromkeys(fmt.names, zero)], f"the {len(fmt.names)} columns "
                           f"{file_name} records")  # fmt: skip
        return Example([[zero] * fmt.width], f"{fmt.width} features, as {file_name} records")
    if fmt.shape and len(fmt.shape) > 1:
        dims = fmt.shape[1:]
        count = 1
        for d in dims:
            count *= max(d, 1)
        if count > MAX_EXAMPLE_VALUES:
            return None
        value: Any = zero
        for d in reversed(dims):
            value = [value] * max(d, 1)
        return Example([value], f"one input of shape {dims}, as {file_name} records")
    return None


def text_example(task: str | None) -> Example | None:
    if task in (None, "text-classification", "sentiment-analysis", "text-generation",
                "token-classification", "ner", "feature-extraction", "summarization",
                "translation", "text2text-generation"):  # fmt: skip
        return Example(["omibuild serves models."], "a short text, as the pipeline takes it")
    return None
