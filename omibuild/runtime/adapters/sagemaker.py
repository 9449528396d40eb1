"""Amazon SageMaker's container contract: GET /ping, POST /invocations on port 8080
(or SAGEMAKER_BIND_TO_PORT); JSON, JSON Lines, CSV and .npy in and out, the answer's type
negotiated from Accept (RFC 9110), and encoded as the SageMaker inference toolkit does."""

from __future__ import annotations

import io
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from omibuild.runtime.adapters.payloads import (
    csv_rows,
    instances_body,
    jsonlines_rows,
    negotiate,
    npy_array,
    to_csv,
    to_jsonlines,
)
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

# what /invocations answers in, in the order a tie in Accept is settled
ANSWERS = ("application/json", "application/jsonlines", "text/csv", "application/x-npy")
JSONLINES = ("application/jsonlines", "application/jsonl", "application/x-jsonlines")


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
            # the answer's type is settled before any work: an Accept nothing meets is 406
            accept = negotiate(request.headers.get("accept"), ANSWERS)
            if accept is None:
                raise HTTPError(
                    406,
                    f"cannot answer in {request.headers.get('accept', '')[:200]!r}: "
                    f"this endpoint answers {', '.join(ANSWERS)}",
                )
            body = await read_body(request, self.config.max_body_bytes)
            ctype = request.headers.get("content-type", "application/json").split(";")[0].strip()
            ctype = ctype.lower()
            if ctype == "text/csv":
                data: Any = csv_rows(body)
            elif ctype == "application/x-npy":
                data = npy_array(body)
            elif ctype in JSONLINES:
                data = jsonlines_rows(body)
            elif ctype in ("application/json", ""):
                data = await self.offload.decode(instances_body, body, self.service.takes_arrays)
            else:
                raise HTTPError(
                    415,
                    f"unsupported content type {ctype[:100]!r}: use application/json, "
                    "application/jsonlines, text/csv or application/x-npy",
                )
            predictions = to_jsonable(await self.service.apredict(data))
            if accept == "text/csv":
                return Response(to_csv(predictions), media_type="text/csv")
            if accept == "application/jsonlines":
                return Response(to_jsonlines(predictions), media_type="application/jsonlines")
            if accept == "application/x-npy":
                import numpy as np

                buf = io.BytesIO()
                np.save(buf, np.asarray(predictions), allow_pickle=False)
                return Response(buf.getvalue(), media_type="application/x-npy")
            # the inference toolkit's JSON encoder: the predictions themselves
            return json_response(predictions)

        return [
            Route("/ping", ep("ping")(ping)),
            Route("/execution-parameters", ep("execution_parameters")(execution_parameters)),
            Route("/invocations", ep("invocations")(invocations), methods=["POST"]),
        ]

    def grpc_servicers(self) -> list[Any]:
        return []
