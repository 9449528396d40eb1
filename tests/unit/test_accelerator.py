"""accelerator: cpu and cuda, planned. Golden plans for torch and XGBoost each way (the CPU
build or the CUDA one, the NVIDIA toolkit's env, the labels a scheduler reads), the plan diff,
and the runtime's choice of device where no GPU is."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from omibuild.manifest.validate import load_manifest, validate_file
from omibuild.planning.diff import diff_plans
from omibuild.planning.make import make_plan
from omibuild.render.dockerfile import render
from omibuild.store.cache import Cache
from tests.unit.test_plan import GOLDEN, UPDATE, canonical_inputs

FRAMEWORKS = {
    "torch": ("pytorch", "net.pt", "torch==2.13.0"),
    "xgboost": ("xgboost", "model.ubj", "xgboost-cpu==3.1.2"),
}


def _manifest(repo: Path, framework: str, accelerator: str | None) -> Path:
    flavor, file, requirement = FRAMEWORKS[framework]
    (repo / "model").mkdir(parents=True, exist_ok=True)
    (repo / "model" / file).write_bytes(b"\0" * 64)
    line = f"accelerator: {accelerator}\n" if accelerator else ""
    (repo / "omi.yaml").write_text(
        "apiVersion: omibuild/v1\n"
        f"name: {framework}-net\n"
        "version: 1.0.0\n"
        f"model:\n  source: {{local: {{path: model}}}}\n  flavor: {flavor}\n"
        f"image:\n  requirements: [{requirement}]\n"
        f"{line}"
    )
    return repo / "omi.yaml"


@pytest.mark.parametrize("accelerator", ["cpu", "cuda"])
@pytest.mark.parametrize("framework", sorted(FRAMEWORKS))
def test_golden_plans_for_cpu_and_cuda(framework: str, accelerator: str, tmp_path: Path) -> None:
    path = _manifest(tmp_path / "repo", framework, accelerator)
    assert not validate_file(path, env={}).issues
    m = load_manifest(path, env={"OMIBUILD_BASE_IMAGE": "omibuild.local/python:3.11-slim"})
    plan = make_plan(canonical_inputs(m, Cache(tmp_path / "cache")))
    plan_json = json.dumps(plan.to_dict(), indent=2, sort_keys=True) + "\n"
    golden = GOLDEN / f"accelerator-{framework}-{accelerator}.plan.json"
    if UPDATE:
        golden.write_text(plan_json)
    assert plan_json == golden.read_text(), "run UPDATE_GOLDEN=1 make test-unit"
    env, labels, reqs = dict(plan.env), dict(plan.labels), plan.requirements
    if accelerator == "cpu":
        assert "OMI_ACCELERATOR" not in env and "io.omibuild.accelerator" not in labels
        assert "accelerator" not in plan.to_dict()  # a CPU plan's digest did not move
        assert framework != "xgboost" or "xgboost-cpu==3.1.2" in reqs
    else:
        assert env["OMI_ACCELERATOR"] == "cuda" and env["NVIDIA_VISIBLE_DEVICES"] == "all"
        assert env["NVIDIA_DRIVER_CAPABILITIES"] == "compute,utility"
        assert env["NVIDIA_REQUIRE_CUDA"] == "cuda>=12.0"
        assert labels["io.omibuild.accelerator"] == "cuda:12"
        assert labels["io.omibuild.cuda.driver-min"] == "525"
        assert framework != "xgboost" or (
            "xgboost==3.1.2" in reqs and "xgboost-cpu" not in str(reqs)
        )
        assert "ENV " in render(plan) and "NVIDIA_REQUIRE_CUDA" in render(plan)


def test_a_cuda_major_and_the_plan_diff(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "cache")
    cpu = _manifest(tmp_path / "a", "torch", None)
    cuda13 = _manifest(tmp_path / "b", "torch", "cuda:13")
    env = {"OMIBUILD_BASE_IMAGE": "omibuild.local/python:3.11-slim"}
    old = make_plan(canonical_inputs(load_manifest(cpu, env=env), cache))
    new = make_plan(canonical_inputs(load_manifest(cuda13, env=env), cache))
    assert new.accelerator == "cuda:13" and dict(new.env)["NVIDIA_REQUIRE_CUDA"] == "cuda>=13.0"
    assert dict(new.labels)["io.omibuild.cuda.driver-min"] == "580"
    image = next(s for s in diff_plans(old, new, "test").stages if s.stage == "image")
    assert "accelerator changed" in image.reasons
    assert any(
        c.name == "accelerator" and (c.old, c.new) == ("cpu", "cuda:13") for c in image.changes
    )


@pytest.mark.parametrize("bad", ["gpu", "cuda:11", "cuda:x", "CUDA", "cuda12"])
def test_a_wrong_accelerator_is_one_located_error(bad: str, tmp_path: Path) -> None:
    path = _manifest(tmp_path / "repo", "torch", bad)
    issues = validate_file(path, env={}).issues
    assert [i.path for i in issues] == ["$.accelerator"], issues
    assert issues[0].line == 9


def test_a_cuda_image_without_a_gpu_serves_on_the_cpu_and_says_why(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from omibuild.runtime import device

    class Torch:  # torch as a CPU-only engine shows it to a CUDA build
        class cuda:
            @staticmethod
            def is_available() -> bool:
                return False

        class version:
            cuda = "12.8"

    monkeypatch.delenv("OMI_ACCELERATOR", raising=False)
    assert device.torch_placement(Torch) == device.Placement("cpu", None)
    monkeypatch.setenv("OMI_ACCELERATOR", "cuda")
    placed = device.torch_placement(Torch)
    assert placed.device == "cpu" and "no GPU" in (placed.reason or "") and placed.gpus == 0
    Torch.version.cuda = None  # type: ignore[assignment]
    assert device.torch_placement(Torch).reason == "this torch is a CPU build"
    Torch.cuda.is_available = staticmethod(lambda: True)  # type: ignore[method-assign]
    assert (
        device.torch_placement(Torch) == device.Placement("cuda:0")
        and device.Placement("cuda:0").gpus == 1
    )
    monkeypatch.setattr(device, "visible_gpus", lambda: 0)
    assert (
        device.library_placement("XGBoost").reason
        == "XGBoost sees no NVIDIA GPU (started without --gpus?)"
    )


def test_what_plan_says_of_the_cuda_payload() -> None:
    from omibuild.planning.weight import Weight, note, warns

    light = Weight(200 << 20, 20, (("numpy==2.4.6", 20 << 20),), 0)
    assert (
        not warns(light)
        and note(light) == "the image's venv: about 209.7 MB of wheels (20 packages)"
    )
    nccl = Weight(700 << 20, 21, (("nvidia-nccl-cu12==2.28.3", 440 << 20),), 440 << 20,
                  "nvidia-cuda-runtime-cu12==12.8.90")  # fmt: skip
    assert warns(nccl, "cpu")  # CUDA in a CPU image: always said, even under 1 GB
    said = note(nccl, "cpu") or ""
    assert "461.4 MB of it is CUDA libraries, though accelerator is cpu" in said, said
    assert "download.pytorch.org/whl/cpu" in said
    assert not warns(nccl, "cuda:12")
    assert note(nccl, "cuda:12") == (
        "the image's venv: about 734.0 MB of wheels (21 packages), 461.4 MB of it CUDA libraries"
    )
    torch13 = Weight(3 << 30, 42, (("torch==2.13.0", 900 << 20),), 2 << 30,
                     "nvidia-cuda-runtime==13.0.96")  # fmt: skip
    assert torch13.cuda_major == 13 and warns(torch13, "cuda:12")
    assert "set accelerator" not in (note(torch13, "cuda:13") or "")
    said = note(torch13, "cuda:12") or ""
    assert (
        "CUDA 13's (nvidia-cuda-runtime==13.0.96), not cuda:12's: set accelerator: cuda:13" in said
    )
