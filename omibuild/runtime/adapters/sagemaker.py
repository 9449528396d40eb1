"""Amazon SageMaker's container contract: GET /ping, POST /invocations on port 8080
(or SAGEMAKER_BIND_TO_PORT); JSON, CSV and .npy in; JSON, CSV or .npy out by Accept."""

from __future__ import annotations

import io
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from omibuild.runtime.adapters.payloads import csv_rows, instances_body, npy_array, to_csv
from omibuild.runtime.config import RuntimeConfig
from omibuild.runtime.http import (
    HTTPError,
    Metrics,
    endpoint,
    json_response,
    read_body,
    require_ready,
)
from omibuild.runtime.model import ModelService, to_jsonable
from omibuild.runtime.offload import Offload


class SageMakerAdapter:
    http = True

    def __init__(self, service: ModelService, config: RuntimeConfig, metrics: Metrics) -> None:
        self.service = service
        self.config = config
        self.metrics = metrics
        self.offload = Offload(config.decode_process_bytes)

    def error_body(self, status: int, message: str) -> dict[str, Any]:
        return {"error": message, "code": status}

    def routes(self) -> list[BaseRoute]:
        ep = lambda route: endpoint(route, self.metrics, self.error_body)  # noqa: E731

        async def ping(request: Request) -> Response:
            return Response(status_code=200 if self.service.ready else 503)

        async def execution_parameters(request: Request) -> Response:
            return json_response(
                {
                    "MaxConcurrentTransforms": self.config.workers,
                    "BatchStrategy": "MULTI_RECORD",
                    "MaxPayloadInMB": max(1, self.config.max_body_bytes >> 20),
                }
            )

        async def invocations(request: Request) -> Response:
            require_ready(self.service)
            body = await read_body(request, self.config.max_body_bytes)
            ctype = request.headers.get("content-type", "application/json").split(";")[0].strip()
            if ctype == "text/csv":
                data: Any = csv_rows(body)
            elif ctype == "application/x-npy":
                data = npy_array(body)
            elif ctype in ("application/json", "application/jsonlines", ""):
                data = await self.offload.decode(instances_body, body, self.service.takes_arrays)
            else:
                raise HTTPError(
                    415,
                    f"unsupported content type {ctype!r}: use application/json, "
                    "text/csv or application/x-npy",
                )
            predictions = await self.service.apredict(data)
            accept = request.headers.get("accept", "application/json").split(",")[0].strip()
            if accept == "text/csv":
                return Response(to_csv(to_jsonable(predictions)), media_type="text/csv")
            if accept == "application/x-npy":
                import numpy as np

                buf = io.BytesIO()
                np.save(buf, np.asarray(predictions), allow_pickle=False)
                return Response(buf.getvalue(), media_type="application/x-npy")
            return json_response({"predictions": to_jsonable(predictions)})

        return [
            Route("/ping", ep("ping")(ping)),
            Route("/execution-parameters", ep("execution_parameters")(execution_parameters)),
            Route("/invocations", ep("invocations")(invocations), methods=["POST"]),
        ]

    def grpc_servicers(self) -> list[Any]:
        return []
