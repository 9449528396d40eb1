"""What the defense does against a black-box attacker, measured rather than claimed: ART's
HopSkipJump against an MLP on a correlated table, fixed seeds, through the serving process's
own DefenseMonitor (conformance/robustness.py, runtime/screen.py). Rows pushed just past the
decision boundary mostly pass (no cheap detector stops them; the README says so); rows pushed
four times as far are mostly flagged."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from omibuild.conformance.robustness import RobustnessError, attack
from omibuild.runtime.screen import DefenseMonitor

FEATURES = 10
ALPHA = 0.01
# the README's words ("Adversarial defense": what it does not detect) hold these figures
MOST_FLAGGED_AT_1X = 0.25
LEAST_FLAGGED_AT_4X = 0.40


def table(n: int, seed: int) -> np.ndarray:
    """Correlated features: three latent factors, each feature a mix of them plus noise."""
    rng = np.random.default_rng(seed)
    loadings = np.random.default_rng(99).normal(size=(3, FEATURES))
    return rng.normal(size=(n, 3)) @ loadings + rng.normal(scale=0.3, size=(n, FEATURES))


def reference_of(rows: np.ndarray) -> dict[str, object]:
    """The defense's reference as planning/analysis.py writes it."""
    half = len(rows) // 2
    names = [f"x{j}" for j in range(rows.shape[1])]
    return {
        "rows": len(rows),
        "features": [
            {
                "name": n,
                "kind": "numeric",
                "missing": False,
                "low": float(rows[:, j].min()),
                "high": float(rows[:, j].max()),
            }
            for j, n in enumerate(names)
        ],
        "score": {
            "columns": names,
            "fit": rows[:half].tolist(),
            "calibration": rows[half:].tolist(),
        },
    }


def test_hopskipjump_rows_are_flagged_as_the_readme_says() -> None:
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    train = table(4000, seed=1)
    y = (np.sin(train[:, 0]) + train[:, 1] * train[:, 2] > 0).astype(int)
    with warnings.catch_warnings():  # a fixed budget, converged or not: the same model each run
        warnings.simplefilter("ignore", ConvergenceWarning)
        model = MLPClassifier((32, 32), max_iter=300, random_state=0).fit(train, y)
    reference = table(4000, seed=2)
    monitor = DefenseMonitor({"alpha": ALPHA, "guard": "flag"}, reference_of(reference))

    def flagged(rows: np.ndarray) -> list[bool]:
        screening = monitor.screen(np.asarray(rows, dtype=float))
        assert screening is not None
        return screening.flagged

    held_out = table(60, seed=3)
    report = attack(model.predict, flagged, held_out, reference, seed=0)
    assert report.success >= 0.9, report  # the attack works: the test measures the defense
    assert report.flagged[1] <= MOST_FLAGGED_AT_1X, report
    assert report.flagged[4] >= LEAST_FLAGGED_AT_4X, report
    assert report.flagged[1] <= report.flagged[2] <= report.flagged[4], report
    # the reference-like rows themselves are flagged at about alpha
    assert np.mean(flagged(held_out)) <= 0.05


def test_a_regressor_is_not_attacked() -> None:
    reference = table(200, seed=4)
    with pytest.raises(RobustnessError, match="needs a classifier"):
        attack(
            lambda rows: np.asarray(rows)[:, 0],
            lambda rows: [False] * len(rows),
            reference[:5],
            reference,
        )
