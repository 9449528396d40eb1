#!/usr/bin/env bash
# A loopback OCI registry (distribution 2.8) without auth; storage survives restarts.
. "$(dirname "$0")/lib.sh"
step=start-registry
log=$OMI_DEV_LOG_DIR/registry.log
conf=$OMI_DEV_STATE/registry.yml

registry_ok() { curl -fsS "http://$OMI_REGISTRY_ADDR/v2/" ; }

if registry_ok >/dev/null 2>&1; then say "$step: registry already answering on $OMI_REGISTRY_ADDR"; exit 0; fi
mkdir -p "$OMI_DEV_STATE/registry"
cat > "$conf" <<CONF
version: 0.1
log: {level: warn}
storage: {filesystem: {rootdirectory: $OMI_DEV_STATE/registry}, delete: {enabled: true}}
http: {addr: $OMI_REGISTRY_ADDR}
CONF
say "$step: starting docker-registry on $OMI_REGISTRY_ADDR (log: $log)"
nohup setsid docker-registry serve "$conf" >>"$log" 2>&1 </dev/null &
pid=$!
# ready, or gone: a registry that exits (port taken, bad address) fails at once, with its reason
registry_ok_or_gone() { registry_ok || ! kill -0 "$pid"; }
wait_until 20 registry_ok_or_gone || fail "$step" "registry did not answer on $OMI_REGISTRY_ADDR within 20 s" "$log"
if ! registry_ok >/dev/null 2>&1; then
  reason=$(tail -n 1 "$log" | sed 's/.*msg="\([^"]*\)".*/\1/' | cut -c1-300)
  fail "$step" "registry exited before answering on $OMI_REGISTRY_ADDR: $reason" "$log"
fi
say "$step: registry ready"
