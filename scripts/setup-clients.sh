#!/usr/bin/env bash
# Third-party conformance clients, each in its own virtualenv: the kserve SDK and
# tritonclient both register the `inference.*` protobuf messages, and chassisml needs
# protobuf < 5. Reinstalled only when this script changes.
. "$(dirname "$0")/lib.sh"
step=setup-clients
cd "$(dirname "$0")/.."
want=$(sha256sum scripts/setup-clients.sh | cut -c1-64)

install() {  # install NAME PACKAGES...
  local name=$1; shift
  local dir=.clients/$name log=$OMI_DEV_LOG_DIR/$step-$name.log
  if [ -x "$dir/bin/python" ] && [ "$(cat "$dir/.installed" 2>/dev/null)" = "$want" ]; then
    say "$step: $name client up to date"; return 0
  fi
  say "$step: installing the $name client (log: $log)"
  rm -rf "$dir"
  python3 -m venv "$dir" >"$log" 2>&1 || fail "$step" "python3 -m venv $dir failed" "$log"
  "$dir/bin/pip" install -q "$@" >>"$log" 2>&1 || { rm -rf "$dir"; fail "$step" "pip install $* failed" "$log"; }
  printf "%s" "$want" > "$dir/.installed"
  say "$step: $name client installed"
}

install kserve "kserve==0.21.*" pandas &
k=$!
install chassis "chassisml==1.5.*" "protobuf<5" &
c=$!
wait $k && wait $c
