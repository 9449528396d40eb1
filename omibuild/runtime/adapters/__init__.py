"""Serving interfaces, one module each, behind the Adapter protocol. ADAPTERS maps the OMI
INTERFACE names (and our extensions) to them; the schema's enum is tested against its keys."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from starlette.routing import BaseRoute

    from omibuild.runtime.config import RuntimeConfig
    from omibuild.runtime.http import Metrics
    from omibuild.runtime.model import ModelService


class Adapter(Protocol):
    http: bool  # serves HTTP on config.port (modzy v2 is gRPC only)

    def __init__(self, service: ModelService, config: RuntimeConfig, metrics: Metrics) -> None: ...

    def routes(self) -> list[BaseRoute]: ...

    def error_body(self, status: int, message: str) -> dict[str, Any]: ...

    def grpc_servicers(self) -> list[Any]:
        """gRPC (add_to_server function, servicer) pairs to serve, if any."""
        ...


ADAPTERS: dict[str, str] = {
    "kfserving": "omibuild.runtime.adapters.kfserving:KServeAdapter",
    "modzy": "omibuild.runtime.adapters.modzy:ModzyAdapter",
    "sagemaker": "omibuild.runtime.adapters.sagemaker:SageMakerAdapter",
    "vertex": "omibuild.runtime.adapters.vertex:VertexAdapter",
    "mlflow": "omibuild.runtime.adapters.mlflow:MlflowAdapter",
}


def get_adapter(name: str) -> type[Adapter]:
    module, cls = ADAPTERS[name].split(":")
    adapter: type[Adapter] = getattr(importlib.import_module(module), cls)
    return adapter
