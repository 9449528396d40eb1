"""A bounded gRPC load generator for inference.GRPCInferenceService/ModelInfer: the same
client for every server. Prints JSON: requests per second and latency percentiles."""

import asyncio
import json
import sys
import time

import grpc

sys.path.insert(0, sys.argv[5])
from omibuild.runtime.protos import INFERENCE


async def main(target: str, model: str, total: int, concurrency: int) -> None:
    request = INFERENCE["ModelInferRequest"](model_name=model)
    tensor = request.inputs.add(name="input-0", datatype="FP64", shape=[1, 4])
    tensor.contents.fp64_contents.extend([5.1, 3.5, 1.4, 0.2])
    payload = request.SerializeToString()
    latencies: list[float] = []
    async with grpc.aio.insecure_channel(target) as channel:
        call = channel.unary_unary(
            "/inference.GRPCInferenceService/ModelInfer",
            request_serializer=lambda b: b,
            response_deserializer=lambda b: b,
        )
        for _ in range(20):  # warm up
            await call(payload)
        remaining = total

        async def worker() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                start = time.perf_counter()
                await call(payload)
                latencies.append(time.perf_counter() - start)

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    latencies.sort()
    pick = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000  # noqa: E731
    print(
        json.dumps(
            {
                "rps": len(latencies) / elapsed,
                "p50_ms": pick(0.5),
                "p99_ms": pick(0.99),
                "requests": len(latencies),
            }
        )
    )


asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])))
