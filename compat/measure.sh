#!/usr/bin/env bash
# The whole measurement: export the reference, run the selection three ways (+ the secondary
# variants), group the failures, run one real PPO update per network and the reproductions.
# Usage: bash compat/measure.sh    (results in $OUT_DIR, default /tmp/compat-results)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
export ESPER_DIR=${ESPER_DIR:-/tmp/esper} OUT_DIR=${OUT_DIR:-/tmp/compat-results}
MIRROR=${MIRROR:-/work/.mirror/tachyon-beep+esper-lite/repo}
if [ ! -d "$ESPER_DIR/src/esper" ]; then
  mkdir -p "$ESPER_DIR" && git -C "$MIRROR" archive 2016337e | tar -x -C "$ESPER_DIR"
fi
for mode in reference lstm transformer; do bash "$HERE/run.sh" $mode; done
SLOTFORMER_SWAP_ALIAS=1 OUT_DIR=$OUT_DIR/alias bash "$HERE/run.sh" lstm
SLOTFORMER_SWAP_LAYOUT=fallback OUT_DIR=$OUT_DIR/fallback bash "$HERE/run.sh" transformer
SLOTFORMER_SWAP_ALIAS=1 SLOTFORMER_SWAP_LAYOUT=fallback OUT_DIR=$OUT_DIR/fallback-alias bash "$HERE/run.sh" transformer
for mode in lstm transformer; do SLOTFORMER_SWAP_VALIDATION=0 OUT_DIR=$OUT_DIR/novalidation bash "$HERE/run.sh" $mode; done
echo "== counts over the tests that construct the network (the set recorded in the lstm run)"
for f in reference lstm transformer; do
  python "$HERE/summarize.py" "$OUT_DIR/$f.xml" "$OUT_DIR/lstm.constructed" | tail -1
done
for f in lstm transformer alias/lstm fallback/transformer fallback-alias/transformer novalidation/lstm novalidation/transformer; do
  python "$HERE/classify.py" "$OUT_DIR/$f.xml"
done
for mode in reference lstm transformer; do
  SLOTFORMER_SWAP=$mode OMP_NUM_THREADS=1 python "$HERE/ppo_update.py" 2>&1 | grep -v -i warn || true
done
for mode in lstm transformer; do
  SLOTFORMER_SWAP=$mode OMP_NUM_THREADS=1 python "$HERE/repro.py" 2>&1 | grep -v -i warn || true
done
python "$HERE/floor_flip.py" 2>&1 | grep -v -i warn || true
