"""Start the runtime two ways for the same clients: as a process on the host (the runtime
package from this checkout, a staged /opt/omi tree) and as the built example image, switched
by INTERFACE. Third-party clients that cannot share an interpreter run from their own venvs."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from omibuild.conformance.images import free_port
from omibuild.conformance.probe import Endpoint, wait_ready
from omibuild.manifest.validate import load_manifest
from omibuild.planning.pipeline import prepare
from omibuild.progress import QUIET
from omibuild.store.cache import Cache
from tests.conftest import EXAMPLES, ROOT, remember_image

CLIENTS = ROOT / ".clients"


@dataclass
class Server:
    mode: str
    interface: str
    protocol: str
    port: int
    grpc_port: int | None
    model: str
    stop: Callable[[], int | None]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture(scope="session", autouse=True)
def _examples(example_models: None) -> None:
    """Every conformance test serves an example model."""


def stage_omi_tree(example: str, dest: Path) -> Path:
    """An /opt/omi layout (omi.json, model/, code/) for an example, from its real plan."""
    repo = dest / "repo"
    shutil.copytree(EXAMPLES / example, repo, ignore=shutil.ignore_patterns("omi.lock"))
    cache = Cache(dest / "cache")
    prepared = prepare(repo / "omi.yaml", cache, QUIET)
    tree = dest / "opt-omi"
    model_src = repo / prepared.manifest.source.path  # type: ignore[union-attr]
    shutil.copytree(model_src, tree / "model")
    m = load_manifest(repo / "omi.yaml")
    code = repo / (m.code_path or "nonexistent")
    if code.is_dir():
        shutil.copytree(code, tree / "code")
    else:
        (tree / "code").mkdir()
    (tree / "omi.json").write_text(prepared.plan.omi_json)
    return tree


def env_for(interface: str, protocol: str, port: int, grpc_port: int | None) -> dict[str, str]:
    env = {
        "INTERFACE": interface,
        "PROTOCOL": protocol,
        "HTTP_PORT": str(port),
        "PSC_MODEL_PORT": str(port),
        "AIP_HTTP_PORT": str(port),
        "SAGEMAKER_BIND_TO_PORT": str(port),
    }
    if grpc_port:
        env["GRPC_PORT"] = str(grpc_port)
    return env


@pytest.fixture(scope="session")
def omi_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return stage_omi_tree("multi-runtime", tmp_path_factory.mktemp("tree"))


@pytest.fixture(scope="session")
def hooks_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return stage_omi_tree("custom-hooks", tmp_path_factory.mktemp("hooks"))


def start_process(
    tree: Path,
    interface: str,
    protocol: str,
    extra: dict[str, str] | None = None,
    wait: bool = True,
) -> Server:
    port, grpc_port = free_port(), free_port()
    env = {
        **os.environ,
        **env_for(interface, protocol, port, grpc_port),
        "OMI_CONFIG": str(tree / "omi.json"),
        "PYTHONPATH": str(ROOT),
        **(extra or {}),
    }
    log = open(tree.parent / f"runtime-{interface}-{protocol}-{port}.log", "w")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "omibuild.runtime", "serve"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    model = json.loads((tree / "omi.json").read_text())["name"]

    def stop() -> int | None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            code = None
        log.close()
        return code

    server = Server("process", interface, protocol, port, grpc_port, model, stop)
    health = (extra or {}).get("AIP_HEALTH_ROUTE", "/health")
    if (
        wait
        and wait_ready(
            Endpoint(interface, protocol, model, port, health_route=health),
            60,
            alive=lambda: proc.poll() is None,
        )
        is None
    ):
        stop()
        pytest.fail(f"runtime did not start: {Path(log.name).read_text()[-2000:]}")
    return server


def start_container(
    image: str, interface: str, protocol: str, extra: dict[str, str] | None = None
) -> Server:
    port, grpc_port = free_port(), free_port()
    env = env_for(
        interface,
        protocol,
        8080 if not (interface == "modzy" and protocol == "v2") else 45000,
        8081,
    )
    env.update(extra or {})
    args = [
        "docker",
        "run",
        "-d",
        "--rm",
        "--read-only",
        "--tmpfs",
        "/tmp",
        "--label",
        "io.omibuild.started-by=omibuild-tests",
        "-p",
        f"127.0.0.1:{port}:{env['HTTP_PORT']}",
        "-p",
        f"127.0.0.1:{grpc_port}:8081",
    ]
    for k, v in env.items():
        args += ["-e", f"{k}={v}"]
    cid = subprocess.run([*args, image], capture_output=True, text=True, check=True).stdout.strip()
    model = "iris-everywhere"

    def stop() -> int | None:
        subprocess.run(["docker", "stop", "-t", "20", cid], capture_output=True, check=False)
        return 0

    server = Server("image", interface, protocol, port, grpc_port, model, stop)
    health = (extra or {}).get("AIP_HEALTH_ROUTE", "/health")
    if wait_ready(Endpoint(interface, protocol, model, port, health_route=health), 60) is None:
        logs = subprocess.run(["docker", "logs", cid], capture_output=True, text=True).stderr
        stop()
        pytest.fail(f"container did not start: {logs[-2000:]}")
    return server


@pytest.fixture(scope="session")
def everywhere_image(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The multi-runtime example, built once for the session (every interface inside)."""
    from tests.integration.helpers import copy_example, omibuild

    registry = os.environ.get("OMI_REGISTRY_ADDR", "127.0.0.1:5000")
    tmp = tmp_path_factory.mktemp("everywhere")
    repository = f"{registry}/omibuild-test/everywhere"
    remember_image(repository)  # its tags go when the run ends
    manifest = copy_example(
        "multi-runtime", tmp, repository, **{"  push: true\n": "  push: false\n"}
    )
    # a cache of its own, gone with the run's temporary files: the user's ~/.cache/omibuild
    # kept this image's 300 MB layout after every full run
    env = {"OMIBUILD_CACHE_DIR": str(tmp / "cache")}
    proc = omibuild("apply", str(manifest), "--progress", "plain", env=env)
    if proc.returncode != 0:
        pytest.fail(f"could not build the example image: {proc.stderr[-3000:]}")
    return f"{repository}:latest"


@pytest.fixture(params=["process", "image"])
def serve(request: pytest.FixtureRequest, omi_tree: Path) -> Iterator[Callable[..., Server]]:
    """serve(interface, protocol) → a running Server in this test's mode."""
    started: list[Server] = []

    def start(interface: str, protocol: str, extra: dict[str, str] | None = None) -> Server:
        if request.param == "process":
            server = start_process(omi_tree, interface, protocol, extra)
        else:
            image = request.getfixturevalue("everywhere_image")
            server = start_container(image, interface, protocol, extra)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def client_python(name: str) -> str:
    python = CLIENTS / name / "bin" / "python"
    if not python.exists():
        pytest.fail(f"the {name} client venv is missing: run `make setup`")
    return str(python)


def run_client(name: str, script: str, *args: str) -> dict:  # type: ignore[type-arg]
    path = Path(__file__).parent / "clients" / script
    proc = subprocess.run(
        [client_python(name), str(path), *args], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]
