#!/usr/bin/env bash
# cosign, which `apply --sign` and `check --verify` run (and the signing tests need). Debian
# 12 has none; trixie's package is one static binary. Installed from trixie where setup may use
# it (OMI_SETUP_TRIXIE=yes, or trixie already among apt's sources); elsewhere setup says how.
. "$(dirname "$0")/lib.sh"
step=install-cosign
log=$OMI_DEV_LOG_DIR/$step.log
if command -v cosign >/dev/null; then
  say "$step: already installed ($(cosign version 2>/dev/null | grep -m1 GitVersion | tr -s ' ' || echo cosign))"
  exit 0
fi
if [ "${OMI_SETUP_TRIXIE:-}" != yes ] && ! grep -rqs "trixie" /etc/apt/sources.list /etc/apt/sources.list.d/; then
  say "$step: skipped: cosign is not in Debian 12 (signing needs it: apt install cosign from trixie, or its release binary; or run setup with OMI_SETUP_TRIXIE=yes)"
  exit 0
fi
need_root "$step"
if [ ! -f /etc/apt/sources.list.d/trixie.sources ] && ! grep -rqs "trixie" /etc/apt/sources.list /etc/apt/sources.list.d/; then
  add_trixie_source
fi
say "$step: installing cosign from trixie (log: $log)"
{ apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends -t trixie cosign; } \
  >"$log" 2>&1 || fail "$step" "apt-get failed (is the Debian mirror reachable?)" "$log"
say "$step: done"
