"""chassisml's OMIClient (grpclib) against a Modzy v2 gRPC endpoint."""

import asyncio
import json
import sys

from chassis.client import OMIClient


async def main(host: str, port: int, shutdown: bool) -> None:
    async with OMIClient(host, port, timeout=30) as client:
        status = await client.status()
        payload = json.dumps({"instances": [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]}).encode()
        run = await client.run([{"input": payload}, {"input": b"not json {"}])
        outputs = [
            {"success": o.success, "results": o.output["results.json"].decode()}
            for o in run.outputs
        ]
        result = {
            "status_code": status.status_code,
            "model_name": status.model_info.model_name,
            "inputs": [i.filename for i in status.inputs],
            "run_status": run.status_code,
            "outputs": outputs,
        }
        if shutdown:
            result["shutdown"] = (await client.shutdown()).status_code
    print(json.dumps(result))


asyncio.run(main(sys.argv[1], int(sys.argv[2]), len(sys.argv) > 3))
