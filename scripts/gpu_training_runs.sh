#!/usr/bin/env bash
# GPU runs of the fast-training work, in one go, everything written under $OUT (default out/):
#   1. the 25,000-step grokking reference run (configs/reference/grokking.yaml), timed;
#   2. the induction-formation reference run (configs/reference/induction_formation.yaml);
#   3. benchmarks/bench_train.py over $WORKLOADS ($BENCH_FLAGS, e.g. --ablate).
# Run dirs are packed as tarballs (the series are fp16, weights only) for copying back.
#   OUT=out RUNS="grokking induction" WORKLOADS=grokking,add3_b128 BENCH_FLAGS=--ablate scripts/gpu_training_runs.sh
# (RUNS="" skips the reference runs; WORKLOADS="" skips the benchmark.)
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-out}
PY=${PYTHON:-python3}
mkdir -p "$OUT/runs"
RUNS=${RUNS-grokking induction}
if [[ " $RUNS " == *" grokking "* ]]; then
  $PY benchmarks/bench_train.py --workloads "" --full-grokking --runs "$OUT/runs" --out "$OUT/grokking_run.json" \
    > "$OUT/grokking.log" 2>&1
  tail -3 "$OUT/grokking.log"
  # two tarballs for the series (each file that comes back must stay under 16 MiB)
  (cd "$OUT/runs" && first=$(ls -d grokking/step_* | head -n 25) && tar -czf ../grokking_a.tgz $first \
     && tar -czf ../grokking_b.tgz $(ls -d grokking/* | grep -v -x -F "$first") && rm -rf grokking)
fi
if [[ " $RUNS " == *" induction "* ]]; then
  $PY -m interp.cli train --config configs/reference/induction_formation.yaml --set train.progress=false \
    --set train.out_dir="$OUT/runs/induction_formation" --set train.overwrite=true > "$OUT/induction.log" 2>&1
  tail -2 "$OUT/induction.log"
  (cd "$OUT/runs" && tar -czf ../induction.tgz induction_formation && rm -rf induction_formation)
fi
WORKLOADS=${WORKLOADS-grokking,add3_b128,add3_b1024,shakespeare}
if [ -n "$WORKLOADS" ]; then
  $PY benchmarks/bench_train.py --workloads "$WORKLOADS" ${BENCH_FLAGS:-} --out "$OUT/bench_train.json" 2>&1 \
    | grep -v '^ ' | tee "$OUT/bench.log" | tail -8
fi
