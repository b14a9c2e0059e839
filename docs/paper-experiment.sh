#!/usr/bin/env bash
# A small version of the AdapterFusion paper's experiment (Pfeiffer et al. 2021, Table 1 and Figure 4)
# on GLUE data in its original distribution format, with the embedded all-MiniLM-L6-v2.
#
#   GLUE=../shared/data/glue SEEDS="1 2 3" EPOCHS=3 bash docs/paper-experiment.sh
#
# Each training is one `adapt train` / `adapt fuse` process; rerunning the script skips finished runs
# and resumes interrupted ones. Results: out/table.md and out/activations/activations.png.
set -euo pipefail
GLUE=${GLUE:-../shared/data/glue}
SEEDS=${SEEDS:-1}
EPOCHS=${EPOCHS:-3}
MODEL=${MODEL:-minilm}
MAX_TRAIN=${MAX_TRAIN:-null}          # e.g. 2000 to cap the larger training sets on a CPU
BASELINES=${BASELINES:-1}             # 0: skip the head-only and full fine-tuning runs
OUT=${OUT:-out}
export ADAPT_CACHE=${ADAPT_CACHE:-$OUT/cache}
ADAPT=${ADAPT:-.venv/bin/adapt}
mkdir -p "$OUT/runs"
declare -A DIR=([sst2]=SST-2 [mrpc]=MRPC [stsb]=STS-B [cola]=CoLA [rte]=RTE)

run() {  # run DIR CMD...: skip finished runs, resume interrupted ones
  local dir=$1; shift
  if grep -qs '"status": "completed"' "$dir/run.json"; then return 0; fi
  if [ -f "$dir/checkpoint.pt" ]; then "$ADAPT" train --resume --run-dir "$dir" --quiet; return; fi
  "$@" --run-dir "$dir" --quiet --overwrite
}

for seed in $SEEDS; do
  for task in sst2 mrpc stsb cola rte; do
    run "$OUT/runs/$task-adapter-s$seed" "$ADAPT" train --task $task --data-dir "$GLUE/${DIR[$task]}" \
      --model "$MODEL" --config pfeiffer --name $task seed=$seed epochs=$EPOCHS patience=null \
      learning_rate=1e-3 max_train_samples=$MAX_TRAIN
  done
  for target in rte mrpc; do
    for method in $([ "$BASELINES" = 1 ] && echo head full); do
      lr=$([ $method = full ] && echo 3e-5 || echo 3e-3)
      run "$OUT/runs/$target-$method-s$seed" "$ADAPT" train --task $target --data-dir "$GLUE/${DIR[$target]}" \
        --model "$MODEL" --method $method seed=$seed epochs=$EPOCHS patience=null learning_rate=$lr \
        max_train_samples=$MAX_TRAIN --no-cache
    done
    members=""
    for task in sst2 mrpc stsb cola rte; do members+=" $task-adapter-s$seed"; done
    run "$OUT/runs/$target-fusion-s$seed" "$ADAPT" fuse $members --target $target --model "$MODEL" \
      --data-dir "$GLUE/${DIR[$target]}" seed=$seed epochs=$EPOCHS patience=null learning_rate=5e-4 \
      max_train_samples=$MAX_TRAIN
  done
done

"$ADAPT" results "$OUT"/runs/* --output "$OUT/table.md"
cat "$OUT/table.md"
first=$(echo $SEEDS | cut -d' ' -f1)
"$ADAPT" inspect-activations "rte-fusion-s$first" "mrpc-fusion-s$first" --model "$MODEL" \
  --data-dir rte="$GLUE/RTE" --data-dir mrpc="$GLUE/MRPC" --out "$OUT/activations"
