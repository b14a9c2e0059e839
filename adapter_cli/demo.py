"""``make demo``: the main job, offline, on the embedded all-MiniLM-L6-v2.

Generates two small tasks deterministically (no copied data), trains a Pfeiffer adapter for each with
the base frozen, compares with a head-only baseline, puts the adapters into a demo cache, and runs
inference by cache name. Everything is written under ``.demo/`` in the current directory.
"""

from __future__ import annotations

import csv
import os
import random
import shutil
import sys
import time
from pathlib import Path
from typing import Any

POSITIVE = ["wonderful", "delightful", "brilliant", "moving", "charming", "superb", "gripping", "heartfelt",
            "funny", "beautiful", "clever", "excellent", "joyful", "stunning", "touching", "inspired"]
NEGATIVE = ["dreadful", "boring", "clumsy", "tedious", "awful", "lifeless", "bland", "painful",
            "pointless", "dull", "messy", "terrible", "weak", "forgettable", "irritating", "shallow"]
SUBJECTS = ["the film", "this movie", "the story", "the acting", "the ending", "the script", "the soundtrack",
            "the cast", "the direction", "the dialogue", "the plot", "the premise"]
FRAMES = ["{s} was {a}.", "honestly, {s} felt {a}.", "i thought {s} was {a} overall.", "{s} is simply {a}.",
          "we found {s} rather {a}.", "what a {a} experience {s} was."]
TOPICS = {
    "sports": ["the striker scored twice in the final", "the marathon runners crossed the line", "the coach changed "
               "the line-up at half time", "the tennis match went to five sets", "the team won the league title",
               "the goalkeeper saved a penalty", "the cyclists climbed the mountain stage", "fans cheered in the stadium"],
    "cooking": ["simmer the sauce for ten minutes", "the bread rose overnight in the oven", "add garlic and fry the "
                "onions", "the chef seasoned the soup with pepper", "knead the dough until smooth", "the cake needs "
                "more sugar", "roast the vegetables with olive oil", "she baked fresh cookies for dinner"],
    "computing": ["the server crashed after the update", "compile the code before running the tests", "the laptop "
                  "battery drains quickly", "install the driver for the graphics card", "the database query was "
                  "too slow", "the program leaks memory", "reboot the router to fix the network", "the app stores "
                  "data in the cloud"],
    "weather": ["heavy rain is expected tomorrow", "the storm brought strong winds to the coast", "it will be sunny and "
                "warm all week", "snow covered the mountain roads", "a cold front moves in tonight", "fog delayed "
                "the morning flights", "the heatwave broke records", "thunder rolled across the valley"],
}


def _sentiment(rng: random.Random, n: int, adjectives: tuple[list[str], list[str]]) -> list[dict]:
    rows = []
    for _ in range(n):
        label = rng.randint(0, 1)
        text = rng.choice(FRAMES).format(s=rng.choice(SUBJECTS), a=rng.choice(adjectives[label]))
        rows.append({"text": text, "label": ["negative", "positive"][label]})
    return rows


def _topics(rng: random.Random, n: int, half: int) -> list[dict]:
    rows, names = [], sorted(TOPICS)
    for _ in range(n):
        same = rng.randint(0, 1)
        a = rng.choice(names)
        b = a if same else rng.choice([t for t in names if t != a])
        pool_a, pool_b = TOPICS[a][:half], TOPICS[b][:half]
        if half < 0:
            pool_a, pool_b = TOPICS[a][half:], TOPICS[b][half:]
        first, second = rng.choice(pool_a), rng.choice(pool_b)
        rows.append({"first": first, "second": second, "label": ["different", "same"][same]})
    return rows


def make_tasks(root: Path, seed: int = 0) -> dict[str, Path]:
    """Two task folders (task.yaml + train/dev CSV). Dev uses words and sentences unseen in training."""
    rng = random.Random(seed)
    split = len(POSITIVE) * 3 // 4
    tasks = {
        "demo_sentiment": (
            _sentiment(rng, 640, (NEGATIVE[:split], POSITIVE[:split])),
            _sentiment(rng, 200, (NEGATIVE[split:], POSITIVE[split:])),
            "catalog: sentiment/demo-reviews\nkind: single\nlabels: [negative, positive]\nmetrics: [accuracy, f1]\ncolumns: {text: text, label: label}\n"),
        "demo_topic": (
            _topics(rng, 640, 6), _topics(rng, 200, -2),
            "catalog: sts/demo-topic-pairs\nkind: pair\nlabels: [different, same]\nmetrics: [accuracy, f1]\n"
            "columns: {text: first, pair: second, label: label}\n"),
    }
    paths = {}
    for name, (train, dev, spec) in tasks.items():
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for split_name, rows in (("train", train), ("dev", dev)):
            with open(folder / f"{split_name}.csv", "w", newline="", encoding="utf-8") as f:
                writer = csv.DictWriter(f, fieldnames=list(rows[0]))
                writer.writeheader()
                writer.writerows(rows)
        (folder / "task.yaml").write_text(f"name: {name}\ndescription: generated demo task\n{spec}"
                                          "local: {train: train.csv, eval: dev.csv}\n", encoding="utf-8")
        paths[name] = folder / "task.yaml"
    return paths


def main() -> int:
    root = Path(".demo").resolve()
    shutil.rmtree(root, ignore_errors=True)
    os.environ["ADAPT_CACHE"] = str(root / "cache")
    from .cli._common import quiet_libraries

    quiet_libraries()
    start = time.perf_counter()
    print("adapt demo: all-MiniLM-L6-v2 (embedded, offline), two generated tasks\n", flush=True)
    tasks = make_tasks(root / "tasks")
    results = _train_all(root, tasks)
    model, tokenizer, texts, answers = _infer()
    same = _share(root, tasks, model, tokenizer, texts, answers)
    adapter_accuracy = [acc for _, method, acc, _ in results if method == "adapter"]
    os.environ["ADAPT_CACHE"] = str(root / "cache")
    print(f"\ndone in {time.perf_counter() - start:.0f}s. Runs in {root / 'runs'}, cache in {root / 'cache'}. Next:")
    print(f"  ADAPT_CACHE={root / 'cache'} .venv/bin/adapt cache ls")
    print(f"  ADAPT_CACHE={root / 'cache'} .venv/bin/adapt infer -m minilm -a demo_sentiment 'what a lovely film'")
    print(f"  .venv/bin/adapt search --registry {root / 'hub'}")
    print("  .venv/bin/adapt train --task rte --data-dir path/to/glue/RTE --config pfeiffer")
    return 0 if min(adapter_accuracy) >= 0.75 and same else 1


def _train_all(root: Path, tasks: dict[str, Path]) -> list[tuple[str, str, float, float]]:
    """An adapter and a head-only baseline per task; the adapters go into the cache."""
    from .cli._progress import reporter
    from .runs import extract
    from .training.loop import train
    from .training.recipe import Recipe

    results = []
    for name, task in tasks.items():
        for method in ("adapter", "head"):
            recipe = Recipe(task=str(task), model="minilm", method=method, adapter="pfeiffer", epochs=3, patience=None,
                            learning_rate=1e-3 if method == "adapter" else 3e-3, batch_size=32, max_length=48,
                            save_every_steps=1000, seed=0)
            t0 = time.perf_counter()
            summary = train(recipe, root / "runs" / f"{name}-{method}", reporter=reporter(quiet=False))
            if method == "adapter":
                extract(root / "runs" / f"{name}-{method}")
            results.append((name, method, summary["best"]["metrics"]["accuracy"], time.perf_counter() - t0))
    print(f"\n{'task':<16}{'method':<10}{'dev accuracy':>13}{'chance':>8}{'time':>8}")
    for name, method, acc, secs in results:
        print(f"{name:<16}{method:<10}{acc:>13.3f}{0.5:>8.2f}{secs:>7.0f}s")
    return results


def _infer() -> tuple[Any, Any, list[str], list[dict[str, Any]]]:
    """The cached sentiment adapter on two new sentences."""
    from .defaults import embedded_model_path
    from .inference import Row, predict
    from .model import AdapterModel
    from .resolve import locate
    from .tokenizer import load_tokenizer

    model = AdapterModel.from_pretrained(embedded_model_path())
    tokenizer = load_tokenizer(str(embedded_model_path()), model.vocab_size, "minilm")
    model.load_adapter(locate("demo_sentiment", model.name_or_path, "adapter"))
    texts = ["the soundtrack was absolutely magical.", "a sluggish, joyless two hours."]
    print("\ninference with the cached demo_sentiment adapter:")
    answers = list(predict(model, tokenizer, [Row(t) for t in texts], active="demo_sentiment"))
    for p in answers:
        print(f"  {p['label']:<9} {p['score']:.2f}  {p['text']}")
    return model, tokenizer, texts, answers


def _share(root: Path, tasks: dict[str, Path], model: Any, tokenizer: Any, texts: list[str],
           answers: list[dict[str, Any]]) -> bool:
    """Publish both adapters to a local registry, pull one into an empty cache: the same answers?"""
    from .defaults import embedded_model_path
    from .hub.pack import pack
    from .hub.pull import pull
    from .hub.registries import open_registry
    from .hub.site import build_site
    from .inference import Row, predict
    from .model import AdapterModel

    registry = open_registry(str(root / "hub"))
    for name in tasks:
        archive, card, digest = pack(name, root / "dist", model="minilm", author="demo",
                                     description="made by make demo")
        registry.publish(archive, card, digest)
    os.environ["ADAPT_CACHE"] = str(root / "fresh-cache")
    entry = pull("sentiment/demo-reviews@demo", model_id=model.name_or_path, registries=[str(root / "hub")])
    shared = AdapterModel.from_pretrained(embedded_model_path())
    shared.load_adapter(entry.path)
    again = list(predict(shared, tokenizer, [Row(t) for t in texts], active="demo_sentiment"))
    same = [p["score"] for p in again] == [p["score"] for p in answers]
    site = build_site(registry, root / "site", title="adapt demo hub")
    print(f"\nshared: published 2 adapters to {root / 'hub'}, pulled sentiment/demo-reviews@demo into a fresh "
          f"cache (sha256 verified): {'identical' if same else 'DIFFERENT'} predictions; explore page {site['index']}")
    return same


if __name__ == "__main__":
    sys.exit(main())
