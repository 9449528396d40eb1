"""How far a black-box attacker must push a row to change the model's answer, and how much of
that the defense catches: ART's HopSkipJump (Chen, Jordan and Wainwright 2020, a decision-based
attack that needs only the model's answers) through any predict function. `check --robustness
N` runs it through the image's own V2 endpoint; the unit tests run it in process.

ART is the `omibuild[robustness]` extra, never in an image."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

SCALES = (1, 2, 4)
Found = tuple[str, bool, str]  # a finding of check's: (requirement, ok, detail)
MAX_CLASSES = 100  # more distinct answers than this: not a classifier


class RobustnessError(RuntimeError):
    """The attack cannot run here (no ART, not a classifier); the message says why."""


@dataclass(frozen=True)
class Report:
    rows: int
    success: float  # the share of rows whose answer the attack changed
    median_distance: float  # of the successful rows, in reference standard deviations (L2)
    flagged: dict[int, float]  # scale -> the share of successful adversarial rows flagged

    def line(self) -> str:
        shares = ", ".join(f"{k}x {v:.0%}" for k, v in self.flagged.items())
        return (
            f"HopSkipJump on {self.rows} rows: {self.success:.0%} flipped, median distance "
            f"{self.median_distance:.2f} sd; flagged at {shares}"
        )


def attack(
    labels: Callable[[Any], Sequence[Any]],
    flagged: Callable[[Any], Sequence[bool]],
    rows: Any,
    reference: Any,
    *,
    seed: int = 0,
    max_iter: int = 20,
    max_eval: int = 1000,
    init_eval: int = 100,
) -> Report:
    """Attack ``rows`` (n, k) through ``labels`` (rows -> the model's answers), clipped to the
    reference's range; ``flagged`` (rows -> the defense's flags) is asked of each successful
    adversarial row pushed 1x, 2x and 4x its distance. ``reference`` (m, k) gives the classes,
    the range and the standard deviations."""
    try:
        from art.attacks.evasion import HopSkipJump
        from art.estimators.classification import BlackBoxClassifier
    except ImportError:
        raise RobustnessError(
            "the robustness check needs ART: pip install 'omibuild[robustness]'"
        ) from None
    import numpy as np

    reference = np.asarray(reference, dtype=float)
    rows = np.asarray(rows, dtype=float)
    classes = sorted({_key(v) for v in labels(reference)})
    if len(classes) > MAX_CLASSES or len(classes) < 2:
        raise RobustnessError(
            f"the model gave {len(classes)} distinct answers over the reference: the attack "
            "needs a classifier"
        )
    index = {c: i for i, c in enumerate(classes)}

    def one_hot(x: Any) -> Any:
        out = np.zeros((len(x), len(classes) + 1))  # the last column: an answer not seen
        for i, v in enumerate(labels(np.asarray(x))):
            out[i, index.get(_key(v), len(classes))] = 1.0
        return out

    low, high = reference.min(axis=0), reference.max(axis=0)
    classifier = BlackBoxClassifier(
        one_hot, input_shape=(rows.shape[1],), nb_classes=len(classes) + 1, clip_values=(low, high)
    )
    np.random.seed(seed)  # HopSkipJump draws from numpy's global generator
    hsj = HopSkipJump(
        classifier,
        targeted=False,
        norm=2,
        max_iter=max_iter,
        max_eval=max_eval,
        init_eval=init_eval,
        verbose=False,
    )
    adversarial = hsj.generate(x=rows)
    before = [_key(v) for v in labels(rows)]
    after = [_key(v) for v in labels(adversarial)]
    won = np.asarray([a != b for a, b in zip(before, after, strict=True)])
    sd = reference.std(axis=0)
    sd[sd == 0] = 1.0
    delta = adversarial[won] - rows[won]
    distances = np.sqrt((((delta) / sd) ** 2).sum(axis=1))
    shares = {}
    for scale in SCALES:
        if not won.any():
            shares[scale] = 0.0
            continue
        pushed = rows[won] + scale * delta
        shares[scale] = float(np.mean(np.asarray(flagged(pushed), dtype=bool)))
    return Report(
        rows=len(rows),
        success=float(won.mean()) if len(rows) else 0.0,
        median_distance=float(np.median(distances)) if len(distances) else 0.0,
        flagged=shares,
    )


def robustness_finding(name: str, screener: Any, reference: dict[str, Any], n: int) -> Found:
    """check's finding: the attack through the image's V2 endpoint on ``n`` calibration rows
    (not the rows the score was fitted on). It reports; it fails only when it cannot run."""
    what = f"{name}: robustness (HopSkipJump on {n} reference rows)"
    score = reference.get("score") or {}
    table = (score.get("calibration") or []) + (score.get("fit") or [])
    if not table or len(score.get("columns", [])) != len(reference["features"]):
        return (what, False, "needs a numeric reference with the score (defense.score)")

    def flagged(rows: Any) -> list[bool]:
        status, screened = screener.ask(rows.tolist())
        if status == 400 and len(rows) > 1:  # guard: reject refuses the whole request: ask
            return [flag for row in rows for flag in flagged(row[None, :])]  # row by row
        if status != 200:  # guard: reject refuses what it would flag
            return [status == 400] * len(rows)
        return [r["flagged"] for r in screened]

    try:
        report = attack(screener.labels, flagged, table[:n], table)
    except RobustnessError as exc:
        return (what, False, str(exc))
    return (what, True, report.line())


def _key(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value
