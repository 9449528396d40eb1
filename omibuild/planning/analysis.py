"""Explain's background and drift's reference, reduced at build time to what the image needs.

The files are functions of the tables' bytes and the manifest's settings only (a fixed-seed
sample, sorted keys, no floats printed two ways), so the plan digest and the layer they land
in are the same on every machine."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from omibuild.manifest.model import Manifest
from omibuild.manifest.tables import Table, read_table
from omibuild.runtime.categories import category_key

BACKGROUND = "explain/background.json"
REFERENCE = "drift/reference.json"


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
    return tuple(out)


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
