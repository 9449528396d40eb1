"""Integration fixtures: the real Docker engine, registry and base image that `make setup`
provides. Missing services fail the tests (they are promised features), never skip them."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tests.fakehub import FakeHub

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
    """Images a test creates; removed when the whole run ends (tests/conftest.py). Removing
    an image lets the engine collect blobs that a build running in parallel may be about to
    export, so nothing is removed while builds can still be running."""
    from tests.conftest import remember_image

    refs: list[str] = []
    yield refs
    remember_image(*refs)


@pytest.fixture
def own_images() -> Iterator[list[str]]:
    """Images of gigabytes (torch's, CatBoost's) that only their test builds: removed when the
    test ends, not the run, or six torch images fill the disk a run has. Nothing else builds
    their venv layers, so removing them cannot pull a blob from under another build (a load
    that still races containerd's collector is loaded again once: engine/apply.py)."""
    from tests.conftest import remove_images

    refs: list[str] = []
    yield refs
    remove_images(set(refs))


# BuildKit's exported layer caches outlive a test run, as they would on a user's machine: a
# second `make test` imports them instead of writing every layer again. BuildKit locks the
# directory's index itself, so parallel workers may share it.
SHARED_BUILDKIT_CACHE = Path(__file__).resolve().parents[2] / ".cache" / "test-buildkit"


@pytest.fixture
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An isolated omibuild source cache for the test; its BuildKit cache directory is shared
    (remove the ``buildkit`` link for a private one)."""
    path = tmp_path / "omicache"
    path.mkdir()
    SHARED_BUILDKIT_CACHE.mkdir(parents=True, exist_ok=True)
    (path / "buildkit").symlink_to(SHARED_BUILDKIT_CACHE, target_is_directory=True)
    monkeypatch.setenv("OMIBUILD_CACHE_DIR", str(path))
    return path


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real `mlflow server` (sqlite backend, local artifact store) on loopback."""
    import shutil
    import sys
    import time
    import urllib.request

    root = tmp_path_factory.mktemp("mlflow")
    from omibuild.conformance.images import free_port

    port = free_port()
    mlflow = shutil.which("mlflow") or str(Path(sys.executable).with_name("mlflow"))
    log = open(root / "server.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [
            mlflow,
            "server",
            "--backend-store-uri",
            f"sqlite:///{root}/mlflow.db",
            "--artifacts-destination",
            str(root / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    try:
        while True:
            try:
                urllib.request.urlopen(f"{uri}/health", timeout=2).read()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(
                        f"mlflow server did not start: {(root / 'server.log').read_text()[-2000:]}"
                    )
                time.sleep(0.3)
        yield uri
    finally:
        import os
        import signal

        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


@pytest.fixture
def fake_hub() -> Iterator[FakeHub]:
    from tests.fakehub import FakeHub

    hub = FakeHub().start()
    yield hub
    hub.stop()


@pytest.fixture(scope="session")
def cpu_index(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A package index on loopback (PEP 503's simple layout) serving torch's CPU build, as an
    organisation mirrors https://download.pytorch.org/whl/cpu: this machine's wheel of it."""
    import functools
    import html
    import http.server
    import threading

    from tests.integration.strangers import TORCH_CPU_WHEEL

    root = tmp_path_factory.mktemp("cpu-index")
    (root / "simple" / "torch").mkdir(parents=True)
    (root / "files").mkdir()
    (root / "files" / TORCH_CPU_WHEEL.name).symlink_to(TORCH_CPU_WHEEL)
    link = html.escape(f"/files/{TORCH_CPU_WHEEL.name}".replace("+", "%2B"))
    (root / "simple" / "torch" / "index.html").write_text(
        f'<!DOCTYPE html><html><body><a href="{link}">{html.escape(TORCH_CPU_WHEEL.name)}</a>'
        "</body></html>\n"
    )

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Quiet, directory=str(root))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/simple"
    finally:
        server.shutdown()
        server.server_close()
