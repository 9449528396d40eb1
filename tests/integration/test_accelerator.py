"""accelerator: cuda on a machine without a GPU, as a stranger meets it: an XGBoost model
trained in a fresh git repository, omibuild from its wheel, `accelerator: cuda` added to what
`init` wrote. The plan says what it asks of the driver and how much of the venv is CUDA; the
image carries XGBoost's CUDA build (not xgboost-cpu), the NVIDIA container toolkit's env and
the labels a scheduler reads; on this CPU-only engine it serves on the CPU, says so once in its
log and in its V2 metadata, and passes `omibuild check`. `run --gpus all` where the engine has
no GPU runtime is one line. Read with docker and urllib, never omibuild's code."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from tests.integration.strangers import new_stranger, training_venv
from tests.integration.test_formats import XGBOOST
from tests.integration.test_install import built, checked

pytestmark = pytest.mark.integration


def test_a_cuda_image_serves_on_the_cpu_where_no_gpu_is_and_says_so(
    tmp_path: Path, unique: str, engine: None, own_images: list[str]
) -> None:
    venv = training_venv("xgboost", ["xgboost-cpu", "scikit-learn", "joblib"])
    name = f"cuda-{unique}"
    s = new_stranger(tmp_path, name, venv)
    s.train(XGBOOST)
    s.ok("init")
    manifest = s.repo / "omi.yaml"
    text = manifest.read_text()
    assert "- xgboost-cpu==" in text  # what init found installed
    manifest.write_text(text + "accelerator: cuda\n")
    planned = s.cli("plan")
    assert planned.returncode == 0, planned.stderr
    assert "accelerator   cuda:12 (NVIDIA driver 525 or newer)" in planned.stdout
    [weight] = [ln for ln in planned.stderr.splitlines() if "the image's venv" in ln]
    assert "of it CUDA libraries" in weight and "warning" not in weight, weight
    requirements = json.loads(s.ok("plan", "--format", "json"))["requirements"]
    assert any(r.startswith("xgboost==") for r in requirements), requirements

    image = built(s, own_images)
    own_images.append(image)
    inspected = json.loads(
        subprocess.run(["docker", "image", "inspect", image], capture_output=True, text=True,
                       check=True).stdout
    )[0]["Config"]  # fmt: skip
    env = dict(e.split("=", 1) for e in inspected["Env"])
    assert env["NVIDIA_VISIBLE_DEVICES"] == "all" and env["OMI_ACCELERATOR"] == "cuda"
    assert env["NVIDIA_DRIVER_CAPABILITIES"] == "compute,utility"
    assert env["NVIDIA_REQUIRE_CUDA"] == "cuda>=12.0"
    assert inspected["Labels"]["io.omibuild.accelerator"] == "cuda:12"
    assert inspected["Labels"]["io.omibuild.cuda.driver-min"] == "525"
    installed = subprocess.run(
        ["docker", "run", "--rm", "--entrypoint", "python", image, "-c",
         "import importlib.metadata as m; print(sorted(d.metadata['Name'] for d in "
         "m.distributions()))"],
        capture_output=True, text=True, check=True, timeout=300,
    ).stdout  # fmt: skip
    assert "'xgboost'" in installed and "xgboost-cpu" not in installed, installed
    assert "nvidia-nccl-cu12" in installed, installed  # XGBoost's CUDA build brings it

    (s.repo / "rows.json").write_text(json.dumps({"instances": [[5.1, 3.5, 1.4, 0.2]]}))
    answer = json.loads(s.ok("run", "--predict", "rows.json", "--format", "json"))
    assert answer["status"] == 200, answer
    assert answer["response"]["outputs"][0]["data"] == [0], answer  # the default: V2
    cid = subprocess.run(["docker", "run", "-d", "--rm", "-p", "127.0.0.1::8080", image],
                         capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    try:
        port = subprocess.run(["docker", "port", cid, "8080"], capture_output=True, text=True,
                              check=True).stdout.split(":")[-1].strip()  # fmt: skip
        deadline = time.monotonic() + 120
        while True:
            try:
                url = f"http://127.0.0.1:{port}/v2/models/{name}"
                with urllib.request.urlopen(f"{url}/ready", timeout=5):
                    pass  # loaded: the device is chosen
                with urllib.request.urlopen(url, timeout=5) as resp:
                    metadata = json.load(resp)
                break
            except OSError:
                assert time.monotonic() < deadline, "the image never answered"
                time.sleep(0.3)
        assert metadata["parameters"] == {"device": "cpu"}, metadata
        logs = subprocess.run(["docker", "logs", cid], capture_output=True, text=True).stderr
    finally:
        subprocess.run(["docker", "rm", "-f", cid], capture_output=True, check=False)
    records = [json.loads(ln) for ln in logs.splitlines() if ln.startswith("{")]
    [fallback] = [r for r in records if r["msg"] == "built for CUDA, serving on the CPU"]
    assert fallback["level"] == "warning" and "--gpus" in fallback["reason"], fallback
    [ready] = [r for r in records if r["msg"] == "model ready"]
    assert ready["device"] == "cpu"

    checked(s, image)  # including "reports the device it runs on": cpu
    report = json.loads(s.cli("check", image, "--format", "json").stdout)["findings"]
    assert any(f["requirement"].endswith("reports the device it runs on") and f["ok"]
               for f in report)  # fmt: skip
    gpus = s.cli("run", "--gpus", "all", "--predict", "rows.json")
    assert gpus.returncode == 2, gpus.stderr
    [line] = gpus.stderr.strip().splitlines()
    assert line.startswith("omibuild: error: the Docker engine refused:") and "gpu" in line, line
