"""The serving runtime against hostile input, slow clients and bad settings: a real runtime
process on loopback, serving a model trained here. Every bad request gets its protocol's 4xx
with a short message that does not echo the request, and the server stays up."""

from __future__ import annotations

import io
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from omibuild.conformance.images import free_port
from tests.unit.runtime_config import omi_json

INTERFACES = {
    "kfserving": {"protocols": ["v1", "v2"], "port": 8080, "grpc_port": 8081},
    "sagemaker": {"protocols": ["v1"], "port": 8080},
    "vertex": {"protocols": ["v1"], "port": 8080},
    "mlflow": {"protocols": ["v1"], "port": 8080},
    "modzy": {"protocols": ["v1", "v2"], "port": 45000},
}
READY = {
    ("kfserving", "v2"): "/v2/health/ready",
    ("kfserving", "v1"): "/v1/models/m",
    ("sagemaker", "v1"): "/ping",
    ("vertex", "v1"): "/health",
    ("mlflow", "v1"): "/ping",
    ("modzy", "v1"): "/status",
}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import joblib
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    root = tmp_path_factory.mktemp("runtime")
    (root / "model").mkdir()
    joblib.dump(
        LogisticRegression(max_iter=300).fit(*load_iris(return_X_y=True)),
        root / "model" / "model.joblib",
    )
    omi_json(root, INTERFACES, model_file="model.joblib")
    return root


def runtime_env(
    bundle: Path, interface: str, protocol: str, **extra: str
) -> tuple[dict[str, str], int]:
    port = free_port()
    env = {
        **os.environ,
        "OMI_CONFIG": str(bundle / "omi.json"),
        "OMI_VERIFY_MODEL": "0",
        "INTERFACE": interface,
        "PROTOCOL": protocol,
        "HTTP_PORT": str(port),
        "PSC_MODEL_PORT": str(port),
        "AIP_HTTP_PORT": str(port),
        "SAGEMAKER_BIND_TO_PORT": str(port),
        "GRPC_PORT": str(free_port()),
        **extra,
    }
    return env, port


def start_failing(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run a runtime that is expected to stop at start-up, and wait for it."""
    return subprocess.run(
        [sys.executable, "-m", "omibuild.runtime"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


class Server:
    def __init__(self, bundle: Path, interface: str, protocol: str, **extra: str) -> None:
        env, self.port = runtime_env(bundle, interface, protocol, **extra)
        self.grpc_port = int(env["GRPC_PORT"])
        self.base = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "omibuild.runtime"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        ready = READY[(interface, protocol)]
        deadline = time.monotonic() + 30
        while self.get(ready)[0] != 200:
            assert self.proc.poll() is None, self.proc.stderr.read().decode()[-2000:]  # type: ignore[union-attr]
            assert time.monotonic() < deadline, "runtime not ready in 30 s"
            time.sleep(0.1)

    def get(self, path: str) -> tuple[int, bytes]:
        return self.request("GET", path)

    def request(
        self, method: str, path: str, body: bytes | None = None, ctype: str = "application/json"
    ) -> tuple[int, bytes]:
        headers = {"Content-Type": ctype} if ctype else {}
        req = urllib.request.Request(self.base + path, data=body, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as err:
            return err.code, err.read()
        except OSError:
            return 0, b""

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)
        assert self.proc.stderr is not None
        self.proc.stderr.close()


@pytest.fixture(scope="module")
def servers(bundle: Path) -> Iterator[dict[tuple[str, str], Server]]:
    started = {key: Server(bundle, *key) for key in READY}
    yield started
    for server in started.values():
        server.stop()


PREDICT = {
    ("kfserving", "v2"): "/v2/models/m/infer",
    ("kfserving", "v1"): "/v1/models/m:predict",
    ("sagemaker", "v1"): "/invocations",
    ("vertex", "v1"): "/predict",
    ("mlflow", "v1"): "/invocations",
    ("modzy", "v1"): "/run",
}
DEEP = b"[" * 100_000 + b"]" * 100_000


def tensor(**fields: object) -> bytes:
    spec = {"name": "x", "shape": [1, 4], "datatype": "FP64", "data": [1, 2, 3, 4], **fields}
    return json.dumps({"inputs": [spec]}).encode()


def assert_refused(server: Server, path: str, body: bytes, ctype: str = "application/json") -> str:
    status, reply = server.request("POST", path, body, ctype)
    assert 400 <= status < 500, (status, reply[:300])
    assert len(reply) < 1000, reply[:300]  # a short message, never the request echoed
    assert server.proc.poll() is None
    return reply.decode()


@pytest.mark.parametrize("key", list(PREDICT), ids=lambda k: "-".join(k))
def test_json_nested_too_deep_is_a_400_everywhere(servers: dict, key: tuple[str, str]) -> None:
    reply = assert_refused(servers[key], PREDICT[key], DEEP)
    assert "nested too deeply" in reply


MALFORMED_TENSORS = [
    ("shape product overflows", tensor(shape=[2**40, 2**40], data=[1]), "too large"),
    ("a zero beside a huge dimension", tensor(shape=[0, 2**70], data=[]), "too large"),
    ("a zero beside two huge ones", tensor(shape=[0, 2**62, 2**62], data=[]), "too large"),
    ("INT8 out of range", tensor(datatype="INT8", data=[300, 1, 2, 3]), "does not fit INT8"),
    ("UINT64 negative", tensor(datatype="UINT64", data=[-1, 1, 2, 3]), "does not fit UINT64"),
    ("boolean dimension", tensor(shape=[True, 4]), "non-negative integers"),
    ("parameters as a list", tensor(parameters=[1]), "`parameters` must be an object"),
]


@pytest.mark.parametrize(("case", "body", "words"), MALFORMED_TENSORS)
def test_malformed_v2_tensors_are_400s(servers: dict, case: str, body: bytes, words: str) -> None:
    assert words in assert_refused(servers[("kfserving", "v2")], "/v2/models/m/infer", body)


def test_odd_requested_outputs_are_400s(servers: dict) -> None:
    server = servers[("kfserving", "v2")]
    good = json.loads(tensor())
    for outputs in ([{"name": ["x"]}], {"name": "x"}, [{"name": "output-0", "parameters": []}]):
        body = json.dumps({**good, "outputs": outputs}).encode()
        assert_refused(server, "/v2/models/m/infer", body)
    body = json.dumps({**good, "parameters": "binary"}).encode()
    assert "`parameters` must be an object" in assert_refused(server, "/v2/models/m/infer", body)


def test_a_model_rejection_does_not_echo_the_input(servers: dict) -> None:
    marker = "echo-me-" * 5000
    body = json.dumps({"instances": [[marker, 1, 2, 3]]}).encode()
    for key in (("kfserving", "v1"), ("sagemaker", "v1"), ("vertex", "v1")):
        reply = assert_refused(servers[key], PREDICT[key], body)
        assert marker[:300] not in reply


def test_csv_and_npy_bodies_that_lie_are_400s(servers: dict) -> None:
    huge_field = b"1," + b"9" * (200 * 1024) + b",3,4\n"
    for key in (("sagemaker", "v1"), ("mlflow", "v1")):
        assert "CSV" in assert_refused(servers[key], PREDICT[key], huge_field, "text/csv")
    out = io.BytesIO()
    np.save(out, np.ones((2, 4)))
    lying = out.getvalue().replace(b"(2, 4)", b"(1000000, 1000000)")
    reply = assert_refused(servers[("sagemaker", "v1")], "/invocations", lying, "application/x-npy")
    assert "does not match" in reply


def _partial(port: int, data: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(data)
    return sock


def _closed_within(sock: socket.socket, seconds: float) -> bool:
    sock.settimeout(seconds)
    try:
        return sock.recv(1024) == b""
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True
    finally:
        sock.close()


def test_slow_and_idle_clients_are_cut_off_and_others_still_served(bundle: Path) -> None:
    server = Server(bundle, "kfserving", "v2", OMI_HEADER_TIMEOUT_S="1", OMI_BODY_TIMEOUT_S="2")
    try:
        idle = [_partial(server.port, b"") for _ in range(50)]
        slow = [
            _partial(server.port, b"POST /v2/models/m/infer HTTP/1.1\r\nHost: x\r\n")
            for _ in range(50)
        ]
        stalled = _partial(
            server.port,
            b"POST /v2/models/m/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{",
        )
        start = time.monotonic()
        assert server.request("POST", "/v2/models/m/infer", tensor())[0] == 200  # served meanwhile
        assert all(_closed_within(s, 4) for s in idle + slow), "header deadline not kept"
        assert _closed_within(stalled, 4), "body deadline not kept"
        assert time.monotonic() - start < 8
        assert server.get("/v2/health/live")[0] == 200
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("extra", "line"),
    [
        ({"OMI_WORKERS": "100000"}, "OMI_WORKERS=100000 is more than"),
        ({"OMI_PREDICT_THREADS": "100000"}, "OMI_PREDICT_THREADS=100000 is more than 256"),
        ({"OMI_ACCESS_LOG": "maybe"}, "OMI_ACCESS_LOG='maybe' must be one of"),
        ({"OMI_VERIFY_MODEL": "perhaps"}, "OMI_VERIFY_MODEL='perhaps' must be one of"),
        ({"OMI_HEADER_TIMEOUT_S": "0"}, "OMI_HEADER_TIMEOUT_S='0' must be seconds"),
        ({"MODEL_NAME": "a/b"}, "MODEL_NAME='a/b' cannot appear in a route"),
        (
            {"INTERFACE": "vertex", "AIP_HEALTH_ROUTE": "health"},
            "AIP_HEALTH_ROUTE='health' must be a path",
        ),
    ],
)
def test_a_bad_setting_is_one_line_and_exit_2(
    bundle: Path, extra: dict[str, str], line: str
) -> None:
    env, _ = runtime_env(bundle, extra.get("INTERFACE", "kfserving"), "v1", **extra)
    proc = start_failing(env)
    assert proc.returncode == 2, proc.stderr[-1000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("omibuild runtime: ") and line in lines[0], lines


def test_taken_and_clashing_ports_are_one_line_and_exit_2(bundle: Path) -> None:
    env, port = runtime_env(bundle, "kfserving", "v2")
    with socket.socket() as holder:
        holder.bind(("0.0.0.0", port))
        holder.listen()
        proc = start_failing(env)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"omibuild runtime: cannot listen on HTTP port {port}: Address already in use"
    ]
    env["GRPC_PORT"] = str(port)
    proc = start_failing(env)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"omibuild runtime: the gRPC port and the HTTP port are both {port}: set GRPC_PORT"
    ]


def test_modzy_file_jobs_stay_under_their_root_and_go_file_by_file(
    bundle: Path, tmp_path: Path
) -> None:
    root = tmp_path / "data"
    (root / "in").mkdir(parents=True)
    (root / "out").mkdir()
    (root / "in" / "a.json").write_text(json.dumps({"instances": [[5.1, 3.5, 1.4, 0.2]]}))
    (root / "in" / "b.json").write_text(json.dumps({"instances": [[6.7, 3.0, 5.2, 2.3]]}))
    (root / "in" / "big.json").write_text("[" + "1," * 600 + "1]")  # over the body limit
    (root / "escape").symlink_to("/etc")
    (root / "out" / "planted.results.json").symlink_to(tmp_path / "victim")
    (root / "in" / "planted.json").write_text("{}")
    server = Server(bundle, "modzy", "v1", OMI_FILE_JOB_ROOT=str(root), OMI_MAX_BODY_BYTES="1000")
    try:

        def job(inp: object, out: object = "out") -> tuple[int, bytes]:
            body = json.dumps({"type": "file", "input": inp, "output": out}).encode()
            return server.request("POST", "/run", body)

        for inp, out in [
            ("/etc", "out"),
            ("../", "out"),
            ("escape", "out"),
            ("in", "/tmp"),
            ("in", "../.."),
        ]:
            status, reply = job(inp, out)
            assert status == 403, (inp, out, status, reply)
            assert b"must be an existing directory under" in reply
        assert job("missing")[0] == 400 and job(None)[0] == 400

        status, reply = job("in")
        assert status == 200, reply
        assert json.loads(reply)["message"] == "4 input(s) processed, 2 failed"
        assert json.loads((root / "out" / "a.results.json").read_text())["predictions"] == [0]
        assert json.loads((root / "out" / "b.results.json").read_text())["predictions"] == [2]
        assert (
            "larger than the limit"
            in json.loads((root / "out" / "big.results.json").read_text())["error"]
        )
        assert not (tmp_path / "victim").exists()  # the planted symlink was not followed
        assert server.proc.poll() is None
    finally:
        server.stop()


def _grpc_infer(port: int, payload: bytes) -> tuple[str, str]:
    """(status code name, details) of one raw ModelInfer call."""
    import grpc

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary(
            "/inference.GRPCInferenceService/ModelInfer",
            request_serializer=lambda b: b,
            response_deserializer=lambda b: b,
        )
        try:
            call(payload, timeout=10)
        except grpc.RpcError as err:
            return err.code().name, err.details() or ""
    return "OK", ""


def test_malformed_grpc_requests_are_invalid_argument(servers: dict) -> None:
    from omibuild.runtime.protos import INFERENCE

    server = servers[("kfserving", "v2")]

    def request(datatype: str = "FP64", shape: list[int] | None = None, **contents: list) -> bytes:
        req = INFERENCE["ModelInferRequest"](model_name="m")
        tensor = req.inputs.add(name="x", datatype=datatype, shape=shape or [1, 4])
        for field, values in contents.items():
            getattr(tensor.contents, field).extend(values)
        return bytes(req.SerializeToString())

    cases = {
        "undecodable bytes": b"\xff\xff\xff\xff not a protobuf",
        "shape overflows": request(shape=[2**40, 2**40], fp64_contents=[1.0]),
        "a zero beside huge dimensions": request(shape=[0, 2**62, 2**62]),
        "negative dimension": request(shape=[-1, 4], fp64_contents=[1.0] * 4),
        "INT8 out of range": request("INT8", int_contents=[300, 1, 2, 3]),
        "unknown datatype": request("FLOAT", fp64_contents=[1.0] * 4),
        "too few values": request(fp64_contents=[1.0]),
        "model rejects it": request(shape=[1, 3], fp64_contents=[1.0, 2.0, 3.0]),
    }
    for case, payload in cases.items():
        code, details = _grpc_infer(server.grpc_port, payload)
        assert code == "INVALID_ARGUMENT", (case, code, details)
        assert len(details) < 400, (case, details)
    assert _grpc_infer(server.grpc_port, request(fp64_contents=[5.1, 3.5, 1.4, 0.2]))[0] == "OK"
    assert server.proc.poll() is None


# -- explain validates as infer does; nothing escapes as text ---------------------------------
@pytest.fixture(scope="module")
def explaining(bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The same model with SHAP's explainer baked in (its background in analysis/)."""
    import shutil

    from sklearn.datasets import load_iris

    root = tmp_path_factory.mktemp("explaining")
    shutil.copytree(bundle / "model", root / "model")
    (root / "analysis" / "explain").mkdir(parents=True)
    rows = load_iris(return_X_y=True)[0][::5].tolist()
    (root / "analysis" / "explain" / "background.json").write_text(
        json.dumps({"columns": ["a", "b", "c", "d"], "rows": rows})
    )
    spec = {"method": "shap", "background": "explain/background.json", "output": "auto"}
    omi_json(root, INTERFACES, model_file="model.joblib", explain=spec)
    server = Server(root, "kfserving", "v2")
    yield server
    server.stop()


EXPLAIN_LIKE_INFER = {
    "a zero beside a huge dimension": (
        "/v2/models/m/infer", "/v2/models/m/explain", tensor(shape=[0, 2**70], data=[])
    ),
    "parameters as a list": (
        "/v2/models/m/infer", "/v2/models/m/explain", tensor(parameters=[1])
    ),
    "a row predict rejects": (
        "/v1/models/m:predict", "/v1/models/m:explain",
        b'{"instances": [[1e999, -1e999, 1e999, -1e999]]}',  # infinities: sklearn refuses
    ),
    "a flat list of instances": (
        "/v1/models/m:predict", "/v1/models/m:explain",
        json.dumps({"instances": [1.0, 2.0, 3.0, 4.0]}).encode(),
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", list(EXPLAIN_LIKE_INFER))
def test_explain_refuses_what_infer_refuses_in_json(explaining: Server, case: str) -> None:
    infer, explain, body = EXPLAIN_LIKE_INFER[case]
    status, reply = explaining.request("POST", infer, body)
    assert 400 <= status < 500, (status, reply[:300])
    refused = assert_refused(explaining, explain, body)
    assert json.loads(refused)  # the protocol's JSON error, never a plain-text page


@pytest.fixture(scope="module")
def broken(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[tuple[str, str], Server]]:
    """A predictor whose answer no encoder can write: every route fails where no handler
    expects it."""
    root = tmp_path_factory.mktemp("broken")
    (root / "model").mkdir()
    (root / "code").mkdir()
    (root / "code" / "broken.py").write_text(
        "class Broken:\n    def predict(self, inputs):\n        return [object() for _ in inputs]\n"
    )
    omi_json(root, INTERFACES, flavor="custom", predictor="broken:Broken")
    extra = {"PYTHONPATH": str(root / "code")}
    started = {key: Server(root, *key, **extra) for key in PREDICT}
    yield started
    for server in started.values():
        server.stop()


@pytest.mark.parametrize("key", list(PREDICT), ids=lambda k: "-".join(k))
def test_an_unexpected_failure_is_a_json_500_with_a_request_id_and_one_log_line(
    broken: dict[tuple[str, str], Server], key: tuple[str, str]
) -> None:
    server = broken[key]
    body = json.dumps({"instances": [[1.0, 2.0]]}).encode()
    if key == ("kfserving", "v2"):
        body = tensor(shape=[1, 2], data=[1.0, 2.0])
    status, reply = server.request("POST", PREDICT[key], body)
    assert status == 500, (status, reply[:300])
    text = json.dumps(json.loads(reply))  # JSON, in the protocol's shape
    rid = re.search(r"request id ([0-9a-f]{16})", text)
    assert rid, text
    server.proc.terminate()
    server.proc.wait(timeout=30)
    assert server.proc.stderr is not None
    log = server.proc.stderr.read().decode()  # the fixture closes it
    lines = [ln for ln in log.splitlines() if ln.strip()]
    assert all(ln.startswith("{") for ln in lines), log[-2000:]  # one JSON object a line
    [failed] = [json.loads(ln) for ln in lines if rid.group(1) in ln]
    assert failed["msg"] == "request failed" and "TypeError" in failed["error"]


def test_uvicorn_s_own_warnings_are_json_lines(bundle: Path) -> None:
    server = Server(bundle, "kfserving", "v2")
    try:
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        sock.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        sock.recv(1024)
        sock.close()
        assert server.get("/v2/health/live")[0] == 200
    finally:
        server.proc.terminate()
        server.proc.wait(timeout=30)
    assert server.proc.stderr is not None
    with server.proc.stderr:
        lines = [ln for ln in server.proc.stderr.read().decode().splitlines() if ln.strip()]
    assert any("Invalid HTTP request" in ln for ln in lines), lines
    assert all(ln.startswith("{") and json.loads(ln) for ln in lines), lines


def test_a_json_lines_record_that_does_not_parse_is_named_by_its_line(servers: dict) -> None:
    body = b'[5.1, 3.5, 1.4, 0.2]\n\n{"not": json}\n'
    reply = assert_refused(servers[("sagemaker", "v1")], "/invocations", body,
                           "application/jsonlines")  # fmt: skip
    assert "record on line 3" in reply
