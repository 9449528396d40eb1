"""Drift detection inside the serving process.

The rows of every answered request are tested, in windows of ``window`` rows, against the
reference the build reduced from a table in the model repository (planning/analysis.py):
two-sample Kolmogorov-Smirnov for numeric features, chi-squared homogeneity of the category
counts for categorical ones (scipy), with a Bonferroni or Benjamini-Hochberg correction over
features. A window is drift when any corrected p-value is below ``threshold``, so for a stream
drawn from the reference distribution the chance that a window is flagged is at most
``threshold`` (Bonferroni; with BH, the expected share of wrongly named features).

The request path only queues the request's inputs (``offer``: an append to a deque); one
thread turns them into columns and tests each full window. That thread wakes when a window's
rows are waiting, or every FLUSH_S: waking it for every request (a SimpleQueue) cost 13% of
the predict throughput of a one-core server (bench group `analysis`), in thread switches. Rows
queued beyond MAX_PENDING_ROWS are dropped and counted, so a burst can neither grow memory nor
slow predict."""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np

from omibuild.runtime.categories import category_key
from omibuild.runtime.document import OmiDocument

MAX_PENDING_ROWS = 100_000
MAX_WINDOW_CHUNKS = 10_000  # requests drained into one batch of columns at most
FLUSH_S = 0.5  # the longest a partial window's rows wait to be counted


class DriftMonitor:
    def __init__(self, reference: dict[str, Any], spec: dict[str, Any]) -> None:
        self.features: list[dict[str, Any]] = reference["features"]
        self.names = [f["name"] for f in self.features]
        self.kinds = [f["kind"] for f in self.features]
        self.reference: list[Any] = [
            np.asarray(f["values"], dtype=float) if f["kind"] == "numeric" else f["counts"]
            for f in self.features
        ]
        self.window = int(spec["window"])
        self.threshold = float(spec["threshold"])
        self.correction = str(spec.get("correction", "bonferroni"))
        self._queue: deque[tuple[int, Any]] = deque()
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._pending = 0  # rows queued, not yet taken by the thread
        self._started = False
        self._buffer: list[list[np.ndarray]] = []  # chunks of columns, not yet a full window
        self._buffered = 0
        self.rows = 0  # rows tested or waiting for their window
        self.skipped = 0  # rows that were not a table of this reference's width
        self.dropped = 0  # rows dropped because the queue was full
        self.windows = 0
        self.windows_drifted = 0
        self.last: dict[str, Any] | None = None
        self.busy = False

    @classmethod
    def from_config(cls, document: OmiDocument, analysis_dir: Path) -> DriftMonitor | None:
        spec = document.drift
        if not spec:
            return None
        reference = json.loads((analysis_dir / spec["reference"]).read_bytes())
        return cls(reference, spec)

    # -- the request path ------------------------------------------------------------------
    def offer(self, inputs: Any) -> None:
        """Queue an answered request's inputs for accounting. Cheap: no conversion here."""
        n = _row_count(inputs)
        with self._lock:
            room = MAX_PENDING_ROWS - self._pending
            if n > room:  # keep what fits, as documented; drop and count the rest
                head = _first_rows(inputs, room) if room > 0 else None
                self.dropped += n if head is None else n - room
                if head is None:
                    return
                inputs, n = head, room
            self._pending += n
            self._queue.append((n, inputs))
            full = self._pending >= self.window
        if not self._started:
            self.start()
        if full:
            self._wake.set()

    def start(self) -> None:
        """Start the accounting thread (the model service does once the model is ready; the
        first offer does otherwise). Its first act imports scipy.stats, so the first window
        does not stall requests with an import."""
        with self._lock:
            if self._started:
                return
            self._started = True
        threading.Thread(target=self._work, name="omi-drift", daemon=True).start()

    # -- the accounting thread -------------------------------------------------------------
    def _work(self) -> None:
        import scipy.stats  # noqa: F401  (see start)

        while True:
            self._wake.wait(FLUSH_S)
            self._wake.clear()
            batch: list[tuple[int, Any]] = []
            with self._lock:
                while self._queue and len(batch) < MAX_WINDOW_CHUNKS:
                    batch.append(self._queue.popleft())
                self.busy = bool(batch)
            if not batch:
                continue
            try:
                self._take(batch)
            finally:
                self.busy = False

    def _take(self, batch: list[tuple[int, Any]]) -> None:
        taken = sum(n for n, _ in batch)
        arrays: list[Any] = []
        others: list[Any] = []
        for _, inputs in batch:
            (arrays if _is_numeric_table(inputs, len(self.names)) else others).append(inputs)
        chunks: list[list[np.ndarray]] = []
        if arrays:  # the common case, one concatenation for the whole batch
            table = np.concatenate([a.reshape(-1, len(self.names)) for a in arrays])
            chunks.append([table[:, j] for j in range(len(self.names))])
        skipped = 0
        for inputs in others:
            columns = self._columns(inputs)
            if columns is None:
                skipped += _row_count(inputs)
            else:
                chunks.append(columns)
        with self._lock:
            self._pending -= taken
            self.skipped += skipped
        for columns in chunks:
            self._buffer.append(columns)
            with self._lock:
                self._buffered += len(columns[0])
                self.rows += len(columns[0])
            while self._buffered >= self.window:
                self._test_window()

    def _columns(self, inputs: Any) -> list[np.ndarray] | None:
        """One request's rows as columns in the reference's order; None when they are not a
        table of its width (a list of rows, a list of objects with its column names, a dict
        of columns, or one row)."""
        k = len(self.names)
        if hasattr(inputs, "to_dict") and hasattr(inputs, "columns"):  # pandas
            inputs = {str(c): list(inputs[c]) for c in inputs.columns}
        if isinstance(inputs, np.ndarray):
            inputs = inputs.tolist() if inputs.dtype == object else None
        if isinstance(inputs, dict):
            if not all(name in inputs for name in self.names):
                return None
            cols = [inputs[name] for name in self.names]
            if not all(isinstance(c, list) for c in cols) or len({len(c) for c in cols}) != 1:
                return None
            return [np.asarray(c, dtype=object) for c in cols]
        if not isinstance(inputs, list) or not inputs:
            return None
        if all(isinstance(r, dict) for r in inputs):
            return [np.asarray([r.get(name) for r in inputs], dtype=object) for name in self.names]
        if all(isinstance(r, list) and len(r) == k for r in inputs):
            return [np.asarray(c, dtype=object) for c in zip(*inputs, strict=True)]
        if len(inputs) == k and not any(isinstance(v, list | dict) for v in inputs):
            return [np.asarray([v], dtype=object) for v in inputs]
        return None

    def _test_window(self) -> None:
        need = self.window
        taken: list[list[np.ndarray]] = []
        while need:
            chunk = self._buffer[0]
            n = len(chunk[0])
            if n <= need:
                taken.append(self._buffer.pop(0))
                need -= n
            else:
                taken.append([c[:need] for c in chunk])
                self._buffer[0] = [c[need:] for c in chunk]
                need = 0
        columns = [np.concatenate([chunk[j] for chunk in taken]) for j in range(len(self.names))]
        result = self.test(columns)
        with self._lock:  # one step, so a status never shows a window's rows as neither
            self._buffered -= self.window  # waiting nor tested
            self.windows += 1
            self.windows_drifted += bool(result["drift"])
            self.last = result

    def test(self, columns: list[np.ndarray]) -> dict[str, Any]:
        """One window's columns against the reference."""
        from scipy import stats

        features = []
        for name, kind, ref, column in zip(
            self.names, self.kinds, self.reference, columns, strict=True
        ):
            if kind == "numeric":
                values = _floats(column)
                if len(values) == 0:
                    statistic, p = 0.0, 1.0
                else:
                    # asymptotic p-value: scipy's default for these sizes is its exact one, up
                    # to 18 ms per feature holding the GIL (a window of one repeated row), which
                    # took predict throughput to 0.84x of the image without drift; the
                    # asymptotic one is 1.8 ms and agrees to the second digit at window 500
                    res = stats.ks_2samp(ref, values, method="asymp")
                    statistic, p = float(res.statistic), float(res.pvalue)
                test = "ks"
            else:
                statistic, p = _chi2(ref, column, stats)
                test = "chi2"
            features.append(
                {"name": name, "kind": kind, "test": test, "statistic": statistic, "p_value": p}
            )
        adjusted = _corrected([f["p_value"] for f in features], self.correction)
        for feature, q in zip(features, adjusted, strict=True):
            feature["p_adjusted"] = q
            feature["drift"] = q < self.threshold
        drifted = [f["name"] for f in features if f["drift"]]
        return {
            "drift": bool(drifted),
            "features_drifted": drifted,
            "features": features,
            "rows": len(columns[0]) if columns else 0,
            "at": time.time(),
        }

    # -- what is reported ------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        with self._lock:
            last = self.last
            return {
                "window": self.window,
                "threshold": self.threshold,
                "correction": self.correction,
                "features": [
                    {"name": n, "kind": k} for n, k in zip(self.names, self.kinds, strict=True)
                ],
                "rows": self.rows,
                "rows_pending": self._pending + self._buffered,
                "rows_skipped": self.skipped,
                "rows_dropped": self.dropped,
                "windows": self.windows,
                "windows_drifted": self.windows_drifted,
                "drift": bool(last and last["drift"]),
                "features_drifted": list(last["features_drifted"]) if last else [],
                "last_window": last,
            }

    def idle(self) -> bool:
        """Every offered row has been taken (tests and benches wait for this)."""
        with self._lock:
            return self._pending == 0 and not self.busy

    def metrics(self, label: Any) -> list[str]:
        """Prometheus text lines; ``label`` escapes a label value."""
        s = self.status()
        lines = [
            "# TYPE omi_drift_detected gauge",
            f"omi_drift_detected {int(s['drift'])}",
            "# TYPE omi_drift_windows_total counter",
            f"omi_drift_windows_total {s['windows']}",
            "# TYPE omi_drift_windows_drifted_total counter",
            f"omi_drift_windows_drifted_total {s['windows_drifted']}",
            "# TYPE omi_drift_rows_total counter",
            f"omi_drift_rows_total {s['rows']}",
            "# TYPE omi_drift_rows_skipped_total counter",
            f"omi_drift_rows_skipped_total {s['rows_skipped']}",
            "# TYPE omi_drift_rows_dropped_total counter",
            f"omi_drift_rows_dropped_total {s['rows_dropped']}",
        ]
        last = s["last_window"]
        if last:
            for metric, key in (
                ("omi_drift_score", "statistic"),
                ("omi_drift_p_value", "p_value"),
                ("omi_drift_feature_detected", "drift"),
            ):
                lines.append(f"# TYPE {metric} gauge")
                for f in last["features"]:
                    lines.append(f'{metric}{{feature="{label(f["name"])}"}} {float(f[key]):.6g}')
        return lines


def _first_rows(inputs: Any, count: int) -> Any:
    """The first ``count`` rows of a request's inputs, in the same form; None where they are
    not rows this can cut (the whole request is then dropped)."""
    if hasattr(inputs, "iloc"):  # pandas
        return inputs.iloc[:count]
    if isinstance(inputs, list | np.ndarray):
        return inputs[:count]
    if isinstance(inputs, dict) and all(isinstance(v, list | np.ndarray) for v in inputs.values()):
        return {k: v[:count] for k, v in inputs.items()}
    return None


def _row_count(inputs: Any) -> int:
    shape = getattr(inputs, "shape", None)
    if shape is not None:
        return int(shape[0]) if len(shape) >= 2 else 1
    if isinstance(inputs, list):
        return len(inputs) if inputs and isinstance(inputs[0], list | dict) else 1
    if isinstance(inputs, dict):
        first = next(iter(inputs.values()), None)
        return len(first) if isinstance(first, list) else 1
    return 1


def _is_numeric_table(inputs: Any, k: int) -> bool:
    return (
        isinstance(inputs, np.ndarray)
        and inputs.dtype.kind in "biuf"
        and inputs.ndim in (1, 2)
        and inputs.shape[-1] == k
    )


def _floats(column: np.ndarray) -> np.ndarray:
    if column.dtype.kind in "biuf":
        values = column.astype(float)
    else:
        out = []
        for v in column:
            try:
                out.append(float(v))
            except (TypeError, ValueError):
                continue
        values = np.asarray(out, dtype=float)
    return values[np.isfinite(values)]


def _chi2(reference: dict[str, int], column: np.ndarray, stats: Any) -> tuple[float, float]:
    seen: dict[str, int] = {}
    for v in column:
        key = category_key(v)
        if key is not None:
            seen[key] = seen.get(key, 0) + 1
    categories = sorted(set(reference) | set(seen))
    if not seen or len(categories) < 2:
        return 0.0, 1.0
    table = [[reference.get(c, 0) for c in categories], [seen.get(c, 0) for c in categories]]
    res = stats.chi2_contingency(table, correction=False)
    return float(res.statistic), float(res.pvalue)


def _corrected(p_values: list[float], correction: str) -> list[float]:
    if correction == "bonferroni":
        return [min(1.0, p * len(p_values)) for p in p_values]
    from scipy import stats  # Benjamini-Hochberg adjusted p-values

    return [float(q) for q in stats.false_discovery_control(p_values, method="bh")]
