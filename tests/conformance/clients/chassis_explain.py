"""chassisml's OMIClient asking a Modzy v2 gRPC endpoint for explanations and drift: prints
the model's declared formats, its adversarial_defense flag and every output file of one Run,
as JSON."""

import asyncio
import json
import sys

from chassis.client import OMIClient


async def main(host: str, port: int, rows: str) -> None:
    async with OMIClient(host, port, timeout=120) as client:
        status = await client.status()
        payload = json.dumps({"instances": json.loads(rows)}).encode()
        run = await client.run([{"input": payload}], detect_drift=True, explain=True)
        features = status.features
        print(
            json.dumps(
                {
                    "explanation_format": features.explanation_format,
                    "drift_format": features.drift_format,
                    "adversarial_defense": features.adversarial_defense,
                    "run_status": run.status_code,
                    "outputs": [
                        {
                            "success": o.success,
                            "files": {k: json.loads(v) for k, v in o.output.items()},
                        }
                        for o in run.outputs
                    ],
                }
            )
        )


asyncio.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3]))
