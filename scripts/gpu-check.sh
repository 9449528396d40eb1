#!/usr/bin/env bash
# The GPU path, on a machine with an NVIDIA GPU, in one call (`device` runs it when a machine
# is lent): the driver, then bench/gpu_check.py (a tiny transformers model served by omibuild's
# runtime on the GPU and on the CPU, device and latency side by side). Needs python3 with torch
# (a CUDA build), transformers, starlette, uvicorn and numpy; nothing from the network. Writes
# gpu-check-<date>.json to $OUT (else bench/results/). Exit 3: a prerequisite is missing.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-bench/results}
mkdir -p "$out"
file=$out/gpu-check-$(date -u +%Y-%m-%d).json
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader ||
  { echo "gpu-check: no nvidia-smi: not a GPU machine" >&2; exit 3; }
python3 - <<'PY' || exit 3
import importlib.util, sys
missing = [m for m in ("torch", "transformers", "starlette", "uvicorn", "numpy")
           if importlib.util.find_spec(m) is None]
if missing:
    sys.exit(f"gpu-check: python3 lacks {', '.join(missing)}")
import torch
if not torch.cuda.is_available():
    sys.exit(f"gpu-check: torch {torch.__version__} sees no GPU (CUDA build: {torch.version.cuda})")
PY
PYTHONPATH=$PWD timeout "${GPU_CHECK_TIMEOUT:-420}" python3 bench/gpu_check.py "${GPU_CHECK_REQUESTS:-50}" | tee "$file"
status=${PIPESTATUS[0]}
echo "gpu-check: exit $status, written to $file" >&2
exit "$status"
