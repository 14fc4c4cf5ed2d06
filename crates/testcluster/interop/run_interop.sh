#!/usr/bin/env bash
# Installs arvados-python-client==3.2.1 into a project-local venv (once) and runs
# sdk_interop.py against a fresh `keep-testcluster run`.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
target=${CARGO_TARGET_DIR:-$here/../../../target}
venv=${KEEP_INTEROP_VENV:-$target/pyvenv-arvados}
if [ ! -x "$venv/bin/arv-put" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q arvados-python-client==3.2.1
fi
# Under `cargo test` the binary is passed in: a nested cargo would wait on the lock.
bin=${KEEP_TESTCLUSTER_BIN:-}
if [ -z "$bin" ]; then
  cargo build -q -p keep-testcluster
  bin=$target/debug/keep-testcluster
fi
dir=$(mktemp -d)
"$bin" run --dir "$dir" "$@" > "$dir/stdout" &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$dir"' EXIT
for _ in $(seq 100); do grep -q ready "$dir/stdout" 2>/dev/null && break; sleep 0.1; done
"$venv/bin/python" "$here/sdk_interop.py" "$dir"
