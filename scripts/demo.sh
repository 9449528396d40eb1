#!/usr/bin/env bash
# The main job on an example: build the sklearn example image with omibuild, start it,
# send the example input and print the prediction.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
python examples/generate.py
manifest=examples/manifests/sklearn-iris/omi.yaml
omibuild validate "$manifest"
omibuild apply "$manifest"
omibuild run "$manifest" --predict examples/manifests/sklearn-iris/example.json
