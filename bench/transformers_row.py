"""The transformers row of `make bench` (group `transformers`): a tiny BERT text classifier,
made here as the tests make theirs, served by omibuild's image and by MLServer's Hugging Face
runtime (bench/mlserver-hf) on the same base, CPU only, side by side: V2 REST requests of one
text at 1 and 8 clients, servers interleaved; and cold start to ready. Both use the same
transformers version (the model is saved by MLServer's); torch differs: omibuild's image has
the 2.13 CPU build, MLServer's 2.8 (optimum 1.27, which its runtime imports, fails on 2.13)."""

from __future__ import annotations

import json
import shutil
import statistics
import time
from pathlib import Path

from builds import docker_build
from common import PY, ROOT, log, record, run
from formats import cpu_index
from serving import _start, ab, wait_http

TORCH_WHEEL = next(Path("/opt/wheels").glob("torch-2.13.0+cpu-*.whl"), None)
MLSERVER_HF = "omibuild-bench/mlserver-hf:latest"
TINY = """\
import pathlib, torch
from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast
torch.manual_seed(0)
words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "good", "bad", "build", "failed", "serves"]
out = pathlib.Path("/out/sentiment")
out.mkdir(parents=True, exist_ok=True)
(out.parent / "vocab.txt").write_text("\\n".join(words) + "\\n")
BertTokenizerFast(vocab_file=str(out.parent / "vocab.txt")).save_pretrained(out)
config = BertConfig(vocab_size=len(words), hidden_size=64, num_hidden_layers=2,
                    num_attention_heads=2, intermediate_size=128,
                    id2label={0: "NEGATIVE", 1: "POSITIVE"},
                    label2id={"NEGATIVE": 0, "POSITIVE": 1})
BertForSequenceClassification(config).save_pretrained(out)
for p in [out, *out.rglob("*")]:  # MLServer runs as 10001 and reads it through a mount
    p.chmod(0o755 if p.is_dir() else 0o644)
import transformers; print(transformers.__version__)
"""


def build_theirs(work: Path) -> tuple[Path, str]:
    """MLServer's image, and the tiny model saved by its transformers: (model dir, version)."""
    assert TORCH_WHEEL is not None
    ctx = work / "mlserver-hf"
    shutil.copytree(ROOT / "bench/mlserver-hf", ctx)
    log("transformers: building MLServer's Hugging Face image (torch 2.8, tensorflow, optimum)")
    docker_build(ctx, MLSERVER_HF)
    shutil.rmtree(ctx)
    models = work / "hf-model"
    models.mkdir()
    out = run(
        ["docker", "run", "--rm", "--user", "0", "-v", f"{models}:/out", "--entrypoint",
         "/opt/mlserver/bin/python", MLSERVER_HF, "-c", TINY],
        timeout=600,
    ).stdout  # fmt: skip
    return models / "sentiment", out.strip().splitlines()[-1]


def build_ours(work: Path, model: Path, version: str, index: str) -> str:
    repo = work / "hf-repo"
    repo.mkdir()
    shutil.copytree(model, repo / "sentiment")
    (repo / "omi.yaml").write_text(
        f"""apiVersion: omibuild/v1
name: sentiment
version: 1.0.0
model:
  source: {{local: {{path: sentiment}}}}
  flavor: transformers
  task: text-classification
runtimes:
  interfaces: {{kfserving: {{protocols: [v2]}}}}
image:
  repository: omibuild-bench/sentiment
  requirements: [transformers=={version}, torch==2.13.0]
  extra_index_urls: [{index}]
origin: {{tag: none, tags: [latest]}}
"""
    )
    run(["git", "init", "-q", str(repo)])
    log(f"transformers: building omibuild's image (transformers {version})")
    omibuild = str(Path(PY).with_name("omibuild"))
    run([omibuild, "apply", "--progress", "quiet"], cwd=repo, timeout=1800)
    return "omibuild-bench/sentiment:latest"


def bench_transformers(work: Path, reps: int, requests: int) -> None:
    if TORCH_WHEEL is None:
        raise RuntimeError("no torch CPU wheel in /opt/wheels (setup puts it there)")
    model, version = build_theirs(work)
    with cpu_index() as index:
        ours = build_ours(work, model, version, index)
    body = work / "hf-v2.json"
    tensor = {"name": "args", "shape": [1], "datatype": "BYTES", "data": ["good build"]}
    body.write_text(json.dumps({"inputs": [tensor]}))
    servers = {
        "omibuild": (ours, (), "sentiment"),
        "mlserver": (MLSERVER_HF, ("-v", f"{model}:/models/sentiment/model:ro"), "sentiment"),
    }
    seen: dict[str, dict[int, list[dict[str, float]]]] = {k: {} for k in servers}
    ready: dict[str, list[float]] = {k: [] for k in servers}
    for rep in range(reps):
        for name in servers if rep % 2 == 0 else list(servers)[::-1]:
            image, extra, model_name = servers[name]
            started = time.perf_counter()
            with _start(image, {}, extra) as addr:
                base = f"http://{addr[8080]}/v2/models/{model_name}"
                wait_http(f"{base}/ready", timeout=300)
                ready[name].append(time.perf_counter() - started)
                ab(f"{base}/infer", body, 50, 2)  # warm up
                for c in (1, 8):
                    seen[name].setdefault(c, []).append(ab(f"{base}/infer", body, requests, c))
    group = "transformers (tiny BERT, CPU)"
    theirs = "MLServer's Hugging Face runtime, same model"
    for c in (1, 8):
        for what, key, unit in (("requests/s", "rps", "req/s"), ("p50 latency", "p50_ms", "ms")):
            record(
                group,
                f"V2 {what}, one text, c={c}",
                [r[key] for r in seen["omibuild"][c]],
                unit,
                baseline=[r[key] for r in seen["mlserver"][c]],
                baseline_name=theirs,
            )
    record(
        group,
        "start to ready (docker run to /ready 200)",
        ready["omibuild"],
        "s",
        baseline=ready["mlserver"],
        baseline_name=theirs,
    )
    log(f"transformers: done; ours {statistics.median(ready['omibuild']):.1f} s to ready")
