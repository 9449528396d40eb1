#!/usr/bin/env bash
# Third-party conformance clients and reference servers (KServe's model server, MLServer,
# `mlflow models serve`), each in its own virtualenv: the kserve SDK and tritonclient both register the `inference.*`
# protobuf messages, and chassisml needs protobuf < 5. Reinstalled only when this script (or
# the project's scikit-learn) changes.
. "$(dirname "$0")/lib.sh"
step=setup-clients
cd "$(dirname "$0")/.."
# The differential suite's KServe model server loads models the project's venv pickles: the
# same scikit-learn, or the file may not load.
sklearn=$(.venv/bin/python -c 'import sklearn; print(sklearn.__version__)' 2>/dev/null) ||
  fail "$step" "the project venv has no scikit-learn (run setup-venv first)" ""
want=$({ cat scripts/setup-clients.sh; echo "$sklearn"; } | sha256sum | cut -c1-64)

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

install kserve "kserve==0.21.*" pandas "scikit-learn==$sklearn" joblib &
k=$!
install chassis "chassisml==1.5.*" "protobuf<5" &
c=$!
# the differential suite's other references: MLServer (the version bench/ compares against)
# and `mlflow models serve` at the project's MLflow version
install mlserver "mlserver==1.7.1" "mlserver-sklearn==1.7.1" "scikit-learn==$sklearn" &
s=$!
install mlflow "mlflow==3.17.2" "scikit-learn==$sklearn" &
m=$!
wait $k && wait $c && wait $s && wait $m
