"""max_train_samples / max_eval_samples: a seeded random subset (stratified for classification), recorded in the
run and reused on resume; never the first N rows of a file that may be ordered by genre or label."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from adapter_cli.errors import UsageError
from adapter_cli.tasks import get_task
from adapter_cli.tasks.loading import load_split, read_table
from adapter_cli.tasks.subsets import sample_indices
from adapter_cli.training.data import SUBSET_FILE, load_examples, write_subsets


def _sorted_labels() -> list[int]:
    return [0] * 600 + [1] * 300 + [2] * 100  # ordered by label, as many original files are


def test_stratified_shares_stay_within_one_row_of_proportional() -> None:
    labels = _sorted_labels()
    counts = Counter(labels)
    for size in (1, 2, 7, 150, 333, 999):
        strategy, picked = sample_indices(labels, size, seed=3, stratify=True)
        assert strategy == "stratified" and len(picked) == size == len(set(picked))
        assert picked == sorted(picked) and all(0 <= i < len(labels) for i in picked)
        got = Counter(labels[i] for i in picked)
        for label, count in counts.items():
            assert abs(got[label] - size * count / len(labels)) < 1, (size, label, got)
    # odd counts: 7/5/3 rows, 8 drawn
    labels = ["a"] * 7 + ["b"] * 5 + ["c"] * 3
    got = Counter(labels[i] for i in sample_indices(labels, 8, seed=0, stratify=True)[1])
    assert sum(got.values()) == 8 and all(abs(got[k] - 8 * c / 15) < 1 for k, c in Counter(labels).items())


def test_deterministic_per_seed_and_different_across_seeds() -> None:
    labels = _sorted_labels()
    for stratify in (True, False):
        a = sample_indices(labels, 100, seed=42, stratify=stratify)
        assert a == sample_indices(labels, 100, seed=42, stratify=stratify)
        assert a[1] != sample_indices(labels, 100, seed=43, stratify=stratify)[1]
    assert sample_indices(labels, 100, seed=42, stratify=True, salt="train") != \
        sample_indices(labels, 100, seed=42, stratify=True, salt="eval")


def test_a_size_of_at_least_all_rows_keeps_every_row() -> None:
    labels = _sorted_labels()
    for size in (None, len(labels), len(labels) + 5):
        assert sample_indices(labels, size, seed=1, stratify=True) == ("all", list(range(len(labels))))


def test_regression_is_a_plain_random_sample_not_the_first_rows() -> None:
    scores = [i / 10 for i in range(1000)]
    strategy, picked = sample_indices(scores, 50, seed=42, stratify=False)
    assert strategy == "random" and len(picked) == 50
    assert picked != list(range(50)) and max(picked) > 500


def _sorted_task(tmp_path, n: int = 40):
    """A user task whose train file holds all 'neg' rows first, then all 'pos' rows."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    rows = [f"bad film {i},neg" for i in range(n)] + [f"good film {i},pos" for i in range(n)]
    (tmp_path / "train.csv").write_text("text,label\n" + "\n".join(rows) + "\n")
    (tmp_path / "dev.csv").write_text("text,label\n" + "\n".join(rows[::4]) + "\n")
    (tmp_path / "t.yaml").write_text("name: t\nkind: single\nlabels: [neg, pos]\nmetrics: [accuracy]\n"
                                     "columns: {text: text, label: label}\nlocal: {train: train.csv, eval: dev.csv}\n")
    return get_task(str(tmp_path / "t.yaml"))


def test_the_training_data_is_a_stratified_subset_and_is_recorded(tmp_path) -> None:
    task = _sorted_task(tmp_path)
    train, dev, record = load_examples(task, None, seed=42, max_train=20, max_eval=None)
    assert Counter(e.label for e in train) == {0: 10, 1: 10}  # the first 20 rows would all be 'neg'
    assert len(dev) == 20 and record["eval"]["strategy"] == "all" and "indices" not in record["eval"]
    everything = load_split(task, "train")
    assert train == [everything[i] for i in record["train"]["indices"]]
    assert record["train"] | {"indices": None} == {
        "strategy": "stratified", "seed": 42, "requested": 20, "rows": 20, "of": 80, "indices": None,
        "indices_sha256": record["train"]["indices_sha256"]}
    again = load_examples(task, None, seed=42, max_train=20, max_eval=None)
    assert again[2] == record and load_examples(task, None, seed=7, max_train=20, max_eval=None)[2] != record


def test_a_resumed_run_reads_the_recorded_subset(tmp_path) -> None:
    task = _sorted_task(tmp_path)
    run = tmp_path / "run"
    run.mkdir()
    _, _, record = load_examples(task, None, seed=42, max_train=6, max_eval=4)
    # the record is authoritative: a resumed run reads exactly these rows, however a later version draws them
    from adapter_cli.tasks.subsets import indices_sha256

    record["train"].update(indices=[0, 1, 2, 40, 41, 42], indices_sha256=indices_sha256([0, 1, 2, 40, 41, 42]))
    write_subsets(run, record)
    assert json.loads((run / SUBSET_FILE).read_text()) == record
    train, dev, again = load_examples(task, None, seed=42, max_train=6, max_eval=4, resume_from=run)
    assert [e.texts[0] for e in train] == ["bad film 0", "bad film 1", "bad film 2", "good film 0", "good film 1",
                                           "good film 2"]
    assert again == record and len(dev) == 4
    # a resume with other data or another recipe fails in one line instead of training on other rows
    with pytest.raises(UsageError, match=r"cannot resume: .*subset.json records a train subset of 6 of 80 rows "
                                         r"\(seed 42\), but the train data now has 100 rows"):
        load_examples(_sorted_task(tmp_path / "more", 50), None, seed=42, max_train=6, max_eval=4, resume_from=run)
    with pytest.raises(UsageError, match="the recipe now says seed 7"):
        load_examples(task, None, seed=7, max_train=6, max_eval=4, resume_from=run)
    record["train"]["indices"][0] = 3  # edited by hand: the hash no longer matches
    write_subsets(run, record)
    with pytest.raises(UsageError, match="row indices do not match their recorded hash"):
        load_examples(task, None, seed=42, max_train=6, max_eval=4, resume_from=run)


def test_training_writes_the_subset_and_resumes_on_it(tmp_path, monkeypatch) -> None:
    from conftest import save_tiny_model

    from adapter_cli.training.loop import train
    from adapter_cli.training.recipe import Recipe

    monkeypatch.setenv("ADAPT_CACHE", str(tmp_path / "cache"))
    _sorted_task(tmp_path)
    recipe = Recipe(task=str(tmp_path / "t.yaml"), model=str(save_tiny_model(tmp_path / "tiny")), epochs=2,
                    batch_size=4, max_length=16, max_train_samples=12, save_every_steps=1, patience=None)
    assert train(recipe, tmp_path / "run", stop_after_steps=2)["status"] == "stopped"
    record = json.loads((tmp_path / "run" / SUBSET_FILE).read_text())
    assert record["train"]["rows"] == 12 and record["train"]["of"] == 80 and record["train"]["seed"] == 42
    summary = train(recipe, tmp_path / "run", resume=True)
    assert summary["train_examples"] == 12 and summary["eval_examples"] == 20
    assert json.loads((tmp_path / "run" / SUBSET_FILE).read_text()) == record


def test_a_stsb_subset_spans_more_than_one_genre(shared_dir) -> None:
    """STS-B's train.tsv is ordered by genre: its first 1,500 rows are all captions."""
    folder = shared_dir / "data" / "glue" / "STS-B"
    genres = [row["genre"] for row in read_table(folder / "train.tsv")]
    assert set(genres[:1500]) == {"main-captions"}  # what the first-N subset used to train on
    train, _, record = load_examples(get_task("stsb"), str(folder), seed=42, max_train=1500, max_eval=None)
    assert len(train) == 1500 and record["train"]["strategy"] == "random" and record["train"]["of"] == 5749
    seen = Counter(genres[i] for i in record["train"]["indices"])
    assert set(seen) == {"main-captions", "main-forum", "main-news"}, seen
    assert all(count > 50 for count in seen.values()), seen
