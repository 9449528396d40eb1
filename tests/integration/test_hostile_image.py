"""A built image under hostile load, in containers with a memory limit: large requests the
model rejects, a liveness probe timed during a large upload, slow clients, and the runtime's
hostile-request cases on every interface the image serves, over HTTP and gRPC."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator

import pytest

from tests.integration.conftest import docker
from tests.integration.test_first_model import cli, new_repo, train_joblib
from tests.unit import test_runtime_hostile as hostile

pytestmark = pytest.mark.integration

MEMORY_LIMIT = "1g"
SETTLED_GROWTH_MB = 100  # what three rejected 42 MB requests may leave behind, allocator included
# the decoder helper and multiprocessing's resource tracker, started by the first large body,
# with the page cache their start-up reads (measured: 195 MB in all, in cgroup v1's count)
HELPER_MB = 260


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory, engine: None) -> Iterator[str]:
    import uuid

    unique = uuid.uuid4().hex[:10]
    repo = new_repo(tmp_path_factory.mktemp("hostile"), f"hostile-{unique}", train_joblib)
    assert cli(repo, "init").returncode == 0
    built = cli(repo, "apply", "--progress", "quiet")
    assert built.returncode == 0, built.stderr[-2000:]
    yield f"omibuild.local/hostile-{unique}:latest"  # removed at the end of the run (new_repo)


class Container:
    def __init__(self, image: str, *env: str, flags: tuple[str, ...] = ()) -> None:
        args = [a for e in env for a in ("-e", e)]
        self.id = docker(
            "run", "-d", "--memory", MEMORY_LIMIT, "-p", "127.0.0.1::8080", *flags, *args, image
        ).stdout.strip()
        port = docker("port", self.id, "8080").stdout.split(":")[-1].strip()
        self.port = int(port)
        self.base = f"http://127.0.0.1:{port}"

    def wait(self, path: str) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(self.base + path, timeout=2).read()
                return
            except OSError:
                time.sleep(0.2)
        raise AssertionError(docker("logs", self.id, check=False).stderr[-2000:])

    def memory_mb(self) -> int:
        for path in (
            "/sys/fs/cgroup/memory.current",
            "/sys/fs/cgroup/memory/memory.usage_in_bytes",
        ):
            out = docker("exec", self.id, "cat", path, check=False).stdout.strip()
            if out.isdigit():
                return int(out) >> 20
        raise AssertionError("no cgroup memory counter in the container")

    def state(self) -> str:
        return docker(
            "inspect", "-f", "{{.State.Running}} {{.State.OOMKilled}}", self.id
        ).stdout.strip()

    def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        req = urllib.request.Request(
            self.base + path, data=body, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(req, timeout=120) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as err:
            return err.code, err.read()

    def remove(self) -> None:
        docker("rm", "-f", self.id, check=False)


@pytest.mark.parametrize(
    ("interface", "ready", "path", "key"),
    [
        ("kfserving", "/v1/models/{name}", "/v1/models/{name}:predict", "instances"),
        ("sagemaker", "/ping", "/invocations", "instances"),
        ("mlflow", "/ping", "/invocations", "inputs"),
    ],
)
def test_requests_the_model_rejects_leave_no_memory_behind(
    image: str, interface: str, ready: str, path: str, key: str
) -> None:
    name = image.split("/")[-1].split(":")[0]
    box = Container(image, f"INTERFACE={interface}", "PROTOCOL=v1")
    try:
        box.wait(ready.format(name=name))
        body = json.dumps({key: [[1.5, 2.5, 3.5]] * 2_600_000}).encode()  # 3 features, not 4
        idle = box.memory_mb()
        # The first large body starts the decoder helper (runtime/offload.py): a fixed cost,
        # once per server process, not a leak. The rejections after it must add nothing.
        status, reply = box.post(path.format(name=name), body)
        assert status == 400 and len(reply) < 1000, (status, reply[:300])
        time.sleep(0.5)
        before = box.memory_mb()
        assert before - idle < HELPER_MB, (idle, before)
        for _ in range(3):
            status, reply = box.post(path.format(name=name), body)
            assert status == 400 and len(reply) < 1000, (status, reply[:300])
        time.sleep(0.5)
        after = box.memory_mb()
        assert box.state() == "true false"  # running, never OOM-killed
        assert after - before < SETTLED_GROWTH_MB, (before, after)
    finally:
        box.remove()


def _v2_body(n: int) -> bytes:
    spec = {"name": "x", "shape": [n // 4, 4], "datatype": "FP64", "data": [5.1] * n}
    return json.dumps({"inputs": [spec]}).encode()


def _v1_body(n: int) -> bytes:
    return json.dumps({"instances": [[5.1, 3.5, 1.4, 0.2]] * (n // 4)}).encode()


@pytest.mark.parametrize(
    ("protocol", "ready", "live", "infer", "make"),
    [
        ("v2", "/v2/health/ready", "/v2/health/live", "/v2/models/{name}/infer", _v2_body),
        # 55 MB: 1.9 s of json.loads
        ("v1", "/v1/models/{name}", "/", "/v1/models/{name}:predict", _v1_body),
    ],
)
def test_liveness_answers_while_a_large_body_uploads_and_parses(
    image: str, protocol: str, ready: str, live: str, infer: str, make: Callable[[int], bytes]
) -> None:
    name = image.split("/")[-1].split(":")[0]
    # locked down as a cautious platform runs it: the decoder helper must start all the same
    box = Container(
        image,
        "INTERFACE=kfserving",
        f"PROTOCOL={protocol}",
        flags=("--read-only", "--user", "4242:4242", "--cap-drop", "ALL"),
    )
    body = make(10_400_000)  # made before the prober starts, which shares this process's GIL
    try:
        box.wait(ready.format(name=name))  # liveness answers before the model is loaded
        took: list[float] = []
        stop = threading.Event()

        def probe() -> None:
            while not stop.is_set():
                start = time.perf_counter()
                urllib.request.urlopen(box.base + live, timeout=10).read()
                took.append(time.perf_counter() - start)
                time.sleep(0.05)

        prober = threading.Thread(target=probe)
        prober.start()
        try:
            status, _ = box.post(infer.format(name=name), body)
        finally:
            stop.set()
            prober.join()
        assert status == 200
        # Kubernetes fails a pod after 3 probes in a row over their 1 s timeout (its default
        # failureThreshold). One probe over it happened once in a full parallel suite (1.08 s:
        # this process sends the body while the prober shares its GIL, and three workers share
        # two cores), which no kubelet acts on; three in a row would fail the pod.
        late = [t > 1.0 for t in took]
        in_a_row = max((sum(late[i : i + 3]) for i in range(max(1, len(late) - 2))), default=0)
        shown = ", ".join(f"{t:.2f}" for t in took)
        assert took and in_a_row < 3, f"{len(body) >> 20} MB body: liveness took {shown} s"
    finally:
        box.remove()


def test_slow_and_idle_clients_are_cut_off_and_the_image_keeps_serving(image: str) -> None:
    box = Container(image, "INTERFACE=kfserving", "PROTOCOL=v2", "OMI_HEADER_TIMEOUT_S=2")
    try:
        box.wait("/v2/health/ready")
        socks = []
        for i in range(200):
            sock = socket.create_connection(("127.0.0.1", box.port), timeout=10)
            if i % 2:
                sock.sendall(b"POST /v2/models/x/infer HTTP/1.1\r\nHost: a\r\n")
            socks.append(sock)
        start = time.monotonic()
        with urllib.request.urlopen(box.base + "/v2/health/live", timeout=5) as resp:
            assert resp.status == 200  # served while they hang
        closed = 0
        for sock in socks:
            sock.settimeout(max(0.1, 8 - (time.monotonic() - start)))
            try:
                closed += sock.recv(64) == b""
            except (TimeoutError, ConnectionResetError):
                pass
            finally:
                sock.close()
        assert closed == len(socks), f"{closed} of {len(socks)} slow connections were closed"
        assert box.state() == "true false"
    finally:
        box.remove()


class _Running:
    """What the hostile checks ask of a server's process, for a container."""

    def __init__(self, cid: str) -> None:
        self.cid = cid

    def poll(self) -> int | None:
        state = docker("inspect", "-f", "{{.State.Running}}", self.cid, check=False).stdout
        return None if state.strip() == "true" else 1


class ImageServer(hostile.Server):
    """The built image serving one interface, as the runtime hostile checks see a server."""

    def __init__(self, image: str, interface: str, protocol: str) -> None:
        ports = ("HTTP_PORT", "PSC_MODEL_PORT", "AIP_HTTP_PORT", "SAGEMAKER_BIND_TO_PORT")
        env = {
            "INTERFACE": interface,
            "PROTOCOL": protocol,
            "MODEL_NAME": "m",
            "GRPC_PORT": "8081",
            **dict.fromkeys(ports, "8080"),
        }
        cid = docker(
            "run", "-d", "--memory", MEMORY_LIMIT, "-p", "127.0.0.1::8080", "-p", "127.0.0.1::8081",
            *[a for k, v in env.items() for a in ("-e", f"{k}={v}")], image,
        ).stdout.strip()  # fmt: skip
        self.proc = _Running(cid)  # type: ignore[assignment]
        self.port = int(docker("port", cid, "8080").stdout.split(":")[-1])
        self.grpc_port = int(docker("port", cid, "8081").stdout.split(":")[-1])
        self.base = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 60
        while self.get(hostile.READY[(interface, protocol)])[0] != 200:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(docker("logs", cid, check=False).stderr[-2000:])
            time.sleep(0.2)

    def stop(self) -> None:
        docker("rm", "-f", self.proc.cid, check=False)  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def boxes(image: str) -> Iterator[dict[tuple[str, str], ImageServer]]:
    started: dict[tuple[str, str], ImageServer] = {}
    try:
        for key in SERVED:
            started[key] = ImageServer(image, *key)
        yield started
    finally:
        for server in started.values():
            server.stop()


# what `omibuild init` builds: every interface, Modzy as gRPC (v2) only
SERVED = [key for key in hostile.READY if key != ("modzy", "v1")]


@pytest.mark.parametrize("key", SERVED, ids=lambda k: "-".join(k))
def test_deep_json_is_a_400_on_every_interface_of_the_image(boxes: dict, key: tuple) -> None:
    hostile.test_json_nested_too_deep_is_a_400_everywhere(boxes, key)


def test_the_image_gives_each_hostile_request_its_4xx_and_stays_up(boxes: dict) -> None:
    """The runtime's hostile cases (tests/unit/test_runtime_hostile.py), against the image."""
    for case, body, words in hostile.MALFORMED_TENSORS:
        hostile.test_malformed_v2_tensors_are_400s(boxes, case, body, words)
    hostile.test_odd_requested_outputs_are_400s(boxes)
    hostile.test_a_model_rejection_does_not_echo_the_input(boxes)
    hostile.test_csv_and_npy_bodies_that_lie_are_400s(boxes)
    hostile.test_malformed_grpc_requests_are_invalid_argument(boxes)
    hostile.test_a_json_lines_record_that_does_not_parse_is_named_by_its_line(boxes)
    for server in boxes.values():
        assert server.proc.poll() is None


@pytest.mark.parametrize("user", ["0", "4242:4242"])
def test_sagemaker_serves_as_root_and_as_any_uid(image: str, user: str) -> None:
    """SageMaker runs a container as root unless told otherwise; other platforms pick a uid
    the image never heard of. The image serves either way."""
    box = Container(image, "INTERFACE=sagemaker", flags=("--user", user, "--read-only"))
    try:
        box.wait("/ping")
        whoami = docker("exec", box.id, "id", "-u").stdout.strip()
        assert whoami == user.split(":")[0]
        rows = b"[5.1, 3.5, 1.4, 0.2]\n[6.7, 3.0, 5.2, 2.3]\n"
        req = urllib.request.Request(
            box.base + "/invocations",
            data=rows,
            headers={"Content-Type": "application/jsonlines", "Accept": "application/jsonlines"},
        )
        with urllib.request.urlopen(req, timeout=30) as resp:
            assert resp.status == 200 and resp.read().count(b"\n") == 2
    finally:
        box.remove()
