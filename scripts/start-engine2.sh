#!/usr/bin/env bash
# A second Docker engine on this machine, for the tests that build beyond one machine (a CI
# runner that starts empty, a shared remote builder): its own data root, exec root (so its own
# containerd and image store), socket and build cache, reachable as the docker context
# omibuild-engine2. It gets the first engine's base image, byte for byte (docker save/load),
# since no image can be pulled here. Idempotent.
. "$(dirname "$0")/lib.sh"
step=start-engine2
run=/run/omibuild-engine2
sock=$run/docker.sock
root=$OMI_DEV_STATE/engine2
log=$OMI_DEV_LOG_DIR/dockerd-engine2.log
context=omibuild-engine2

engine2() { docker -H "unix://$sock" "$@"; }
engine2_ok() { engine2 info --format '{{json .DriverStatus}}' 2>/dev/null | grep -q 'io.containerd.snapshotter'; }

need_root "$step"
if ! engine2_ok; then
  mkdir -p "$run" "$root"
  printf '%s\n' '{"features": {"containerd-snapshotter": true}}' > "$run/daemon.json"
  rm -f "$run/docker.pid"
  say "$step: starting a second dockerd on $sock (log: $log)"
  # A bridge of its own (docker0 is the first engine's), without NAT rules: the two engines
  # must not both rewrite iptables. Not --bridge=none: a dockerd started so deletes docker0,
  # and the first engine's containers and build steps then fail ("Device does not exist"). Its build steps run, but reach no network beyond the
  # bridge: what they need from PyPI comes from a shared registry cache.
  if ! ip link show omibr2 >/dev/null 2>&1; then
    ip link add omibr2 type bridge && ip addr add 172.31.250.1/24 dev omibr2 ||
      fail "$step" "could not create the bridge omibr2" ""
  fi
  ip link set omibr2 up
  nohup setsid dockerd --config-file "$run/daemon.json" --data-root "$root" \
    --exec-root "$run/exec" --pidfile "$run/docker.pid" -H "unix://$sock" \
    --bridge=omibr2 --iptables=false --ip6tables=false >>"$log" 2>&1 </dev/null &
  wait_until 60 engine2_ok || fail "$step" "the second dockerd did not answer within 60 s" "$log"
fi
# the same image as the first engine's, by ID: setup may have rebuilt that one since
base_id() { "$@" image inspect --format '{{.Id}}' "$OMI_BASE_IMAGE" 2>/dev/null; }
if [ "$(base_id engine2)" != "$(base_id docker)" ]; then
  docker save "$OMI_BASE_IMAGE" | engine2 load >>"$log" 2>&1 ||
    fail "$step" "could not copy $OMI_BASE_IMAGE to the second engine" "$log"
fi
if ! docker context inspect "$context" >/dev/null 2>&1; then
  docker context create "$context" --docker "host=unix://$sock" >>"$log" 2>&1 ||
    fail "$step" "docker context create $context failed" "$log"
fi
say "$step: second engine ready (docker context $context, $sock)"
