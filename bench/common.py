"""What every bench group shares: the figures it records, with their baselines, and how it
runs and times a command."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
PY = sys.executable
BASE = os.environ.get("OMI_BASE_IMAGE", "omibuild.local/python:3.11-slim")
REGISTRY = os.environ.get("OMI_REGISTRY_ADDR", "127.0.0.1:5000")
CA = os.environ.get("PIP_CERT", "/etc/ssl/certs/ca-certificates.crt")
IRIS_MODEL = ROOT / "examples/manifests/sklearn-iris/model/model.joblib"
CPUS = "1"  # every server under test gets one core; the load generator has the other


@dataclass
class Figure:
    group: str
    name: str
    value: float
    unit: str
    baseline: float | None = None
    baseline_name: str = ""
    target: str = ""
    holds: bool | None = None
    samples: list[float] = field(default_factory=list)
    spread: float = 0.0  # (max - min) / median of the samples

    @property
    def ratio(self) -> float | None:
        return self.value / self.baseline if self.baseline else None


FIGURES: list[Figure] = []
FAILURES: list[str] = []


def log(text: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {text}", flush=True)


def median_of(samples: list[float]) -> tuple[float, float]:
    med = statistics.median(samples)
    return med, (max(samples) - min(samples)) / med if med else 0.0


def record(
    group: str,
    name: str,
    samples: list[float],
    unit: str,
    *,
    baseline: list[float] | None = None,
    baseline_name: str = "",
    target: str = "",
    check: Callable[[float, float | None], bool] | None = None,
) -> Figure:
    value, spread = median_of(samples)
    base = median_of(baseline)[0] if baseline else None
    fig = Figure(group, name, value, unit, base, baseline_name, target, None, samples, spread)
    if check is not None:
        fig.holds = check(value, fig.ratio)
    FIGURES.append(fig)
    shown = f"{value:.4g} {unit}" + (f" vs {base:.4g} ({fig.ratio:.2f}x)" if base else "")
    log(
        f"{group}: {name}: {shown}"
        + (f" target {target}: {'holds' if fig.holds else 'MISSED'}" if target else "")
    )
    return fig


def run(cmd: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, capture_output=True, text=True, **kw)  # type: ignore[call-overload]
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:6])} ... failed:\n{proc.stderr[-3000:]}")
    return proc  # type: ignore[no-any-return]


def timed(cmd: list[str], env: dict[str, str] | None = None) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})})
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stderr[-2000:]}")
    return elapsed


def omibuild(*args: str) -> list[str]:
    return [PY, "-m", "omibuild", *args]
