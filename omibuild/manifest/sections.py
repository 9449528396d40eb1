"""Semantic checks of omi.yaml's defense section (semantic.py's Checker calls them): the table
it guards and scores exists and reads, and the score's calibration half is large enough for
``alpha`` to mean what it says."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omibuild.manifest.tables import TableError, read_table

if TYPE_CHECKING:
    from omibuild.manifest.semantic import Checker


def calibration_rows_needed(alpha: float) -> int:
    """The calibration half holds at least 10 / alpha rows: else the smallest p-value,
    1 / (n + 1), is too coarse for alpha to mean what it says (runtime/defense.py)."""
    return math.ceil(10 / alpha)


def score_rows(rows: Any, kinds: tuple[str, ...]) -> list[list[float]]:
    """The sample's rows the score uses: their numeric values, rows missing one left out."""
    numeric = [j for j, kind in enumerate(kinds) if kind == "numeric"]
    return [
        [float(row[j]) for j in numeric] for row in rows if all(row[j] is not None for j in numeric)
    ]


def check_defense(c: Checker, spec: Any, drift: Any, code_dir: Path | None) -> None:
    if not isinstance(spec, dict):
        return
    hook = spec.get("hook")
    if hook is not None:
        c.module(("defense", "hook"), hook, code_dir)
        if spec.get("score") not in (None, "off", False):
            c.add(("defense", "score"), "`score` is replaced by the hook; leave one of them out")
    reference = spec.get("reference")
    where: tuple[str, ...] = ("defense", "reference")
    if reference is None and isinstance(drift, dict) and isinstance(drift.get("reference"), str):
        reference, where = drift["reference"], ("drift", "reference")
    if reference is None:
        if hook is None:
            c.add(
                ("defense",),
                "defense needs a reference table to learn the guard and the score from",
                "set defense.reference (or drift.reference) to a table in the repository, "
                "or give a hook",
            )
        elif spec.get("guard", "flag") not in ("off", False):
            c.add(("defense", "guard"), "the guard needs a reference table", "set reference")
        return
    path = c.inside(where, reference)
    names = {k: spec.get(k) for k in ("columns", "exclude", "categorical")}
    if path is None or not all(
        v is None or (isinstance(v, list) and all(isinstance(s, str) for s in v))
        for v in names.values()
    ):
        return  # reported already, or the schema reports it
    samples = spec.get("samples", 5000)
    alpha = spec.get("alpha", 0.01)
    if not isinstance(samples, int) or not isinstance(alpha, int | float) or not 0 < alpha <= 0.5:
        return
    try:
        table = read_table(
            path,
            reference,
            columns=names["columns"] or (),
            exclude=names["exclude"] or (),
            categorical=names["categorical"] or (),
            samples=samples,
        )
    except TableError as exc:
        c.add(where, str(exc))
        return
    if hook is not None or spec.get("score", "mahalanobis") in ("off", False):
        return
    if "numeric" not in table.kinds:
        c.add(
            ("defense", "score"),
            f"{reference} has no numeric column for the score",
            "set score: off (the guard still checks every column)",
        )
        return
    rows = len(score_rows(table.rows, table.kinds))
    calibration = rows - rows // 2
    needed = calibration_rows_needed(alpha)
    if calibration < needed:
        least = 10 / calibration if calibration else None
        c.add(
            ("defense", "alpha"),
            f"alpha {alpha:g} needs {needed} calibration rows, {2 * needed} in the sample "
            f"(half fit the score, half calibrate it); {reference} gives {rows} complete "
            "rows" + (f" of {table.total_rows}" if samples < table.total_rows else ""),
            "add rows to the reference"
            + (", raise samples" if samples < table.total_rows else "")
            + (f", or raise alpha to {least:.3g} or more" if least and least <= 0.5 else ""),
        )
