"""omi.yaml's defense on the request path (issue #37): the DefenseMonitor screens each
request's rows with the guard and the score that runtime/defense.py defines, or with a team's
hook, on the predict lane before predict (once per merged call), counts what it saw, and
refuses violating rows under ``guard: reject``."""

from __future__ import annotations

import bisect
import json
import math
import threading
from dataclasses import dataclass
from operator import le
from pathlib import Path
from typing import Any

import numpy as np

from omibuild.runtime.defense import SMALL, Feature, Guard, Score
from omibuild.runtime.document import OmiDocument
from omibuild.runtime.faults import InputError, PredictError, fault
from omibuild.runtime.flavors import import_object

# p-value histogram buckets (upper bounds), as /defense and Prometheus show them
P_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0)
MAX_VIOLATIONS_SHOWN = 5  # per row, in a reply (the counters count them all)
# rows whose p-values no client waits for are scored together, this many at a time (or when a
# reader asks for the counters): one BLAS product for them all instead of one per request
DEFERRED_ROWS = 64
_FLOAT = np.dtype(float)  # a request's array of this dtype is screened without a conversion


@dataclass
class Screening:
    """One request's rows as the defense saw them (a client that asks gets these)."""

    p_values: list[float | None]
    flagged: list[bool]
    violations: list[list[tuple[str, str]]]  # per row: (feature, kind)

    def part(self, start: int, stop: int) -> Screening:
        """The screening of rows start..stop (one request's, of a merged call)."""
        return Screening(
            self.p_values[start:stop], self.flagged[start:stop], self.violations[start:stop]
        )

    def rows(self) -> list[dict[str, Any]]:
        """Each row as a reply shows it."""
        return [
            {
                "p_value": p,
                "flagged": f,
                "violations": [{"feature": n, "kind": k} for n, k in v[:MAX_VIOLATIONS_SHOWN]],
            }
            for p, f, v in zip(self.p_values, self.flagged, self.violations, strict=True)
        ]


class DefenseMonitor:
    """omi.yaml's defense in the serving process: screens each request's rows inline (guard,
    score or the team's hook), counts what it saw, refuses violating rows under guard: reject."""

    def __init__(
        self,
        spec: dict[str, Any],
        reference: dict[str, Any] | None,
        hook: Any = None,
    ) -> None:
        self.alpha = float(spec.get("alpha", 0.01))
        self.mode = str(spec.get("guard", "flag")) if reference else "off"
        self.hook = hook
        features = [Feature.from_json(f) for f in (reference or {}).get("features", [])]
        self.guard = Guard(features) if self.mode != "off" else None
        self.names = [f.name for f in features]
        self.numeric_only = all(f.kind == "numeric" for f in features)
        self.score: Score | None = None
        self.score_index: list[int] = []
        scored = (reference or {}).get("score")
        if scored and hook is None:
            self.score = Score.fit(np.asarray(scored["fit"]), np.asarray(scored["calibration"]))
            self.score_index = [self.names.index(n) for n in scored["columns"]]
        # the guard's numeric facts as plain lists, for one row in a Python loop (faster than
        # numpy's per-call overhead below about a hundred features) and as arrays for batches
        self._bounds = [
            (f.name, -math.inf if f.low is None else f.low, math.inf if f.high is None else f.high,
             f.missing)
            for f in features
        ]  # fmt: skip
        self._low = np.asarray([b[1] for b in self._bounds])
        self._high = np.asarray([b[2] for b in self._bounds])
        self._may_miss = np.asarray([b[3] for b in self._bounds], dtype=bool)
        self._lows, self._highs = self._low.tolist(), self._high.tolist()
        self._whole = self.score is not None and self.score_index == list(range(len(features)))
        self._row_shape = (1, len(features))
        self._fast = self.numeric_only and hook is None and bool(features)
        # above SMALL features, one row through numpy (4.5 us for 100 warm) beats the Python
        # loop (9 us: the guard's loop and the list back into an array for the score)
        self._wide = len(features) > SMALL
        self._lock = threading.Lock()
        self.rows = self.flagged = self.rejected = self.skipped = 0
        self.buckets = [0] * len(P_BUCKETS)
        self.p_sum = 0.0
        # rows to score later, and whether each broke the guard: tables (the score's columns)
        # and single rows (all the columns, as lists: no copy of the request's array to make)
        self._deferred: list[np.ndarray] = []
        self._deferred_violated: list[bool] = []
        self._deferred_rows: list[list[float]] = []
        self._deferred_rows_violated: list[bool] = []

    @classmethod
    def from_config(
        cls, document: OmiDocument, analysis_dir: Path, code_dir: Path
    ) -> DefenseMonitor | None:
        spec = document.defense
        if not spec:
            return None
        reference = None
        if spec.get("reference"):
            reference = json.loads((analysis_dir / spec["reference"]).read_bytes())
        hook = None
        if spec.get("hook"):
            hook = import_object(spec["hook"], code_dir)
        return cls(spec, reference, hook)

    # -- the request path ------------------------------------------------------------------
    def screen(self, inputs: Any, show: bool = True) -> Screening | None:
        """The rows' screening, counted (rows under guard: reject that break the guard count as
        rejected; ``refusal`` says what to answer). None when ``inputs`` are not rows of the
        reference's table (counted as skipped). Runs on the predict lane (lane.py), once for
        requests merged into one call.

        ``show``: false when no client waits for the rows' p-values (it did not ask for them):
        the guard runs now, the score later, with other such rows (DEFERRED_ROWS at a time, or
        when the counters are read), and the screening has no p-values (None)."""
        if type(inputs) is np.ndarray and inputs.shape == self._row_shape and self._fast:
            if self._wide:  # the common request, in few numpy calls
                row = inputs[0] if inputs.dtype is _FLOAT else inputs[0].astype(float)
                return self._one_wide(row, show)
            return self._one(inputs[0].tolist(), show)  # in plain Python
        table = self._table(inputs)
        if self._fast and isinstance(table, np.ndarray) and len(table) == 1:
            if self._wide:
                return self._one_wide(table[0], show)
            return self._one(table[0].tolist(), show)
        if table is None and self.hook is None:
            with self._lock:
                self.skipped += 1
            return None
        n = 0 if table is None else len(table)
        violations: list[list[tuple[str, str]]] = [[] for _ in range(n)]
        if self.guard is not None and table is not None:
            violations = self._guard(table)
        p_values: list[float | None] = [None] * n
        if self.hook is not None:
            p_values = self._hooked(inputs, n)
            if table is None:
                violations = [[] for _ in p_values]
        elif self.score is not None and table is not None and not show:
            numbers = self._numbers(table)  # kept: a copy where it is the request's own array
            return self._defer(numbers.copy() if numbers is table else numbers, violations)
        elif self.score is not None and table is not None:
            p_values = self._scores(table)
        flagged = [
            bool(v) or (p is not None and p <= self.alpha)
            for p, v in zip(p_values, violations, strict=True)
        ]
        self._count(p_values, flagged, violations)
        return Screening(p_values, flagged, violations)

    def refusal(self, screening: Screening | None, inputs: Any) -> InputError | None:
        """Under guard: reject, the 400 for a request whose rows break the guard: the first
        such row, its feature and the reference's fact, never the value. None otherwise."""
        if self.mode != "reject" or screening is None:
            return None
        bad = [i for i, v in enumerate(screening.violations) if v]
        if not bad:
            return None
        i = bad[0]
        name, kind = screening.violations[i][0]
        assert self.guard is not None
        row = self._table(inputs)[i]
        found = self.guard.check(row, count=False)
        fact = next(f for n_, k, f in found if (n_, k) == (name, kind))
        return InputError(
            f"defense rejected row {i}: feature `{name}` ({kind}): expected {fact}"
            + (f"; {len(bad)} rows break the guard" if len(bad) > 1 else "")
        )

    def _one(self, values: list[Any], show: bool) -> Screening:
        """One numeric row, the common request, as a list: the guard in a Python loop, the
        score through the Cholesky factor (Score.p_of; 3 us warm for four features), or later
        with others when no client waits for it."""
        found: list[tuple[str, str]] = []
        if self.guard is not None:
            for value, (name, low, high, may_miss) in zip(values, self._bounds, strict=True):
                if value != value:
                    if not may_miss:
                        found.append((name, "missing"))
                elif value < low or value > high:
                    found.append((name, "range"))
        p: float | None = None
        if self.score is not None:
            if not show:
                return self._defer_row(values, found)
            p = self.score.p_of(values if self._whole else [values[j] for j in self.score_index])
        flagged = bool(found) or (p is not None and p <= self.alpha)
        with self._lock:
            self._count_row(p, flagged, found)
        return Screening([p], [flagged], [found])

    def _one_wide(self, row: np.ndarray, show: bool) -> Screening:
        """One numeric row of many features, as an array. In a serving process every numpy
        call costs microseconds on a cold cache, whatever its size (measured in the server,
        100 features: the guard's sub, abs, compare and all() took 19 us, the score 18, and
        the cache the score's 80 kB matrix evicts cost the rest of the request 14 more), so the
        guard compares the row's values as a list against the bounds in two C loops (7 us;
        only a row that fails them takes the full test), and a row whose p-value no client
        waits for is scored later, with others."""
        found: list[tuple[str, str]] = []
        values = row.tolist()  # a copy, for later: a preprocess hook may write into the array
        if self.guard is not None and not (  # a missing value (NaN) fails both comparisons
            all(map(le, self._lows, values)) and all(map(le, values, self._highs))
        ):
            [found] = self._guard_numbers(row.reshape(1, -1))
        p: float | None = None
        if self.score is not None:
            if not show:
                return self._defer_row(values, found)
            p = self.score.p_value(row if self._whole else row[self.score_index])
        flagged = bool(found) or (p is not None and p <= self.alpha)
        with self._lock:
            self._count_row(p, flagged, found)
        return Screening([p], [flagged], [found])

    def _defer_row(self, values: list[float], found: list[tuple[str, str]]) -> Screening:
        """Count one row's guard violations now and keep the row (a list of all its columns)
        to score later, as _defer does."""
        with self._lock:
            self._count_guard(found)
            self._deferred_rows.append(values)
            self._deferred_rows_violated.append(bool(found))
            if len(self._deferred_rows) + len(self._deferred_violated) >= DEFERRED_ROWS:
                self._score_deferred()
        return Screening([None], [bool(found)], [found])

    def _defer(self, rows: np.ndarray, violations: list[list[tuple[str, str]]]) -> Screening:
        """Count the rows' guard violations now and keep the rows to score later; scores all
        kept rows once DEFERRED_ROWS are waiting."""
        with self._lock:
            for found in violations:
                self._count_guard(found)
            self._deferred.append(rows)
            self._deferred_violated += [bool(found) for found in violations]
            if len(self._deferred_rows) + len(self._deferred_violated) >= DEFERRED_ROWS:
                self._score_deferred()
        return Screening([None] * len(violations), [bool(v) for v in violations], violations)

    def _score_deferred(self) -> None:
        """Score and count the kept rows (the caller holds the lock): one batch, as p_values
        scores any table, so a row's p-value is the one it would have had at once."""
        if self.score is None or not (self._deferred or self._deferred_rows):
            return
        parts = self._deferred
        if self._deferred_rows:
            listed = np.array(self._deferred_rows, dtype=float)
            parts = [*parts, listed if self._whole else listed[:, self.score_index]]
        rows = np.concatenate(parts)
        violated = np.asarray(self._deferred_violated + self._deferred_rows_violated, dtype=bool)
        self._deferred, self._deferred_violated = [], []
        self._deferred_rows, self._deferred_rows_violated = [], []
        p = self.score.p_values(rows)
        self.rows += len(p)
        self.flagged += int(np.count_nonzero(violated | (p <= self.alpha)))
        self.p_sum += float(p.sum())
        where = np.searchsorted(P_BUCKETS, p, side="left")  # as bisect_left, row by row
        for b, count in enumerate(np.bincount(where, minlength=len(P_BUCKETS)).tolist()):
            self.buckets[b] += count

    def _table(self, inputs: Any) -> Any:
        """The request's rows in the reference's column order: a 2-D float array when they
        are numbers, else a list of rows; None when they are not such a table."""
        k = len(self.names)
        if not k:
            return None
        if hasattr(inputs, "columns") and hasattr(inputs, "to_dict"):  # pandas
            inputs = {str(c): list(inputs[c]) for c in inputs.columns}
        if isinstance(inputs, np.ndarray):
            if inputs.dtype.kind in "biuf" and inputs.ndim in (1, 2) and inputs.shape[-1] == k:
                return inputs.reshape(-1, k).astype(float, copy=False)
            inputs = inputs.tolist() if inputs.ndim in (1, 2) else None
        if isinstance(inputs, dict):
            if not all(isinstance(inputs.get(n), list) for n in self.names):
                return None
            columns = [inputs[n] for n in self.names]
            return (
                list(zip(*columns, strict=False)) if len({len(c) for c in columns}) == 1 else None
            )
        if not isinstance(inputs, list) or not inputs:
            return None
        if all(isinstance(r, dict) for r in inputs):
            return [[r.get(n) for n in self.names] for r in inputs]
        if all(isinstance(r, list) and len(r) == k for r in inputs):
            return inputs
        if len(inputs) == k and not any(isinstance(v, list | dict) for v in inputs):
            return [inputs]
        return None

    def _guard(self, table: Any) -> list[list[tuple[str, str]]]:
        assert self.guard is not None
        if isinstance(table, np.ndarray) and self.numeric_only:
            return self._guard_numbers(table)
        return [
            [(name, kind) for name, kind, _ in self.guard.check(row, count=False)] for row in table
        ]

    def _guard_numbers(self, table: np.ndarray) -> list[list[tuple[str, str]]]:
        """The guard over a numeric array at numpy's speed; rows without a violation cost no
        Python loop."""
        assert self.guard is not None
        features = self.guard.features
        missing = np.isnan(table)
        bad = (missing & ~self._may_miss) | (
            ~missing & ((table < self._low) | (table > self._high))
        )
        out: list[list[tuple[str, str]]] = [[] for _ in range(len(table))]
        for i, j in zip(*np.nonzero(bad), strict=True):
            out[int(i)].append((features[j].name, "missing" if missing[i, j] else "range"))
        return out

    def _numbers(self, table: Any) -> np.ndarray:
        """The score's columns of the table, as floats (``table`` itself where it is that)."""
        if isinstance(table, np.ndarray) and len(self.score_index) == table.shape[1]:
            return table
        return np.asarray(
            [[_float(row[j]) for j in self.score_index] for row in table], dtype=float
        )

    def _scores(self, table: Any) -> list[float | None]:
        assert self.score is not None
        numbers = self._numbers(table)
        if len(numbers) == 1:
            return [self.score.p_value(numbers[0])]
        return [float(p) for p in self.score.p_values(numbers)]

    def _hooked(self, inputs: Any, n: int) -> list[float | None]:
        try:
            result = list(self.hook(inputs))
            values = [None if v is None else float(v) for v in result]
        except Exception as exc:
            raise fault(PredictError, "defense hook failed", exc) from None
        if n and len(values) != n:
            raise PredictError(f"defense hook gave {len(values)} p-values for {n} rows")
        return values

    def _count(
        self,
        p_values: list[float | None],
        flagged: list[bool],
        violations: list[list[tuple[str, str]]],
    ) -> None:
        """Every counter, under the lock once."""
        with self._lock:
            for p, f, found in zip(p_values, flagged, violations, strict=True):
                self._count_row(p, f, found)

    def _count_row(self, p: float | None, flagged: bool, found: list[tuple[str, str]]) -> None:
        """One row's counts (the caller holds the lock): rows, flags, the guard's violations,
        the p-value histogram."""
        self.rows += 1
        self.flagged += flagged
        self._count_guard(found)
        if p is not None:
            self.p_sum += p
            self.buckets[bisect.bisect_left(P_BUCKETS, p)] += 1

    def _count_guard(self, found: list[tuple[str, str]]) -> None:
        """One row's guard violations (the caller holds the lock); a row that breaks the guard
        is rejected under guard: reject."""
        if found:
            self.rejected += self.mode == "reject"
            for key in found:
                self.guard.violations[key] = self.guard.violations.get(key, 0) + 1  # type: ignore[union-attr]

    # -- what is reported ------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        with self._lock:
            self._score_deferred()  # the counters include every row screened so far
            violations = dict(self.guard.violations) if self.guard is not None else {}
            scored = sum(self.buckets)
            return {
                "alpha": self.alpha,
                "guard": self.mode,
                "score": "hook"
                if self.hook is not None
                else "mahalanobis"
                if self.score
                else "off",
                "features": len(self.names),
                "rows": self.rows,
                "flagged": self.flagged,
                "rejected": self.rejected,
                "skipped_requests": self.skipped,
                "guard_violations": [
                    {"feature": name, "kind": kind, "count": count}
                    for (name, kind), count in sorted(violations.items())
                ],
                "p_values": {
                    "scored": scored,
                    "buckets": [
                        {"le": bound, "count": sum(self.buckets[: b + 1])}
                        for b, bound in enumerate(P_BUCKETS)
                    ],
                },
            }

    def metrics(self, label: Any) -> list[str]:
        """Prometheus text lines; ``label`` escapes a label value."""
        s = self.status()
        lines = [
            "# TYPE omi_defense_rows_total counter",
            f"omi_defense_rows_total {s['rows']}",
            "# TYPE omi_defense_rows_flagged_total counter",
            f"omi_defense_rows_flagged_total {s['flagged']}",
            "# TYPE omi_defense_rows_rejected_total counter",
            f"omi_defense_rows_rejected_total {s['rejected']}",
            "# TYPE omi_defense_guard_violations_total counter",
        ]
        for v in s["guard_violations"]:
            lines.append(
                f'omi_defense_guard_violations_total{{feature="{label(v["feature"])}",'
                f'kind="{v["kind"]}"}} {v["count"]}'
            )
        lines.append("# TYPE omi_defense_p_value histogram")
        for bucket in s["p_values"]["buckets"]:
            lines.append(f'omi_defense_p_value_bucket{{le="{bucket["le"]}"}} {bucket["count"]}')
        scored = s["p_values"]["scored"]
        lines.append(f'omi_defense_p_value_bucket{{le="+Inf"}} {scored}')
        lines.append(f"omi_defense_p_value_sum {self.p_sum:.6g}")
        lines.append(f"omi_defense_p_value_count {scored}")
        return lines


def _float(value: Any) -> float:
    try:
        return float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError):
        return math.nan


def shown_rows(screening: Screening | None) -> list[dict[str, Any]] | None:
    """A request's screening as a reply shows it; None where its inputs were not rows of the
    reference's table."""
    return screening.rows() if screening is not None else None
