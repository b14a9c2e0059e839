#!/usr/bin/env bash
# A MAD-X round trip (Pfeiffer et al. 2020) on real weights: two language adapters trained with masked
# language modelling on the embedded all-MiniLM-L6-v2, a task adapter trained on SST-2 stacked on the first,
# then the same task adapter run under the first, under the second, and alone.
#
#   GLUE=../shared/data/glue bash docs/madx-experiment.sh        # about 20 minutes on 2 CPU cores
#
# No text in another language is available offline, so "language" b is another domain of English: news and
# Wikipedia-style sentences from MRPC and RTE, against a's movie-review phrases from SST-2. The corpora are
# built here from the GLUE files (nothing is copied into the repository). Results: $OUT/results.jsonl.
set -euo pipefail
GLUE=${GLUE:-../shared/data/glue}
OUT=${OUT:-out-madx}
LINES=${LINES:-3000}                  # training lines per corpus (a); b gets half as many (longer sentences)
export ADAPT_CACHE=${ADAPT_CACHE:-$OUT/cache}
ADAPT=${ADAPT:-.venv/bin/adapt}
PY=${PY:-.venv/bin/python}
mkdir -p "$OUT/runs"

"$PY" - "$GLUE" "$OUT" "$LINES" <<'PYEOF'
import csv, random, sys
from pathlib import Path
glue, out, n = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
def column(path, *names):
    with open(path, encoding="utf-8-sig", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    return [r[c].strip() for r in rows for c in names if r.get(c)]
def write(name, lines, n_train, n_dev):
    lines = sorted(set(lines))
    random.Random(0).shuffle(lines)
    (out / name).mkdir(parents=True, exist_ok=True)
    (out / name / "train.txt").write_text("\n".join(lines[:n_train]) + "\n", encoding="utf-8")
    (out / name / "dev.txt").write_text("\n".join(lines[n_train:n_train + n_dev]) + "\n", encoding="utf-8")
write("corpus_a", column(glue / "SST-2" / "train.tsv", "sentence"), n, 300)
write("corpus_b", column(glue / "MRPC" / "train.tsv", "#1 String", "#2 String")
      + column(glue / "RTE" / "train.tsv", "sentence1", "sentence2"), n // 2, 150)
PYEOF

t() { local start=$SECONDS; "$@"; echo "wall $(( SECONDS - start )) s: ${*:1:4}" >&2; }
LANG_ARGS=(--config pfeiffer+inv --recipe quick max_length=128 epochs=4 batch_size=16 learning_rate=5e-3 patience=null
           --quiet --overwrite --json)
t "$ADAPT" train --task mlm --data-dir "$OUT/corpus_a" --language en --name lang_a --run-dir "$OUT/runs/lang_a" \
    "${LANG_ARGS[@]}" > "$OUT/lang_a.json"
t "$ADAPT" train --task mlm --data-dir "$OUT/corpus_b" --language en-news --name lang_b --run-dir "$OUT/runs/lang_b" \
    "${LANG_ARGS[@]}" > "$OUT/lang_b.json"
t "$ADAPT" train --task sst2 --data-dir "$GLUE/SST-2" --stack-under lang_a --run-dir "$OUT/runs/sst2_madx" --recipe quick \
    max_train_samples=2000 epochs=2 max_length=128 --quiet --overwrite --json > "$OUT/sst2_madx.json"

: > "$OUT/results.jsonl"
for lang in lang_a lang_b; do             # each language adapter's perplexity on both dev texts
  for text in corpus_a corpus_b; do
    t "$ADAPT" infer -m minilm -a "$lang" --task mlm --data-dir "$OUT/$text" >> "$OUT/results.jsonl"
  done
done
for setup in "lang_a" "lang_b" ""; do     # the task adapter under each language adapter, and alone
  if [ -n "$setup" ]; then args=(-a "$setup" -a sst2_madx --active "stack($setup,sst2)"); else args=(-a sst2_madx); fi
  t "$ADAPT" infer -m minilm "${args[@]}" --task sst2 --data-dir "$GLUE/SST-2" --output "$OUT/pred-${setup:-none}.jsonl" \
      --metrics "$OUT/metrics-${setup:-none}.json"
  echo "{\"setup\": \"${setup:-none}\", \"metrics\": $(cat "$OUT/metrics-${setup:-none}.json")}" >> "$OUT/results.jsonl"
done
cat "$OUT/results.jsonl"
