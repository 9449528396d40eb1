"""What the in-image runtime needs from PyPI, per interface. Pinned so plans are reproducible.
Kept in the runtime package so that the build side and the image agree on one list."""

from __future__ import annotations

HTTP = ("starlette==1.10.0", "uvicorn==0.54.0", "uvloop==0.23.0", "httptools==0.9.0", "numpy>=1.24")
GRPC = ("grpcio==1.85.3", "grpcio-health-checking==1.85.1", "grpcio-reflection==1.85.1")
EXPLAIN = ("shap==0.51.0",)  # the built-in explainer (runtime/explain.py)
DRIFT = ("scipy>=1.11",)  # the drift tests (runtime/drift.py)
FLAVOR = {
    "sklearn": ("joblib>=1.2",),
    "pyfunc": (),
    "onnx": ("onnxruntime>=1.17",),
    "transformers": (),
    "custom": (),
}


def needs_grpc(interfaces: dict[str, list[str]]) -> bool:
    """kfserving v2 serves gRPC beside REST; modzy v2 is gRPC only."""
    return "v2" in interfaces.get("kfserving", []) or "v2" in interfaces.get("modzy", [])


def runtime_requirements(
    interfaces: dict[str, list[str]], flavor: str, *, explain: bool = False, drift: bool = False
) -> tuple[str, ...]:
    reqs = list(HTTP) + list(FLAVOR.get(flavor, ()))
    if needs_grpc(interfaces):
        reqs += GRPC
    if explain:
        reqs += EXPLAIN
    if drift:
        reqs += DRIFT
    return tuple(reqs)
