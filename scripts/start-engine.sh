#!/usr/bin/env bash
# Start dockerd (containerd image store, needed for cache export) unless it already answers.
. "$(dirname "$0")/lib.sh"
step=start-engine
log=$OMI_DEV_LOG_DIR/dockerd.log

engine_ok() {
  docker info --format '{{json .DriverStatus}}' 2>/dev/null | grep -q 'io.containerd.snapshotter'
}

if engine_ok; then say "$step: dockerd already running with the containerd image store"; exit 0; fi
need_root "$step"
mkdir -p /etc/docker
# The builder's garbage collector keeps the build cache near 10 GB (Docker's default keeps
# growing it by 10% of the disk at a time; benchmarks write gigabyte model layers and the
# tests' torch images gigabyte venvs, and a test run must fit beside them on ~80 GB).
want='{"features": {"containerd-snapshotter": true}, "builder": {"gc": {"enabled": true, "defaultKeepStorage": "10GB"}}}'
if [ ! -f /etc/docker/daemon.json ] || ! grep -q '"containerd-snapshotter": *true' /etc/docker/daemon.json ||
  ! grep -q '"defaultKeepStorage": "10GB"' /etc/docker/daemon.json; then
  printf '%s\n' "$want" > /etc/docker/daemon.json
fi
if docker info >/dev/null 2>&1; then
  fail "$step" "a dockerd is running without the containerd image store; restart it after setting /etc/docker/daemon.json to $want" ""
fi
rm -f /var/run/docker.pid
say "$step: starting dockerd (log: $log)"
nohup setsid dockerd >>"$log" 2>&1 </dev/null &
wait_until 60 engine_ok || fail "$step" "dockerd did not answer within 60 s" "$log"
# the engine is setup's own: a test run may empty its build cache when it ends (tests/conftest.py)
touch "$OMI_DEV_STATE/engine-started-by-setup"
say "$step: dockerd ready ($(docker version --format '{{.Server.Version}}'))"
