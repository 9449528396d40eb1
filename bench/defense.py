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

from analysis import _build, _repo

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
        rps: dict[tuple[str, int], list[float]] = {}
        for rep in range(reps):  # interleaved, either first
            for kind in ("without", "with") if rep % 2 == 0 else ("with", "without"):
                name, image = images[kind]
                with start(image, {}, ()) as addr:
                    url = f"http://{addr[8080]}/v1/models/{name}:predict"
                    wait_http(url.replace(":predict", ""))
                    ab(url, body, 200, 4)  # warm up
                    for c in (1, 8):
                        rps.setdefault((kind, c), []).append(ab(url, body, requests, c)["rps"])
        for c in (1, 8):
            record(
                group,
                f"predict requests/s with the defense (guard and score), {case}, c={c}",
                rps[("with", c)],
                "req/s",
                baseline=rps[("without", c)],
                baseline_name="the same model's image without it",
                target="≥ 0.95x",
                check=lambda v, r: r is not None and r >= 0.95,
            )
        log(f"defense: {case} done")
