#!/usr/bin/env bash
# System packages: a Docker engine >= 24 with buildx (the one already here, else Docker 26 from
# Debian trixie, with OMI_SETUP_TRIXIE=yes), plus the registry, debootstrap, skopeo and QEMU's
# user emulators (a build for another architecture runs its steps under them).
. "$(dirname "$0")/lib.sh"
step=install-packages
log=$OMI_DEV_LOG_DIR/$step.log

# The engine: any Docker >= 24 with buildx already here (Docker's packages or Debian's) is used
# as it is. Only without one does setup install Docker 26 from Debian trixie.
dockerd_bin=${OMI_DOCKERD:-dockerd}   # tests point this elsewhere to play a machine without one
engine_ok() {
  command -v "$dockerd_bin" >/dev/null &&
    "$dockerd_bin" --version | grep -qE 'version (2[4-9]|[3-9][0-9])\.' &&
    { docker buildx version >/dev/null 2>&1 || [ -x /usr/libexec/docker/cli-plugins/docker-buildx ]; }
}
tools_ok() {
  command -v docker-registry >/dev/null && command -v debootstrap >/dev/null &&
    command -v skopeo >/dev/null && command -v update-binfmts >/dev/null &&
    [ -x /usr/bin/qemu-aarch64-static ]
}

if engine_ok && tools_ok; then
  say "$step: already installed (uses the Docker engine already here: $("$dockerd_bin" --version))"
  exit 0
fi
need_root "$step"
export DEBIAN_FRONTEND=noninteractive
if ! tools_ok; then  # bookworm's own packages: nothing else on the machine moves
  say "$step: installing docker-registry, debootstrap, skopeo, qemu-user-static (log: $log)"
  { apt-get update -q && apt-get install -y -q --no-install-recommends docker-registry debootstrap \
      skopeo qemu-user-static binfmt-support; } \
    >"$log" 2>&1 || fail "$step" "apt-get failed (is the Debian mirror reachable?)" "$log"
  # Debian's registry unit would start an authenticated registry on :5000; we run our own.
  systemctl disable --now docker-registry >/dev/null 2>&1 || true
fi
if engine_ok; then say "$step: done (uses the Docker engine already here)"; exit 0; fi

# Bookworm's docker.io (20.10) cannot export build caches and has no buildx; there is no
# docker.io in bookworm-backports. Trixie's installs, but moves core packages with it
# (measured on Debian 12.11): the machine then reports Debian 13. Only with an explicit yes.
if [ "${OMI_SETUP_TRIXIE:-}" != yes ]; then
  cat >&2 <<'MSG'
[setup] FAILED step "install-packages": no Docker >= 24 with buildx on this machine.
[setup] Installing Docker 26 from Debian trixie would also move these core packages from
[setup] bookworm to trixie: libc6 and libc-bin (2.36 -> 2.41), dpkg (1.21 -> 1.22),
[setup] libgcc-s1 and libstdc++6 (12 -> 14), libzstd1 and zstd (1.5.4 -> 1.5.7), and
[setup] base-files (12 -> 13: the machine then reports Debian 13).
[setup] Either install Docker >= 24 with buildx yourself (Docker's own packages) and run
[setup] `make setup` again, or accept the above: make setup OMI_SETUP_TRIXIE=yes
MSG
  exit 1
fi
say "$step: installing docker.io + docker-buildx from trixie (OMI_SETUP_TRIXIE=yes; log: $log)"
add_trixie_source
{
  apt-get update -q && apt-get install -y -q --no-install-recommends -t trixie docker.io docker-buildx
} >>"$log" 2>&1 || fail "$step" "apt-get failed (is the Debian mirror reachable?)" "$log"
engine_ok || fail "$step" "packages installed but dockerd>=24 with buildx not found" "$log"
say "$step: done ($("$dockerd_bin" --version))"
