"""Bench groups: serving and cold start against MLServer and a bare server, and the soak."""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from builds import docker_build, ensure_iris
from common import CPUS, PY, ROOT, log, record, run

# -- serving ----------------------------------------------------------------------------------


def wait_http(url: str, timeout: float = 120) -> float:
    start = time.perf_counter()
    while time.perf_counter() - start < timeout:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return time.perf_counter() - start
        except OSError:
            pass
        time.sleep(0.02)
    raise RuntimeError(f"{url} never became ready")


def ab(url: str, body: Path, n: int, c: int) -> dict[str, float]:
    with tempfile.NamedTemporaryFile(suffix=".csv") as csv:
        out = run(
            [
                "taskset",
                "-c",
                "1",
                "ab",
                "-q",
                "-k",
                "-n",
                str(n),
                "-c",
                str(c),
                "-p",
                str(body),
                "-T",
                "application/json",
                "-e",
                csv.name,
                url,
            ],
            timeout=600,
        ).stdout
        failed = int(re.search(r"Failed requests:\s+(\d+)", out).group(1))  # type: ignore[union-attr]
        non2xx = re.search(r"Non-2xx responses:\s+(\d+)", out)
        if failed or non2xx:
            raise RuntimeError(f"ab saw failures against {url}:\n{out}")
        rps = float(re.search(r"Requests per second:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
        pct = dict(line.split(",") for line in Path(csv.name).read_text().splitlines()[1:])
    return {"rps": rps, "p50_ms": float(pct["50"]), "p99_ms": float(pct["99"])}


def grpc_load(target: str, model: str, n: int, c: int) -> dict[str, float]:
    out = run(
        [
            "taskset",
            "-c",
            "1",
            PY,
            str(ROOT / "bench/grpc_load.py"),
            target,
            model,
            str(n),
            str(c),
            str(ROOT),
        ],
        timeout=600,
    ).stdout
    return json.loads(out)  # type: ignore[no-any-return]


def build_mlserver(work: Path) -> str:
    import sklearn

    ctx = work / "mlserver"
    shutil.copytree(ROOT / "bench/mlserver", ctx)
    shutil.copy(ROOT / "examples/manifests/sklearn-iris/model/model.joblib", ctx / "model.joblib")
    ref = "omibuild-bench/mlserver:latest"
    log("building the MLServer image (same base, same model)")
    docker_build(ctx, ref, "--build-arg", f"SKLEARN_VERSION={sklearn.__version__}")
    return ref


def bench_serving(work: Path, reps: int, requests: int) -> None:
    ours = ensure_iris(work)
    theirs = build_mlserver(work)
    body = work / "v2.json"
    body.write_text(
        json.dumps(
            {
                "inputs": [
                    {
                        "name": "input-0",
                        "shape": [1, 4],
                        "datatype": "FP64",
                        "data": [5.1, 3.5, 1.4, 0.2],
                    }
                ]
            }
        )
    )
    servers = {
        "omibuild": (ours, {"INTERFACE": "kfserving", "PROTOCOL": "v2"}, "iris-classifier", ()),
        "mlserver": (theirs, {}, "iris", ()),
        "floor": (
            ours,
            {},
            "iris",
            (
                "--entrypoint",
                "/opt/omi/venv/bin/python",
                "-v",
                f"{ROOT / 'bench/floor.py'}:/floor.py:ro",
                "-v",
                f"{ROOT / 'examples/manifests/sklearn-iris/model'}:/m:ro",
                "/floor.py /m/model.joblib",
            ),
        ),
    }
    # Repetitions interleave the servers (ours, MLServer, floor, ours, ...), so a drift in the
    # machine's speed during the run lands on every server alike instead of on one of them.
    results: dict[str, dict[str, list[dict[str, float]]]] = {name: {} for name in servers}
    for _ in range(reps):
        for name, (image, env, model, extra) in servers.items():
            with _start(image, env, extra) as addr:
                wait_http(f"http://{addr[8080]}/v2/health/ready")
                url = f"http://{addr[8080]}/v2/models/{model}/infer"
                ab(url, body, 200, 4)  # warm up
                for c in (1, 32):
                    results[name].setdefault(f"rest c={c}", []).append(ab(url, body, requests, c))
                    results[name].setdefault(f"grpc c={c}", []).append(
                        grpc_load(addr[8081], model, requests, c)
                    )
    for key in results["omibuild"]:
        ours_rps = [r["rps"] for r in results["omibuild"][key]]
        base_rps = [r["rps"] for r in results["mlserver"][key]]
        record(
            "serving",
            f"{key}: requests/s, omibuild vs MLServer",
            ours_rps,
            "req/s",
            baseline=base_rps,
            baseline_name="MLServer",
            target="≥ 2x",
            check=lambda v, r: r is not None and r >= 2,
        )
        for q in ("p50_ms", "p99_ms"):
            target = "≤ 0.5x" if q == "p99_ms" else ""
            record(
                "serving",
                f"{key}: {q[:3]} latency, omibuild vs MLServer",
                [r[q] for r in results["omibuild"][key]],
                "ms",
                baseline=[r[q] for r in results["mlserver"][key]],
                baseline_name="MLServer",
                target=target,
                check=(lambda v, r: r is not None and r <= 0.5) if target else None,
            )
        floor = "bare grpcio server" if key.startswith("grpc") else "bare Starlette endpoint"
        record(
            "serving",
            f"{key}: requests/s, omibuild vs the {floor} floor",
            ours_rps,
            "req/s",
            baseline=[r["rps"] for r in results["floor"][key]],
            baseline_name=f"{floor}, predict inline",
        )
    cold: dict[str, list[float]] = {"omibuild": [], "mlserver": [], "floor": []}
    for _ in range(reps + 2):
        for name in cold:
            image, env, model, extra = servers[name]
            start = time.perf_counter()
            with _start(image, env, extra) as addr:
                wait_http(f"http://{addr[8080]}/v2/models/{model}/ready")
                cold[name].append(time.perf_counter() - start)
    record(
        "cold start",
        "container start to ready, omibuild vs MLServer",
        cold["omibuild"],
        "s",
        baseline=cold["mlserver"],
        baseline_name="MLServer",
        target="≤ 0.5x",
        check=lambda v, r: r is not None and r <= 0.5,
    )
    record(
        "cold start",
        "container start to ready, omibuild vs the bare floor (imports, model load, listen)",
        cold["omibuild"],
        "s",
        baseline=cold["floor"],
        baseline_name="bench/floor.py",
    )


@contextlib.contextmanager
def _start(image: str, env: dict[str, str], extra: tuple[str, ...]) -> Iterator[dict[int, str]]:
    """Start a server on core 0 and yield its addresses on the bridge network (port -> host:port).

    Clients connect to the container's own address, as a pod's clients do, not through a
    published port: docker-proxy would relay every byte through an unpinned userspace process,
    adding about 0.2 ms per request to both servers and a core's worth of noise."""
    cmd = ["docker", "run", "-d", "--rm", f"--cpus={CPUS}", "--cpuset-cpus=0"]
    for k, v in env.items():
        cmd += ["-e", f"{k}={v}"]
    args = list(extra)
    tail: list[str] = []
    if args and " " in args[-1]:
        tail = args.pop().split()
    cid = run([*cmd, *args, image, *tail]).stdout.strip()
    try:
        ip = run(
            [
                "docker",
                "inspect",
                "-f",
                "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
                cid,
            ]
        ).stdout.strip()
        if not ip:
            raise RuntimeError(f"container {cid[:12]} has no bridge address")
        yield {p: f"{ip}:{p}" for p in (8080, 8081)}
    finally:
        subprocess.run(["docker", "rm", "-f", cid], capture_output=True)


def bench_soak(work: Path, seconds: float) -> None:
    """c=32 for `seconds` (10 minutes by default), 10% invalid requests, one core."""
    from soak import soak

    image = ensure_iris(work)
    with _start(image, {"INTERFACE": "kfserving", "PROTOCOL": "v2"}, ("--memory=1g",)) as addr:
        cid = run(["docker", "ps", "-q", "--filter", f"ancestor={image}"]).stdout.split()[0]
        wait_http(f"http://{addr[8080]}/v2/health/ready")
        log(f"soak: {seconds:.0f} s at c=32, 10% invalid requests")
        r = soak(addr[8080], cid, "/v2/models/iris-classifier/infer", seconds)
    minutes = f"{r['seconds'] / 60:.0f} min"
    record(
        "soak",
        f"requests answered wrongly ({int(r['requests'])} in {minutes})",
        [r["wrong"]],
        "requests",
        target="0",
        check=lambda v, _: v == 0,
    )
    record(
        "soak",
        "p99 of the last minute vs the first",
        [r["p99_last_ms"]],
        "ms",
        baseline=[r["p99_first_ms"]],
        baseline_name="first minute's p99",
        target="<= 1.10x",
        check=lambda _, ratio: ratio is not None and ratio <= 1.10,
    )
    record(
        "soak",
        "memory at the end vs after the first minute",
        [r["memory_last_mb"]],
        "MB",
        baseline=[r["memory_first_mb"]],
        baseline_name="after the first minute",
        target="< 1.05x",
        check=lambda _, ratio: ratio is not None and ratio < 1.05,
    )
