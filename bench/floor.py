"""The serving floor: the least a Python server can do per request with the same model. REST is a
bare Starlette/uvicorn endpoint (httptools + uvloop) that parses a v2 JSON request, calls predict
on the event loop and answers; gRPC is a bare grpcio server calling predict in its handler. Same
interpreter, same libraries, same model, no validation, metrics or error mapping."""

import json
import sys
from concurrent import futures

import grpc
import joblib
import numpy as np
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from omibuild.runtime.protos import INFERENCE

model = joblib.load(sys.argv[1])


async def infer(request: Request) -> Response:
    body = json.loads(await request.body())
    tensor = body["inputs"][0]
    x = np.asarray(tensor["data"], dtype="float64").reshape(tensor["shape"])
    y = model.predict(x)
    out = {
        "model_name": "iris",
        "outputs": [
            {"name": "output-0", "shape": list(y.shape), "datatype": "INT64", "data": y.tolist()}
        ],
    }
    return Response(json.dumps(out), media_type="application/json")


async def ready(request: Request) -> Response:
    return Response("{}", media_type="application/json")


def grpc_infer(request, context):  # type: ignore[no-untyped-def]
    tensor = request.inputs[0]
    x = np.asarray(tensor.contents.fp64_contents, dtype="float64").reshape(list(tensor.shape))
    y = model.predict(x)
    response = INFERENCE["ModelInferResponse"](model_name=request.model_name)
    response.outputs.add(name="output-0", datatype="INT64", shape=list(y.shape))
    response.raw_output_contents.append(y.astype("<i8").tobytes())
    return response


handler = grpc.unary_unary_rpc_method_handler(
    grpc_infer,
    request_deserializer=INFERENCE["ModelInferRequest"].FromString,
    response_serializer=INFERENCE["ModelInferResponse"].SerializeToString,
)
server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
server.add_generic_rpc_handlers(
    (
        grpc.method_handlers_generic_handler(
            "inference.GRPCInferenceService", {"ModelInfer": handler}
        ),
    )
)
server.add_insecure_port("[::]:8081")
server.start()

app = Starlette(
    routes=[
        Route("/v2/models/{name}/infer", infer, methods=["POST"]),
        Route("/v2/models/{name}/ready", ready),
        Route("/v2/health/ready", ready),
    ]
)
uvicorn.run(app, host="0.0.0.0", port=8080, log_level="warning", access_log=False)
