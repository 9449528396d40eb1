# Shared helpers for the dev-environment scripts. Sourced, not run.
# Every step logs to $OMI_DEV_LOG_DIR/<step>.log; a failure names the step, the reason and the log.
set -euo pipefail

OMI_DEV_STATE=${OMI_DEV_STATE:-/var/lib/omibuild-dev}
OMI_DEV_LOG_DIR=${OMI_DEV_LOG_DIR:-/var/log/omibuild-dev}
OMI_REGISTRY_ADDR=${OMI_REGISTRY_ADDR:-127.0.0.1:5000}
OMI_BASE_IMAGE=${OMI_BASE_IMAGE:-omibuild.local/python:3.11-slim}
mkdir -p "$OMI_DEV_STATE" "$OMI_DEV_LOG_DIR"

say() { printf '[setup] %s\n' "$*"; }

# fail STEP REASON LOG
fail() {
  printf '[setup] FAILED step "%s": %s\n' "$1" "$2" >&2
  [ -n "${3:-}" ] && printf '[setup] log: %s\n' "$3" >&2 && tail -n 15 "$3" >&2 || true
  exit 1
}

need_root() {
  [ "$(id -u)" = 0 ] || fail "$1" "must run as root (it installs system packages and starts daemons)" ""
}

# wait_until SECONDS CMD... : poll CMD every 0.2 s until it succeeds
wait_until() {
  local deadline=$(( $(date +%s) + $1 )); shift
  until "$@" >/dev/null 2>&1; do
    [ "$(date +%s)" -lt "$deadline" ] || return 1
    sleep 0.2
  done
}
