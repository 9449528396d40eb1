"""The inner loop at the engine's own speed (`make bench`, group `build`): a small model's
rebuild where every step is cached, and a code-only rebuild, each beside `docker buildx build`
of the very Dockerfile and context omibuild staged, with the same change, in the same run."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from builds import SYNTH_PREDICTOR, prune_dangling, synthetic_repo, write_random
from common import CA, REGISTRY, log, omibuild, record, timed


def bench_inner_loop(work: Path, reps: int) -> None:
    """A small model's inner loop beside buildx building the very Dockerfile and context
    omibuild staged, with the same change: a rebuild where every step is cached (the image was
    removed from the engine) and a code-only rebuild."""
    env = {"OMIBUILD_CACHE_DIR": str(work / "loop-cache")}
    weights = work / "weights-1m.bin"
    write_random(weights, 1 << 20)
    manifest = synthetic_repo(work, weights, "loop-1m")
    apply = omibuild("apply", str(manifest), "--progress", "quiet")
    ref, plain_ref = f"{REGISTRY}/bench/loop-1m:latest", "omibuild-bench/loop-buildx:latest"
    subprocess.run(["docker", "rmi", "-f", ref, plain_ref], capture_output=True)
    timed(apply, env)  # a build, not a no-op: the context below is what it staged
    [context] = (work / "loop-cache" / "contexts").iterdir()
    plain = work / "loop-buildx-context"
    shutil.copytree(context, plain, ignore=shutil.ignore_patterns("model"))
    buildx = [
        "docker", "buildx", "build", "--progress=quiet", str(plain), "--secret", f"id=ca,src={CA}",
        "--output", f"type=image,name={plain_ref}",
    ]  # fmt: skip
    timed(buildx)
    cached, plain_cached = [], []
    for _ in range(reps):
        subprocess.run(["docker", "rmi", "-f", ref, plain_ref], capture_output=True)
        cached.append(timed(apply, env))
        plain_cached.append(timed(buildx))
    code, plain_code = [], []
    for i in range(reps):
        change = SYNTH_PREDICTOR + f"\n# revision {i}\n"
        (manifest.parent / "src" / "predictor.py").write_text(change)
        code.append(timed(apply, env))
        (plain / "code" / "predictor.py").write_text(change)
        plain_code.append(timed(buildx))
        prune_dangling()
    for i in range(10):  # a day's inner loop, in little: what omibuild's cache keeps of it
        (manifest.parent / "src" / "predictor.py").write_text(SYNTH_PREDICTOR + f"\n# day {i}\n")
        timed(apply, env)
        prune_dangling()
    kept = sum(f.stat().st_size for f in (work / "loop-cache").rglob("*") if f.is_file())
    record(
        "build: 1 MB model, inner loop",
        "omibuild's cache after 10 more code-only applies",
        [kept / 1e6],
        "MB",
        target="< 1000 MB",
        check=lambda v, r: v < 1000,
    )
    for name, ours, theirs, limit in (
        ("cached rebuild (every step cached, image removed)", cached, plain_cached, 1.0),
        ("code-only rebuild", code, plain_code, 3.0),
    ):
        record(
            "build: 1 MB model, inner loop",
            f"{name} vs buildx of the same Dockerfile",
            ours,
            "s",
            baseline=theirs,
            baseline_name="docker buildx build, same context and change",
            target=f"< {limit:.0f} s",
            check=lambda v, r, limit=limit: v < limit,
        )


def report_test_disk(root: Path) -> None:
    """What the last full test run (`make test`, `.ci/run`) left on disk and its peak, as
    tests/conftest.py measured it (the root filesystem's use, sampled every 2 s, before and
    after the run's own cleanup). Not re-run here: a full run takes ~37 minutes."""
    try:
        disk = json.loads((root / ".cache" / "test-disk.json").read_text())
        start, peak, left = disk["start_bytes"], disk["peak_bytes"], disk["left_bytes"]
    except (OSError, ValueError, KeyError):
        log("test disk: no record of a full test run (.cache/test-disk.json); run make test")
        return
    group = f"build: the test run's disk ({disk.get('date', '?')}, {disk.get('tests', '?')} tests)"
    record(group, "disk left behind by the test run", [left / 1e9], "GB",
           target="< 2 GB", check=lambda v, r: v < 2.0)  # fmt: skip
    record(group, "disk at the run's peak, above its start", [(peak - start) / 1e9], "GB")
