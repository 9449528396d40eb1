#!/usr/bin/env bash
# The project's virtualenv (.venv) with omibuild installed in editable mode plus the dev
# tools. Reinstalls only when pyproject.toml changes.
. "$(dirname "$0")/lib.sh"
step=setup-venv
cd "$(dirname "$0")/.."
log=$OMI_DEV_LOG_DIR/$step.log
stamp=.venv/.omibuild-installed
want=$(sha256sum pyproject.toml | cut -c1-64)
if [ -x .venv/bin/python ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
  say "$step: .venv up to date"; exit 0
fi
say "$step: installing omibuild[dev] into .venv (log: $log)"
rm -f "$stamp"
{ [ -x .venv/bin/python ] || python3 -m venv .venv; } >"$log" 2>&1 || fail "$step" "python3 -m venv failed" "$log"
.venv/bin/pip install -q -U pip setuptools wheel >>"$log" 2>&1 || fail "$step" "pip upgrade failed (is PyPI reachable?)" "$log"
.venv/bin/pip install -q -e '.[dev]' >>"$log" 2>&1 || fail "$step" "pip install -e .[dev] failed" "$log"
printf '%s' "$want" > "$stamp"
say "$step: done"
