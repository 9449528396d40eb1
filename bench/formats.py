"""Image size per everyday format (`make bench`, group `formats`): a model of each framework,
trained here and saved as its docs say, in a fresh repository; `omibuild init` and `apply`
with nothing edited, against a hand-written Dockerfile of the same model as a user would
write it first (the base, `pip install <framework>` from PyPI, the model copied in).

torch's image takes its CPU build from a package index on loopback (as a team mirrors
https://download.pytorch.org/whl/cpu, set as PIP_EXTRA_INDEX_URL); the hand-written one gets
PyPI's, which is the CUDA build. Target: the XGBoost image under 350 MB."""

from __future__ import annotations

import functools
import html
import http.server
import os
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

IRIS = "from sklearn.datasets import load_iris\nx, y = load_iris(return_X_y=True)\n"
FORMATS: dict[str, tuple[str, str, str]] = {
    # name: (training script, the model file, what the hand-written Dockerfile installs)
    "xgboost": (
        IRIS + "import xgboost\nxgboost.XGBClassifier(n_estimators=20).fit(x, y)"
        ".save_model('model/model.json')\n",
        "model/model.json",
        "xgboost numpy",
    ),
    "lightgbm": (
        IRIS + "import lightgbm\nm = lightgbm.LGBMClassifier(n_estimators=20, verbose=-1)"
        ".fit(x, y)\nm.booster_.save_model('model/model.txt')\n",
        "model/model.txt",
        "lightgbm numpy",
    ),
    "catboost": (
        IRIS + "import catboost\ncatboost.CatBoostClassifier(iterations=20, verbose=0, "
        "allow_writing_files=False).fit(x, y).save_model('model/model.cbm')\n",
        "model/model.cbm",
        "catboost numpy",
    ),
    "torchscript": (
        "import torch\nnet = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), "
        "torch.nn.Linear(8, 3)).eval()\ntorch.jit.save(torch.jit.script(net), 'model/net.pt')\n",
        "model/net.pt",
        "torch numpy",
    ),
}
TORCH_WHEELS = Path("/opt/wheels")


@contextmanager
def cpu_index() -> Iterator[str]:
    """torch's CPU build on a loopback index (PEP 503), from this machine's wheel of it."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="omibuild-bench-index-") as tmp:
        root = Path(tmp)
        (root / "simple" / "torch").mkdir(parents=True)
        (root / "files").mkdir()
        links = []
        for wheel in sorted(TORCH_WHEELS.glob("torch-*+cpu-*.whl")):
            (root / "files" / wheel.name).symlink_to(wheel)
            href = html.escape(f"/files/{wheel.name}".replace("+", "%2B"))
            links.append(f'<a href="{href}">{html.escape(wheel.name)}</a>')
        (root / "simple" / "torch" / "index.html").write_text("".join(links))

        class Quiet(http.server.SimpleHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

        server = http.server.ThreadingHTTPServer(
            ("127.0.0.1", 0), functools.partial(Quiet, directory=str(root))
        )
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            yield f"http://127.0.0.1:{server.server_address[1]}/simple"
        finally:
            server.shutdown()
            server.server_close()


def image_bytes(ref: str) -> int:
    """The image's files, unpacked, as a container sees them (the engine's own figure counts
    compressed and uncompressed layers alike, so two images built differently do not
    compare)."""
    out = subprocess.run(
        ["docker", "run", "--rm", "--user", "0", "--network", "none", "--entrypoint", "du",
         ref, "-sbx", "/"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return int(out.stdout.split()[0])


def _hand_written(repo: Path, name: str, packages: str, base: str) -> str:
    """The Dockerfile a user writes first: the base, pip install the framework, the model."""
    apt = (
        "RUN apt-get update && apt-get install -y --no-install-recommends libgomp1 "
        "&& rm -rf /var/lib/apt/lists/*\n"
        if name == "lightgbm"
        else ""
    )
    (repo / "Dockerfile").write_text(
        f"FROM {base}\n{apt}"
        "RUN --mount=type=secret,id=ca,required=false python3 -m venv /venv && "
        "PIP_CERT=/run/secrets/ca /venv/bin/pip install --no-cache-dir " + packages + "\n"
        "COPY model /model\n"
    )
    return f"omibuild-bench/hand-{name}:latest"


def bench_formats(
    work: Path,
    *,
    py: str,
    base: str,
    record: Callable[..., Any],
    log: Callable[[str], None],
    docker_build: Callable[..., None],
    omibuild: Callable[..., list[str]],
) -> None:
    venv = str(Path(py).parent.parent)
    with cpu_index() as index:
        for name, (script, _, packages) in FORMATS.items():
            repo = work / f"format-{name}"
            (repo / "model").mkdir(parents=True)
            subprocess.run(["git", "init", "-q", str(repo)], check=True)
            subprocess.run([py, "-c", script], cwd=repo, check=True, capture_output=True)
            env = {**os.environ, "VIRTUAL_ENV": venv, "OMIBUILD_CACHE_DIR": str(work / "omicache")}
            if name == "torchscript":
                env["PIP_EXTRA_INDEX_URL"] = index
            subprocess.run(omibuild("init"), cwd=repo, env=env, check=True, capture_output=True)
            log(f"formats: building {name} with omibuild, then by hand")
            done = subprocess.run(
                omibuild("apply", "--progress", "quiet"),
                cwd=repo, env=env, capture_output=True, text=True, timeout=3600,
            )  # fmt: skip
            if done.returncode != 0:
                raise RuntimeError(f"{name}: {done.stderr[-1500:]}")
            ours = image_bytes(f"omibuild.local/format-{name}:latest")
            ref = _hand_written(repo, name, packages, base)
            docker_build(repo, ref)
            theirs = image_bytes(ref)
            target = "≤ 350 MB" if name == "xgboost" else ""
            record(
                "formats",
                f"{name}: image size (unpacked), omibuild init + apply vs a hand-written "
                "Dockerfile (pip install from PyPI)",
                [ours / 1e6],
                "MB",
                baseline=[theirs / 1e6],
                baseline_name=f"FROM base; pip install {packages}; COPY model",
                target=target,
                check=(lambda v, r: v <= 350) if name == "xgboost" else None,
            )
            tags = subprocess.run(
                ["docker", "images", "--format", "{{.Repository}}:{{.Tag}}"],
                capture_output=True, text=True, check=False,
            ).stdout.split()  # fmt: skip
            mine = [t for t in tags if t.startswith(f"omibuild.local/format-{name}:")]
            subprocess.run(["docker", "image", "rm", "-f", ref, *mine], capture_output=True)
            shutil.rmtree(repo, ignore_errors=True)
