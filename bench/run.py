"""`make bench`: side-by-side benchmarks, repeated, reported as ratios against a baseline
measured in the same run. Writes bench/results/latest.json and bench/results/latest.md.

Groups: CLI latency, hashing, builds (the sklearn example and a 1 GiB synthetic model), model
layers (1 and 10 GiB models against the I/O floor and a plain buildx COPY:
bench/model_layers.py), image size (against `mlflow models build-docker`), image size per
everyday format (against a hand-written Dockerfile: bench/formats.py), serving and cold
start (against MLServer), explanations and drift (bench/analysis.py), the adversarial
defense's cost (bench/defense.py), a tiny transformers model against MLServer's Hugging Face
runtime (bench/transformers_row.py), and a soak (c=32 with
invalid requests mixed in: errors, p99 drift, memory growth)."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from builds import (
    bench_builds,
    bench_cli,
    bench_hashing,
    bench_size,
    docker_build,
    remove_bench_images,
    write_random,
)
from common import (
    BASE,
    FAILURES,
    FIGURES,
    PY,
    REGISTRY,
    RESULTS,
    ROOT,
    Figure,
    log,
    omibuild,
    record,
    run,
)
from serving import _start, ab, bench_serving, bench_soak, wait_http
from transformers_row import bench_transformers

# -- report -----------------------------------------------------------------------------------


def machine() -> dict[str, str]:
    def version(cmd: list[str]) -> str:
        try:
            return run(cmd).stdout.strip().splitlines()[0]
        except (OSError, subprocess.CalledProcessError):
            return "n/a"

    mem = Path("/proc/meminfo").read_text().split("\n")[0].split()[1]
    cpu = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        ),
        platform.processor(),
    )
    sys.path.insert(0, str(ROOT))
    from omibuild import __version__

    return {
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "memory": f"{int(mem) / 1e6:.1f} GB",
        "os": platform.platform(),
        "python": platform.python_version(),
        "docker": version(["docker", "version", "--format", "{{.Server.Version}}"]),
        "buildx": version(["docker", "buildx", "version"]),
        "omibuild": __version__,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


# every group, in the order it runs, with how its figures' group names begin (the report
# keeps a group's figures from the last run when --only leaves it out)
GROUPS: dict[str, tuple[str, ...]] = {
    "cli": ("cli",),
    "hashing": ("hashing",),
    "build": ("build:",),
    "layers": ("model layers:",),
    "files": ("files",),
    "size": ("image size",),
    "formats": ("formats",),
    "serving": ("serving", "cold start"),
    "analysis": ("explain and drift",),
    "defense": ("defense",),
    "transformers": ("transformers",),
    "soak": ("soak",),
}


def keep_previous(groups_rerun: set[str]) -> None:
    """With --only, keep the figures of the groups not re-run from the last report."""
    try:
        previous = json.loads((RESULTS / "latest.json").read_text())["figures"]
    except (OSError, ValueError, KeyError):
        return
    rerun = tuple(p for g in groups_rerun for p in GROUPS[g])
    kept = [f for f in previous if not f["group"].startswith(rerun)]
    for f in kept:
        f.pop("ratio", None)
    FIGURES[:0] = [Figure(**f) for f in kept]


def write_report(info: dict[str, str], seconds: float, rerun: set[str] | None = None) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    data = {
        "machine": info,
        "seconds": round(seconds, 1),
        "figures": [{**asdict(f), "ratio": f.ratio} for f in FIGURES],
    }
    (RESULTS / "latest.json").write_text(json.dumps(data, indent=2) + "\n")
    lines = [
        "# omibuild benchmarks",
        "",
        (
            f"`make bench` on {info['date']}, {seconds / 60:.1f} min"
            + (
                f" (re-ran only: {', '.join(sorted(rerun))}; the other rows are from the previous "
                "run)"
                if rerun
                else ""
            )
            + ". Medians of repeated runs; ratios are against a baseline measured side by side "
            "in the same run; spread is (max - min) / median."
        ),
        "",
        "| machine | |",
        "|---|---|",
        *(f"| {k} | {v} |" for k, v in info.items()),
        "",
        "| group | measure | value | baseline | ratio | spread | target | holds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for f in FIGURES:
        base = f"{f.baseline:.4g} {f.unit} ({f.baseline_name})" if f.baseline else ""
        ratio = f"{f.ratio:.2f}x" if f.ratio else ""
        holds = "" if f.holds is None else ("yes" if f.holds else "**no**")
        lines.append(
            f"| {f.group} | {f.name} | {f.value:.4g} {f.unit} | {base} | {ratio} | "
            f"{f.spread:.0%} | {f.target} | {holds} |"
        )
    if FAILURES:
        lines += ["", "## Groups that failed in this run", ""]
        lines += [f"- `{f.splitlines()[0]}`" for f in FAILURES]
    (RESULTS / "latest.md").write_text("\n".join(lines) + "\n")


def bench_layers(work: Path, sizes: str, reps: int) -> None:
    sys.path.insert(0, str(ROOT / "bench"))
    from model_layers import bench_model_layers, disk_needed

    for gib in (int(x) for x in sizes.split(",") if x.strip()):
        need, free = disk_needed(gib << 30), shutil.disk_usage(work).free
        if need > free:  # said and kept in the report, never skipped silently
            FAILURES.append(
                f"layers: {gib} GiB rows skipped: they need about {need / 1e9:.0f} GB free "
                f"under {work}, which has {free / 1e9:.0f} GB (pass --layer-sizes 1 to leave "
                "them out knowingly)"
            )
            log(FAILURES[-1])
            continue
        bench_model_layers(
            work,
            gib << 30,
            reps if gib < 10 else 1,
            base=BASE,
            registry=REGISTRY,
            py=PY,
            record=record,
            log=log,
        )


def bench_served(module: str, function: str, work: Path, reps: int, requests: int) -> None:
    """A group in its own module (bench/analysis.py, bench/defense.py) that builds images
    and measures them served."""
    sys.path.insert(0, str(ROOT / "bench"))
    bench = getattr(importlib.import_module(module), function)
    bench(
        work,
        py=PY,
        reps=reps,
        requests=requests,
        record=record,
        log=log,
        start=_start,
        ab=ab,
        wait_http=wait_http,
    )


def bench_image_formats(work: Path) -> None:
    sys.path.insert(0, str(ROOT / "bench"))
    from formats import bench_formats

    bench_formats(
        work,
        py=PY,
        base=BASE,
        record=record,
        log=log,
        docker_build=docker_build,
        omibuild=omibuild,
    )


def bench_files(work: Path) -> None:
    sys.path.insert(0, str(ROOT / "bench"))
    from many_files import bench_many_files

    bench_many_files(work, record=record, log=log, omibuild=omibuild)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--soak-seconds", type=float, default=600.0)
    parser.add_argument(
        "--only",
        choices=list(GROUPS),
        action="append",
    )
    parser.add_argument(
        "--layer-sizes",
        default=os.environ.get("OMI_BENCH_LAYER_SIZES", "1,10"),
        help="model sizes in GiB for the layers group (10 GiB runs once)",
    )
    args = parser.parse_args()
    only = set(args.only or GROUPS)
    start = time.perf_counter()
    info = machine()
    with tempfile.TemporaryDirectory(prefix="omibuild-bench-", dir="/var/tmp") as tmp:
        work = Path(tmp)
        weights = work / "weights-1g.bin"
        if only & {"hashing", "build"}:
            log("writing a 1 GiB synthetic model")
            write_random(weights, 1 << 30)
        groups: list[tuple[str, Callable[[], None]]] = [
            ("cli", lambda: bench_cli(max(args.reps, 7))),
            ("hashing", lambda: bench_hashing(work, weights, args.reps)),
            ("build", lambda: bench_builds(work, weights, args.reps)),
            ("layers", lambda: bench_layers(work, args.layer_sizes, args.reps)),
            ("files", lambda: bench_files(work)),
            ("size", lambda: bench_size(work)),
            ("formats", lambda: bench_image_formats(work)),
            ("serving", lambda: bench_serving(work, max(args.reps, 5), args.requests)),
            (
                "analysis",
                lambda: bench_served("analysis", "bench_analysis", work, args.reps, args.requests),
            ),
            (
                "defense",
                lambda: bench_served("defense", "bench_defense", work, args.reps, args.requests),
            ),
            ("transformers", lambda: bench_transformers(work, args.reps, args.requests // 3)),
            ("soak", lambda: bench_soak(work, args.soak_seconds)),
        ]
        for name, fn in groups:
            if name not in only:
                continue
            try:
                fn()
            except Exception as exc:  # report the group as failed, keep the others
                FAILURES.append(f"{name}: {type(exc).__name__}: {str(exc)[-1500:]}")
                log(f"group {name} FAILED: {str(exc)[-1500:]}")
    remove_bench_images()
    if args.only:
        keep_previous(only)
    write_report(info, time.perf_counter() - start, only if args.only else None)
    log(f"wrote {RESULTS / 'latest.md'} in {(time.perf_counter() - start) / 60:.1f} min")
    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())
