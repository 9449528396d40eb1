"""Talking to a running OMI container from the outside, per interface: how to start it, how
to tell it is ready, and how to send one prediction. Used by `run` and `check`."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from omibuild.conformance.bodies import NATIVE, Body, mlflow_request, v2_request

SPEC_PORTS = {"modzy": 45000}
JSON = "application/json"
CONTAINER_PORT = 8080


@dataclass(frozen=True)
class Endpoint:
    interface: str
    protocol: str
    model_name: str
    host_port: int
    host: str = "127.0.0.1"
    health_route: str = "/health"  # Vertex AI: AIP_HEALTH_ROUTE

    @property
    def base(self) -> str:
        return f"http://{self.host}:{self.host_port}"

    @property
    def grpc(self) -> bool:
        return self.interface == "modzy" and self.protocol == "v2"


def container_env(
    interface: str, protocol: str, model_name: str | None
) -> tuple[dict[str, str], int]:
    """The OMI variables to start an interface with, and the port it will listen on."""
    port = SPEC_PORTS.get(interface, CONTAINER_PORT) if protocol == "v2" else CONTAINER_PORT
    env = {"INTERFACE": interface, "PROTOCOL": protocol, "HTTP_PORT": str(port)}
    if model_name:
        env["MODEL_NAME"] = model_name
    env |= {
        "modzy": {"PSC_MODEL_PORT": str(port)},
        "vertex": {"AIP_HTTP_PORT": str(port)},
        "sagemaker": {"SAGEMAKER_BIND_TO_PORT": str(port)},
    }.get(interface, {})
    return env, port


def _http(
    method: str,
    url: str,
    body: Any = None,
    timeout: float = 10.0,
    content_type: str = "application/json",
) -> tuple[int, str]:
    data = (
        None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    )
    req = urllib.request.Request(
        url, data=data, method=method, headers={"Content-Type": content_type} if data else {}
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode("utf-8", "replace")


def device(t: Endpoint, timeout: float = 10.0) -> str | None:
    """The device a V2 model reports it runs on (its metadata's ``parameters.device``)."""
    try:
        status, text = _http("GET", f"{t.base}/v2/models/{t.model_name}", timeout=timeout)
        found = json.loads(text).get("parameters", {}).get("device") if status == 200 else None
    except (OSError, ValueError, AttributeError):
        return None
    return str(found) if found else None


def ready_url(t: Endpoint) -> str:
    if t.interface == "kfserving":
        return (
            f"{t.base}/v2/models/{t.model_name}/ready"
            if t.protocol == "v2"
            else f"{t.base}/v1/models/{t.model_name}"
        )
    return {
        "sagemaker": f"{t.base}/ping",
        "vertex": f"{t.base}{t.health_route}",
        "mlflow": f"{t.base}/ping",
        "modzy": f"{t.base}/status",
    }[t.interface]


def _modzy_call(t: Endpoint, method: str, request: Any, timeout: float) -> Any:
    import grpc

    from omibuild.runtime.protos import MODZY

    with grpc.insecure_channel(f"{t.host}:{t.host_port}") as channel:
        call = channel.unary_unary(
            f"/ModzyModel/{method}",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=MODZY[f"{method}Response"].FromString,
        )
        return call(request, timeout=timeout)


def is_ready(t: Endpoint) -> bool:
    try:
        if t.grpc:
            from omibuild.runtime.protos import MODZY

            return bool(_modzy_call(t, "Status", MODZY["StatusRequest"](), 2).status_code == 200)
        return _http("GET", ready_url(t), timeout=2)[0] == 200
    except Exception:  # refused, reset, not yet listening: not ready
        return False


def wait_ready(t: Endpoint, timeout: float, alive: Any = None) -> float | None:
    """Seconds until ready, or None on timeout (or when ``alive()`` says it died)."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if is_ready(t):
            return time.monotonic() - start
        if alive is not None and not alive():
            return None
        time.sleep(0.1)
    return None


RUNTIME_PREFIX = "omibuild runtime: "


def exit_reason(logs: str) -> str | None:
    """The runtime's own one-line reason for stopping, found in a container's log."""
    lines = [ln for ln in logs.splitlines() if ln.startswith(RUNTIME_PREFIX)]
    return lines[-1].removeprefix(RUNTIME_PREFIX) if lines else None


def http_request(t: Endpoint, body: Body) -> tuple[str, Any, str]:
    """(URL, body, content type) of one prediction in an HTTP interface's own request shape:
    a body already in that shape goes as it is, any other as the rows it means."""
    native = (
        body.kind != "instances"
        and NATIVE[body.kind][0] == t.interface
        and (NATIVE[body.kind][1] in (None, t.protocol))
    )
    if t.interface == "kfserving" and t.protocol == "v2":
        url = f"{t.base}/v2/models/{t.model_name}/infer"
        return url, body.payload if native else v2_request(body.rows), body.content_type
    if t.interface == "kfserving":
        return f"{t.base}/v1/models/{t.model_name}:predict", {"instances": body.rows}, JSON
    if t.interface == "mlflow":
        payload = body.payload if native else mlflow_request(body.rows)
        return f"{t.base}/invocations", payload, JSON
    if t.interface == "sagemaker" and native:
        return f"{t.base}/invocations", body.payload, body.content_type
    path = {"vertex": "/predict", "modzy": "/run"}.get(t.interface, "/invocations")
    return f"{t.base}{path}", {"instances": body.rows}, JSON


def native_interface(body: Body, interfaces: Collection[str]) -> str | None:
    """The interface whose own shape ``body`` is in, when the image has it."""
    if body.kind == "instances":
        return None
    interface = NATIVE[body.kind][0]
    return interface if interface in interfaces else None


def predict(t: Endpoint, request: list[Any] | Body, timeout: float = 30.0) -> tuple[int, Any]:
    """Send one prediction in the interface's own request shape: (status, parsed response)."""
    body = request if isinstance(request, Body) else Body.of_rows(request)
    if t.grpc:
        from omibuild.runtime.protos import MODZY

        message = MODZY["RunRequest"]()
        item = message.inputs.add()
        item.input["input"] = json.dumps({"instances": body.rows}).encode()
        response = _modzy_call(t, "Run", message, timeout)
        outputs = [json.loads(o.output["results.json"]) for o in response.outputs]
        return int(response.status_code), outputs[0] if outputs else {}
    url, payload, content_type = http_request(t, body)
    status, text = _http("POST", url, payload, timeout=timeout, content_type=content_type)
    try:
        return status, json.loads(text)
    except ValueError:
        return status, text


def curl_example(t: Endpoint, instances: list[Any]) -> str:
    if t.grpc:
        payload = json.dumps({"inputs": [{"input": json.dumps({"instances": instances})}]})
        return (
            f"grpcurl -plaintext -d '{payload}' {t.host}:{t.host_port} ModzyModel/Run"
            "  # input bytes are base64 in grpcurl's JSON"
        )
    url, request, content_type = http_request(t, Body.of_rows(instances))
    body = json.dumps(request)
    return f"curl -s -X POST -H 'Content-Type: {content_type}' {url} -d '{body}'"


def explain(t: Endpoint, instances: list[Any], timeout: float = 120.0) -> tuple[int, Any] | None:
    """Ask for an explanation where the interface has a place for one (KServe V1 ``:explain``,
    the V2 ``explain`` extension, Modzy's ``explain`` flag): (status, explanation document), or
    None when it has none."""
    if t.grpc:
        from omibuild.runtime.protos import MODZY

        request = MODZY["RunRequest"](explain=True)
        request.inputs.add().input["input"] = json.dumps({"instances": instances}).encode()
        response = _modzy_call(t, "Run", request, timeout)
        results = [json.loads(o.output["results.json"]) for o in response.outputs]
        first = results[0] if results else {}
        return int(response.status_code), first.get("explanation", first)
    if t.interface == "kfserving":
        url, body, _ = http_request(t, Body.of_rows(instances))
        url = url.replace(":predict", ":explain").replace("/infer", "/explain")
    elif t.interface == "modzy":
        url, body = f"{t.base}/run?explain=true", {"instances": instances}
    else:
        return None
    status, text = _http("POST", url, body, timeout=timeout)
    try:
        document = json.loads(text)
    except ValueError:
        return status, text
    if t.interface == "modzy" and isinstance(document, dict) and document.get("outputs"):
        document = document["outputs"][0].get("explanation", document)
    return status, document


def additivity_gap(document: Any) -> float | None:
    """The largest |sum(attributions) - (value - base_value)| over the explained rows and
    outputs (SHAP's additivity), or None when the document has no such numbers."""
    try:
        gaps = [
            abs(sum(o["attributions"]) - (o["value"] - o["base_value"]))
            for e in document["explanations"]
            for o in e["outputs"]
        ]
    except (KeyError, TypeError):
        return None
    return max(gaps) if gaps else None


def drift_status(t: Endpoint, timeout: float = 10.0) -> tuple[int, Any]:
    status, text = _http("GET", f"{t.base}/drift", timeout=timeout)
    try:
        return status, json.loads(text)
    except ValueError:
        return status, text
