"""What attestations and signing add to a push (`make bench`, group `build`): a 1 MB model's
code-only rebuild pushed to the loopback registry without attestations, with them (the
default), and signed with a cosign key, alternating in the same run; plus the attestation
and signing steps' own seconds as apply reports them."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

from builds import SYNTH_PREDICTOR, synthetic_repo, write_random
from common import omibuild, record


def _step(said: str, name: str) -> float:
    found = re.search(rf"\] {name}[^\n]*: ([0-9.]+)s\n", said)
    return float(found.group(1)) if found else 0.0


def bench_supply_chain(work: Path, reps: int) -> None:
    if shutil.which("cosign") is None:
        raise RuntimeError("cosign is not on PATH: make setup installs it")
    cache = work / "supply-cache"
    full_env = {**os.environ, "OMIBUILD_CACHE_DIR": str(cache), "COSIGN_PASSWORD": ""}
    subprocess.run(["cosign", "generate-key-pair"], cwd=work, env=full_env, capture_output=True,
                   check=True)  # fmt: skip
    weights = work / "weights-supply.bin"
    write_random(weights, 1 << 20)
    manifest = synthetic_repo(work, weights, "supply-1m")
    variants = {
        "no attestations": ["--no-attest"],
        "attested": [],
        "attested and signed": ["--sign", str(work / "cosign.key")],
    }
    seconds: dict[str, list[float]] = {k: [] for k in variants}
    attest_step, sign_step = [], []
    revision = 0
    for _ in range(reps + 1):  # the first round warms the cache and the registry
        for name, flags in variants.items():
            revision += 1
            change = SYNTH_PREDICTOR + f"\n# revision {revision}\n"
            (manifest.parent / "src" / "predictor.py").write_text(change)
            cmd = omibuild("apply", str(manifest), "--push", "--progress", "plain", *flags)
            start = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True, env=full_env)
            took = time.perf_counter() - start
            if proc.returncode != 0:
                raise RuntimeError(f"{' '.join(cmd)}: {proc.stderr[-2000:]}")
            if revision <= len(variants):
                continue
            seconds[name].append(took)
            if name == "attested":
                attest_step.append(_step(proc.stderr, "attesting"))
            if name == "attested and signed":
                sign_step.append(_step(proc.stderr, "signing with cosign"))
    group = "build: 1 MB model, supply chain"
    base = seconds["no attestations"]
    for name in ("attested", "attested and signed"):
        record(group, f"code-only push, {name}", seconds[name], "s", baseline=base,
               baseline_name="the same push with --no-attest")  # fmt: skip
    record(group, "the attesting step (provenance + SBOM, as apply reports it)", attest_step, "s")
    record(group, "the signing step (cosign sign + 2 attest, as apply reports it)", sign_step, "s")
