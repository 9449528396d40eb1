"""The same requests to a reference server and to omibuild's runtime, on the same model file,
each in its own virtual environment; status codes and body shapes compared. Where omibuild
differs on purpose, DIFFERENT says so case by case, with the reason.

Reference here: KServe's own model server (kserve.ModelServer, in the kserve client venv), for
KServe V1 and the V2 Open Inference Protocol over REST."""

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
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """(reference URL, omibuild URL), both serving one model file named m."""
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
    port = free_port()
    log = root / "kserve.log"
    with open(log, "w") as out:
        reference = subprocess.Popen(
            [client_python("kserve"), str(REFERENCE), str(model), "m", str(port), str(free_port())],
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
        yield base, ours.base
    finally:
        reference.terminate()
        reference.wait(30)
        ours.stop()


@pytest.mark.parametrize("name", list(CASES))
def test_omibuild_answers_as_kserves_model_server(pair: tuple[str, str], name: str) -> None:
    method, path, body = CASES[name]
    theirs = shape_of(*call(pair[0], method, path, body))
    ours = shape_of(*call(pair[1], method, path, body))
    if name in DIFFERENT:
        assert ours != theirs, f"{name}: now the same as KServe; drop it from DIFFERENT"
        assert ours[0] < 500 and ours[1] != "not JSON", ours  # and never a 5xx or text
    else:
        assert ours == theirs, f"{name}: KServe {theirs}, omibuild {ours}"
