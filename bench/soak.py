"""The soak: c=32 clients for a while against one image, mixed valid and invalid requests.
Reports the requests whose status was not the one due (200 for valid, 400 for invalid), the
p99 latency of the last minute against the first, and the container's memory at the end
against the memory after the first minute."""

from __future__ import annotations

import http.client
import json
import random
import subprocess
import threading
import time
from dataclasses import dataclass, field

VALID = json.dumps(
    {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP64", "data": [5.1, 3.5, 1.4, 0.2]}]}
).encode()
INVALID = [
    b"{not json",
    b"[" * 5000 + b"]" * 5000,
    json.dumps(
        {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP64", "data": [1, 2, 3]}]}
    ).encode(),
    json.dumps(
        {"inputs": [{"name": "x", "shape": [2**40, 2**40], "datatype": "INT8", "data": [1]}]}
    ).encode(),
    json.dumps(
        {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "INT8", "data": [300, 1, 2, 3]}]}
    ).encode(),
]


@dataclass
class Window:
    latencies: list[float] = field(default_factory=list)
    wrong: int = 0
    total: int = 0


def memory_mb(cid: str) -> float:
    for path in ("/sys/fs/cgroup/memory.current", "/sys/fs/cgroup/memory/memory.usage_in_bytes"):
        out = subprocess.run(
            ["docker", "exec", cid, "cat", path], capture_output=True, text=True
        ).stdout.strip()
        if out.isdigit():
            return int(out) / (1 << 20)
    raise RuntimeError("no cgroup memory counter in the container")


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] if ordered else 0.0


def soak(
    address: str, cid: str, path: str, seconds: float, clients: int = 32, invalid_share: float = 0.1
) -> dict[str, float]:
    host, port = address.rsplit(":", 1)
    start = time.monotonic()
    windows: dict[int, Window] = {}
    lock = threading.Lock()
    first_memory: list[float] = []

    def client(seed: int) -> None:
        rng = random.Random(seed)
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        while (now := time.monotonic()) - start < seconds:
            bad = rng.random() < invalid_share
            body = rng.choice(INVALID) if bad else VALID
            t = time.perf_counter()
            try:
                conn.request("POST", path, body, {"Content-Type": "application/json"})
                resp = conn.getresponse()
                resp.read()
                status = resp.status
            except OSError:
                status = 0
                conn.close()
                conn = http.client.HTTPConnection(host, int(port), timeout=30)
            elapsed = time.perf_counter() - t
            minute = int((now - start) // 60)
            with lock:
                w = windows.setdefault(minute, Window())
                w.total += 1
                w.wrong += status != (400 if bad else 200)
                if not bad:
                    w.latencies.append(elapsed)
        conn.close()

    def sample_memory() -> None:  # after the first minute: the heap has warmed up
        time.sleep(min(60.0, seconds / 4))
        first_memory.append(memory_mb(cid))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    sampler = threading.Thread(target=sample_memory)
    for t in [*threads, sampler]:
        t.start()
    for t in [*threads, sampler]:
        t.join()
    end_memory = memory_mb(cid)
    minutes = sorted(windows)
    first, last = windows[minutes[0]], windows[minutes[-1]]
    total = sum(w.total for w in windows.values())
    return {
        "requests": total,
        "wrong": sum(w.wrong for w in windows.values()),
        "p99_first_ms": p99(first.latencies) * 1000,
        "p99_last_ms": p99(last.latencies) * 1000,
        "memory_first_mb": first_memory[0],
        "memory_last_mb": end_memory,
        "seconds": time.monotonic() - start,
    }
