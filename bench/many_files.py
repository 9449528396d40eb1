"""Models of many files (`make bench`, group `files`): a checkpoint in 10,000 small shards
against the same in 10, each in a fresh repository: plan, apply, plan diff against the built
image (no changes), and a no-op apply, timed side by side; and the image config's size."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _repo(work: Path, count: int, omibuild: Callable[..., list[str]], env: dict[str, str]) -> Path:
    repo = work / f"files-{count}"
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    for i in range(count):
        folder = repo / "model" / f"part-{i // 1000:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"shard-{i:06d}.bin").write_bytes(os.urandom(16))
    subprocess.run(omibuild("init"), cwd=repo, env=env, check=True, capture_output=True)
    return repo


def _timed(cmd: list[str], repo: Path, env: dict[str, str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=3600)
    if done.returncode not in (0, 2):
        raise RuntimeError(f"{cmd}: {done.stderr[-1500:]}")
    return time.perf_counter() - start


def bench_many_files(
    work: Path,
    *,
    record: Callable[..., Any],
    log: Callable[[str], None],
    omibuild: Callable[..., list[str]],
) -> None:
    env = {**os.environ, "OMIBUILD_CACHE_DIR": str(work / "files-cache"), "OMIBUILD_WEIGH": "0"}
    times: dict[int, dict[str, float]] = {}
    for count in (10, 10_000):
        log(f"files: {count} files")
        repo = _repo(work, count, omibuild, env)
        steps = {
            "plan": omibuild("plan"),
            "apply": omibuild("apply", "--progress", "quiet"),
            "plan diff": omibuild("plan", "--detailed-exitcode"),
            "no-op apply": omibuild("apply", "--progress", "quiet"),
        }
        times[count] = {name: _timed(cmd, repo, env) for name, cmd in steps.items()}
        config = subprocess.run(
            ["docker", "image", "inspect", "--format", "{{json .Config}}",
             f"omibuild.local/files-{count}:latest"],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        times[count]["config"] = len(config.encode())
        # every tag apply gave it (latest, the origin tag): the bench leaves no image behind
        tags = subprocess.run(
            ["docker", "image", "ls", "--format", "{{.Repository}}:{{.Tag}}",
             f"omibuild.local/files-{count}"],
            capture_output=True, text=True, check=False,
        ).stdout.split()  # fmt: skip
        subprocess.run(["docker", "image", "rm", "-f", *tags], capture_output=True, check=False)
    for name in ("plan", "apply", "plan diff", "no-op apply"):
        record(
            "files",
            f"{name}: a model of 10,000 files vs 10",
            [times[10_000][name]],
            "s",
            baseline=[times[10][name]],
            baseline_name="the same model in 10 files",
        )
    record(
        "files",
        "image config size: 10,000 files (vs 10)",
        [times[10_000]["config"] / 1024],
        "KiB",
        baseline=[times[10]["config"] / 1024],
        baseline_name="10 files",
        target="< 64 KiB",
        check=lambda v, r: v < 64,
    )
    log(f"files: {json.dumps(times)}")
