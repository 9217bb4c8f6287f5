#!/usr/bin/env bash
# pLSTM's arrow-pointing extrapolation (docs/tasks.md): train on 8x8 grids (64 tokens), test on 8x8, 16x16, 32x32;
# one thread per run: on a loaded machine two intra-op threads spin against each other (13 s/step vs ~1-4 s).
# plstm2d (2-D, P-mode) vs plstm (1-D, on the raster scan) vs attention. Small: minutes on 2 CPU cores.
# usage: benchmarks/arrow_pointing_extrapolation.sh [steps] [out_dir] [d_model] [test_lengths] [mixers] [seed]
# (hold /tmp/rnnlab-bench.lock while it runs)
set -euo pipefail
STEPS=${1:-3000}
OUT=${2:-runs/arrow_pointing}
DM=${3:-16}
TEST=${4:-[64,256,1024]}
MIXERS=${5:-plstm2d plstm attention}
SEED=${6:-0}
for mixer in $MIXERS; do
  rnnlab train --task arrow_pointing --mixer "$mixer" --d-model "$DM" --layers 2 --steps "$STEPS" --batch-size 32 --lr 3e-3 \
    --seed "$SEED" --run-dir "$OUT/$mixer" --overwrite --no-progress model.pool=mean model.mixer_kwargs.num_heads=4 \
    train.eval_every="$STEPS" train.eval_examples=256 train.threads=1 "task.test_lengths=$TEST"
done
