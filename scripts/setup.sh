#!/usr/bin/env bash
# Prepare this machine for building and testing omibuild. Idempotent: on a prepared machine
# every step sees its work already done and says so. Each step is its own script.
set -euo pipefail
here=$(dirname "$0")
start=$(date +%s)
bash "$here/install-packages.sh"
bash "$here/install-cosign.sh"
bash "$here/start-engine.sh"
bash "$here/setup-emulation.sh"
bash "$here/start-registry.sh"
bash "$here/build-base-image.sh"
bash "$here/setup-venv.sh"
bash "$here/setup-clients.sh"
printf '[setup] ready in %ss\n' "$(( $(date +%s) - start ))"
