#!/usr/bin/env bash
# Register QEMU's user emulators with the kernel so the engine runs other architectures'
# binaries (a build for linux/arm64 on an amd64 machine, and the arm64 image it makes).
# Debian's entries carry the F flag: the kernel opens the emulator once, so containers need no
# copy of it and dockerd needs no restart. Nothing re-mounts binfmt_misc at boot here.
. "$(dirname "$0")/lib.sh"
step=setup-emulation
log=$OMI_DEV_LOG_DIR/$step.log

foreign=()
for arch in $OMI_BASE_ARCHES; do [ "$arch" = "$(host_arch)" ] || foreign+=("$arch"); done
if [ ${#foreign[@]} = 0 ]; then say "$step: no foreign architecture asked (OMI_BASE_ARCHES)"; exit 0; fi

binfmt=/proc/sys/fs/binfmt_misc
registered() { [ -f "$binfmt/qemu-$1" ] && head -n 1 "$binfmt/qemu-$1" | grep -qx enabled; }
missing=()
for arch in "${foreign[@]}"; do registered "$(qemu_arch "$arch")" || missing+=("$arch"); done
if [ ${#missing[@]} = 0 ]; then say "$step: emulators for ${foreign[*]} already registered"; exit 0; fi
need_root "$step"
mountpoint -q "$binfmt" || mount -t binfmt_misc binfmt_misc "$binfmt" >"$log" 2>&1 ||
  fail "$step" "cannot mount $binfmt (a container without privileges cannot register emulators)" "$log"
for arch in "${missing[@]}"; do
  update-binfmts --enable "qemu-$(qemu_arch "$arch")" >>"$log" 2>&1 ||
    fail "$step" "update-binfmts could not enable qemu-$(qemu_arch "$arch") (is qemu-user-static installed?)" "$log"
  registered "$(qemu_arch "$arch")" || fail "$step" "qemu-$(qemu_arch "$arch") is not enabled after update-binfmts" "$log"
done
say "$step: emulators for ${missing[*]} registered"
