#!/usr/bin/env bash
# Run the selected esper-lite tests with the network given by $1 (reference|lstm|transformer).
# Usage: bash compat/run.sh MODE [extra pytest args]
# Env: ESPER_DIR (default /tmp/esper: the reference exported at 2016337e), OUT_DIR (default /tmp/compat-results)
set -euo pipefail
MODE=${1:?usage: run.sh reference|lstm|transformer [pytest args]}; shift || true
HERE=$(cd "$(dirname "$0")" && pwd)
WT=$(dirname "$HERE")
ESPER_DIR=${ESPER_DIR:-/tmp/esper}
OUT_DIR=${OUT_DIR:-/tmp/compat-results}
mkdir -p "$OUT_DIR"
cd "$ESPER_DIR"
mapfile -t FILES < <(bash "$HERE/select_tests.sh" "$ESPER_DIR")
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
export PYTHONPATH="$HERE/plugin:$HERE/stubs:$WT:$ESPER_DIR/src"
export SLOTFORMER_SWAP="$MODE"
set +e
COMPAT_CONSTRUCTED_FILE="$OUT_DIR/$MODE.constructed" python -m pytest -p no:cacheprovider -p compat_swap -p compat_threads -q -rN --tb=long \
  --junitxml="$OUT_DIR/$MODE.xml" "${FILES[@]}" "$@" > "$OUT_DIR/$MODE.log" 2>&1
rc=$?
set -e
tail -3 "$OUT_DIR/$MODE.log"
python "$HERE/summarize.py" "$OUT_DIR/$MODE.xml" "$OUT_DIR/$MODE.constructed"
exit 0
