"""Where the model runs: the GPU when the image was built for CUDA (``OMI_ACCELERATOR=cuda``,
set by omibuild's plan) and the engine gave the container one, else the CPU. A CUDA image on a
CPU-only engine serves on the CPU and says so once (``fallback``)."""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from typing import Any

CPU = "cpu"


def asked() -> str:
    """What the image was built for: ``cuda`` or ``cpu``."""
    return "cuda" if os.environ.get("OMI_ACCELERATOR", CPU).lower() == "cuda" else CPU


def visible_gpus() -> int:
    """The NVIDIA GPUs the container toolkit gave this container: its device nodes (what
    `--gpus` adds; ``NVIDIA_VISIBLE_DEVICES`` alone gives nothing without the toolkit)."""
    return len([p for p in glob.glob("/dev/nvidia[0-9]*") if p[len("/dev/nvidia") :].isdigit()])


@dataclass(frozen=True)
class Placement:
    """The device a flavor put the model on, and why not the GPU where one was asked for."""

    device: str = CPU  # cpu, cuda:0
    reason: str | None = None  # set when CUDA was asked and the model is on the CPU

    @property
    def gpus(self) -> int:
        return 1 if self.device.startswith("cuda") else 0


def torch_placement(torch: Any) -> Placement:
    """cuda:0 when the image is for CUDA and torch sees a GPU; else the CPU, with why."""
    if asked() != "cuda":
        return Placement()
    if not torch.cuda.is_available():
        build = getattr(torch.version, "cuda", None)
        why = (
            "this torch is a CPU build"
            if not build
            else "torch sees no GPU (started without --gpus?)"
        )
        return Placement(CPU, why)
    return Placement("cuda:0")


def library_placement(name: str) -> Placement:
    """For a library that takes ``device="cuda"`` (XGBoost): the GPU when one is visible."""
    if asked() != "cuda":
        return Placement()
    if visible_gpus() == 0:
        return Placement(CPU, f"{name} sees no NVIDIA GPU (started without --gpus?)")
    return Placement("cuda:0")
