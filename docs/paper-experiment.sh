#!/usr/bin/env bash
# A small version of the AdapterFusion paper's experiment (Pfeiffer et al. 2021, Tables 1 and 2, Figure 4)
# with the embedded all-MiniLM-L6-v2: the six columns Head, Full, ST-A, MT-A, F. w/ ST-A and F. w/ MT-A.
#
#   bash docs/paper-experiment.sh                                  # ../shared GLUE: sst2 mrpc stsb cola rte
#   bash docs/paper-experiment.sh rte=data/RTE mrpc=data/MRPC cb=data/CB    # any tasks, TASK=DIR
#   SEEDS="1 2" MAX_TRAIN=500 EPOCHS=3 TARGETS="rte mrpc" bash docs/paper-experiment.sh   # a CPU budget
#   SEEDS="1 2" SST2_TRAIN=2000 bash docs/paper-experiment.sh      # the paper's settings, SST-2 cut to 2,000
#   OVERRIDES="precision=bf16 group_by_length=true" bash docs/paper-experiment.sh   # ~2x faster on a CPU with bf16
#
# Defaults are the paper's settings, i.e. the recipes' (adapter, head, full, multitask, fusion): learning
# rates, epochs and early stopping, all training data. Every knob below overrides them for all runs.
# Each training is one `adapt train` / `adapt fuse` process; rerunning the script skips finished runs and
# resumes interrupted ones. Results: $OUT/table.md (with wall times and Table 2's arrows) and
# $OUT/activations*/activations.png.
set -euo pipefail
GLUE=${GLUE:-../shared/data/glue}
SEEDS=${SEEDS:-1}
MODEL=${MODEL:-minilm}
EPOCHS=${EPOCHS:-}          # empty: each recipe's epochs (and patience: early stopping)
MAX_TRAIN=${MAX_TRAIN:-}    # e.g. 2000: a seeded random subset of each training set
MAX_EVAL=${MAX_EVAL:-}      # e.g. 500: a seeded random subset of each dev set
TARGETS=${TARGETS:-}        # fusion targets; empty: every task
SST2_TRAIN=${SST2_TRAIN:-}  # e.g. 2000: SST-2's training set alone cut to a fixed random subset (the others whole)
LR_ADAPTER=${LR_ADAPTER:-} LR_HEAD=${LR_HEAD:-} LR_FULL=${LR_FULL:-} LR_FUSION=${LR_FUSION:-}
LR_BASE=${LR_BASE:-}        # MT-A: the shared base's learning rate (its adapters take LR_ADAPTER)
OVERRIDES=${OVERRIDES:-}    # recipe keys for every run, e.g. "precision=bf16 group_by_length=true"
OUT=${OUT:-out}
export ADAPT_CACHE=${ADAPT_CACHE:-$OUT/cache}
ADAPT=${ADAPT:-.venv/bin/adapt}

fail() { echo "error: $*" >&2; exit 2; }
canonical() { echo "$1" | tr 'A-Z' 'a-z' | tr -d '-'; }  # SST-2 -> sst2, STS-B -> stsb: the names adapt caches under

declare -A DIR=()
TASKS=()
if [ $# -eq 0 ]; then
  declare -A GLUE_DIR=([sst2]=SST-2 [mrpc]=MRPC [stsb]=STS-B [cola]=CoLA [rte]=RTE)
  for task in sst2 mrpc stsb cola rte; do DIR[$task]=$GLUE/${GLUE_DIR[$task]}; TASKS+=("$task"); done
else
  for pair in "$@"; do
    case $pair in *=*) ;; *) fail "'$pair' is not TASK=DIR (e.g. rte=data/RTE)" ;; esac
    task=$(canonical "${pair%%=*}")
    [ -z "${DIR[$task]:-}" ] || fail "task $task is given twice"
    DIR[$task]=${pair#*=}; TASKS+=("$task")
  done
fi
[ ${#TASKS[@]} -ge 2 ] || fail "give two or more tasks (TASK=DIR ...)"
for task in "${TASKS[@]}"; do
  [ -d "${DIR[$task]}" ] || fail "data directory ${DIR[$task]} for $task does not exist"
done
if [ -n "$SST2_TRAIN" ]; then
  [ -n "${DIR[sst2]:-}" ] || fail "SST2_TRAIN is set but sst2 is not one of the tasks (${TASKS[*]})"
  [[ $SST2_TRAIN =~ ^[1-9][0-9]*$ ]] || fail "SST2_TRAIN=$SST2_TRAIN is not a number of rows (e.g. 2000)"
fi
for pair in $OVERRIDES; do
  [[ $pair =~ ^[a-z_]+=[^=]+$ ]] || fail "OVERRIDES: '$pair' is not a recipe key=value (e.g. precision=bf16)"
done
targets=()
for target in ${TARGETS:-${TASKS[*]}}; do
  target=$(canonical "$target")
  [ -n "${DIR[$target]:-}" ] || fail "fusion target $target is not one of the tasks (${TASKS[*]})"
  targets+=("$target")
done
read -r first _ <<< "$SEEDS"
[ -n "${first:-}" ] || fail "SEEDS is empty"
mkdir -p "$OUT/runs"
# finished runs are skipped by name: runs made with other settings must not be taken for these
settings="tasks=${TASKS[*]} targets=${targets[*]} model=$MODEL epochs=$EPOCHS max_train=$MAX_TRAIN max_eval=$MAX_EVAL"
settings+=${SST2_TRAIN:+" sst2_train=$SST2_TRAIN"}
settings+=" lr_adapter=$LR_ADAPTER lr_head=$LR_HEAD lr_full=$LR_FULL lr_fusion=$LR_FUSION lr_base=$LR_BASE"
settings+=${OVERRIDES:+" overrides=$OVERRIDES"}
if [ -f "$OUT/settings.txt" ] && [ "$(cat "$OUT/settings.txt")" != "$settings" ]; then
  fail "$OUT holds runs made with other settings ($(cat "$OUT/settings.txt")); give another OUT"
fi
echo "$settings" > "$OUT/settings.txt"
if [ -n "$SST2_TRAIN" ]; then  # one subset for every seed and method: header, then N rows by a fixed shuffle
  subset=$OUT/data/sst2-$SST2_TRAIN
  if [ ! -f "$subset/train.tsv" ]; then
    mkdir -p "$subset.tmp"
    { head -n 1 "${DIR[sst2]}/train.tsv"
      tail -n +2 "${DIR[sst2]}/train.tsv" | shuf -n "$SST2_TRAIN" --random-source=<(yes 42); } > "$subset.tmp/train.tsv"
    cp "${DIR[sst2]}"/dev.tsv "$subset.tmp/"
    rm -rf "$subset" && mv "$subset.tmp" "$subset"
  fi
  DIR[sst2]=$subset
fi

common() {  # the knobs every run shares
  echo ${EPOCHS:+epochs=$EPOCHS patience=null min_steps=null} ${MAX_TRAIN:+max_train_samples=$MAX_TRAIN} \
    ${MAX_EVAL:+max_eval_samples=$MAX_EVAL} $OVERRIDES
}

run() {  # run DIR CMD...: skip finished runs, resume interrupted ones
  local dir=$1; shift
  if grep -qs '"status": "completed"' "$dir/run.json"; then return 0; fi
  if [ -f "$dir/checkpoint.pt" ]; then "$ADAPT" train --resume --run-dir "$dir" --quiet; return; fi
  "$@" --run-dir "$dir" --quiet --overwrite
}

base_of() {  # the fine-tuned base model an MT-A run made (its id in final_metrics.json)
  local id
  id=$(grep -o '"base_model": "[^"]*"' "$1/final_metrics.json" | cut -d'"' -f4) || true
  [ -n "$id" ] || fail "$1/final_metrics.json names no base model; is $1 a finished MT-A run?"
  echo "$id"
}

for seed in $SEEDS; do
  # Head, Full and ST-A: one run per task
  for task in "${TASKS[@]}"; do
    run "$OUT/runs/$task-adapter-s$seed" "$ADAPT" train --task "$task" --data-dir "${DIR[$task]}" --model "$MODEL" \
      --config pfeiffer --name "$task" seed=$seed $(common) ${LR_ADAPTER:+learning_rate=$LR_ADAPTER}
    run "$OUT/runs/$task-head-s$seed" "$ADAPT" train --task "$task" --data-dir "${DIR[$task]}" --model "$MODEL" \
      --method head seed=$seed $(common) ${LR_HEAD:+learning_rate=$LR_HEAD} --no-cache
    run "$OUT/runs/$task-full-s$seed" "$ADAPT" train --task "$task" --data-dir "${DIR[$task]}" --model "$MODEL" \
      --method full seed=$seed $(common) ${LR_FULL:+learning_rate=$LR_FULL} --no-cache
  done
  # MT-A: one run over all tasks; its fine-tuned base becomes a base model of its own in the cache
  dirs=()
  for task in "${TASKS[@]}"; do dirs+=(--data-dir "$task=${DIR[$task]}"); done
  run "$OUT/runs/mta-s$seed" "$ADAPT" train --method multitask --tasks "$(IFS=,; echo "${TASKS[*]}")" "${dirs[@]}" \
    --model "$MODEL" seed=$seed $(common) ${LR_ADAPTER:+learning_rate=$LR_ADAPTER} \
    ${LR_BASE:+base_learning_rate=$LR_BASE}
  mta_base=$(base_of "$OUT/runs/mta-s$seed")
  # F. w/ ST-A and F. w/ MT-A: every task's adapter fused for each target
  for target in "${targets[@]}"; do
    st=() mt=()
    for task in "${TASKS[@]}"; do st+=("$task-adapter-s$seed"); mt+=("mta-s$seed-$task"); done
    run "$OUT/runs/$target-fusion-s$seed" "$ADAPT" fuse "${st[@]}" --target "$target" --model "$MODEL" \
      --data-dir "${DIR[$target]}" seed=$seed $(common) ${LR_FUSION:+learning_rate=$LR_FUSION}
    run "$OUT/runs/$target-fusion-mta-s$seed" "$ADAPT" fuse "${mt[@]}" --target "$target" --model "$mta_base" \
      --data-dir "${DIR[$target]}" seed=$seed $(common) ${LR_FUSION:+learning_rate=$LR_FUSION}
  done
done

"$ADAPT" results "$OUT"/runs --wall-time --output "$OUT/table.md"
cat "$OUT/table.md"
fusions=() data=()
for target in "${targets[@]}"; do fusions+=("$target-fusion-s$first"); data+=(--data-dir "$target=${DIR[$target]}"); done
"$ADAPT" inspect-activations "${fusions[@]}" --model "$MODEL" "${data[@]}" --out "$OUT/activations" --quiet
mta_base=$(base_of "$OUT/runs/mta-s$first")
fusions=()
for target in "${targets[@]}"; do fusions+=("$target-fusion-mta-s$first"); done
"$ADAPT" inspect-activations "${fusions[@]}" --model "$mta_base" "${data[@]}" --out "$OUT/activations-mta" --quiet
