"""Adversarial defense (`make bench`, group `defense`): predict throughput of an image that
screens every row inline (guard and Mahalanobis score, omi.yaml's defense) against the same
model's image without it, servers interleaved, KServe V1 with one row per request, at 1 and 8
clients; for 4 features with drift off and on, and for 100 features. Target: 0.95x or better.

Models and tables are made here, in fresh repositories, as a user's would be (analysis.py)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from analysis import _build, _repo, interleaved, record_rps

DEFENSE = "defense:\n  reference: train.csv\n"
DRIFT = "drift:\n  reference: train.csv\n"
CASES = {  # name: (features, sections without the defense)
    "4 features": (4, ""),
    "4 features, drift on": (4, DRIFT),
    "100 features": (100, ""),
}


def bench_defense(
    work: Path,
    *,
    py: str,
    reps: int,
    requests: int,
    record: Callable[..., Any],
    log: Callable[[str], None],
    start: Callable[..., Any],
    ab: Callable[..., dict[str, float]],
    wait_http: Callable[[str], float],
) -> None:
    group = "defense"
    for case, (k, sections) in CASES.items():
        slug = case.replace(" ", "-").replace(",", "")
        images = {
            kind: (
                f"defense-{slug}-{kind}",
                _build(_repo(work, f"defense-{slug}-{kind}", py, k, text), py, log),
            )
            for kind, text in (("without", sections), ("with", sections + DEFENSE))
        }
        body = work / f"defense-row-{k}.json"  # a typical row: the mean of the table's normals
        body.write_text(json.dumps({"instances": [[0.05] * k]}))
        rps = interleaved(images, body, reps, requests, start=start, ab=ab, wait_http=wait_http)
        record_rps(
            record,
            group,
            f"predict requests/s with the defense (guard and score), {case}",
            rps,
            ("with", "without"),
            "the same model's image without it",
        )
        log(f"defense: {case} done")
