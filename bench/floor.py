"""The serving floor: a bare Starlette/uvicorn endpoint that parses a v2 JSON request, calls
predict and answers. Same interpreter, same uvicorn (httptools + uvloop), same model."""

import json
import sys

import joblib
import numpy as np
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

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


app = Starlette(
    routes=[
        Route("/v2/models/{name}/infer", infer, methods=["POST"]),
        Route("/v2/health/ready", ready),
    ]
)
uvicorn.run(app, host="0.0.0.0", port=8080, log_level="warning", access_log=False)
