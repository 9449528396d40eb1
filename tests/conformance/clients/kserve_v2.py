"""The kserve SDK against an Open Inference Protocol (v2) endpoint."""

import asyncio
import json
import sys

import numpy as np
from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig


async def main(url: str, model: str) -> None:
    client = InferenceRESTClient(RESTConfig(protocol="v2", retries=0, timeout=30))
    live = await client.is_server_live(url)
    ready = await client.is_server_ready(url)
    model_ready = await client.is_model_ready(url, model)
    data = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]], dtype=np.float64)
    tensor = InferInput("input-0", list(data.shape), "FP64")
    tensor.set_data_from_numpy(data, binary_data=False)
    response = await client.infer(
        url, InferRequest(model_name=model, infer_inputs=[tensor]), model_name=model
    )
    outputs = {o.name: o.as_numpy().tolist() for o in response.outputs}
    print(
        json.dumps(
            {
                "live": live,
                "ready": ready,
                "model_ready": model_ready,
                "outputs": outputs,
                "model_name": response.model_name,
            }
        )
    )


asyncio.run(main(sys.argv[1], sys.argv[2]))
