"""Task registry and loading: built-ins, aliases, local files, and every kind of bad data."""

from __future__ import annotations

import pytest

from adapter_cli.errors import UsageError
from adapter_cli.tasks import builtin_tasks, get_task
from adapter_cli.tasks.loading import load_split
from adapter_cli.tasks.metrics import compute
from conftest import write_sentiment_task

PAPER_TASKS = ["cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte", "wnli", "cb", "boolq", "copa", "imdb",
               "scitail", "sick", "argument", "winogrande", "hellaswag", "socialiqa", "cosmosqa", "csqa"]


def test_registry_holds_the_paper_tasks() -> None:
    names = {t.name for t in builtin_tasks().values()}
    assert set(PAPER_TASKS) <= names
    assert get_task("sst-2").name == "sst2" and get_task("STS-B").name == "stsb"
    assert get_task("cola").main_metric == "mcc" and get_task("mrpc").main_metric == "f1"
    assert get_task("stsb").kind == "regression" and get_task("copa").kind == "multiple_choice"


def test_unknown_task_suggests() -> None:
    with pytest.raises(UsageError, match="did you mean 'rte'"):
        get_task("rtee")


def test_user_task_files(tmp_path) -> None:
    for fmt in ("csv", "tsv"):
        spec = get_task(str(write_sentiment_task(tmp_path / fmt, fmt=fmt)))
        train = load_split(spec, "train")
        assert len(train) == 96 and {e.label for e in train} == {0, 1}


def test_jsonl_and_parquet(tmp_path) -> None:
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"s": "a good film", "y": "pos"}, {"s": "bad", "y": "neg"}]
    (tmp_path / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "dev.parquet")
    (tmp_path / "t.yaml").write_text("name: t\nkind: single\nlabels: [neg, pos]\nmetrics: [accuracy]\n"
                                     "columns: {text: s, label: y}\nlocal: {train: train.jsonl, eval: dev.parquet}\n")
    spec = get_task(str(tmp_path / "t.yaml"))
    assert [e.label for e in load_split(spec, "eval")] == [1, 0]


def _task(tmp_path, train: str, dev: str = "text,label\nok,pos\n", extra: str = ""):
    (tmp_path / "train.csv").write_text(train)
    (tmp_path / "dev.csv").write_text(dev)
    (tmp_path / "t.yaml").write_text("name: t\nkind: single\nlabels: [neg, pos]\nmetrics: [accuracy]\n"
                                     "columns: {text: text, label: label}\nlocal: {train: train.csv, eval: dev.csv}\n"
                                     + extra)
    return get_task(str(tmp_path / "t.yaml"))


def test_label_outside_the_label_set(tmp_path) -> None:
    spec = _task(tmp_path, "text,label\ngood,pos\nmeh,neutral\n")
    with pytest.raises(UsageError, match="row 2: label 'neutral' is outside the label set"):
        load_split(spec, "train")
    spec = _task(tmp_path, "text,label\ngood,1\nmeh,7\n")
    with pytest.raises(UsageError, match="label '7' is outside"):
        load_split(spec, "train")


def test_wrong_columns_and_empty_files(tmp_path) -> None:
    spec = _task(tmp_path, "sentence,label\ngood,pos\n")
    with pytest.raises(UsageError, match="no column 'text'; columns: sentence, label"):
        load_split(spec, "train")
    spec = _task(tmp_path, "")
    with pytest.raises(UsageError, match="is empty"):
        load_split(spec, "train")
    spec = _task(tmp_path, "text,label\n")
    with pytest.raises(UsageError, match="header .* but no rows"):
        load_split(spec, "train")


def test_glue_data_dir_missing_a_split(tmp_path) -> None:
    (tmp_path / "train.tsv").write_text("index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n")
    with pytest.raises(UsageError, match="no eval file dev.tsv"):
        load_split(get_task("rte"), "eval", tmp_path)
    assert load_split(get_task("rte"), "train", tmp_path)[0].label == 0


def test_malformed_task_yaml(tmp_path) -> None:
    (tmp_path / "t.yaml").write_text("name: t\nkind: single\nlables: [a, b]\nmetrics: [accuracy]\n")
    with pytest.raises(UsageError, match="did you mean 'labels'"):
        get_task(str(tmp_path / "t.yaml"))
    (tmp_path / "u.yaml").write_text("name: t\nkind: single\nlabels: [a, b]\nmetrics: [acc]\n")
    with pytest.raises(UsageError, match="unknown metric 'acc'"):
        get_task(str(tmp_path / "u.yaml"))


def test_glue_originals(shared_dir) -> None:
    glue = shared_dir / "data" / "glue"
    sizes = {"cola": (8551, 1043, "CoLA"), "sst2": (67349, 872, "SST-2"), "mrpc": (3668, 408, "MRPC"),
             "stsb": (5749, 1500, "STS-B"), "rte": (2490, 277, "RTE")}
    for name, (n_train, n_eval, folder) in sizes.items():
        spec = get_task(name)
        assert len(load_split(spec, "train", glue / folder)) == n_train, name
        assert len(load_split(spec, "eval", glue / folder)) == n_eval, name


def test_multiple_choice_rows(tmp_path) -> None:
    import json

    rows = [{"premise": "The man broke his toe.", "question": "cause", "choice1": "He dropped a hammer.",
             "choice2": "He cooked dinner.", "label": 0}]
    for f in ("train.jsonl", "val.jsonl"):
        (tmp_path / f).write_text("\n".join(json.dumps(r) for r in rows))
    ex = load_split(get_task("copa"), "train", tmp_path)[0]
    assert ex.label == 0 and ex.choices[1] == ("The man broke his toe. cause", "He cooked dinner.")


def test_metrics() -> None:
    assert compute(["accuracy", "f1"], [1, 0, 1, 1], [1, 0, 0, 1]) == {"accuracy": 0.75, "f1": 0.8}
    assert compute(["mcc"], [1, 0, 1, 0], [1, 0, 1, 0])["mcc"] == 1.0
    r = compute(["pearson", "spearman"], [0.1, 0.4, 0.35, 0.8], [0.0, 0.5, 0.3, 1.0])
    assert 0.9 < r["pearson"] <= 1 and r["spearman"] == 1.0


def test_hub_code_path_with_a_local_dataset_folder(tmp_path) -> None:
    """The Hub path goes through datasets.load_dataset, which also reads a local folder: same code, no network."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.csv").write_text("sentence,label\ngood,1\nbad,0\nfine,1\n")
    (tmp_path / "data" / "validation.csv").write_text("sentence,label\nnice,1\n")
    (tmp_path / "t.yaml").write_text(
        "name: hubby\nkind: single\nlabels: [neg, pos]\nmetrics: [accuracy]\n"
        f"hub: {{path: {tmp_path / 'data'}, train: train, eval: validation}}\n"
        "columns: {text: sentence, label: label}\nlocal: {train: train.csv, eval: validation.csv}\n")
    from adapter_cli.tasks import task_from_dict
    import yaml

    spec = task_from_dict(yaml.safe_load((tmp_path / "t.yaml").read_text()), "builtin-like")
    from adapter_cli.tasks import loading

    rows, columns, where = loading._read_hub(spec, "train")
    assert len(rows) == 3 and columns["text"] == "sentence"
    assert [e.label for e in [loading._example(spec, r, columns, where, i) for i, r in enumerate(rows)]] == [1, 0, 1]
