#!/usr/bin/env bash
# `make lint`: every module of omibuild/ and bench/ stays under 500 lines (tests and the
# generated protobuf modules aside). A longer one is split by what its parts do.
set -euo pipefail
cd "$(dirname "$0")/.."
limit=500
long=$(find omibuild bench -name '*.py' ! -name '*_pb2*.py' -print0 | xargs -0 wc -l |
  awk -v max="$limit" '$2 != "total" && $1 > max { printf "  %s: %d lines\n", $2, $1 }')
if [ -n "$long" ]; then
  printf 'modules over %d lines (split them by what their parts do):\n%s\n' "$limit" "$long" >&2
  exit 1
fi
