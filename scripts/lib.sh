# Shared helpers for the dev-environment scripts. Sourced, not run.
# Every step logs to $OMI_DEV_LOG_DIR/<step>.log; a failure names the step, the reason and the log.
set -euo pipefail

OMI_DEV_STATE=${OMI_DEV_STATE:-/var/lib/omibuild-dev}
OMI_DEV_LOG_DIR=${OMI_DEV_LOG_DIR:-/var/log/omibuild-dev}
OMI_REGISTRY_ADDR=${OMI_REGISTRY_ADDR:-127.0.0.1:5000}
OMI_BASE_IMAGE=${OMI_BASE_IMAGE:-omibuild.local/python:3.11-slim}
# The architectures the offline base image is built for (Debian's names); the host's first.
OMI_BASE_ARCHES=${OMI_BASE_ARCHES:-amd64 arm64}
mkdir -p "$OMI_DEV_STATE" "$OMI_DEV_LOG_DIR"

# host_arch: this machine's architecture as Debian and OCI name it
host_arch() { case "$(uname -m)" in x86_64) echo amd64 ;; aarch64) echo arm64 ;; *) uname -m ;; esac; }
# qemu_arch ARCH: QEMU's name for a Debian architecture
qemu_arch() { case "$1" in amd64) echo x86_64 ;; arm64) echo aarch64 ;; *) echo "$1" ;; esac; }

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

# add_trixie_source: Debian trixie among apt's sources, pinned below bookworm (priority 100:
# only what is asked for with -t trixie comes from it)
add_trixie_source() {
  cat > /etc/apt/sources.list.d/trixie.sources <<'SRC'
Types: deb
URIs: http://deb.debian.org/debian
Suites: trixie
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
  printf 'Package: *\nPin: release n=trixie\nPin-Priority: 100\n' > /etc/apt/preferences.d/trixie
}
