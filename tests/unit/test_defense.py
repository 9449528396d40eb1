"""The defense's statistics (runtime/defense.py), measured as issue #37 asks: calibration of
the conformal p-values over 20 seeds, power against correlation-breaking rows and unit errors,
and the guard's violations, on a correlated synthetic table."""

from __future__ import annotations

import numpy as np
import pytest

from omibuild.manifest.sections import calibration_rows_needed
from omibuild.runtime.defense import Guard, Score, ledoit_wolf, split

ALPHA = 0.01
FEATURES = 10


class Table:
    """Rows of ten features driven by two latent factors (correlations about 0.9), of very
    different scales, and one exactly derived column; the loadings fixed by the seed."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.loadings = self.rng.normal(size=(2, FEATURES - 1)) + np.array([[2.0], [-1.0]])

    def rows(self, n: int) -> np.ndarray:
        latent = self.rng.normal(size=(n, 2))
        x = latent @ self.loadings + 0.3 * self.rng.normal(size=(n, FEATURES - 1))
        x *= np.linspace(0.5, 50, FEATURES - 1)
        return np.column_stack([x, x[:, 0] + x[:, 1]])  # derived: a singular covariance


def fitted(seed: int, n: int = 4000) -> tuple[Score, Table]:
    source = Table(seed)
    fit, calibration = split(source.rows(n), seed)
    assert len(calibration) >= calibration_rows_needed(ALPHA)
    return Score.fit(fit, calibration), source


def test_p_values_are_calibrated_over_20_seeds() -> None:
    rates = []
    for seed in range(20):
        score, source = fitted(seed)
        fresh = source.rows(5000)
        rates.append(float((score.p_values(fresh) <= ALPHA).mean()))
    assert 0.007 <= float(np.mean(rates)) <= 0.013, rates
    assert max(rates) <= 0.02, rates


def test_correlation_breaking_rows_and_unit_errors_are_flagged() -> None:
    score, source = fitted(1)
    fresh = source.rows(4000)
    shuffled = np.column_stack([source.rng.permutation(fresh[:, j]) for j in range(FEATURES)])
    assert (score.p_values(shuffled) <= ALPHA).mean() >= 0.80
    units = fresh.copy()
    units[:, 3] *= 1000  # metres written as millimetres
    assert (score.p_values(units) <= ALPHA).mean() >= 0.95
    missing = fresh[:10].copy()
    missing[:, 2] = np.nan
    assert (score.p_values(missing) <= ALPHA).all()  # no value is as far as a missing one
    for row in (*fresh[:50], *units[:5], *missing[:2]):  # the one-row path agrees
        assert score.p_value(row) == pytest.approx(float(score.p_values(row[None])[0]))


def test_shrinkage_keeps_a_derived_column_finite() -> None:
    x = Table(3).rows(500)
    shrunk = ledoit_wolf(x)
    assert np.all(np.isfinite(np.linalg.inv(shrunk)))  # invertible despite the derived column
    assert np.linalg.matrix_rank(np.cov(x.T)) < FEATURES  # where the sample covariance is not


def test_the_guard_names_each_violation_and_counts_it() -> None:
    names = ["age", "city", "income"]
    rows = [[30, "paris", 1000.0], [45, "oslo", None], [52, "paris", 3000.0]]
    guard = Guard.from_table(names, rows, {"city"})
    assert guard.check([40, "oslo", 2000.0]) == []
    assert guard.check([40, "oslo", None]) == []  # income was missing in the reference too
    assert guard.check([None, "rome", 99999.0]) == [
        ("age", "missing", "the reference has no missing values"),
        ("city", "category", "one of its 2 reference categories"),
        ("income", "range", "within the reference's [1000, 3000]"),
    ]
    assert guard.check(["old", "paris", 1500.0]) == [("age", "type", "a number")]
    assert guard.violations == {
        ("age", "missing"): 1, ("city", "category"): 1, ("income", "range"): 1, ("age", "type"): 1,
    }  # fmt: skip


@pytest.mark.parametrize("alpha, needed", [(0.01, 1000), (0.05, 200), (0.001, 10000)])
def test_the_calibration_half_must_hold_ten_over_alpha_rows(alpha: float, needed: int) -> None:
    assert calibration_rows_needed(alpha) == needed


@pytest.mark.parametrize("tables", [1, 3])  # 10 features (plain Python), 30 (numpy)
def test_one_row_screens_as_the_batch_path_does(tables: int) -> None:
    """The one-row paths (up to 16 features a Python loop and the Cholesky factor, above it
    numpy on the row) and the batch path (numpy over the array) give the same p-values, flags
    and violations, and count alike."""
    from omibuild.runtime.screen import DefenseMonitor
    from tests.unit.test_defense_attack import reference_of, table

    def wide(n: int, seed: int) -> np.ndarray:
        return np.hstack([table(n, seed=seed + 10 * t) for t in range(tables)])

    reference = reference_of(wide(2400, seed=5))
    rows = wide(40, seed=6)
    rows[3, 2] = 1e3  # out of range
    rows[7, 0] = np.nan  # missing, which the reference never is
    rows[9] = rows[9, ::-1]  # against the correlations
    batch = DefenseMonitor({"alpha": 0.01}, reference)
    single = DefenseMonitor({"alpha": 0.01}, reference)
    together = batch.screen(rows)
    alone = [single.screen(rows[i : i + 1]) for i in range(len(rows))]
    assert together is not None and all(s is not None for s in alone)
    assert [s.p_values[0] for s in alone] == pytest.approx(together.p_values, rel=1e-9)
    assert [s.flagged[0] for s in alone] == together.flagged
    assert [s.violations[0] for s in alone] == together.violations
    assert together.violations[3] == [("x2", "range")]
    assert together.violations[7] == [("x0", "missing")] and together.flagged[9]
    assert batch.status() == single.status()


@pytest.mark.parametrize("tables", [1, 3])  # 10 features (plain Python), 30 (numpy)
def test_rows_no_client_waits_for_are_scored_later_and_count_alike(tables: int) -> None:
    """Rows screened with show=False (no client asked for their p-values) are guarded at
    once and scored later, DEFERRED_ROWS at a time or when the counters are read: the counters
    equal those of rows scored one by one, even when the request's array changes afterwards
    (a preprocess hook may write into it), and no more than DEFERRED_ROWS rows wait."""
    from omibuild.runtime.screen import DEFERRED_ROWS, DefenseMonitor
    from tests.unit.test_defense_attack import reference_of, table

    def wide(n: int, seed: int) -> np.ndarray:
        return np.hstack([table(n, seed=seed + 10 * t) for t in range(tables)])

    reference = reference_of(wide(2400, seed=5))
    rows = wide(3 * DEFERRED_ROWS + 5, seed=7)
    rows[3, 2], rows[70, 0] = 1e3, np.nan  # out of range, missing
    rows[9] = rows[9, ::-1] * 3  # against the correlations, far out
    now = DefenseMonitor({"alpha": 0.01}, reference)
    later = DefenseMonitor({"alpha": 0.01}, reference)
    batch = DefenseMonitor({"alpha": 0.01}, reference)
    shown = [now.screen(rows[i : i + 1]) for i in range(len(rows))]
    requests = rows.copy()
    quiet = [later.screen(requests[i : i + 1], show=False) for i in range(len(rows))]
    merged = batch.screen(requests[:100], show=False)
    batch.screen(requests[100:], show=False)
    requests[:] = 0.0  # what a hook might do to the request's array
    assert all(s is not None for s in shown + quiet) and merged is not None
    assert [q.violations for q in quiet] == [s.violations for s in shown]  # type: ignore[union-attr]
    assert quiet[3].flagged == [True] and quiet[70].flagged == [True]  # type: ignore[index,union-attr]
    # no p-value in the reply, flags from the guard alone; scored DEFERRED_ROWS at a time
    assert all(q.p_values == [None] for q in quiet)  # type: ignore[union-attr]
    assert merged.p_values == [None] * 100
    assert merged.flagged[:10] == [bool(s.violations[0]) for s in shown[:10]]  # type: ignore[union-attr]
    assert later.rows >= len(rows) - DEFERRED_ROWS
    assert len(later._deferred_rows) < DEFERRED_ROWS
    assert later.status() == now.status() == batch.status()
    assert now.status()["flagged"] >= 3 and later._deferred_rows == batch._deferred == []


def test_requests_merged_on_the_lane_are_screened_once_and_a_refused_one_fails_alone() -> None:
    """The lane screens merged requests in one pass, hands each its own rows' screening, and
    under guard: reject fails only the request whose row breaks the guard."""
    import asyncio
    import threading

    from omibuild.runtime.faults import InputError
    from omibuild.runtime.lane import PredictLane
    from omibuild.runtime.screen import DefenseMonitor
    from tests.unit.test_defense_attack import reference_of, table

    reference = reference_of(table(2400, seed=5))
    monitor = DefenseMonitor({"alpha": 0.01, "guard": "reject"}, reference)
    alone = DefenseMonitor({"alpha": 0.01, "guard": "reject"}, reference)
    gate = threading.Event()
    calls: list[int] = []

    def predict(rows: np.ndarray) -> np.ndarray:
        gate.wait(10)  # the first call holds the lane: the others queue up and merge
        calls.append(len(rows))
        return rows.sum(axis=1)

    lane = PredictLane(predict, threads=1, coalesce_rows=64)
    lane.screener = monitor
    requests = [table(2, seed=10 + i) for i in range(5)]
    requests[3][1, 4] = 1e3  # this request's second row is out of range

    async def send() -> list[object]:
        first = lane.submit(requests[0], screen=True)
        await asyncio.sleep(0.05)
        rest = [lane.submit(r, screen=True) for r in requests[1:]]
        await asyncio.sleep(0.05)
        gate.set()
        return await asyncio.gather(first, *rest, return_exceptions=True)

    answers = asyncio.run(send())
    assert isinstance(answers[3], InputError)
    assert str(answers[3]).startswith("defense rejected row 1: feature `x4` (range)")
    for i in (0, 1, 2, 4):
        outputs, screening = answers[i]  # type: ignore[misc]
        assert outputs.tolist() == pytest.approx(requests[i].sum(axis=1).tolist())
        own = alone.screen(requests[i])
        assert own is not None and screening.p_values == pytest.approx(own.p_values)
    assert calls == [2, 6] and lane.coalesced == 1  # the refused request never reached predict
    assert monitor.status()["rows"] == 10 and monitor.status()["rejected"] == 1
