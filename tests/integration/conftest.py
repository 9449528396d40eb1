"""Integration fixtures: the real Docker engine, registry and base image that `make setup`
provides. Missing services fail the tests (they are promised features), never skip them."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

REGISTRY = os.environ.get("OMI_REGISTRY_ADDR", "127.0.0.1:5000")
BASE_IMAGE = os.environ.get("OMI_BASE_IMAGE", "omibuild.local/python:3.11-slim")


def docker(
    *args: str, check: bool = True, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["docker", *args], capture_output=True, text=True, check=check, timeout=timeout
    )


@pytest.fixture(scope="session")
def engine() -> None:
    info = docker("info", "--format", "{{json .DriverStatus}}", check=False, timeout=30)
    if info.returncode != 0 or "containerd.snapshotter" not in info.stdout:
        pytest.fail(
            "no Docker engine with the containerd image store: run `make setup` "
            f"({info.stderr.strip()[:200]})"
        )
    if docker("image", "inspect", BASE_IMAGE, check=False).returncode != 0:
        pytest.fail(f"base image {BASE_IMAGE} is missing: run `make setup`")


@pytest.fixture(scope="session")
def registry(engine: None) -> str:
    import urllib.request

    try:
        urllib.request.urlopen(f"http://{REGISTRY}/v2/", timeout=5).read()
    except OSError as err:
        pytest.fail(f"no registry on {REGISTRY}: run `make setup` ({err})")
    return REGISTRY


@pytest.fixture
def unique() -> str:
    return uuid.uuid4().hex[:10]


@pytest.fixture
def image_cleanup() -> Iterator[list[str]]:
    """Images a test creates; removed afterwards."""
    refs: list[str] = []
    yield refs
    for ref in refs:
        docker("image", "rm", "-f", ref, check=False)


@pytest.fixture
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An isolated omibuild cache for the test."""
    path = tmp_path / "omicache"
    monkeypatch.setenv("OMIBUILD_CACHE_DIR", str(path))
    return path
