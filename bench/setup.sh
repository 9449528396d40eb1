#!/usr/bin/env bash
# What the benchmarks need beyond `make setup`: ab (apache2-utils) as the HTTP load generator.
set -euo pipefail
if ! command -v ab >/dev/null; then
  echo "[bench] installing apache2-utils (ab)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends apache2-utils >/dev/null 2>&1 ||
    { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends apache2-utils >/dev/null; }
fi
