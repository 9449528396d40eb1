"""Each platform's contract where a client meets its edges, on a real runtime on loopback:
unknown routes and methods answer in the protocol's JSON error shape, and a V2 model version
other than the served one is not found, over REST and gRPC."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from omibuild.runtime.adapters.payloads import negotiate
from omibuild.runtime.adapters.sagemaker import ANSWERS
from tests.unit.test_runtime_hostile import Server, _grpc_infer, bundle, servers  # noqa: F401

# (interface, protocol) → (a path no route serves, a route with a method it does not take)
EDGES = {
    ("kfserving", "v2"): ("/v2/nothing", ("GET", "/v2/models/m/infer")),
    ("kfserving", "v1"): ("/v1/nothing", ("GET", "/v1/models/m:predict")),
    ("sagemaker", "v1"): ("/nothing", ("GET", "/invocations")),
    ("vertex", "v1"): ("/nothing", ("GET", "/predict")),
    ("mlflow", "v1"): ("/nothing", ("GET", "/invocations")),
    ("modzy", "v1"): ("/nothing", ("DELETE", "/status")),
}
SHAPE = {  # the key every error of the interface carries its message in
    "kfserving": "error",
    "sagemaker": "error",
    "vertex": "error",
    "mlflow": "message",
    "modzy": "message",
}


@pytest.mark.parametrize("key", list(EDGES), ids=lambda k: "-".join(k))
def test_unknown_routes_and_methods_answer_in_the_protocols_json_shape(
    servers: dict,  # noqa: F811
    key: tuple[str, str],
) -> None:
    server = servers[key]
    missing, (method, path) = EDGES[key]
    for verb, where, status in (("GET", missing, 404), (method, path, 405)):
        got, body = server.request(verb, where)
        assert got == status, (verb, where, got, body[:200])
        message = json.loads(body)[SHAPE[key[0]]]  # JSON, not Starlette's text/plain
        assert where in message or (status == 405 and "POST" in message), message


def test_v2_versions_other_than_the_served_one_are_not_found(servers: dict) -> None:  # noqa: F811
    server = servers[("kfserving", "v2")]
    body = json.dumps(
        {
            "inputs": [
                {"name": "x", "shape": [1, 4], "datatype": "FP64", "data": [5.1, 3.5, 1.4, 0.2]}
            ]
        }
    ).encode()
    assert server.get("/v2/models/m/versions/1")[0] == 200
    assert server.get("/v2/models/m/versions/1/ready")[0] == 200
    assert server.request("POST", "/v2/models/m/versions/1/infer", body)[0] == 200
    for path in ("/v2/models/m/versions/99", "/v2/models/m/versions/99/ready"):
        status, reply = server.get(path)
        assert status == 404 and "no version '99'" in json.loads(reply)["error"], reply
    status, reply = server.request("POST", "/v2/models/m/versions/99/infer", body)
    assert status == 404, reply


def test_grpc_empty_or_unknown_names_and_versions_are_not_found(servers: dict) -> None:  # noqa: F811
    from omibuild.runtime.protos import INFERENCE

    port = servers[("kfserving", "v2")].grpc_port

    def infer(name: str, version: str = "") -> str:
        req = INFERENCE["ModelInferRequest"](model_name=name, model_version=version)
        tensor = req.inputs.add(name="x", datatype="FP64", shape=[1, 4])
        tensor.contents.fp64_contents.extend([5.1, 3.5, 1.4, 0.2])
        return _grpc_infer(port, bytes(req.SerializeToString()))[0]

    assert infer("m") == "OK" and infer("m", "1") == "OK"
    assert infer("") == "NOT_FOUND"
    assert infer("other") == "NOT_FOUND"
    assert infer("m", "99") == "NOT_FOUND"


@pytest.mark.parametrize(
    ("accept", "answer"),
    [
        (None, "application/json"),
        ("", "application/json"),
        ("text/csv", "text/csv"),
        ("application/json; charset=utf-8", "application/json"),
        ("text/csv;q=0.5, application/json", "application/json"),
        ("application/jsonlines, application/json;q=0.9", "application/jsonlines"),
        ("text/*", "text/csv"),
        ("application/*", "application/json"),
        ("*/*;q=0.1, text/csv;q=0.2", "text/csv"),
        ("text/csv;q=0, */*", "application/json"),  # the specific range refuses csv alone
        ("nonsense, text/csv", "text/csv"),  # what does not parse is skipped
        ("application/x-npy;q=1.0", "application/x-npy"),
        ("image/png", None),
        ("*/*;q=0", None),
        ("text/csv;q=2", None),  # q out of range: the range is dropped
    ],
)
def test_accept_is_negotiated_as_rfc_9110_says(accept: str | None, answer: str | None) -> None:
    assert negotiate(accept, ANSWERS) == answer


ROWS = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5]]


def test_sagemaker_mini_batches_in_json_lines_and_csv_come_back_line_for_line(
    servers: dict,  # noqa: F811
) -> None:
    server = servers[("sagemaker", "v1")]

    def invoke(body: bytes, ctype: str, accept: str) -> tuple[int, bytes]:
        req = urllib.request.Request(
            server.base + "/invocations",
            data=body,
            headers={"Content-Type": ctype, "Accept": accept},
        )
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.read()

    lines = b"".join(json.dumps(r).encode() + b"\n" for r in ROWS)
    assert invoke(lines, "application/jsonlines", "application/jsonlines") == (200, b"0\n2\n1\n")
    csv = b"5.1,3.5,1.4,0.2\n6.7,3.0,5.2,2.3\n5.9,3.0,4.2,1.5\n"
    assert invoke(csv, "text/csv", "text/csv") == (200, b"0\n2\n1\n")  # "\n", never "\r\n"
    assert invoke(lines, "application/jsonlines", "text/csv;q=0.8, application/json") == (
        200,
        b"[0,2,1]",
    )  # JSON as the inference toolkit encodes it: the predictions themselves
    status, reply = server.request("POST", "/invocations", lines, "application/jsonlines")
    assert status == 200 and json.loads(reply) == [0, 2, 1]
    req = urllib.request.Request(
        server.base + "/invocations",
        data=csv,
        headers={"Content-Type": "text/csv", "Accept": "image/png"},
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(req, timeout=30)
    assert refused.value.code == 406
    message = json.loads(refused.value.read())["error"]
    assert "image/png" in message and "text/csv" in message


def test_v2_metadata_states_the_outputs_every_infer_returns(tmp_path: Path) -> None:
    import joblib
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    from omibuild.runtime.protos import INFERENCE
    from tests.unit.runtime_config import omi_json

    (tmp_path / "model").mkdir()
    joblib.dump(
        LogisticRegression(max_iter=300).fit(*load_iris(return_X_y=True)),
        tmp_path / "model" / "model.joblib",
    )
    interfaces = {"kfserving": {"protocols": ["v1", "v2"], "port": 8080, "grpc_port": 8081}}
    omi_json(tmp_path, interfaces, model_file="model.joblib", example=ROWS[:1])
    server = Server(tmp_path, "kfserving", "v2")
    try:
        # no outputs.json was baked here: the outputs are learnt just after readiness
        deadline = time.monotonic() + 20
        while not (meta := json.loads(server.get("/v2/models/m")[1])).get("outputs"):
            assert time.monotonic() < deadline, meta
            time.sleep(0.05)
        body = json.dumps(
            {
                "inputs": [
                    {
                        "name": "x",
                        "shape": [3, 4],
                        "datatype": "FP64",
                        "data": [x for row in ROWS for x in row],
                    }
                ]
            }
        ).encode()
        [output] = json.loads(server.request("POST", "/v2/models/m/infer", body)[1])["outputs"]
        [declared] = meta["outputs"]
        assert declared == {"name": output["name"], "datatype": output["datatype"], "shape": [-1]}
        assert output["datatype"] == "INT64" and output["shape"] == [3]
        assert meta["inputs"] == [{"name": "input-0", "datatype": "FP64", "shape": [-1, 4]}]

        import grpc

        with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
            call = channel.unary_unary(
                "/inference.GRPCInferenceService/ModelMetadata",
                request_serializer=lambda m: m.SerializeToString(),
                response_deserializer=INFERENCE["ModelMetadataResponse"].FromString,
            )
            reply = call(INFERENCE["ModelMetadataRequest"](name="m"), timeout=10)
        [grpc_output] = reply.outputs
        assert (grpc_output.datatype, list(grpc_output.shape)) == ("INT64", [-1])
    finally:
        server.stop()


def test_grpc_answers_typed_requests_with_typed_outputs_and_raw_with_raw(
    servers: dict,  # noqa: F811
) -> None:
    import grpc
    import numpy as np

    from omibuild.runtime.protos import INFERENCE

    port = servers[("kfserving", "v2")].grpc_port
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary(
            "/inference.GRPCInferenceService/ModelInfer",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=INFERENCE["ModelInferResponse"].FromString,
        )
        typed = INFERENCE["ModelInferRequest"](model_name="m")
        tensor = typed.inputs.add(name="x", datatype="FP64", shape=[3, 4])
        tensor.contents.fp64_contents.extend([x for row in ROWS for x in row])
        reply = call(typed, timeout=10)
        assert not reply.raw_output_contents
        [out] = reply.outputs
        assert (out.datatype, list(out.shape), list(out.contents.int64_contents)) == (
            "INT64",
            [3],
            [0, 2, 1],
        )
        raw = INFERENCE["ModelInferRequest"](model_name="m")
        raw.inputs.add(name="x", datatype="FP64", shape=[3, 4])
        raw.raw_input_contents.append(np.asarray(ROWS, dtype="<f8").tobytes())
        reply = call(raw, timeout=10)
        assert np.frombuffer(reply.raw_output_contents[0], dtype="<i8").tolist() == [0, 2, 1]
        assert not reply.outputs[0].contents.int64_contents


def test_mlflow_scoring_reads_csv_and_refuses_content_types_as_mlflow_serve_does(
    servers: dict,  # noqa: F811
) -> None:
    import importlib.metadata

    server = servers[("mlflow", "v1")]
    with_header = b"a,b,c,d\n5.1,3.5,1.4,0.2\n6.7,3.0,5.2,2.3\n"
    status, reply = server.request("POST", "/invocations", with_header, "text/csv")
    assert status == 200 and json.loads(reply) == {"predictions": [0, 2]}
    # pandas.read_csv, as `mlflow models serve` reads CSV: the first row is the header, always
    headerless = b"5.1,3.5,1.4,0.2\n6.7,3.0,5.2,2.3\n5.9,3.0,4.2,1.5\n"
    status, reply = server.request("POST", "/invocations", headerless, "text/csv")
    assert status == 200 and json.loads(reply) == {"predictions": [2, 1]}
    for ctype, words in (
        ("text/plain", "only supports the following content types"),
        ("text/csv; charset=latin-1", "only supports UTF-8"),
        ("application/json; format=pandas-split", "Unrecognized content type parameters"),
    ):
        status, reply = server.request("POST", "/invocations", with_header, ctype)
        assert status == 415 and words in reply.decode(), (ctype, reply)
    status, reply = server.get("/version")
    assert (status, reply.decode()) == (200, importlib.metadata.version("mlflow"))


def test_errors_name_the_real_fault_and_quote_a_glimpse_at_most(servers: dict) -> None:  # noqa: F811
    server = servers[("kfserving", "v2")]
    long = "n" * 100_000

    def refused(**spec: object) -> str:
        tensor = {"name": "x", "shape": [1, 4], "datatype": "FP64", "data": [1, 2, 3, 4], **spec}
        status, reply = server.request(
            "POST", "/v2/models/m/infer", json.dumps({"inputs": [tensor]}).encode()
        )
        assert status == 400 and len(reply) < 400, (status, len(reply))
        return str(json.loads(reply)["error"])

    assert "needs a name" in refused(name=7)  # the name is at fault, not the datatype
    assert "datatype must be one of" in refused(datatype=long)
    assert refused(name=long, datatype="FP99").count("n") < 100
    status, reply = server.get(f"/v2/models/{long[:5000]}")
    assert status == 404 and len(reply) < 400
