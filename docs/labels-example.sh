#!/usr/bin/env bash
# Tagging, multi-label and question-answering adapters on the embedded MiniLM, end to end and offline (docs/labels.md).
#
# No named-entity, multi-label or question-answering dataset ships offline, so this script writes three small
# templated ones: toy-ner/ (CoNLL columns: people, places and organisations in 20 sentence templates, BIO tags),
# toy-topics/ (sentences about any of sport, food and weather, JSONL label lists) and toy-qa/ (SQuAD JSON: four
# facts about people, places and organisations, and a question about one of them). Names in the dev sets are never in training, so the
# tagger must read context and word shape, not remember names. It then trains a Pfeiffer adapter for each with
# `adapt train`, scores them with `adapt infer --task`, and answers new sentences with `adapt infer --json`.
# With internet access the same commands take `--task conll2003`, `--task go_emotions` and `--task squad`.
#
#   bash docs/labels-example.sh [WORK_DIR]      # default: ./labels-example (about 10 minutes on 2 CPU cores)
set -euo pipefail
ADAPT=${ADAPT:-adapt}
PY=${PYTHON:-python3}
WORK=${1:-labels-example}
mkdir -p "$WORK"
cd "$WORK"
export ADAPT_CACHE=${ADAPT_CACHE:-$PWD/cache}

"$PY" - <<'EOF'
import json
import random
from pathlib import Path

rng = random.Random(0)
PEOPLE = ["Anna Berg", "Tom Hale", "Maria Costa", "Jonas Weber", "Lena Novak", "Omar Haddad", "Sofia Rossi",
          "David Kim", "Elena Petrova", "Lucas Martin", "Yuki Sato", "Priya Nair", "Carlos Ruiz", "Ines Duarte",
          "Peter Olsen", "Hannah Fischer", "Mateo Silva", "Chloe Dubois", "Ivan Horvat", "Nora Lund"]
PLACES = ["Berlin", "Lisbon", "Nairobi", "Osaka", "Toronto", "Lyon", "Krakow", "Bergen", "Quito", "Adelaide",
          "Porto", "Leeds", "Dublin", "Seville", "Tallinn", "Malmo", "Cusco", "Hanoi", "Tunis", "Zurich"]
ORGS = ["Nordbank", "Acme Corp", "Helix Labs", "Blue River", "Union Rail", "Vortex Media", "Greenfield Farms",
        "Atlas Insurance", "Kestrel Air", "Orbit Systems", "Maple Foods", "Stone Bridge", "Polar Energy",
        "Crescent Bank", "Summit Health", "Harbor Lines", "Iron Valley", "Silver Arc", "Cobalt Works", "Red Pine"]
TEMPLATES = ["{P} lives in {L} .", "{P} works for {O} in {L} .", "{O} opened an office in {L} .",
             "Yesterday {P} met {P} in {L} .", "{O} hired {P} last year .", "{P} moved from {L} to {L} .",
             "The mayor of {L} praised {O} .", "{P} said {O} will grow .", "In {L} , {P} founded {O} .",
             "{O} and {O} signed a deal in {L} .", "A spokesman for {O} declined to comment .",
             "{P} flew to {L} on Monday .", "Shares of {O} fell after {P} resigned .", "{P} visited {L} twice .",
             "Fans in {L} cheered for {P} .", "{O} sued {O} over a patent .", "{P} thanked the people of {L} .",
             "Police in {L} questioned {P} .", "{O} will build a plant near {L} .", "{P} and {P} run {O} ."]
TAG = {"P": "PER", "L": "LOC", "O": "ORG"}


def sentence(pools):
    words, tags = [], []
    for part in rng.choice(TEMPLATES).split():
        if part.startswith("{") and part.endswith("}"):
            kind = part[1]
            name = rng.choice(pools[kind]).split()
            words += name
            tags += [f"B-{TAG[kind]}"] + [f"I-{TAG[kind]}"] * (len(name) - 1)
        else:
            words.append(part)
            tags.append("O")
    return words, tags


def split(names):  # the last quarter of every list is kept for dev: unseen names
    cut = len(names) * 3 // 4
    return names[:cut], names[cut:]


train_pools, dev_pools = {}, {}
for kind, names in (("P", PEOPLE), ("L", PLACES), ("O", ORGS)):
    train_pools[kind], dev_pools[kind] = split(names)
ner = Path("toy-ner")
ner.mkdir(exist_ok=True)
for name, pools, n in (("train.txt", train_pools, 400), ("dev.txt", dev_pools, 100)):
    lines = ["-DOCSTART- O", ""]
    for _ in range(n):
        words, tags = sentence(pools)
        lines += [f"{w} {t}" for w, t in zip(words, tags)] + [""]
    (ner / name).write_text("\n".join(lines))
(ner / "task.yaml").write_text("name: toy_ner\nkind: tagging\nlabels: [O, B-PER, I-PER, B-LOC, I-LOC, B-ORG, I-ORG]\n"
                               "metrics: [entity_f1, accuracy]\nlocal: {train: train.txt, eval: dev.txt}\n")

TOPICS = {
    "sport": ["the match went to extra time", "she scored twice in the final", "the team lost at home",
              "the runner broke the record", "our coach changed the line-up", "the referee gave a penalty",
              "he trains for the marathon", "the league starts in August"],
    "food": ["the soup was too salty", "we baked bread this morning", "the restaurant serves fresh fish",
             "I had pasta for lunch", "the cake needs more sugar", "they grill vegetables on Sundays",
             "the market sells ripe tomatoes", "dinner was rice and beans"],
    "weather": ["it rained all afternoon", "a cold wind blew from the north", "the forecast says snow",
                "the sun finally came out", "fog covered the valley", "a storm is coming tonight",
                "the heat lasted a week", "thunder kept us awake"],
}
topics = Path("toy-topics")
topics.mkdir(exist_ok=True)
for name, n, half in (("train.jsonl", 400, 0), ("dev.jsonl", 100, 1)):
    rows = []
    for _ in range(n):
        chosen = rng.sample(sorted(TOPICS), rng.randint(1, 3))
        clauses = [rng.choice(TOPICS[t][half::2]) for t in chosen]  # dev sentences are never in training
        rows.append(json.dumps({"text": " and ".join(clauses) + " .", "topics": sorted(chosen)}))
    (topics / name).write_text("\n".join(rows) + "\n")
(topics / "task.yaml").write_text("name: toy_topics\nkind: multilabel\nlabels: [sport, food, weather]\n"
                                  "metrics: [micro_f1, macro_f1, accuracy]\ncolumns: {text: text, label: topics}\n"
                                  "local: {train: train.jsonl, eval: dev.jsonl}\n")

FACTS = [  # (sentence, question, which slot answers it)
    ("{P} lives in {L} .", "Where does {P} live ?", "L"), ("{P} lives in {L} .", "Who lives in {L} ?", "P"),
    ("{P} works for {O} .", "Who does {P} work for ?", "O"), ("{O} hired {P} last year .", "Who did {O} hire ?", "P"),
    ("{O} opened an office in {L} .", "Where did {O} open an office ?", "L"),
    ("{P} founded {O} .", "Who founded {O} ?", "P"), ("{P} founded {O} .", "What did {P} found ?", "O"),
]


def fact(pools):
    sentence, question, slot = rng.choice(FACTS)
    names = {k: rng.choice(pools[k]) for k in "PLO"}
    fill = lambda text: text.replace("{P}", names["P"]).replace("{L}", names["L"]).replace("{O}", names["O"])
    return fill(sentence), fill(question), names[slot]


qa = Path("toy-qa")
qa.mkdir(exist_ok=True)
for name, pools, n in (("train.json", train_pools, 400), ("dev.json", dev_pools, 100)):
    paragraphs = []
    for i in range(n):
        sentences = [fact(pools) for _ in range(4)]  # the question asks about one of four facts
        target = rng.randrange(4)
        context = " ".join(s for s, _, _ in sentences)
        before = " ".join(s for s, _, _ in sentences[:target]) + (" " if target else "")
        sentence, question, answer = sentences[target]
        start = len(before) + sentence.index(answer)
        paragraphs.append({"context": context, "qas": [{"id": f"{name}-{i}", "question": question,
                                                         "answers": [{"text": answer, "answer_start": start}]}]})
    (qa / name).write_text(json.dumps({"version": "1.1", "data": [{"title": "toy", "paragraphs": paragraphs}]}))
(qa / "task.yaml").write_text("name: toy_qa\nkind: qa\nmetrics: [token_f1, exact_match]\n"
                              "local: {train: train.json, eval: dev.json}\n")
EOF

"$ADAPT" train --task toy-ner/task.yaml --config pfeiffer epochs=10 learning_rate=2e-3 batch_size=16 --overwrite
"$ADAPT" train --task toy-topics/task.yaml --config pfeiffer epochs=4 learning_rate=1e-3 batch_size=16 --overwrite
"$ADAPT" train --task toy-qa/task.yaml --config pfeiffer epochs=15 learning_rate=3e-3 batch_size=16 --overwrite
"$ADAPT" infer -m minilm -a toy_ner --task toy-ner/task.yaml --metrics ner-metrics.json > /dev/null
"$ADAPT" infer -m minilm -a toy_topics --task toy-topics/task.yaml --metrics topics-metrics.json > /dev/null
"$ADAPT" infer -m minilm -a toy_ner --json "Greta Lind works for Quantum Dynamics in Vienna ." \
  "Yesterday Karl Moser met Ada Park in Oslo ."
"$ADAPT" infer -m minilm -a toy_topics --json "the pitch was muddy after the rain" "we ate soup before the match"
"$ADAPT" infer -m minilm -a toy_qa --task toy-qa/task.yaml --metrics qa-metrics.json > /dev/null
CONTEXT="Rita Vance lives in Genoa . Omar Said founded Lumen Tech . Lumen Tech hired Rita Vance last year ."
"$ADAPT" infer -m minilm -a toy_qa --json --pair "Where does Rita Vance live ?" "$CONTEXT" \
  "Who founded Lumen Tech ?" "$CONTEXT"
