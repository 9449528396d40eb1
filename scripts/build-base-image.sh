#!/usr/bin/env bash
# No base image can be pulled here: build Debian bookworm + python3 + venv offline with
# debootstrap, once per architecture in OMI_BASE_ARCHES (another architecture's second stage
# runs under QEMU: setup-emulation.sh), import each, and join them into one multi-platform
# image. The rootfs tarballs are kept so a lost image re-imports in seconds.
. "$(dirname "$0")/lib.sh"
step=build-base-image
log=$OMI_DEV_LOG_DIR/$step.log
mirror=${OMI_DEBIAN_MIRROR:-http://deb.debian.org/debian}
read -r -a arches <<<"$OMI_BASE_ARCHES"

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

# runs ARCH: the image runs as ARCH, its own uname saying so (the emulator works, the content
# for that platform is in the engine)
runs() {
  [ "$(timeout 120 docker run --rm --pull never --platform "linux/$1" --entrypoint uname \
    "$OMI_BASE_IMAGE" -m 2>/dev/null)" = "$(qemu_arch "$1")" ]
}
ready() { for arch in "${arches[@]}"; do runs "$arch" || return 1; done; }

if ready; then
  write_config
  say "$step: $OMI_BASE_IMAGE already present (linux/${arches[*]})"; exit 0
fi
need_root "$step"

# rootfs ARCH TARBALL: debootstrap for ARCH, stripped, as a tarball
rootfs() {
  local arch=$1 tarball=$2 dir
  dir=$(mktemp -d "$OMI_DEV_STATE/rootfs.XXXXXX")
  trap 'rm -rf "$dir" "$tarball.partial"' EXIT
  local packages=python3,python3-venv,python3-pip,ca-certificates
  if [ "$arch" = "$(host_arch)" ]; then
    say "$step: debootstrap bookworm for $arch (about 70 s, log: $log)"
    debootstrap --variant=minbase --include=$packages bookworm "$dir" "$mirror" >"$log" 2>&1 ||
      fail "$step" "debootstrap failed (is the Debian mirror reachable?)" "$log"
  else
    say "$step: debootstrap bookworm for $arch under emulation (about 5 min, log: $log)"
    debootstrap --arch="$arch" --foreign --variant=minbase --include=$packages bookworm "$dir" \
      "$mirror" >"$log" 2>&1 || fail "$step" "debootstrap failed (is the Debian mirror reachable?)" "$log"
    chroot "$dir" /debootstrap/debootstrap --second-stage >>"$log" 2>&1 ||
      fail "$step" "debootstrap's second stage for $arch failed (is its emulator registered? make setup does it)" "$log"
  fi
  # Keep the image lean: apt lists and caches are rebuilt by apt-get update when needed.
  rm -rf "$dir"/var/cache/apt/archives/*.deb "$dir"/var/lib/apt/lists/* "$dir"/usr/share/doc/* \
    "$dir"/usr/share/man/* "$dir"/usr/share/locale/* "$dir"/debootstrap
  tar --numeric-owner -C "$dir" -cf "$tarball.partial" . || fail "$step" "tar of rootfs failed" ""
  mv "$tarball.partial" "$tarball"
  rm -rf "$dir"; trap - EXIT
}

parts=()
for arch in "${arches[@]}"; do
  tarball=$OMI_DEV_STATE/base-bookworm-python3-$arch${OMI_DEBIAN_MIRROR:+-custom}.tar
  old=$OMI_DEV_STATE/base-bookworm-python3${OMI_DEBIAN_MIRROR:+-custom}.tar  # before arm64
  [ "$arch" = amd64 ] && [ -s "$old" ] && [ ! -s "$tarball" ] && mv "$old" "$tarball"
  [ -s "$tarball" ] || rootfs "$arch" "$tarball"
  part=$OMI_BASE_IMAGE-$arch
  say "$step: importing $part"
  docker import --platform "linux/$arch" \
    -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    -c 'ENV LANG=C.UTF-8' -c 'CMD ["/usr/bin/python3"]' \
    "$tarball" "$part" >>"$log" 2>&1 || fail "$step" "docker import failed" "$log"
  parts+=("$part")
done

# One image, one manifest per architecture: BuildKit picks each platform's own from it
# (a FROM-only build per platform; the layers are the imported ones, nothing is copied).
join=$(mktemp -d); trap 'rm -rf "$join"' EXIT
{
  for arch in "${arches[@]}"; do printf 'FROM %s AS base-%s\n' "$OMI_BASE_IMAGE-$arch" "$arch"; done
  printf 'FROM base-${TARGETARCH}\n'
} > "$join/Dockerfile"
platforms=$(printf 'linux/%s,' "${arches[@]}")
say "$step: joining ${parts[*]} into $OMI_BASE_IMAGE"
docker buildx build --builder default --pull=false --provenance=false --sbom=false \
  --platform "${platforms%,}" --output "type=image,name=$OMI_BASE_IMAGE" "$join" >>"$log" 2>&1 ||
  fail "$step" "joining the architectures into one image failed" "$log"
ready || fail "$step" "$OMI_BASE_IMAGE does not run as every one of linux/${arches[*]} (are the emulators registered?)" "$log"
write_config
say "$step: $OMI_BASE_IMAGE ready (linux/${arches[*]})"
