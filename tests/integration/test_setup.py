"""`make setup` on a prepared machine changes nothing and says so; a failing step names
itself, the reason and its log, and leaves nothing half-done marked as done."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import ROOT

from .conftest import docker

pytestmark = pytest.mark.integration


def _script(name: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(ROOT / "scripts" / name)],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=600,
    )


def test_setup_on_a_prepared_machine_changes_nothing_and_says_so(registry: str) -> None:
    engine_pid = Path("/var/run/docker.pid").read_text().strip()
    proc = _script("setup.sh")
    assert proc.returncode == 0, proc.stderr
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("[setup]")]
    steps = [ln for ln in lines if "ready in" not in ln]
    assert steps and all(("already" in ln or "up to date" in ln) for ln in steps), lines
    assert Path("/var/run/docker.pid").read_text().strip() == engine_pid  # same dockerd


def test_a_registry_that_cannot_start_names_the_step_reason_and_log(tmp_path: Path) -> None:
    env = {
        "OMI_REGISTRY_ADDR": "203.0.113.7:5999",
        "OMI_DEV_STATE": str(tmp_path / "state"),
        "OMI_DEV_LOG_DIR": str(tmp_path / "logs"),
    }
    proc = _script("start-registry.sh", env)
    assert proc.returncode == 1
    assert 'FAILED step "start-registry"' in proc.stderr
    assert "exited before answering on 203.0.113.7:5999" in proc.stderr
    assert "cannot assign requested address" in proc.stderr  # the registry's own reason
    assert f"log: {tmp_path / 'logs' / 'registry.log'}" in proc.stderr


def test_a_failed_base_image_build_leaves_nothing_marked_done(tmp_path: Path, unique: str) -> None:
    image = f"omibuild.local/never-built:{unique}"
    env = {
        "OMI_BASE_IMAGE": image,
        "OMI_DEV_STATE": str(tmp_path / "state"),
        "OMI_DEV_LOG_DIR": str(tmp_path / "logs"),
        "OMI_DEBIAN_MIRROR": "http://127.0.0.1:9/debian",
    }  # nothing listens there
    proc = _script("build-base-image.sh", env)
    assert proc.returncode == 1
    assert 'FAILED step "build-base-image"' in proc.stderr and "debootstrap failed" in proc.stderr
    assert f"log: {tmp_path / 'logs' / 'build-base-image.log'}" in proc.stderr
    state = tmp_path / "state"
    assert not any(state.glob("*.tar")) and not any(state.glob("*.partial"))
    assert not any(state.glob("rootfs.*"))
    assert docker("image", "inspect", image, check=False).returncode != 0


def test_setup_uses_the_engine_already_here_and_installs_nothing() -> None:
    proc = _script("install-packages.sh")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().startswith(
        "[setup] install-packages: already installed (uses the Docker engine already here: "
        "Docker version 2"
    ), proc.stdout


def test_without_an_engine_setup_refuses_trixie_unless_told_yes() -> None:
    """A machine with no usable engine: setup names what the trixie install would move and
    stops before apt runs, unless OMI_SETUP_TRIXIE=yes."""
    sources = Path("/etc/apt/sources.list.d/trixie.sources")
    before = sources.read_text() if sources.exists() else None
    proc = _script(
        "install-packages.sh", {"OMI_DOCKERD": "/nonexistent/dockerd", "OMI_SETUP_TRIXIE": ""}
    )
    assert proc.returncode == 1
    assert proc.stdout == ""  # nothing was installed, nothing was said to be
    message = proc.stderr
    assert message.startswith('[setup] FAILED step "install-packages": no Docker >= 24 with buildx')
    for package in ("libc6", "dpkg", "libstdc++6", "base-files", "Debian 13"):
        assert package in message
    assert "make setup OMI_SETUP_TRIXIE=yes" in message
    assert (sources.read_text() if sources.exists() else None) == before
