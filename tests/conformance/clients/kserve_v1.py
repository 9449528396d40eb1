"""The kserve SDK against a KServe V1 endpoint. Prints one JSON line of what it saw."""

import asyncio
import json
import sys

from kserve import InferenceRESTClient, RESTConfig


async def main(url: str, model: str) -> None:
    client = InferenceRESTClient(RESTConfig(protocol="v1", retries=0, timeout=30))
    ready = await client.is_model_ready(url, model)
    response = await client.infer(
        url, {"instances": [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]}, model_name=model
    )
    print(json.dumps({"ready": ready, "response": response}))


asyncio.run(main(sys.argv[1], sys.argv[2]))
