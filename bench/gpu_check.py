"""The GPU path on a machine with an NVIDIA GPU (scripts/gpu-check.sh runs this): a tiny
transformers model served by omibuild's own runtime, once as a CUDA image starts it
(OMI_ACCELERATOR=cuda, the GPU visible) and once as a CPU image does, each answering the same
requests. It reports the device each says it runs on (V2 metadata), that both answer alike,
and the median latency of each, side by side. Runs with the repository on PYTHONPATH and the
runtime's libraries installed (torch with CUDA, transformers, starlette, uvicorn, numpy);
nothing from the network. Prints one JSON document."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from omibuild.runtime.document import File, Interface, OmiDocument, Origin

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "good", "bad", "build", "failed", "serves"]
TEXTS = ["good build", "bad build failed", "serves good", "failed"]


def tiny_model(where: Path) -> None:
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    torch.manual_seed(0)
    (where / "vocab.txt").write_text("\n".join(WORDS) + "\n")
    BertTokenizerFast(vocab_file=str(where / "vocab.txt")).save_pretrained(where / "model")
    config = BertConfig(
        vocab_size=len(WORDS),
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        id2label={0: "NEGATIVE", 1: "POSITIVE"},
        label2id={"NEGATIVE": 0, "POSITIVE": 1},
    )
    BertForSequenceClassification(config).save_pretrained(where / "model")


def document(model: Path) -> str:
    files = tuple(
        File(
            str(p.relative_to(model)), p.stat().st_size, hashlib.sha256(p.read_bytes()).hexdigest()
        )
        for p in sorted(model.rglob("*"))
        if p.is_file()
    )
    return OmiDocument(
        name="gpu-check",
        version="1",
        flavor="transformers",
        interfaces={"kfserving": Interface(("v2",), 8080)},
        default_interface="kfserving",
        origin=Origin("local", "file:model", "sha256:" + "0" * 64),
        model_digest="sha256:" + "0" * 64,
        files=files,
        task="text-classification",
    ).to_json()


def serve(where: Path, accelerator: str, requests: int) -> dict[str, Any]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {
        **os.environ,
        "OMI_CONFIG": str(where / "omi.json"),
        "OMI_MODEL_DIR": str(where / "model"),
        "INTERFACE": "kfserving",
        "PROTOCOL": "v2",
        "HTTP_PORT": str(port),
        "MODEL_NAME": "gpu-check",
        "OMI_ACCELERATOR": accelerator,
        "OMI_VERIFY_MODEL": "0",
    }
    if accelerator == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""  # as a CPU image sees the machine
    proc = subprocess.Popen(
        [sys.executable, "-m", "omibuild.runtime", "serve"],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}/v2/models/gpu-check"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"{base}/ready", timeout=5) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the {accelerator} runtime never became ready")
            time.sleep(0.5)
        with urllib.request.urlopen(base, timeout=5) as resp:
            metadata = json.load(resp)
        body = json.dumps(
            {
                "inputs": [
                    {"name": "text", "shape": [len(TEXTS)], "datatype": "BYTES", "data": TEXTS}
                ]
            }
        ).encode()
        seconds, answer = [], None
        for _ in range(requests):
            request = urllib.request.Request(
                f"{base}/infer", body, {"Content-Type": "application/json"}
            )
            started = time.perf_counter()
            with urllib.request.urlopen(request, timeout=60) as resp:
                answer = json.load(resp)["outputs"]
            seconds.append(time.perf_counter() - started)
    finally:
        proc.terminate()
        _, log = proc.communicate(timeout=60)
    said = [json.loads(ln) for ln in log.splitlines() if ln.startswith("{")]
    return {
        "device": metadata.get("parameters", {}).get("device"),
        "median_ms": round(statistics.median(seconds[1:]) * 1000, 2),
        "answer": answer,
        "log": [
            r for r in said if r.get("msg") in ("model ready", "built for CUDA, serving on the CPU")
        ],
    }


def main() -> int:
    requests = int(sys.argv[1]) if len(sys.argv) > 1 else 50
    with tempfile.TemporaryDirectory(prefix="omibuild-gpu-") as tmp:
        where = Path(tmp)
        tiny_model(where)
        (where / "omi.json").write_text(document(where / "model"))
        cuda, cpu = serve(where, "cuda", requests), serve(where, "cpu", requests)
    report = {
        "cuda": cuda,
        "cpu": cpu,
        "same_labels": _labels(cuda) == _labels(cpu),
        "cuda_over_cpu_latency": round(cuda["median_ms"] / cpu["median_ms"], 3),
    }
    print(json.dumps(report, indent=2))
    return (
        0 if cuda["device"] == "cuda:0" and cpu["device"] == "cpu" and report["same_labels"] else 1
    )


def _labels(result: dict[str, Any]) -> list[str]:
    """The labels the model gave, in order (each answer a JSON text with ``label``)."""
    return [json.loads(x)["label"] for o in result["answer"] or [] for x in o.get("data", [])]


if __name__ == "__main__":
    raise SystemExit(main())
