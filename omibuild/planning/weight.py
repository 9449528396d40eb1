"""How heavy the image's venv will be, before anything is built: pip resolves the plan's
requirements for the image's platform (``pip install --dry-run --report``, with the indexes
the build uses and none of the host's own), and the index says each wheel's size.

An I/O edge like inputs.py (it runs pip and asks the index), kept out of the plan's digest.
The answer is cached by what decides it, so the second `plan` of the same requirements asks
nothing; where pip cannot resolve (no network, an index down), the weight is unknown and
nothing fails."""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

from omibuild.planning.plan import Plan
from omibuild.settings import host_index_urls
from omibuild.store.cache import Cache, atomic_write
from omibuild.units import human

HEAVY_BYTES = 1 << 30  # above this much of wheels, plan warns and names what weighs most
PIP_SECONDS = 120
# glibc 2.36 (Debian bookworm, python:3.11-slim): pip takes a platform tag only as named
_MANYLINUX = [f"manylinux_2_{n}" for n in range(17, 37)] + ["manylinux2014", "linux"]
_ARCHES = {"linux/amd64": "x86_64", "linux/arm64": "aarch64"}
CUDA_HINT = (
    "torch's CPU build is on PyTorch's own index: set image.extra_index_urls to "
    "[https://download.pytorch.org/whl/cpu] (or the CPU index your organisation mirrors)"
)


CUDA_WHEELS = ("nvidia-", "cuda-", "triton==")  # NVIDIA's libraries as PyPI ships them


@dataclass(frozen=True)
class Weight:
    wheel_bytes: int  # what the resolved wheels weigh, as the index serves them
    packages: int
    heaviest: tuple[tuple[str, int], ...]  # (name==version, bytes), heaviest first
    cuda_bytes: int  # of which NVIDIA's CUDA libraries (nvidia-*, cuda-*, triton wheels)
    cuda_runtime: str | None = None  # the CUDA runtime wheel resolved (name==version)

    @property
    def cuda_major(self) -> int | None:
        """The CUDA major version the resolved libraries are built for: the runtime wheel's
        (``nvidia-cuda-runtime-cu12==12.8.90`` and ``nvidia-cuda-runtime==13.0.96`` alike)."""
        if not self.cuda_runtime:
            return None
        major = self.cuda_runtime.partition("==")[2].split(".")[0]
        return int(major) if major.isdigit() else None

    def line(self) -> str:
        return f"about {human(self.wheel_bytes)} of wheels ({self.packages} packages)"


def _pip_args(plan: Plan, env: Mapping[str, str]) -> list[str]:
    arch = _ARCHES.get((plan.platforms or ("linux/amd64",))[0], "x86_64")
    args = ["--only-binary=:all:", "--python-version", "3.11", "--implementation", "cp"]
    args += [a for abi in ("cp311", "abi3", "none") for a in ("--abi", abi)]
    args += [a for tag in _MANYLINUX for a in ("--platform", f"{tag}_{arch}")]
    indexes = host_index_urls(env)
    if plan.index_url:
        args += ["--index-url", plan.index_url]
    for url in [*plan.extra_index_urls, *indexes]:
        args += ["--extra-index-url", url]
    return args


def _key(plan: Plan, args: list[str]) -> str:
    body = json.dumps([plan.runtime_requirements, plan.requirements, args])
    return hashlib.sha256(body.encode()).hexdigest()[:32]


def _resolve(requirements: list[str], args: list[str], env: Mapping[str, str]) -> list[dict]:
    """pip's report of what it would install, seen as the build's pip sees the indexes."""
    clean = {k: v for k, v in env.items() if not k.startswith("PIP_") or k == "PIP_CERT"}
    clean["PIP_CONFIG_FILE"] = (
        os.devnull
    )  # none of the host's pip files (find-links, file: indexes)
    with tempfile.TemporaryDirectory(prefix="omibuild-weight-") as tmp:
        reqs = Path(tmp) / "requirements.txt"
        reqs.write_text("\n".join(requirements) + "\n")
        report = Path(tmp) / "report.json"
        cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "-q",
               "--disable-pip-version-check", "--retries", "0", "--timeout", "10",
               "--report", str(report), "--target", str(Path(tmp) / "t"),  # pip < 24 asks for one
               *args, "-r", str(reqs)]  # fmt: skip
        if clean.get("PIP_CERT"):
            cmd += ["--cert", clean["PIP_CERT"]]
        done = subprocess.run(
            cmd, env=clean, capture_output=True, text=True, timeout=PIP_SECONDS, check=False
        )
        if done.returncode != 0 or not report.exists():
            raise OSError((done.stderr.strip().splitlines() or ["pip failed"])[-1])
        return list(json.loads(report.read_text())["install"])


def _size(url: str) -> int:
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme == "file":
        return os.stat(urllib.request.url2pathname(parsed.path)).st_size
    request = urllib.request.Request(url, method="HEAD")
    with urllib.request.urlopen(request, timeout=15) as resp:
        return int(resp.headers.get("Content-Length") or 0)


def weigh(plan: Plan, cache: Cache, env: Mapping[str, str] | None = None) -> Weight | None:
    """The venv's weight for ``plan``, or None where it cannot be known here."""
    env = os.environ if env is None else env
    if env.get("OMIBUILD_WEIGH", "1").lower() in ("0", "false", "no", "off"):
        return None
    args = _pip_args(plan, env)
    memo = cache.root / "weights" / f"{_key(plan, args)}.json"
    try:
        saved = json.loads(memo.read_text())
        return Weight(
            int(saved["wheel_bytes"]),
            int(saved["packages"]),
            tuple((str(n), int(s)) for n, s in saved["heaviest"]),
            int(saved["cuda_bytes"]),
            saved["cuda_runtime"],
        )
    except (OSError, ValueError, TypeError, KeyError):
        pass
    try:
        installs = _resolve([*plan.runtime_requirements, *plan.requirements], args, env)
        urls = [i["download_info"]["url"] for i in installs]
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            sizes = list(pool.map(_size, urls))
    except (OSError, ValueError, KeyError, subprocess.SubprocessError):
        return None
    named = sorted(
        ((f"{i['metadata']['name']}=={i['metadata']['version']}", s)
         for i, s in zip(installs, sizes, strict=True)),
        key=lambda pair: -pair[1],
    )  # fmt: skip
    weight = Weight(
        wheel_bytes=sum(sizes),
        packages=len(installs),
        heaviest=tuple(named[:5]),
        cuda_bytes=sum(s for n, s in named if n.lower().startswith(CUDA_WHEELS)),
        cuda_runtime=next(
            (n for n, _ in named if n.lower().startswith("nvidia-cuda-runtime")), None
        ),
    )
    memo.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(memo, json.dumps(asdict(weight)))
    return weight


def _other_major(weight: Weight, accelerator: str) -> int | None:
    """The CUDA major the libraries are built for, where it is not the one ``accelerator``
    names (torch 2.13's PyPI wheels are CUDA 13's: cuda:12's driver label would be wrong)."""
    major = weight.cuda_major
    asked = accelerator.partition(":")[2]
    return major if major is not None and asked and str(major) != asked else None


def warns(weight: Weight | None, accelerator: str = "cpu") -> bool:
    """Whether the venv's weight is worth a warning: heavy, CUDA in a CPU image, or CUDA of
    another major than the image declares."""
    if weight is None:
        return False
    return (
        weight.wheel_bytes >= HEAVY_BYTES
        or (weight.cuda_bytes > 0 and accelerator == "cpu")
        or _other_major(weight, accelerator) is not None
    )


def note(weight: Weight | None, accelerator: str = "cpu") -> str | None:
    """What plan and apply say of the venv's weight: a line; with the heaviest wheels when it
    is heavy, and the CUDA payload a CPU image (``accelerator``) would still carry."""
    if weight is None:
        return None
    line = f"the image's venv: {weight.line()}"
    if weight.cuda_bytes and accelerator != "cpu":
        line += f", {human(weight.cuda_bytes)} of it CUDA libraries"
    if not warns(weight, accelerator):
        return line
    if weight.wheel_bytes >= HEAVY_BYTES:
        heaviest = ", ".join(f"{n} {human(s)}" for n, s in weight.heaviest)
        line += f"; heaviest: {heaviest}"
    if (major := _other_major(weight, accelerator)) is not None:
        line += (
            f". The CUDA libraries are CUDA {major}'s ({weight.cuda_runtime}), not "
            f"{accelerator}'s: set accelerator: cuda:{major}"
        )
    if weight.cuda_bytes and accelerator == "cpu":
        line += (
            f". {human(weight.cuda_bytes)} of it is CUDA libraries, though accelerator is cpu: "
            f"{CUDA_HINT}"
        )
    return line


class Weighing:
    """Each plan's weight, found on daemon threads while the build runs: a no-op apply does not
    wait for pip, and a build rarely ends before pip's resolution does."""

    WAIT_SECONDS = 60.0

    def __init__(self, plans: list[Plan], cache: Cache) -> None:
        self.found: dict[str, Weight | None] = {}
        self.threads = {}
        for plan in plans:
            thread = threading.Thread(target=self._weigh, args=(plan, cache), daemon=True)
            thread.start()
            self.threads[plan.name] = thread

    def _weigh(self, plan: Plan, cache: Cache) -> None:
        self.found[plan.name] = weigh(plan, cache)

    def results(self, wanted: set[str]) -> dict[str, Weight | None]:
        """The weights of the plans named ``wanted``, waiting a bounded time for them."""
        for name in wanted:
            thread = self.threads.get(name)
            if thread is not None:
                thread.join(self.WAIT_SECONDS)
        return {name: self.found.get(name) for name in wanted}
