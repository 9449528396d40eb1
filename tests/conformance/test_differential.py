"""The same requests to a reference server and to omibuild's runtime, on the same model file,
each in its own virtual environment; status codes and body shapes compared. Where omibuild
differs on purpose, a reference's `different` says so case by case, with the reason.

References (each from its own venv under .clients/, installed by scripts/setup-clients.sh):
- KServe's own model server (kserve.ModelServer): KServe V1 over REST, and the V2 Open
  Inference Protocol over REST and gRPC;
- MLServer with its scikit-learn runtime: V2 over REST and gRPC;
- `mlflow models serve`: MLflow's scoring protocol."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from omibuild.conformance.images import free_port
from tests.unit.runtime_config import omi_json
from tests.unit.test_runtime_hostile import Server

from .conftest import client_python

pytestmark = pytest.mark.integration

REFERENCES = Path(__file__).parent / "references"


def v2(**tensor: Any) -> bytes:
    spec = {"name": "x", "shape": [1, 4], "datatype": "FP64", "data": [5.1, 3.5, 1.4, 0.2]}
    return json.dumps({"id": "r1", "inputs": [{**spec, **tensor}]}).encode()


Case = tuple[str, str, bytes | None] | tuple[str, str, bytes | None, str]

# name → (method, path, body[, content type])
V2_CASES: dict[str, Case] = {
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
    "unknown route": ("GET", "/nothing", None),
}
V1_CASES: dict[str, Case] = {
    "v1 model ready": ("GET", "/v1/models/m", None),
    "v1 predict": ("POST", "/v1/models/m:predict", b'{"instances": [[5.1, 3.5, 1.4, 0.2]]}'),
    "v1 instances not a list": ("POST", "/v1/models/m:predict", b'{"instances": "x"}'),
    "v1 no instances": ("POST", "/v1/models/m:predict", b'{"rows": []}'),
    "v1 not JSON": ("POST", "/v1/models/m:predict", b"not json"),
    "v1 unknown model": ("POST", "/v1/models/nope:predict", b'{"instances": []}'),
}
ROWS = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5]]
COLUMNS = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
RECORDS = [dict(zip(COLUMNS, r, strict=True)) for r in ROWS]
CSV_ROWS = "\n".join(",".join(map(str, r)) for r in ROWS).encode()
MLFLOW_CASES: dict[str, Case] = {
    "ping": ("GET", "/ping", None),
    "health": ("GET", "/health", None),
    "version": ("GET", "/version", None),
    "dataframe_split": (
        "POST",
        "/invocations",
        json.dumps({"dataframe_split": {"columns": COLUMNS, "data": ROWS}}).encode(),
    ),
    "dataframe_records": (
        "POST",
        "/invocations",
        json.dumps({"dataframe_records": RECORDS}).encode(),
    ),
    "instances": ("POST", "/invocations", json.dumps({"instances": ROWS}).encode()),
    "inputs": ("POST", "/invocations", json.dumps({"inputs": ROWS}).encode()),
    "csv with a header": (
        "POST",
        "/invocations",
        ",".join(COLUMNS).encode() + b"\n" + CSV_ROWS,
        "text/csv",
    ),
    # mlflow models serve reads the first row as the header: two predictions, not three
    "csv without a header": ("POST", "/invocations", CSV_ROWS, "text/csv"),
    "csv with a charset": ("POST", "/invocations", CSV_ROWS, "text/csv; charset=utf-8"),
    "unknown JSON key": ("POST", "/invocations", b'{"rows": [[1, 2, 3, 4]]}'),
    "two JSON keys": ("POST", "/invocations", b'{"instances": [[1, 2, 3, 4]], "inputs": [[1]]}'),
    "not JSON": ("POST", "/invocations", b"not json"),
    "unsupported content type": ("POST", "/invocations", b"x", "application/x-npy"),
    "no content type": ("POST", "/invocations", b'{"instances": [[1, 2, 3, 4]]}', ""),
    "the model rejects it": ("POST", "/invocations", b'{"instances": [[1, 2, 3]]}'),
    "split with too few columns": (
        "POST",
        "/invocations",
        json.dumps({"dataframe_split": {"columns": COLUMNS[:3], "data": ROWS}}).encode(),
    ),
    "split with columns not a list": (
        "POST",
        "/invocations",
        json.dumps({"dataframe_split": {"columns": "sepal", "data": ROWS}}).encode(),
    ),
    "GET on invocations": ("GET", "/invocations", None),
    "unknown route": ("GET", "/nothing", None),
}

VERSION_FIELDS = ("versions", "model_version")
FAULTS = (500, 502, 503, "INTERNAL", "UNKNOWN")
REJECTED = "a request the model cannot take is the client's error (400), not the server's (500)"
GRPC_REJECTED = (
    "a request the model cannot take is the client's error (INVALID_ARGUMENT), not the "
    "server's (INTERNAL)"
)
FASTAPI = (
    "every error in the protocol's {{error}} shape; {ref}'s router answers FastAPI's {{detail}}"
)
DEVICE = (
    "omibuild's V2 model metadata says where the model runs (parameters.device: cpu, cuda:0); "
    "{ref} sends no parameters"
)
MLSERVER_OUTPUT = (
    "MLServer's scikit-learn runtime names its output `predict` and shapes it [N, 1]; omibuild "
    "answers as KServe does (`output-0`, [N]); the values are the same"
)


def shape_of(status: int, body: bytes) -> tuple[int, Any]:
    """What a client relies on: the status, and the body's keys (and V2 output tensors, or
    MLflow's predictions)."""
    try:
        doc = json.loads(body)
    except ValueError:
        return status, "not JSON"
    if not isinstance(doc, dict):
        return status, type(doc).__name__
    # an optional field sent empty ("parameters": null) is the same as one left out; and
    # omibuild states the version it serves (versions, model_version), which the references
    # leave empty: compared on everything else
    doc = {k: v for k, v in doc.items() if v not in (None, {}) and k not in VERSION_FIELDS}
    outputs = doc.get("outputs")
    if isinstance(outputs, list) and status == 200 and "data" in (outputs or [{}])[0]:
        tensors = [(o["name"], o["datatype"], o["shape"], o["data"]) for o in outputs]
        return status, (sorted(doc), tensors)
    if status == 200 and "predictions" in doc:
        return status, (sorted(doc), doc["predictions"])
    if "error_code" in doc:  # MLflow's errors: the code a client branches on, too
        return status, (sorted(doc), doc["error_code"])
    return status, sorted(doc)


def call(base: str, method: str, path: str, body: bytes | None, ctype: str = "application/json"):  # type: ignore[no-untyped-def]
    headers = {"Content-Type": ctype} if ctype else {}
    req = urllib.request.Request(base + path, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()
    except OSError:  # not listening yet
        return 0, b""


def values(shape: Any) -> list[Any] | None:
    """The output values a V2 or MLflow answer carries, flattened, or None."""
    status, seen = shape
    if status == "OK" and isinstance(seen, list):  # gRPC output tensors
        return [v for t in seen for v in np.ravel(t[3]).tolist()]
    if status == 200 and isinstance(seen, tuple):  # V2 output tensors, MLflow's predictions
        data = seen[1]
        if data and isinstance(data[0], tuple):
            return [v for t in data for v in np.ravel(t[3]).tolist()]
        return list(np.ravel(data).tolist())
    return None


def compare(reference: Reference, name: str, theirs: Any, ours: Any) -> None:
    if name in reference.different:
        assert ours != theirs, f"{name}: now the same as {reference.name}; drop it from different"
        assert ours[0] not in FAULTS and ours[1] != "not JSON", ours  # never the server's fault
        assert values(theirs) == values(ours), f"{name}: other values than {reference.name}"
    else:
        assert ours == theirs, f"{name}: {reference.name} {theirs}, omibuild {ours}"


def wait_for(proc: subprocess.Popen[bytes], base: str, path: str, log: Path) -> None:
    deadline = time.monotonic() + 90
    while call(base, "GET", path, None)[0] != 200:
        assert proc.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.3)


def clean_env(venv: str, **extra: str) -> dict[str, str]:
    """The environment a reference starts in: its venv activated, nothing of this one's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    bin_dir = str(Path(client_python(venv)).parent)
    return {**env, "PATH": f"{bin_dir}:{env.get('PATH', '')}", **extra}


def start_kserve(root: Path, port: int, grpc_port: int) -> subprocess.Popen[bytes]:
    script = REFERENCES / "kserve_server.py"
    args = [client_python("kserve"), str(script), str(root / "model" / "model.joblib"), "m"]
    with open(root / "kserve.log", "w") as log:
        return subprocess.Popen(
            [*args, str(port), str(grpc_port)], stdout=log, stderr=log, env=clean_env("kserve")
        )


def start_mlserver(root: Path, port: int, grpc_port: int) -> subprocess.Popen[bytes]:
    """MLServer's own scikit-learn runtime on the model file; inference in the server process
    (MLServer 1.7.1's worker pool does not start with current dependencies)."""
    models = root / "mlserver"
    (models / "m").mkdir(parents=True)
    uri = str(root / "model" / "model.joblib")
    (models / "m" / "model-settings.json").write_text(
        json.dumps(
            {
                "name": "m",
                "implementation": "mlserver_sklearn.SKLearnModel",
                "parameters": {"uri": uri},
            }
        )
    )
    settings = {
        "http_port": port,
        "grpc_port": grpc_port,
        "metrics_port": free_port(),
        "parallel_workers": 0,
        "host": "127.0.0.1",
    }
    (models / "settings.json").write_text(json.dumps(settings))
    mlserver = str(Path(client_python("mlserver")).with_name("mlserver"))
    env = clean_env("mlserver", MLSERVER_METRICS_DIR=str(root / "mlserver-metrics"))
    with open(root / "mlserver.log", "w") as log:
        return subprocess.Popen(
            [mlserver, "start", str(models)], stdout=log, stderr=log, env=env, cwd=root
        )


@dataclass(frozen=True)
class Reference:
    name: str
    start: Callable[[Path, int, int], subprocess.Popen[bytes]] | None
    rest: dict[str, Case]
    grpc: list[str]
    different: dict[str, str] = field(default_factory=dict)


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

KSERVE = Reference(
    "KServe's model server",
    start_kserve,
    {**V2_CASES, **V1_CASES},
    GRPC_CASES,
    {
        "v2 metadata": DEVICE.format(ref="KServe"),
        "v2 unknown version": "omibuild serves one version: another is not found (404, as "
        "MLServer answers); KServe answers 501, versioning not supported",
        "v2 shape and data disagree": REJECTED,
        "v2 the model rejects it": REJECTED,
        "v2 no inputs": REJECTED,
        "v2 not JSON": "the Open Inference Protocol's error is 400 with {error}; KServe's 422 "
        "carries FastAPI's validation detail",
        "v1 no instances": REJECTED,
        "grpc the model rejects it": GRPC_REJECTED,
        "unknown route": FASTAPI.format(ref="KServe"),
        "v2 GET on infer": FASTAPI.format(ref="KServe"),
    },
)
MLSERVER = Reference(
    "MLServer",
    start_mlserver,
    V2_CASES,
    GRPC_CASES,
    {
        "v2 metadata": DEVICE.format(ref="MLServer"),
        "v2 live": "the protocol's {live: true} body; MLServer answers 200 with no body",
        "v2 ready": "the protocol's {ready: true} body; MLServer answers 200 with no body",
        "v2 model ready": "the protocol's {name, ready} body; MLServer answers 200 with no body",
        "v2 infer": MLSERVER_OUTPUT,
        "v2 two rows": MLSERVER_OUTPUT,
        "v2 unknown datatype": "the protocol's 400 {error}, naming the datatype; MLServer "
        "answers 422 with pydantic's detail (and the whole request body echoed back)",
        "v2 shape and data disagree": REJECTED + "; MLServer answers 500 in plain text",
        "v2 the model rejects it": REJECTED + "; MLServer answers 500 in plain text",
        "v2 not JSON": "the protocol's 400 {error}; MLServer answers 422 with pydantic's "
        "detail, echoing the body",
        "unknown route": FASTAPI.format(ref="MLServer"),
        "v2 GET on infer": FASTAPI.format(ref="MLServer"),
        "grpc unknown model ready": "an unknown model is NOT_FOUND, as for infer; MLServer "
        "answers UNKNOWN",
        "grpc infer, typed": MLSERVER_OUTPUT,
        "grpc infer, raw": MLSERVER_OUTPUT,
        "grpc the model rejects it": GRPC_REJECTED,
    },
)


@pytest.fixture(scope="module")
def sklearn_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One iris model file (model/model.joblib) and omibuild's omi.json for it, named m."""
    import joblib
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    root = tmp_path_factory.mktemp("differential")
    (root / "model").mkdir()
    model = root / "model" / "model.joblib"
    joblib.dump(LogisticRegression(max_iter=300).fit(*load_iris(return_X_y=True)), model)
    interfaces = {"kfserving": {"protocols": ["v1", "v2"], "port": 8080, "grpc_port": 8081}}
    omi_json(root, interfaces, model_file="model.joblib", example=[[5.1, 3.5, 1.4, 0.2]])
    return root


class Built:
    """The image omibuild builds from the same model file, run as a container: the same
    request interface as the runtime-as-a-process Server."""

    def __init__(self, image: str) -> None:
        self.port, self.grpc_port = free_port(), free_port()
        ports = ["-p", f"127.0.0.1:{self.port}:8080", "-p", f"127.0.0.1:{self.grpc_port}:8081"]
        self.cid = subprocess.run(
            ["docker", "run", "-d", "--rm", "--read-only", "--tmpfs", "/tmp", *ports, image],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        self.base = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 60
        while self.request("GET", "/v2/health/ready")[0] != 200:
            assert time.monotonic() < deadline, self.logs()
            time.sleep(0.3)

    def logs(self) -> str:
        done = subprocess.run(["docker", "logs", self.cid], capture_output=True, text=True)
        return done.stderr[-3000:]

    def request(
        self, method: str, path: str, body: bytes | None = None, ctype: str = "application/json"
    ) -> tuple[int, bytes]:
        return call(self.base, method, path, body, ctype)  # type: ignore[no-any-return]

    def stop(self) -> None:
        subprocess.run(["docker", "rm", "-f", self.cid], capture_output=True, check=False)


Ours = Server | Built


def build_image(sklearn_root: Path, tmp: Path) -> str:
    """A stranger's repository named m holding the model file, `omibuild init` and `apply`
    as the README says, with the example input added."""
    from tests.conftest import remember_image
    from tests.integration.test_first_model import cli, without_example

    repo = tmp / "m"
    shutil.copytree(sklearn_root / "model", repo / "model")
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    assert cli(repo, "init").returncode == 0
    manifest = repo / "omi.yaml"
    example = "model:\n  example: {instances: [[5.1, 3.5, 1.4, 0.2]]}\n"
    manifest.write_text(without_example(manifest.read_text()).replace("model:\n", example, 1))
    remember_image("omibuild.local/m")
    built = cli(repo, "apply", "--format", "json", "--progress", "quiet")
    assert built.returncode == 0, built.stderr[-3000:]
    [record] = json.loads(built.stdout)
    return next(t for t in record["tags"] if t.endswith(":latest"))


@pytest.fixture(scope="module", params=["process", "image"])
def ours(
    request: pytest.FixtureRequest, sklearn_root: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Ours]:
    """omibuild's runtime on the model file: as a process, and as the image built from it."""
    if request.param == "process":
        server: Ours = Server(sklearn_root, "kfserving", "v2")
    else:
        server = Built(build_image(sklearn_root, tmp_path_factory.mktemp("built")))
    yield server
    server.stop()


def started(ref: Reference, sklearn_root: Path, root: Path) -> Iterator[tuple[str, int]]:
    """A reference server on the same model file: its HTTP base and gRPC port."""
    assert ref.start is not None
    (root / "model").symlink_to(sklearn_root / "model")
    port, grpc_port = free_port(), free_port()
    proc = ref.start(root, port, grpc_port)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(proc, base, "/v2/health/ready", next(root.glob("*.log")))
        yield base, grpc_port
    finally:
        proc.terminate()
        proc.wait(30)


@pytest.fixture(scope="module")
def kserve(sklearn_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    yield from started(KSERVE, sklearn_root, tmp_path_factory.mktemp("kserve"))


@pytest.fixture(scope="module")
def mlserver(sklearn_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    yield from started(MLSERVER, sklearn_root, tmp_path_factory.mktemp("mlserver"))


def same_over_rest(ref: Reference, base: str, ours: Ours, name: str) -> None:
    method, path, body = ref.rest[name][:3]
    theirs = shape_of(*call(base, method, path, body))
    compare(ref, name, theirs, shape_of(*ours.request(method, path, body)))


@pytest.mark.parametrize("name", list(KSERVE.rest))
def test_rest_answers_as_kserve(kserve: tuple[str, int], ours: Ours, name: str) -> None:
    same_over_rest(KSERVE, kserve[0], ours, name)


@pytest.mark.parametrize("name", list(MLSERVER.rest))
def test_rest_answers_as_mlserver(mlserver: tuple[str, int], ours: Ours, name: str) -> None:
    same_over_rest(MLSERVER, mlserver[0], ours, name)


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


def same_over_grpc(ref: Reference, port: int, ours: Ours, name: str) -> None:
    method, request = grpc_cases()[name]
    theirs = grpc_shape(port, method, request)
    compare(ref, name, theirs, grpc_shape(ours.grpc_port, method, request))


@pytest.mark.parametrize("name", KSERVE.grpc)
def test_grpc_answers_as_kserve(kserve: tuple[str, int], ours: Ours, name: str) -> None:
    same_over_grpc(KSERVE, kserve[1], ours, name)


@pytest.mark.parametrize("name", MLSERVER.grpc)
def test_grpc_answers_as_mlserver(mlserver: tuple[str, int], ours: Ours, name: str) -> None:
    same_over_grpc(MLSERVER, mlserver[1], ours, name)


# -- MLflow scoring against `mlflow models serve` ----------------------------------------------
MLFLOW_ROUTER = (
    "every error in MLflow's {error_code, message} shape; the scoring server's router answers "
    "FastAPI's {detail}"
)
MLFLOW = Reference(
    "mlflow models serve",
    None,
    MLFLOW_CASES,
    [],
    {"GET on invocations": MLFLOW_ROUTER, "unknown route": MLFLOW_ROUTER},
)


def start_mlflow(root: Path, port: int) -> subprocess.Popen[bytes]:
    mlflow = str(Path(client_python("mlflow")).with_name("mlflow"))
    args = [mlflow, "models", "serve", "-m", str(root / "model"), "-h", "127.0.0.1"]
    args += ["-p", str(port), "--env-manager", "local", "-w", "1"]
    with open(root / "mlflow.log", "w") as log:
        return subprocess.Popen(args, stdout=log, stderr=log, env=clean_env("mlflow"), cwd=root)


@pytest.fixture(scope="module")
def mlflow_pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Server]]:
    """One MLflow model directory (scikit-learn flavour, with a signature), served by
    `mlflow models serve` from its own venv and by omibuild's mlflow interface."""
    import warnings

    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    root = tmp_path_factory.mktemp("mlflow-differential")
    x, y = load_iris(return_X_y=True, as_frame=True)
    x.columns = COLUMNS
    model = LogisticRegression(max_iter=300).fit(x, y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # mlflow's advice on type hints, at import time
        import mlflow.sklearn
        from mlflow.models import infer_signature

        signature = infer_signature(x, model.predict(x))
        mlflow.sklearn.save_model(model, str(root / "model"), signature=signature)
    interfaces = {"mlflow": {"protocols": ["v1"], "port": 8080}}
    omi_json(root, interfaces, flavor="pyfunc", default_interface="mlflow")
    server = Server(root, "mlflow", "v1")
    port = free_port()
    proc = start_mlflow(root, port)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(proc, base, "/ping", root / "mlflow.log")
        yield base, server
    finally:
        proc.terminate()
        proc.wait(30)
        server.stop()


@pytest.mark.parametrize("name", list(MLFLOW_CASES))
def test_mlflow_scoring_answers_as_mlflow_models_serve(
    mlflow_pair: tuple[str, Server], name: str
) -> None:
    base, server = mlflow_pair
    method, path, body, *ctype = MLFLOW_CASES[name]
    theirs = call(base, method, path, body, *ctype)
    mine = server.request(method, path, body, *ctype)
    compare(MLFLOW, name, shape_of(*theirs), shape_of(*mine))
