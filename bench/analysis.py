"""Explanations and drift (`make bench`, group `analysis`), each against a baseline in the same
run:

- explanation latency (one row, KServe V1 ``:explain``, after a first call that imports SHAP)
  for the iris model (4 features: SHAP's exact explainer) and a 100-feature model (the
  permutation explainer), beside the same image's predict latency;
- predict throughput (V1, one row per request, c=1 and c=8) of an image with drift accounting
  against the same model's image without it, servers interleaved; target 0.95x or better;
- image size that each section adds (its libraries and its files) to the image without it.

Models and tables are made here, in fresh repositories, as a user's would be."""

from __future__ import annotations

import json
import statistics
import subprocess
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

SECTIONS = {
    "plain": "",
    "explain": "explain:\n  background: train.csv\n",
    "drift": "drift:\n  reference: train.csv\n",
}


def _repo(work: Path, name: str, py: str, features: int, sections: str) -> Path:
    """A repository with a logistic regression over ``features`` columns and its table."""
    repo = work / name
    (repo / "model").mkdir(parents=True)
    subprocess.run(
        [
            py,
            "-c",
            "import sys, joblib, numpy as np\n"
            "from sklearn.linear_model import LogisticRegression\n"
            "k = int(sys.argv[2]); rng = np.random.default_rng(0)\n"
            "x = rng.normal(size=(2000, k)); y = (x[:, : max(1, k // 4)].sum(1) > 0).astype(int)\n"
            "model = LogisticRegression(max_iter=1000).fit(x, y)\n"
            "joblib.dump(model, f'{sys.argv[1]}/model/m.joblib')\n"
            "head = ','.join(f'f{i}' for i in range(k))\n"
            "np.savetxt(f'{sys.argv[1]}/train.csv', x, delimiter=',', header=head, comments='')\n",
            str(repo),
            str(features),
        ],
        check=True,
    )
    from importlib.metadata import version

    (repo / "omi.yaml").write_text(
        f"""apiVersion: omibuild/v1
name: {name}
version: 1.0.0
model:
  source: {{local: {{path: model}}}}
  flavor: sklearn
runtimes:
  interfaces: {{kfserving: {{protocols: [v1]}}}}
image:
  repository: omibuild-bench/{name}
  requirements: [scikit-learn=={version("scikit-learn")}, numpy=={version("numpy")}]
origin: {{tag: none, tags: [latest]}}
{sections}"""
    )
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    return repo


def _build(repo: Path, py: str, log: Callable[[str], None]) -> str:
    log(f"analysis: building {repo.name}")
    omibuild = str(Path(py).with_name("omibuild"))
    proc = subprocess.run(
        [omibuild, "apply", "--progress", "quiet"], cwd=repo, capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{repo.name}: {proc.stderr[-1500:]}")
    return f"omibuild-bench/{repo.name}:latest"


def _size(ref: str) -> float:
    out = subprocess.run(
        ["docker", "image", "inspect", "-f", "{{.Size}}", ref],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return int(out) / 1e6


def _post(url: str, body: Any) -> float:
    data = json.dumps(body).encode()
    request = urllib.request.Request(url, data, {"Content-Type": "application/json"})
    start = time.perf_counter()
    with urllib.request.urlopen(request, timeout=600) as response:
        response.read()
    return (time.perf_counter() - start) * 1000


def interleaved(
    images: dict[str, tuple[str, str]],
    body: Path,
    reps: int,
    requests: int,
    *,
    start: Callable[..., Any],
    ab: Callable[..., dict[str, float]],
    wait_http: Callable[[str], float],
) -> dict[tuple[str, int], list[float]]:
    """V1 predict requests/s of each image (kind: (model name, image)) at 1 and 8 clients,
    servers interleaved and each kind first in turn: a change in the machine's speed lands on
    all of them."""
    kinds = list(images)
    rps: dict[tuple[str, int], list[float]] = {}
    for rep in range(reps):
        for kind in kinds if rep % 2 == 0 else kinds[::-1]:
            name, image = images[kind]
            with start(image, {}, ()) as addr:
                url = f"http://{addr[8080]}/v1/models/{name}:predict"
                wait_http(url.replace(":predict", ""))
                ab(url, body, 200, 4)  # warm up
                for c in (1, 8):
                    rps.setdefault((kind, c), []).append(ab(url, body, requests, c)["rps"])
    return rps


def record_rps(
    record: Callable[..., Any],
    group: str,
    what: str,
    rps: dict[tuple[str, int], list[float]],
    kinds: tuple[str, str],
    baseline_name: str,
) -> None:
    """Each client count's requests/s of kinds[0] against kinds[1]; target 0.95x or better."""
    for c in (1, 8):
        record(
            group,
            f"{what}, c={c}",
            rps[(kinds[0], c)],
            "req/s",
            baseline=rps[(kinds[1], c)],
            baseline_name=baseline_name,
            target="≥ 0.95x",
            check=lambda v, r: r is not None and r >= 0.95,
        )


def bench_analysis(
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
    group = "explain and drift"
    images = {
        kind: _build(_repo(work, f"analysis-iris-{kind}", py, 4, text), py, log)
        for kind, text in SECTIONS.items()
    }
    wide = _build(_repo(work, "analysis-wide", py, 100, SECTIONS["explain"]), py, log)
    for kind in ("explain", "drift"):
        record(
            group,
            f"image size added by `{kind}` (its libraries and files), iris",
            [_size(images[kind]) - _size(images["plain"])],
            "MB",
        )

    for label, image, k, name in (
        ("iris, 4 features", images["explain"], 4, "analysis-iris-explain"),
        ("100 features", wide, 100, "analysis-wide"),
    ):
        with start(image, {}, ()) as addr:
            base = f"http://{addr[8080]}/v1/models/{name}"
            wait_http(f"{base}")
            row = {"instances": [[0.1 * (i % 7) for i in range(k)]]}
            first = _post(f"{base}:explain", row)  # imports SHAP
            explain = [_post(f"{base}:explain", row) for _ in range(max(reps, 10))]
            predict = [_post(f"{base}:predict", row) for _ in range(max(reps, 10) * 10)]
        record(
            group,
            f"explanation latency, one row, {label}, against predict",
            explain,
            "ms",
            baseline=predict,
            baseline_name="predict on the same server",
        )
        record(group, f"first explanation (imports SHAP), {label}", [first], "ms")

    body = work / "v1-row.json"
    body.write_text(json.dumps({"instances": [[5.1, 3.5, 1.4, 0.2]]}))
    pair = {k: (f"analysis-iris-{k}", images[k]) for k in ("plain", "drift")}
    rps = interleaved(pair, body, reps, requests, start=start, ab=ab, wait_http=wait_http)
    record_rps(
        record,
        group,
        "predict requests/s with drift accounting (window 500)",
        rps,
        ("drift", "plain"),
        "the same model's image without drift",
    )
    log(f"analysis: median explain/predict done; rps {statistics.median(rps[('drift', 1)]):.0f}")
