"""The same requests to a reference server and to omibuild's runtime, on the same model file,
each in its own virtual environment; status codes and body shapes compared. Where omibuild
differs on purpose, DIFFERENT says so case by case, with the reason.

Reference here: KServe's own model server (kserve.ModelServer, in the kserve client venv), for
KServe V1 over REST and the V2 Open Inference Protocol over REST and gRPC."""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from omibuild.conformance.images import free_port
from tests.unit.runtime_config import omi_json
from tests.unit.test_runtime_hostile import Server

from .conftest import client_python

pytestmark = pytest.mark.integration

REFERENCE = Path(__file__).parent / "references" / "kserve_server.py"


def v2(**tensor: Any) -> bytes:
    spec = {"name": "x", "shape": [1, 4], "datatype": "FP64", "data": [5.1, 3.5, 1.4, 0.2]}
    return json.dumps({"id": "r1", "inputs": [{**spec, **tensor}]}).encode()


# name → (method, path, body)
CASES: dict[str, tuple[str, str, bytes | None]] = {
    "v2 live": ("GET", "/v2/health/live", None),
    "v2 ready": ("GET", "/v2/health/ready", None),
    "v2 model ready": ("GET", "/v2/models/m/ready", None),
    "v2 metadata": ("GET", "/v2/models/m", None),
    "v2 unknown model": ("GET", "/v2/models/nope", None),
    "v2 unknown version": ("GET", "/v2/models/m/versions/99", None),
    "v2 infer": ("POST", "/v2/models/m/infer", v2()),
    "v2 two rows": ("POST", "/v2/models/m/infer", v2(shape=[2, 4], data=[5.1, 3.5, 1.4, 0.2] * 2)),
    "v2 unknown datatype": ("POST", "/v2/models/m/infer", v2(datatype="FP99")),
    "v2 shape and data disagree": ("POST", "/v2/models/m/infer", v2(shape=[2, 4])),
    "v2 the model rejects it": ("POST", "/v2/models/m/infer", v2(shape=[1, 3], data=[1.0, 2, 3])),
    "v2 no inputs": ("POST", "/v2/models/m/infer", b'{"inputs": []}'),
    "v2 not JSON": ("POST", "/v2/models/m/infer", b"not json"),
    "v2 unknown model infer": ("POST", "/v2/models/nope/infer", v2()),
    "v2 GET on infer": ("GET", "/v2/models/m/infer", None),
    "v1 model ready": ("GET", "/v1/models/m", None),
    "v1 predict": ("POST", "/v1/models/m:predict", b'{"instances": [[5.1, 3.5, 1.4, 0.2]]}'),
    "v1 instances not a list": ("POST", "/v1/models/m:predict", b'{"instances": "x"}'),
    "v1 no instances": ("POST", "/v1/models/m:predict", b'{"rows": []}'),
    "v1 not JSON": ("POST", "/v1/models/m:predict", b"not json"),
    "v1 unknown model": ("POST", "/v1/models/nope:predict", b'{"instances": []}'),
    "unknown route": ("GET", "/nothing", None),
}

VERSION_FIELDS = ("versions", "model_version")
FAULTS = (500, 502, 503, "INTERNAL", "UNKNOWN")
REJECTED = "a request the model cannot take is the client's error (400), not the server's (500)"
# name → why omibuild answers otherwise than the reference
DIFFERENT = {
    "v2 unknown version": "omibuild serves one version: another is not found (404, as MLServer "
    "answers); KServe answers 501, versioning not supported",
    "v2 shape and data disagree": REJECTED,
    "v2 the model rejects it": REJECTED,
    "v2 no inputs": REJECTED,
    "v2 not JSON": "the Open Inference Protocol's error is 400 with {error}; KServe's 422 "
    "carries FastAPI's validation detail",
    "v1 no instances": REJECTED,
    "grpc the model rejects it": REJECTED.replace("(400)", "(INVALID_ARGUMENT)").replace(
        "(500)", "(INTERNAL)"
    ),
    "unknown route": "every error in the protocol's {error} shape; KServe's router answers "
    "FastAPI's {detail}",
    "v2 GET on infer": "every error in the protocol's {error} shape; KServe's router answers "
    "FastAPI's {detail}",
}


def shape_of(status: int, body: bytes) -> tuple[int, Any]:
    """What a client relies on: the status, and the body's keys (and V2 output tensors)."""
    try:
        doc = json.loads(body)
    except ValueError:
        return status, "not JSON"
    if not isinstance(doc, dict):
        return status, type(doc).__name__
    # an optional field sent empty ("parameters": null) is the same as one left out; and
    # omibuild states the version it serves (versions, model_version), which KServe's base
    # Model leaves null: compared on everything else
    doc = {k: v for k, v in doc.items() if v not in (None, {}) and k not in VERSION_FIELDS}
    outputs = doc.get("outputs")
    if isinstance(outputs, list) and status == 200 and "data" in (outputs or [{}])[0]:
        tensors = [(o["name"], o["datatype"], o["shape"], o["data"]) for o in outputs]
        return status, (sorted(doc), tensors)
    return status, sorted(doc)


def call(base: str, method: str, path: str, body: bytes | None) -> tuple[int, bytes]:
    req = urllib.request.Request(
        base + path, data=body, method=method, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()
    except OSError:  # not listening yet
        return 0, b""


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The reference and omibuild, both serving one model file named m: their HTTP base URLs
    and gRPC ports, by side."""
    import joblib
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    root = tmp_path_factory.mktemp("differential")
    (root / "model").mkdir()
    model = root / "model" / "model.joblib"
    joblib.dump(LogisticRegression(max_iter=300).fit(*load_iris(return_X_y=True)), model)
    interfaces = {"kfserving": {"protocols": ["v1", "v2"], "port": 8080, "grpc_port": 8081}}
    omi_json(root, interfaces, model_file="model.joblib", example=[[5.1, 3.5, 1.4, 0.2]])
    ours = Server(root, "kfserving", "v2")
    port, grpc_port = free_port(), free_port()
    log = root / "kserve.log"
    with open(log, "w") as out:
        reference = subprocess.Popen(
            [client_python("kserve"), str(REFERENCE), str(model), "m", str(port), str(grpc_port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={k: v for k, v in os.environ.items() if not k.startswith("PYTHON")},
        )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while call(base, "GET", "/v2/health/ready", None)[0] != 200:
        assert reference.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.3)
    try:
        yield {
            "http": (base, ours.base),
            "grpc": (grpc_port, ours.grpc_port),
        }
    finally:
        reference.terminate()
        reference.wait(30)
        ours.stop()


@pytest.mark.parametrize("name", list(CASES))
def test_omibuild_answers_as_kserves_model_server(pair: tuple[str, str], name: str) -> None:
    method, path, body = CASES[name]
    theirs = shape_of(*call(pair["http"][0], method, path, body))
    ours = shape_of(*call(pair["http"][1], method, path, body))
    compare(name, theirs, ours)


def compare(name: str, theirs: Any, ours: Any) -> None:
    if name in DIFFERENT:
        assert ours != theirs, f"{name}: now the same as KServe; drop it from DIFFERENT"
        assert ours[0] not in FAULTS and ours[1] != "not JSON", ours  # never the server's fault
    else:
        assert ours == theirs, f"{name}: KServe {theirs}, omibuild {ours}"


def tensor_request(name: str = "m", raw: bool = False, rows: int = 1, width: int = 4) -> Any:
    from omibuild.runtime.protos import INFERENCE

    values = [5.1, 3.5, 1.4, 0.2][:width] * rows
    req = INFERENCE["ModelInferRequest"](model_name=name)
    tensor = req.inputs.add(name="x", datatype="FP64", shape=[rows, width])
    if raw:
        req.raw_input_contents.append(np.asarray(values, dtype="<f8").tobytes())
    else:
        tensor.contents.fp64_contents.extend(values)
    return req


def grpc_cases() -> dict[str, tuple[str, Any]]:
    from omibuild.runtime.protos import INFERENCE

    return {
        "grpc live": ("ServerLive", INFERENCE["ServerLiveRequest"]()),
        "grpc model ready": ("ModelReady", INFERENCE["ModelReadyRequest"](name="m")),
        "grpc unknown model ready": ("ModelReady", INFERENCE["ModelReadyRequest"](name="nope")),
        "grpc metadata": ("ModelMetadata", INFERENCE["ModelMetadataRequest"](name="m")),
        "grpc infer, typed": ("ModelInfer", tensor_request(rows=2)),
        "grpc infer, raw": ("ModelInfer", tensor_request(raw=True, rows=2)),
        "grpc unknown model": ("ModelInfer", tensor_request("nope")),
        "grpc empty model name": ("ModelInfer", tensor_request("")),
        "grpc the model rejects it": ("ModelInfer", tensor_request(width=3)),
    }


GRPC_CASES = [
    "grpc live",
    "grpc model ready",
    "grpc unknown model ready",
    "grpc metadata",
    "grpc infer, typed",
    "grpc infer, raw",
    "grpc unknown model",
    "grpc empty model name",
    "grpc the model rejects it",
]


def grpc_shape(port: int, method: str, request: Any) -> tuple[str, Any]:
    """The status code, and what a client reads: readiness, the model's name, or the output
    tensors' names, datatypes, shapes and values (typed or raw, as the server chose: the
    protocol lets it answer either way)."""
    import grpc

    from omibuild.runtime.protos import INFERENCE

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        rpc = channel.unary_unary(
            f"/inference.GRPCInferenceService/{method}",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=INFERENCE[f"{method}Response"].FromString,
        )
        try:
            reply = rpc(request, timeout=10)
        except grpc.RpcError as err:
            return err.code().name, None
    if method == "ModelInfer":
        tensors = []
        for i, out in enumerate(reply.outputs):
            if reply.raw_output_contents:
                values = np.frombuffer(reply.raw_output_contents[i], dtype="<i8").tolist()
            else:
                values = list(out.contents.int64_contents)
            tensors.append((out.name, out.datatype, list(out.shape), values))
        return "OK", tensors
    if method == "ModelMetadata":
        return "OK", reply.name
    return "OK", str(reply)


@pytest.mark.parametrize("name", GRPC_CASES)
def test_omibuild_answers_as_kserves_model_server_over_grpc(
    pair: dict[str, Any], name: str
) -> None:
    method, request = grpc_cases()[name]
    theirs = grpc_shape(pair["grpc"][0], method, request)
    ours = grpc_shape(pair["grpc"][1], method, request)
    compare(name, theirs, ours)
