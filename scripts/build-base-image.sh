#!/usr/bin/env bash
# No base image can be pulled here: build Debian bookworm + python3 + venv offline with
# debootstrap and import it. The rootfs tarball is kept so a lost image re-imports in seconds.
. "$(dirname "$0")/lib.sh"
step=build-base-image
log=$OMI_DEV_LOG_DIR/$step.log
tarball=$OMI_DEV_STATE/base-bookworm-python3${OMI_DEBIAN_MIRROR:+-custom}.tar

# omibuild's machine-wide config makes this offline image the default base of every manifest
# that names none (users elsewhere get the official python image).
write_config() {
  local want="base_image = \"$OMI_BASE_IMAGE\""
  if [ "$(grep -s '^base_image' /etc/omibuild/config.toml)" != "$want" ]; then
    mkdir -p /etc/omibuild
    printf '# Written by omibuild'"'"'s make setup: no base image can be pulled on this machine.\n%s\n' \
      "$want" > /etc/omibuild/config.toml
    say "$step: /etc/omibuild/config.toml names $OMI_BASE_IMAGE as the default base image"
  fi
}

if docker image inspect "$OMI_BASE_IMAGE" >/dev/null 2>&1; then
  write_config
  say "$step: $OMI_BASE_IMAGE already present"; exit 0
fi
need_root "$step"
if [ ! -s "$tarball" ]; then
  rootfs=$(mktemp -d "$OMI_DEV_STATE/rootfs.XXXXXX")
  trap 'rm -rf "$rootfs" "$tarball.partial"' EXIT
  say "$step: debootstrap bookworm (about 70 s, log: $log)"
  debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
    bookworm "$rootfs" "${OMI_DEBIAN_MIRROR:-http://deb.debian.org/debian}" >"$log" 2>&1 ||
    fail "$step" "debootstrap failed (is the Debian mirror reachable?)" "$log"
  # Keep the image lean: apt lists and caches are rebuilt by apt-get update when needed.
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* "$rootfs"/usr/share/doc/* \
    "$rootfs"/usr/share/man/* "$rootfs"/usr/share/locale/*
  tar --numeric-owner -C "$rootfs" -cf "$tarball.partial" . || fail "$step" "tar of rootfs failed" ""
  mv "$tarball.partial" "$tarball"
fi
say "$step: importing $OMI_BASE_IMAGE"
docker import \
  -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  -c 'ENV LANG=C.UTF-8' -c 'CMD ["/usr/bin/python3"]' \
  "$tarball" "$OMI_BASE_IMAGE" >>"$log" 2>&1 || fail "$step" "docker import failed" "$log"
write_config
say "$step: $OMI_BASE_IMAGE ready"
