"""Explain's background, drift's and defense's reference, reduced at build time to what the
image needs.

The files are functions of the tables' bytes and the manifest's settings only (a fixed-seed
sample, sorted keys, no floats printed two ways), so the plan digest and the layer they land
in are the same on every machine."""

from __future__ import annotations

import json
import random
from collections import Counter
from typing import Any

from omibuild.manifest.model import Defense, Manifest
from omibuild.manifest.sections import score_rows
from omibuild.manifest.tables import Table, read_table
from omibuild.runtime.categories import category_key

BACKGROUND = "explain/background.json"
REFERENCE = "drift/reference.json"
DEFENSE = "defense/reference.json"
SPLIT_SEED = 0


def reduce(m: Manifest) -> tuple[tuple[str, bytes], ...]:
    """(path under /opt/omi/analysis, bytes) for each section the manifest has. Raises
    TableError (validation has already read the same files, so only a file that changed in
    between gets here)."""
    out: list[tuple[str, bytes]] = []
    if m.explain is not None and m.explain.background:
        e, background = m.explain, m.explain.background
        table = read_table(
            m.root / background,
            background,
            columns=e.columns,
            exclude=e.exclude,
            samples=e.samples,
            numeric_only=True,
        )
        body = {"columns": list(table.columns), "rows": [list(r) for r in table.rows]}
        out.append((BACKGROUND, _dump(body)))
    if m.drift is not None:
        d = m.drift
        table = read_table(
            m.root / d.reference,
            d.reference,
            columns=d.columns,
            exclude=d.exclude,
            categorical=d.categorical,
            samples=d.samples,
        )
        out.append((REFERENCE, _dump(_reference(table))))
    if m.defense is not None and m.defense.reference:
        out.append((DEFENSE, _dump(_defense(m, m.defense, m.defense.reference))))
    return tuple(out)


def _defense(m: Manifest, d: Defense, reference: str) -> dict[str, Any]:
    """The guard's facts over every row of the table, and the score's sample (its complete
    numeric rows) shuffled with a fixed seed and halved: a fit half, a calibration half."""
    table = read_table(
        m.root / reference,
        reference,
        columns=d.columns,
        exclude=d.exclude,
        categorical=d.categorical,
        samples=d.samples,
        facts=True,
    )
    features = []
    for name, kind, fact in zip(table.columns, table.kinds, table.facts, strict=True):
        feature: dict[str, Any] = {"name": name, "kind": kind, "missing": fact.missing}
        if kind == "numeric":
            feature |= {"low": fact.low, "high": fact.high}
        elif fact.categories is not None:
            feature["categories"] = sorted(fact.categories)
        features.append(feature)
    body: dict[str, Any] = {"rows": table.total_rows, "features": features}
    if d.score != "off":
        rows = score_rows(table.rows, table.kinds)
        random.Random(SPLIT_SEED).shuffle(rows)
        half = len(rows) // 2
        body["score"] = {
            "columns": [
                n for n, k in zip(table.columns, table.kinds, strict=True) if k == "numeric"
            ],
            "fit": rows[:half],
            "calibration": rows[half:],
        }
    return body


def _reference(table: Table) -> dict[str, Any]:
    """Per feature what its test needs: the sorted sample of a numeric column (two-sample
    Kolmogorov-Smirnov), the category counts of a categorical one (chi-squared)."""
    features: list[dict[str, Any]] = []
    for j, (name, kind) in enumerate(zip(table.columns, table.kinds, strict=True)):
        values = [row[j] for row in table.rows if row[j] is not None]
        if kind == "numeric":
            numbers = [float(v) for v in values if isinstance(v, float)]
            features.append({"name": name, "kind": kind, "values": sorted(numbers)})
        else:
            counts = Counter(k for k in map(category_key, values) if k is not None)
            features.append({"name": name, "kind": kind, "counts": dict(sorted(counts.items()))})
    return {"rows": len(table.rows), "total_rows": table.total_rows, "features": features}


def _dump(body: dict[str, Any]) -> bytes:
    return (json.dumps(body, sort_keys=True, separators=(",", ":")) + "\n").encode()
