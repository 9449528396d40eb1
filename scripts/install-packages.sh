#!/usr/bin/env bash
# System packages: Docker 26 + buildx from Debian trixie (bookworm's docker.io is too old for
# cache export), plus the registry, debootstrap and skopeo from bookworm.
. "$(dirname "$0")/lib.sh"
step=install-packages
log=$OMI_DEV_LOG_DIR/$step.log

have_all() {
  command -v dockerd >/dev/null && dockerd --version | grep -qE 'version (2[6-9]|[3-9][0-9])\.' &&
    [ -x /usr/libexec/docker/cli-plugins/docker-buildx ] &&
    command -v docker-registry >/dev/null && command -v debootstrap >/dev/null &&
    command -v skopeo >/dev/null && command -v containerd >/dev/null
}

if have_all; then say "$step: already installed ($(dockerd --version))"; exit 0; fi
need_root "$step"
say "$step: installing docker.io + docker-buildx (trixie), docker-registry, debootstrap, skopeo (log: $log)"
cat > /etc/apt/sources.list.d/trixie.sources <<'SRC'
Types: deb
URIs: http://deb.debian.org/debian
Suites: trixie
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
cat > /etc/apt/preferences.d/trixie <<'PIN'
Package: *
Pin: release n=trixie
Pin-Priority: 100
PIN
export DEBIAN_FRONTEND=noninteractive
{
  apt-get update -q &&
    apt-get install -y -q --no-install-recommends docker-registry debootstrap skopeo &&
    apt-get install -y -q --no-install-recommends -t trixie docker.io docker-buildx
} >"$log" 2>&1 || fail "$step" "apt-get failed (is the Debian mirror reachable?)" "$log"
# Debian's registry unit would start an authenticated registry on :5000; we run our own.
systemctl disable --now docker-registry >/dev/null 2>&1 || true
have_all || fail "$step" "packages installed but dockerd>=26/buildx/registry not found" "$log"
say "$step: done ($(dockerd --version))"
