"""`omibuild check` passes on example images and fails, naming the requirement, on broken
images built here; `run` and `check` leave no container behind."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import remember_image

from .conftest import BASE_IMAGE, docker
from .helpers import copy_example, omibuild

# one worker runs these together: they count the containers `omibuild run` leaves
pytestmark = [
    pytest.mark.integration,
    pytest.mark.xdist_group("check"),
    pytest.mark.usefixtures("example_models"),  # builds examples/
]

# A minimal OMI-looking server (KServe v1 routes) for the broken images.
FAKE_SERVER = r"""
import http.server, json, os, sys
port = int(sys.argv[1]) if len(sys.argv) > 1 else int(os.environ.get("HTTP_PORT", "8080"))
ready = os.environ.get("FAKE_NEVER_READY") != "1"
class H(http.server.BaseHTTPRequestHandler):
    def _send(self, code, body):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
    def do_GET(self):
        self._send(200 if ready else 503, {"name": "fake", "ready": ready})
    def do_POST(self):
        self._send(200, {"predictions": [0]})
    def log_message(self, *a): pass
s = http.server.ThreadingHTTPServer(("0.0.0.0", port), H)
import signal, threading
signal.signal(signal.SIGTERM, lambda *a: threading.Thread(target=s.shutdown).start())
s.serve_forever()
"""

GOOD_LABELS = {
    "ml.openmodel.interfaces": '["kfserving"]',
    "ml.openmodel.protocols": '[["v1"]]',
    "ml.openmodel.port": "8080",
    "ml.openml.model_name": '"fake"',
}


def _fake_image(
    tmp_path: Path,
    tag: str,
    *,
    labels: dict[str, str],
    user: str = "1000",
    entrypoint: list[str] | None = None,
    env: dict[str, str] | None = None,
) -> str:
    ctx = tmp_path / tag.replace(":", "_").replace("/", "_")
    ctx.mkdir()
    (ctx / "server.py").write_text(FAKE_SERVER)
    lines = [f"FROM {BASE_IMAGE}", "COPY server.py /server.py"]
    lines += [f"LABEL {json.dumps(k)}={json.dumps(v)}" for k, v in labels.items()]
    lines += [f"ENV {k}={json.dumps(v)}" for k, v in (env or {}).items()]
    lines += [
        f"USER {user}" if user else "USER root",
        f"ENTRYPOINT {json.dumps(entrypoint or ['python3', '/server.py'])}",
    ]
    (ctx / "Dockerfile").write_text("\n".join(lines) + "\n")
    docker("buildx", "build", "--progress=quiet", str(ctx), "--output", f"type=image,name={tag}")
    return tag


def _check(image: str, *args: str) -> tuple[int, dict]:  # type: ignore[type-arg]
    proc = omibuild("check", image, "--format", "json", "--timeout", "8", *args)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def _failed(report: dict) -> dict[str, str]:  # type: ignore[type-arg]
    return {f["requirement"]: f["detail"] for f in report["findings"] if not f["ok"]}


def _containers_left(image: str) -> list[str]:
    """Containers omibuild started from this image and left behind. (Filtered by image: other
    test files start containers of their own images on other workers at the same time.)"""
    out = docker(
        "ps",
        "-aq",
        "--filter",
        "label=io.omibuild.started-by=omibuild",
        "--filter",
        f"ancestor={image}",
    ).stdout
    return out.split()


@pytest.fixture
def fakes(engine: None, tmp_path: Path, unique: str, image_cleanup: list[str]):  # type: ignore[no-untyped-def]
    made: list[str] = []

    def make(name: str, **kw):  # type: ignore[no-untyped-def]
        tag = f"omibuild-test/fake-{name}:{unique}"
        image_cleanup.append(tag)
        made.append(tag)
        return _fake_image(tmp_path, tag, **kw)

    yield make
    assert [c for tag in made for c in _containers_left(tag)] == []


def test_a_well_formed_fake_passes(fakes) -> None:  # type: ignore[no-untyped-def]
    code, report = _check(fakes("good", labels=GOOD_LABELS))
    assert code == 0, _failed(report)


def test_missing_label(fakes) -> None:  # type: ignore[no-untyped-def]
    labels = {k: v for k, v in GOOD_LABELS.items() if k != "ml.openml.model_name"}
    code, report = _check(fakes("nolabel", labels=labels))
    assert code == 1
    assert _failed(report) == {"label ml.openml.model_name": "missing"}


def test_malformed_json_label(fakes) -> None:  # type: ignore[no-untyped-def]
    code, report = _check(
        fakes("badjson", labels={**GOOD_LABELS, "ml.openmodel.interfaces": '["kfserving"'})
    )
    assert code == 1
    failed = _failed(report)
    assert "malformed JSON" in failed["ml.openmodel.interfaces is a JSON list of spec interfaces"]


def test_port_label_differs_from_listening_port(fakes) -> None:  # type: ignore[no-untyped-def]
    image = fakes("port", labels=GOOD_LABELS, entrypoint=["python3", "/server.py", "9090"])
    code, report = _check(image)
    assert code == 1
    detail = _failed(report)["kfserving v1: becomes ready"]
    assert "port 8080 (the ml.openmodel.port label)" in detail


def test_entrypoint_that_crashes(fakes) -> None:  # type: ignore[no-untyped-def]
    image = fakes(
        "crash",
        labels=GOOD_LABELS,
        entrypoint=["python3", "-c", "import sys; print('boom'); sys.exit(3)"],
    )
    code, report = _check(image)
    assert code == 1
    detail = _failed(report)["kfserving v1: becomes ready"]
    assert "exited with code 3" in detail and "boom" in detail


def test_server_that_never_becomes_ready(fakes) -> None:  # type: ignore[no-untyped-def]
    image = fakes("never", labels=GOOD_LABELS, env={"FAKE_NEVER_READY": "1"})
    code, report = _check(image)
    assert code == 1
    assert "not ready within 8s" in _failed(report)["kfserving v1: becomes ready"]


def test_image_that_runs_as_root(fakes) -> None:  # type: ignore[no-untyped-def]
    code, report = _check(fakes("root", labels=GOOD_LABELS, user=""))
    assert code == 1
    failed = _failed(report)
    assert failed["image user is non-root"].startswith("USER root")
    assert failed["runs as non-root"] == "uid 0"


@pytest.fixture(scope="module")
def example_image(registry: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    tmp = tmp_path_factory.mktemp("everywhere")
    repository = f"{registry}/omibuild-test/everywhere"
    remember_image(repository)  # its tags go when the run ends
    manifest = copy_example(
        "multi-runtime", tmp, repository, **{"  push: true\n": "  push: false\n"}
    )
    proc = omibuild("apply", str(manifest), "--progress", "plain")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return f"{repository}:latest"


def test_check_passes_on_the_example_for_every_interface(example_image: str) -> None:
    code, report = _check(example_image, "--timeout", "60")
    assert code == 0, _failed(report)
    names = {f["requirement"] for f in report["findings"]}
    for interface in (
        "kfserving v1",
        "kfserving v2",
        "modzy v2",
        "sagemaker v1",
        "vertex v1",
        "mlflow v1",
    ):
        assert f"{interface}: answers the example input" in names
    assert "modzy v2: reflection lists ModzyModel with Run, Status, Shutdown" in names
    assert _containers_left(example_image) == []


def test_check_junit_output(example_image: str) -> None:
    proc = omibuild("check", example_image, "--format", "junit", "--timeout", "60")
    assert proc.returncode == 0
    import xml.etree.ElementTree as ET

    suite = ET.fromstring(proc.stdout)
    assert suite.get("failures") == "0" and int(suite.get("tests", "0")) > 20


def test_run_predict_prints_the_response_and_cleans_up(example_image: str, tmp_path: Path) -> None:
    request = tmp_path / "req.json"
    request.write_text(json.dumps({"instances": [[5.1, 3.5, 1.4, 0.2]]}))
    for interface in ("kfserving", "modzy", "sagemaker"):
        proc = omibuild("run", example_image, "--interface", interface, "--predict", str(request))
        assert proc.returncode == 0, proc.stderr
        body = json.loads(proc.stdout)
        if interface == "sagemaker":
            assert isinstance(body, list) and body  # the inference toolkit's JSON
        else:
            assert body.get("predictions", body.get("outputs")) is not None
    assert _containers_left(example_image) == []


def _interactive() -> None:
    # xdist workers ignore SIGINT and children inherit that; a terminal's Ctrl-C does not
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_run_interrupted_leaves_no_container(example_image: str, signum: int, code: int) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "omibuild", "run", example_image],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_interactive,
    )
    try:
        deadline = time.monotonic() + 60
        assert proc.stderr is not None
        for line in proc.stderr:
            if "press Ctrl-C" in line or time.monotonic() > deadline:
                break
        assert _containers_left(example_image), "the container should be running now"
        proc.send_signal(signum)
        assert proc.wait(timeout=30) == code
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()  # type: ignore[union-attr]
    assert _containers_left(example_image) == []


def test_run_on_a_taken_port_leaves_no_container(example_image: str) -> None:
    """The engine creates the container, then cannot publish its port: omibuild says so in
    one line and removes what the engine created."""
    import socket

    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = omibuild("run", example_image, "--port", str(port), "--timeout", "30")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith(f"omibuild: error: port {port} is already in use"), proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert _containers_left(example_image) == []
