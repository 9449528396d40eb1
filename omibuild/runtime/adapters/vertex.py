"""Vertex AI custom containers: health and predict routes from AIP_HEALTH_ROUTE and
AIP_PREDICT_ROUTE on AIP_HTTP_PORT; {"instances", "parameters"} in, {"predictions"} out."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from omibuild.runtime.adapters.payloads import instances_body
from omibuild.runtime.config import RuntimeConfig
from omibuild.runtime.http import (
    Metrics,
    endpoint,
    json_response,
    read_body,
    require_ready,
)
from omibuild.runtime.model import ModelService, to_jsonable
from omibuild.runtime.offload import Offload


class VertexAdapter:
    http = True

    def __init__(self, service: ModelService, config: RuntimeConfig, metrics: Metrics) -> None:
        self.service = service
        self.config = config
        self.metrics = metrics
        self.offload = Offload(config.decode_process_bytes)
        self.health_route = config.env.get("AIP_HEALTH_ROUTE") or "/health"
        self.predict_route = config.env.get("AIP_PREDICT_ROUTE") or "/predict"

    def error_body(self, status: int, message: str) -> dict[str, Any]:
        return {"error": message}

    def routes(self) -> list[BaseRoute]:
        ep = lambda route: endpoint(route, self.metrics, self.error_body)  # noqa: E731

        async def health(request: Request) -> Response:
            return json_response({}, 200 if self.service.ready else 503)

        async def predict(request: Request) -> Response:
            require_ready(self.service)
            body = await read_body(request, self.config.max_body_bytes)
            instances = await self.offload.decode(
                instances_body, body, self.service.takes_arrays, True
            )
            predictions = await self.service.apredict(instances)
            out: dict[str, Any] = {"predictions": to_jsonable(predictions)}
            if self.config.env.get("AIP_DEPLOYED_MODEL_ID"):
                out["deployedModelId"] = self.config.env["AIP_DEPLOYED_MODEL_ID"]
            return json_response(out)

        return [
            Route(self.health_route, ep("health")(health)),
            Route(self.predict_route, ep("predict")(predict), methods=["POST"]),
        ]

    def grpc_servicers(self) -> list[Any]:
        return []
