"""schemathesis against the Open Inference Protocol's OpenAPI description, as a reference server
ships it: MLServer's dataplane.json, read from the installed mlserver package in its client venv
at test time (not copied here). Generated requests go to the runtime as a process and as the
built image; no answer may be a 5xx or break the response schemas the description states.
Bounded: EXAMPLES cases per operation and mode, each request with a timeout."""

from __future__ import annotations

import json
import subprocess
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from .conftest import Server, client_python

pytestmark = pytest.mark.integration

EXAMPLES = 40
# MLServer's own extensions to the protocol (streaming and text generation): not served
EXTENSIONS = ("infer_stream", "generate")


def dataplane() -> Path:
    """dataplane.json inside the installed mlserver package (found without importing it)."""
    code = (
        "import importlib.util as u; print(u.find_spec('mlserver').submodule_search_locations[0])"
    )
    out = subprocess.run(
        [client_python("mlserver"), "-c", code], capture_output=True, text=True, check=True
    )
    path = Path(out.stdout.strip()) / "rest" / "openapi" / "dataplane.json"
    assert path.is_file(), f"mlserver no longer ships {path}"
    return path


def description() -> dict[str, Any]:
    """MLServer's description, with the one fault that stops generation mended in memory: its
    TensorData allows `{"type": "bytes"}`, not a JSON Schema type (binary data travels as a
    base64 string in JSON)."""
    doc: dict[str, Any] = json.loads(dataplane().read_text())
    tensor = doc["components"]["schemas"]["TensorData"]
    assert {"type": "bytes"} in tensor["oneOf"], "MLServer mended TensorData: drop this"
    tensor["oneOf"] = [{"type": "array"}, {"type": "string"}]
    return doc


def operations() -> list[str]:
    import schemathesis

    schema = schemathesis.openapi.from_dict(description())
    labels = []
    for result in schema.get_all_operations():
        op = result.ok()
        if not any(part in op.path for part in EXTENSIONS):
            labels.append(op.label)
    return labels


@pytest.fixture(scope="module")
def schema() -> Any:
    import schemathesis

    return schemathesis.openapi.from_dict(description())


OPERATIONS = [
    "GET /v2/health/live",
    "GET /v2/health/ready",
    "GET /v2",
    "GET /v2/models/{model_name}",
    "GET /v2/models/{model_name}/ready",
    "GET /v2/models/{model_name}/versions/{model_version}",
    "GET /v2/models/{model_name}/versions/{model_version}/ready",
    "POST /v2/models/{model_name}/infer",
    "POST /v2/models/{model_name}/versions/{model_version}/infer",
]


def test_the_description_has_the_operations_tested() -> None:
    """If MLServer's description gains or loses an operation, this list follows it."""
    assert sorted(operations()) == sorted(OPERATIONS)


@pytest.mark.parametrize("label", OPERATIONS)
def test_generated_requests_get_no_5xx_and_valid_responses(
    serve: Callable[..., Server], schema: Any, label: str
) -> None:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
    from schemathesis.checks import (
        content_type_conformance,
        not_a_server_error,
        response_schema_conformance,
    )

    server = serve("kfserving", "v2")
    with urllib.request.urlopen(f"{server.url}/v2/models/{server.model}", timeout=10) as resp:
        version = json.load(resp)["versions"][0]
    operation = schema.find_operation_by_label(label)
    seen: list[int] = []

    rows = st.integers(1, 5).flatmap(
        lambda n: st.lists(st.floats(-10, 10), min_size=4 * n, max_size=4 * n)
    )

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(), served=st.booleans(), data=st.none() | rows)
    def run(case: Any, served: bool, data: list[float] | None) -> None:
        # half the cases name the served model and version, so they reach the handlers; and
        # some of those infer on rows the model takes, so answers are checked as well as errors
        if served and case.path_parameters:
            case.path_parameters["model_name"] = server.model
            if "model_version" in case.path_parameters:
                case.path_parameters["model_version"] = version
            if data and case.method == "POST":
                tensor = {"name": "x", "datatype": "FP64", "shape": [len(data) // 4, 4]}
                case.body = {"inputs": [{**tensor, "data": data}]}
        response = case.call(base_url=server.url, timeout=10)
        seen.append(response.status_code)
        case.validate_response(
            response,
            checks=[not_a_server_error, response_schema_conformance, content_type_conformance],
        )

    run()
    assert seen and max(seen) < 500
    if "infer" in label:  # an answer and an error, whatever was generated, checked the same way
        params = {"model_name": server.model}
        if "{model_version}" in label:
            params["model_version"] = version
        tensor = {"name": "x", "datatype": "FP64", "shape": [2, 4]}
        for data, status in (([5.1, 3.5, 1.4, 0.2] * 2, 200), ([1.0, 2.0], 400)):
            case = operation.Case(
                path_parameters=params,
                body={"inputs": [{**tensor, "data": data}]},
                media_type="application/json",
            )
            response = case.call(base_url=server.url, timeout=10)
            assert response.status_code == status, response.text
            case.validate_response(
                response,
                checks=[not_a_server_error, response_schema_conformance, content_type_conformance],
            )
