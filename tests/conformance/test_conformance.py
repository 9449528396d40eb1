"""Independent clients, none written by us, against the runtime: on the host and in the built
image (switched by INTERFACE). Error paths per interface use each protocol's error shape."""

from __future__ import annotations

import functools
import io
import json
import operator
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from .conftest import Server, run_client, start_process

pytestmark = pytest.mark.integration

ROWS = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]
EXPECTED = [0, 2]


def http(
    method: str,
    url: str,
    body: Any = None,
    content_type: str = "application/json",
    headers: dict[str, str] | None = None,
) -> tuple[int, bytes, dict[str, str]]:
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    req = urllib.request.Request(
        url, data=data, method=method, headers={"Content-Type": content_type, **(headers or {})}
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.read(), dict(resp.headers)
    except urllib.error.HTTPError as err:
        return err.code, err.read(), dict(err.headers)


# -- third-party clients ----------------------------------------------------------------------


def test_tritonclient_http_v2(serve: Callable[..., Server]) -> None:
    import tritonclient.http as triton

    s = serve("kfserving", "v2")
    client = triton.InferenceServerClient(url=f"127.0.0.1:{s.port}")
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(s.model)
    assert client.get_server_metadata()["name"] == "omibuild"
    assert client.get_model_metadata(s.model)["name"] == s.model
    data = np.array(ROWS, dtype=np.float64)
    for binary in (True, False):
        tensor = triton.InferInput("input-0", list(data.shape), "FP64")
        tensor.set_data_from_numpy(data, binary_data=binary)
        out = triton.InferRequestedOutput("output-0", binary_data=binary)
        result = client.infer(s.model, [tensor], outputs=[out])
        assert result.as_numpy("output-0").tolist() == EXPECTED
    client.close()


def test_tritonclient_http_bytes_tensors(serve: Callable[..., Server], hooks_tree: Path) -> None:
    """BYTES in (binary, length-prefixed) and BYTES out (JSON objects from a postprocess hook)."""
    import tritonclient.http as triton

    s = serve("kfserving", "v2")
    client = triton.InferenceServerClient(url=f"127.0.0.1:{s.port}")
    text = np.array([[b"5.1", b"3.5", b"1.4", b"0.2"]], dtype=np.object_)
    tensor = triton.InferInput("input-0", [1, 4], "BYTES")
    tensor.set_data_from_numpy(text, binary_data=True)
    assert client.infer(s.model, [tensor]).as_numpy("output-0").tolist() == [0]
    client.close()
    hooks = start_process(
        hooks_tree, "kfserving", "v2", {"IRIS_LABELS": "setosa,versicolor,virginica"}
    )  # the image's ENV
    try:
        client = triton.InferenceServerClient(url=f"127.0.0.1:{hooks.port}")
        data = np.array(ROWS, dtype=np.float32)
        tensor = triton.InferInput("input-0", list(data.shape), "FP32")
        tensor.set_data_from_numpy(data, binary_data=True)
        for binary in (True, False):
            out = client.infer(
                hooks.model,
                [tensor],
                outputs=[triton.InferRequestedOutput("output-0", binary_data=binary)],
            )
            labels = [json.loads(x)["label"] for x in out.as_numpy("output-0").tolist()]
            assert labels == ["setosa", "virginica"]
        client.close()
    finally:
        hooks.stop()


def test_tritonclient_grpc_v2(serve: Callable[..., Server]) -> None:
    import tritonclient.grpc as triton

    s = serve("kfserving", "v2")
    client = triton.InferenceServerClient(url=f"127.0.0.1:{s.grpc_port}")
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(s.model)
    assert client.get_server_metadata().name == "omibuild"
    data = np.array(ROWS, dtype=np.float64)
    tensor = triton.InferInput("input-0", list(data.shape), "FP64")
    tensor.set_data_from_numpy(data)
    result = client.infer(s.model, [tensor], outputs=[triton.InferRequestedOutput("output-0")])
    assert result.as_numpy("output-0").tolist() == EXPECTED
    bad = triton.InferInput("input-0", [1, 3], "FP64")
    bad.set_data_from_numpy(np.array([[1.0, 2.0, 3.0]]))
    with pytest.raises(triton.InferenceServerException) as err:
        client.infer(s.model, [bad])
    assert err.value.status() == "StatusCode.INVALID_ARGUMENT"
    with pytest.raises(triton.InferenceServerException) as err:
        client.infer("no-such-model", [tensor])
    assert err.value.status() == "StatusCode.NOT_FOUND"
    client.close()


def test_kserve_sdk_v2(serve: Callable[..., Server]) -> None:
    s = serve("kfserving", "v2")
    seen = run_client("kserve", "kserve_v2.py", s.url, s.model)
    assert seen["live"] and seen["ready"] and seen["model_ready"]
    assert seen["outputs"] == {"output-0": EXPECTED} and seen["model_name"] == s.model


def test_kserve_sdk_v1(serve: Callable[..., Server]) -> None:
    s = serve("kfserving", "v1")
    seen = run_client("kserve", "kserve_v1.py", s.url, s.model)
    assert seen["ready"] is True
    assert seen["response"] == {"predictions": EXPECTED}


def test_chassis_omi_client_modzy_v2(serve: Callable[..., Server]) -> None:
    s = serve("modzy", "v2")
    seen = run_client("chassis", "chassis_modzy.py", "127.0.0.1", str(s.port), "shutdown")
    assert seen["status_code"] == 200 and seen["model_name"] == s.model
    assert seen["inputs"] == ["input"]
    first, second = seen["outputs"]
    assert first["success"] and json.loads(first["results"]) == {"predictions": EXPECTED}
    assert not second["success"] and "error" in json.loads(second["results"])
    assert seen["shutdown"] == 200


def test_modzy_flags_an_image_lacks_are_ignored_as_its_status_declares(
    serve: Callable[..., Server],
) -> None:
    """explain and detect_drift on an image built without them: Status declares no formats and
    Run predicts as before (a client that always sets the flags keeps working)."""
    s = serve("modzy", "v2")
    seen = run_client("chassis", "chassis_explain.py", "127.0.0.1", str(s.port), json.dumps(ROWS))
    assert (seen["explanation_format"], seen["drift_format"]) == ("", "")
    [output] = seen["outputs"]
    assert output["success"] and output["files"]["results.json"] == {"predictions": EXPECTED}


def test_mlflow_scoring_server_client(serve: Callable[..., Server]) -> None:
    import warnings

    import pandas as pd

    s = serve("mlflow", "v1")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # mlflow's advice on type hints, at import time
        from mlflow.pyfunc.scoring_server.client import ScoringServerClient

        client = ScoringServerClient("127.0.0.1", s.port)
        client.wait_server_ready(timeout=30)
        frame = pd.DataFrame(ROWS, columns=["a", "b", "c", "d"])
        result = client.invoke(frame)
    assert list(result.get_predictions(predictions_format="ndarray")) == EXPECTED
    status, body, _ = http("GET", f"{s.url}/version")
    assert status == 200 and body.strip()


def test_sagemaker_contract(serve: Callable[..., Server]) -> None:
    s = serve("sagemaker", "v1")
    assert http("GET", f"{s.url}/ping")[0] == 200
    status, body, _ = http("POST", f"{s.url}/invocations", {"instances": ROWS})
    assert status == 200 and json.loads(body) == EXPECTED  # the inference toolkit's JSON
    csv = b"5.1,3.5,1.4,0.2\n6.7,3.0,5.2,2.3\n"
    status, body, _headers = http(
        "POST", f"{s.url}/invocations", csv, "text/csv", {"Accept": "text/csv"}
    )
    assert status == 200 and body.decode().split() == ["0", "2"]
    buf = io.BytesIO()
    np.save(buf, np.array(ROWS))
    status, body, _ = http(
        "POST",
        f"{s.url}/invocations",
        buf.getvalue(),
        "application/x-npy",
        {"Accept": "application/x-npy"},
    )
    assert status == 200 and np.load(io.BytesIO(body)).tolist() == EXPECTED


def test_vertex_contract(serve: Callable[..., Server]) -> None:
    s = serve(
        "vertex",
        "v1",
        {
            "AIP_HEALTH_ROUTE": "/v1/endpoints/e/deployedModels/m",
            "AIP_PREDICT_ROUTE": "/v1/endpoints/e/deployedModels/m:predict",
        },
    )
    assert http("GET", f"{s.url}/v1/endpoints/e/deployedModels/m")[0] == 200
    status, body, _ = http(
        "POST",
        f"{s.url}/v1/endpoints/e/deployedModels/m:predict",
        {"instances": ROWS, "parameters": {"threshold": 0.5}},
    )
    assert status == 200 and json.loads(body) == {"predictions": EXPECTED}


# -- error paths, per interface ---------------------------------------------------------------

ERRORS: dict[str, tuple[str, str, Any]] = {
    # interface/protocol: (predict path, error key, a well-formed body of the wrong shape)
    "kfserving v1": ("/v1/models/{model}:predict", "error", {"instances": [[1.0, 2.0]]}),
    "kfserving v2": (
        "/v2/models/{model}/infer",
        "error",
        {"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP64", "data": [1, 2]}]},
    ),
    "sagemaker v1": ("/invocations", "error", {"instances": [[1.0, 2.0]]}),
    "vertex v1": ("/predict", "error", {"instances": [[1.0, 2.0]]}),
    "mlflow v1": ("/invocations", "message", {"inputs": [[1.0, 2.0]]}),
    "modzy v1": ("/run", "message", {"instances": [[1.0, 2.0]]}),
}


@pytest.mark.parametrize("name", list(ERRORS))
def test_error_paths(name: str, omi_tree: Path) -> None:
    interface, protocol = name.split()
    if interface == "modzy":
        config = json.loads((omi_tree / "omi.json").read_text())
        config["interfaces"]["modzy"]["protocols"] = ["v1", "v2"]
        (omi_tree.parent / "modzy-v1").mkdir(exist_ok=True)
        tree = omi_tree.parent / "modzy-v1"
        for item in ("model", "code"):
            if not (tree / item).exists():
                (tree / item).symlink_to(omi_tree / item)
        (tree / "omi.json").write_text(json.dumps(config))
    else:
        tree = omi_tree
    s = start_process(tree, interface, protocol, {"OMI_MAX_BODY_BYTES": "4096"})
    try:
        path, key, wrong_shape = ERRORS[name]
        url = s.url + path.format(model=s.model)
        status, body, _ = http("POST", url, b"{not json", "application/json")
        assert status == 400 and key in json.loads(body), body
        status, body, _ = http("POST", url, wrong_shape)
        assert status == 400 and key in json.loads(body), body
        status, body, _ = http("POST", url, b"[" + b"1.0," * 4000 + b"1.0]", "application/json")
        assert status == 413 and key in json.loads(body), body
        if interface == "kfserving":
            other = url.replace(s.model, "no-such-model")
            assert http("POST", other, {"instances": ROWS})[0] == 404
            bad_type = {
                "inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP99", "data": [1] * 4}]
            }
            if protocol == "v2":
                assert http("POST", url, bad_type)[0] == 400
        # the server is still up and answers correctly afterwards
        good = {"mlflow": {"inputs": ROWS}, "kfserving v2": None}.get(
            interface, {"instances": ROWS}
        )
        if name == "kfserving v2":
            good = {
                "inputs": [
                    {
                        "name": "x",
                        "shape": [2, 4],
                        "datatype": "FP64",
                        "data": functools.reduce(operator.iadd, ROWS, []),
                    }
                ]
            }
        status, body, _ = http("POST", url, good)
        assert status == 200, body
    finally:
        assert s.stop() == 0  # graceful SIGTERM: exit 0


@pytest.mark.parametrize("name", list(ERRORS))
def test_predict_runs_off_the_event_loop(name: str, tmp_path: Path, omi_tree: Path) -> None:
    """Every HTTP interface hands predict to the predict lane; the loop (uvicorn's main
    thread) never runs it. The model answers with the name of the thread that ran it."""
    interface, protocol = name.split()
    tree = tmp_path / "where"
    (tree / "code").mkdir(parents=True)
    (tree / "model").symlink_to(omi_tree / "model")
    (tree / "code" / "where.py").write_text(
        "import threading\n\nclass Where:\n    def load(self, model_dir):\n        pass\n"
        "    def predict(self, x):\n"
        "        return [threading.current_thread().name for _ in range(len(x))]\n"
    )
    config = json.loads((omi_tree / "omi.json").read_text())
    config |= {"flavor": "custom", "predictor": "where:Where"}
    config["interfaces"]["modzy"]["protocols"] = ["v1", "v2"]
    (tree / "omi.json").write_text(json.dumps(config))
    s = start_process(tree, interface, protocol)
    try:
        path = ERRORS[name][0].format(model=s.model)
        body: Any = {"mlflow": {"inputs": ROWS}}.get(interface, {"instances": ROWS})
        if name == "kfserving v2":
            body = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP64", "data": ROWS[0]}]}
        status, answer, _ = http("POST", s.url + path, body)
        assert status == 200, answer
        assert b"omi-predict-" in answer and b"MainThread" not in answer, answer
    finally:
        assert s.stop() == 0


def test_a_hook_that_raises_is_a_500_and_the_server_stays_up(hooks_tree: Path) -> None:
    s = start_process(hooks_tree, "kfserving", "v1", {"IRIS_LABELS": "setosa,versicolor,virginica"})
    try:
        url = f"{s.url}/v1/models/{s.model}:predict"
        status, body, _ = http("POST", url, {"instances": [{"sepal_length": 1.0}]})
        assert status == 500 and "preprocess hook failed" in json.loads(body)["error"]
        status, body, _ = http(
            "POST",
            url,
            {
                "instances": [
                    dict(
                        zip(
                            ("sepal_length", "sepal_width", "petal_length", "petal_width"),
                            ROWS[0],
                            strict=True,
                        )
                    )
                ]
            },
        )
        assert status == 200 and json.loads(body)["predictions"][0]["label"] == "setosa"
    finally:
        s.stop()


def test_not_ready_is_503_until_the_model_loads(tmp_path: Path, omi_tree: Path) -> None:
    tree = tmp_path / "slow"
    tree.mkdir()
    (tree / "model").symlink_to(omi_tree / "model")
    (tree / "code").mkdir()
    gate = tmp_path / "gate"  # the model's load() waits until the test creates this file
    (tree / "code" / "slow.py").write_text(
        "import pathlib, time\nimport joblib\n\nclass Slow:\n"
        "    def load(self, model_dir):\n"
        f"        while not pathlib.Path({str(gate)!r}).exists():\n"
        "            time.sleep(0.05)\n"
        "        self.m = joblib.load(model_dir / 'model.joblib')\n"
        "    def predict(self, x):\n        return self.m.predict(x)\n"
    )
    config = json.loads((omi_tree / "omi.json").read_text())
    config |= {"flavor": "custom", "predictor": "slow:Slow"}
    (tree / "omi.json").write_text(json.dumps(config))
    s = start_process(tree, "kfserving", "v2", wait=False)
    body = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP64", "data": ROWS[0]}]}
    try:
        deadline = time.monotonic() + 60
        while True:  # the server answers before the model has loaded
            assert time.monotonic() < deadline, "the server never answered"
            try:
                status = http("GET", f"{s.url}/v2/health/ready")[0]
                break
            except OSError:
                time.sleep(0.1)
        assert status == 503
        assert http("GET", f"{s.url}/v2/health/live")[0] == 200
        assert http("POST", f"{s.url}/v2/models/{s.model}/infer", body)[0] == 503
        assert grpc_health(s.grpc_port) == "NOT_SERVING"  # a gRPC readiness probe agrees
        gate.touch()
        while http("GET", f"{s.url}/v2/health/ready")[0] != 200:
            assert time.monotonic() < deadline, "the model never became ready"
            time.sleep(0.1)
        assert http("POST", f"{s.url}/v2/models/{s.model}/infer", body)[0] == 200
        assert grpc_health(s.grpc_port) == "SERVING"
    finally:
        gate.touch()
        s.stop()


def grpc_health(port: int | None, service: str = "") -> str:
    """grpc.health.v1 Check, as Kubernetes' grpc readiness probe asks it."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


def test_several_workers_each_serve_grpc_beside_http(omi_tree: Path) -> None:
    """OMI_WORKERS > 1: every worker process loads the model and serves both ports."""
    import tritonclient.grpc as triton

    s = start_process(omi_tree, "kfserving", "v2", {"OMI_WORKERS": "2"})
    try:
        data = np.array(ROWS, dtype=np.float64)
        for _ in range(6):  # new connections, spread over the workers by the kernel
            client = triton.InferenceServerClient(url=f"127.0.0.1:{s.grpc_port}")
            assert client.is_server_ready()
            tensor = triton.InferInput("input-0", list(data.shape), "FP64")
            tensor.set_data_from_numpy(data)
            assert client.infer(s.model, [tensor]).as_numpy("output-0").tolist() == EXPECTED
            client.close()
        assert grpc_health(s.grpc_port, "inference.GRPCInferenceService") == "SERVING"
        status, body, _ = http("POST", f"{s.url}/v1/models/{s.model}:predict", {"instances": ROWS})
        assert status == 200 and json.loads(body) == {"predictions": EXPECTED}
        deadline = time.monotonic() + 60  # a worker listens once its own model has loaded
        while True:
            listeners = subprocess.run(
                ["ss", "-Hltn", f"sport = :{s.grpc_port}"], capture_output=True, text=True
            ).stdout.splitlines()
            if len(listeners) == 2 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert len(listeners) == 2, listeners  # one gRPC listener per worker
    finally:
        assert s.stop() == 0


def test_adaptive_batching_merges_rest_and_grpc_requests(omi_tree: Path) -> None:
    """OMI_MAX_BATCH_SIZE/OMI_MAX_LATENCY_MS: requests from both protocols that arrive within
    the latency run as one predict call, and each gets its own rows back."""
    import re
    from concurrent.futures import ThreadPoolExecutor

    import tritonclient.grpc as triton

    extra = {"OMI_MAX_BATCH_SIZE": "64", "OMI_MAX_LATENCY_MS": "250"}
    s = start_process(omi_tree, "kfserving", "v2", extra)
    try:
        client = triton.InferenceServerClient(url=f"127.0.0.1:{s.grpc_port}")

        def rest(row: list[float]) -> Any:
            body = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP64", "data": row}]}
            status, answer, _ = http("POST", f"{s.url}/v2/models/{s.model}/infer", body)
            assert status == 200, answer
            return json.loads(answer)["outputs"][0]["data"]

        def grpc(row: list[float]) -> Any:
            tensor = triton.InferInput("input-0", [1, 4], "FP64")
            tensor.set_data_from_numpy(np.array([row]))
            return client.infer(s.model, [tensor]).as_numpy("output-0").tolist()

        def merged_calls() -> int:
            text = http("GET", f"{s.url}/metrics")[1].decode()
            found = re.search(r"omi_predict_coalesced_total (\d+)", text)
            assert found, text
            return int(found.group(1))

        def staggered(fn: Callable[[list[float]], Any]) -> list[Any]:
            """Four requests 30 ms apart: each would be long answered before the next arrives
            if the lane did not wait for more rows."""
            with ThreadPoolExecutor(4) as pool:
                calls = []
                for row in ROWS * 2:
                    calls.append(pool.submit(fn, row))
                    time.sleep(0.03)
                return [c.result() for c in calls]

        assert staggered(rest) == [[e] for e in EXPECTED * 2]
        after_rest = merged_calls()
        assert after_rest >= 1
        assert staggered(grpc) == [[e] for e in EXPECTED * 2]
        assert merged_calls() > after_rest  # gRPC requests batch on the same lane
        client.close()
    finally:
        assert s.stop() == 0


def test_the_image_venv_is_slim(everywhere_image: str) -> None:
    """No pip, Cython sources or packaged test suites in the image, and no shared object left
    with debug sections to strip."""
    script = (
        "import importlib.util, os, shutil, tempfile\n"
        "from pathlib import Path\n"
        "from omibuild.runtime.slim import strip_unneeded\n"
        "assert importlib.util.find_spec('pip') is None, 'pip is in the image'\n"
        "tmp, found = Path(tempfile.mkdtemp()), 0\n"
        "for root, dirs, files in os.walk('/opt/omi/venv'):\n"
        "    assert 'tests' not in dirs or root.endswith('site-packages'), root\n"
        "    for name in files:\n"
        "        if '.so' in name and not os.path.islink(os.path.join(root, name)):\n"
        "            copy = tmp / name\n"
        "            shutil.copy(os.path.join(root, name), copy)\n"
        "            assert strip_unneeded(copy) == 0, name\n"
        "            found += 1\n"
        "        assert not name.endswith(('.pyx', '.pxd', '.pxi')), name\n"
        "print(found)\n"
    )
    proc = subprocess.run(
        [
            "docker",
            "run",
            "--rm",
            "--entrypoint",
            "/opt/omi/venv/bin/python",
            everywhere_image,
            "-c",
            script,
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert int(proc.stdout) > 20  # numpy, scipy, sklearn, grpc, uvloop... were all looked at


def test_unknown_interface_stops_the_container_with_one_line(omi_tree: Path) -> None:
    import os
    import sys

    env = {**os.environ, "OMI_CONFIG": str(omi_tree / "omi.json"), "INTERFACE": "triton"}
    proc = subprocess.run(
        [sys.executable, "-m", "omibuild.runtime"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0
    assert "INTERFACE='triton' is not in this image; it has:" in proc.stderr


def test_metrics_endpoint(serve: Callable[..., Server]) -> None:
    import re

    s = serve("kfserving", "v2")

    def predictions() -> int:
        text = http("GET", f"{s.url}/metrics")[1].decode()
        m = re.search(r'omi_requests_total\{route="v1_model",code="200"\} (\d+)', text)
        return int(m.group(1)) if m else 0

    before = predictions()
    http("POST", f"{s.url}/v1/models/{s.model}:predict", {"instances": ROWS})
    status, body, _ = http("GET", f"{s.url}/metrics")
    text = body.decode()
    assert status == 200 and predictions() == before + 1
    assert "omi_request_duration_seconds_bucket" in text and "omi_model_ready" in text
