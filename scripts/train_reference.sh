#!/usr/bin/env bash
# Train every reference checkpoint shipped in data/checkpoints/ (one GPU, all runs at once),
# then copy each run's final checkpoint (without optimizer state) to $DEST/NAME.
#   scripts/train_reference.sh [DEST]     (DEST defaults to data/checkpoints)
set -u
cd "$(dirname "$0")/.."
DEST=${1:-data/checkpoints}
PY=${PYTHON:-python3}
NAMES=${NAMES:-"add3_none add3_mask_steps add3_mask_answer induction_attn_only shakespeare_factored_alibi shakespeare_vanilla"}
mkdir -p runs "$DEST"
for n in $NAMES; do
  timeout "${RUN_TIMEOUT:-1800}" $PY -m interp.cli train --config "configs/reference/$n.yaml" \
    --set train.progress=false --set train.out_dir="runs/$n" --set train.overwrite=true ${EXTRA:-} > "runs/$n.log" 2>&1 &
done
wait
for n in $NAMES; do
  last="runs/$n/$(cat "runs/$n/last" 2>/dev/null | xargs basename 2>/dev/null)"
  if [ ! -f "$last/model.safetensors" ]; then echo "$n: no checkpoint (see runs/$n.log)"; continue; fi
  rm -rf "${DEST:?}/$n" && mkdir -p "$DEST/$n"
  cp "$last"/{config.json,model.safetensors,tokenizer.json,metrics.jsonl,card.md} "$DEST/$n/"
  echo "$n <- $last"
done
