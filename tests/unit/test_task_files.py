"""Original files a task YAML must be able to describe: the split in a column of one file (SICK's SemEval_set),
the delimiter of a file whose extension does not say (SICK.txt), and a read error that names the format it
assumed."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from adapter_cli.errors import UsageError
from adapter_cli.tasks import get_task
from adapter_cli.tasks.loading import load_split

SICK_HEADER = ["pair_ID", "sentence_A", "sentence_B", "entailment_label", "relatedness_score", "entailment_AB",
               "entailment_BA", "sentence_A_original", "sentence_B_original", "sentence_A_dataset",
               "sentence_B_dataset", "SemEval_set"]
# (split, label): TRAIN and TEST interleaved as in the original file; sentences hold commas and quotes
SICK_ROWS = [("TRAIN", "NEUTRAL"), ("TEST", "ENTAILMENT"), ("TRAIN", "ENTAILMENT"), ("TRIAL", "CONTRADICTION"),
             ("TRAIN", "CONTRADICTION"), ("TEST", "NEUTRAL"), ("TRIAL", "NEUTRAL"), ("TRAIN", "NEUTRAL")]


def write_sick(folder: Path) -> Path:
    """A small file shaped like the original SICK.txt: tab-separated, one file holding all three splits."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["\t".join(SICK_HEADER)]
    for n, (split, label) in enumerate(SICK_ROWS, 1):
        a, b = f'A man, "pair {n}", is playing', f"Someone plays, pair {n}"
        lines.append("\t".join([str(n), a, b, label, "3.5", "A_neutral_B", "B_neutral_A", a, b, "FLICKR",
                                "FLICKR", split]))
    (folder / "SICK.txt").write_text("\n".join(lines) + "\n")
    return folder


def _user_task(folder: Path, extra: str = 'delimiter: "\\t"') -> Path:
    (folder / "t.yaml").write_text(
        "name: my_sick\nkind: pair\nlabels: [entailment, neutral, contradiction]\nmetrics: [accuracy]\n"
        "local:\n  file: SICK.txt\n  split_column: SemEval_set\n  splits: {train: TRAIN, eval: TRIAL, test: TEST}\n"
        "  columns: {text: sentence_A, pair: sentence_B, label: entailment_label}\n"
        "  label_map: {ENTAILMENT: entailment, NEUTRAL: neutral, CONTRADICTION: contradiction}\n"
        + "".join(f"  {line}\n" for line in extra.splitlines()))
    return folder / "t.yaml"


def _pairs(split: str) -> list[int]:
    return [n for n, (s, _) in enumerate(SICK_ROWS, 1) if s == split]


def test_a_user_task_reads_its_splits_from_a_column_of_one_tab_separated_file(tmp_path) -> None:
    task = get_task(str(_user_task(write_sick(tmp_path))))
    train, dev = load_split(task, "train"), load_split(task, "eval")
    assert [e.texts for e in train] == [(f'A man, "pair {n}", is playing', f"Someone plays, pair {n}")
                                        for n in _pairs("TRAIN")]
    assert [e.texts[1] for e in dev] == [f"Someone plays, pair {n}" for n in _pairs("TRIAL")]
    assert [e.label for e in train] == [1, 0, 2, 1] and [e.label for e in dev] == [2, 1]
    # the same with format: tsv instead of a delimiter; TEST rows are never read
    task = get_task(str(_user_task(tmp_path, "format: tsv")))
    assert len(load_split(task, "train")) == 4 and len(load_split(task, "eval")) == 2


def test_a_row_error_names_the_files_row_number_within_a_split_column(tmp_path) -> None:
    folder = write_sick(tmp_path)
    text = (folder / "SICK.txt").read_text().replace("CONTRADICTION\t3.5", "UNKNOWN\t3.5", 1)  # pair 4, TRIAL
    (folder / "SICK.txt").write_text(text)
    task = get_task(str(_user_task(folder)))
    with pytest.raises(UsageError, match=r"SICK.txt \(SemEval_set = TRIAL\) row 4: label 'UNKNOWN' is not one of"):
        load_split(task, "eval")


@pytest.mark.parametrize("extra, assumed", [
    ("", r"comma-separated \(from its \.txt extension\)"),
    ('delimiter: ";"', r"semicolon-separated \(set by `delimiter:` in the task YAML\)"),
    ("format: csv", r"comma-separated \(set by `format:` in the task YAML\)"),
])
def test_a_wrong_delimiter_fails_in_one_line_naming_the_assumed_format(tmp_path, extra, assumed) -> None:
    task = get_task(str(_user_task(write_sick(tmp_path), extra)))
    with pytest.raises(UsageError) as caught:
        load_split(task, "train")
    message = str(caught.value)
    assert "\n" not in message
    assert re.search(
        rf"^read .*SICK\.txt as {assumed}, but found no column 'sentence_A'; columns: 'pair_ID\\t"
        r"sentence_A.*; set `delimiter:` or `format:` in the task YAML$", message), message


def test_a_wrong_column_in_a_csv_file_is_not_blamed_on_the_format(tmp_path) -> None:
    (tmp_path / "train.csv").write_text("sentence,label\ngood,pos\n")
    (tmp_path / "t.yaml").write_text("name: t\nkind: single\nlabels: [neg, pos]\nmetrics: [accuracy]\n"
                                     "columns: {text: text, label: label}\n"
                                     "local: {train: train.csv, eval: train.csv}\n")
    with pytest.raises(UsageError, match=r"^\S*train.csv has no column 'text'; columns: sentence, label$"):
        load_split(get_task(str(tmp_path / "t.yaml")), "train")


def test_the_builtin_sick_task_reads_the_original_sick_txt(tmp_path) -> None:
    folder = write_sick(tmp_path / "SICK")
    sick = get_task("sick")
    train, dev = load_split(sick, "train", folder), load_split(sick, "eval", folder)
    assert [e.texts[1] for e in train] == [f"Someone plays, pair {n}" for n in _pairs("TRAIN")]
    assert [e.label for e in train] == [1, 0, 2, 1]  # NEUTRAL, ENTAILMENT, CONTRADICTION, NEUTRAL
    assert [e.label for e in dev] == [2, 1]
    with pytest.raises(UsageError, match=r"has no train file SICK.txt \(task sick expects SICK.txt\)"):
        load_split(sick, "train", tmp_path)
    (tmp_path / "SICK.txt").write_text("pair_ID,sentence_A,sentence_B\n1,a,b\n")  # not the original file
    with pytest.raises(UsageError, match=r"as tab-separated \(as task sick's original files are\), but found no "
                                         r"column .*; `data_dir` must hold task sick's files as distributed"):
        load_split(sick, "train", tmp_path)


@pytest.mark.parametrize("local, message", [
    ("{file: a.txt, delimeter: ';'}", r"unknown key 'delimeter' in task .*'local' section .*did you mean 'delimiter'"),
    ("{file: a.txt, delimiter: '\\t'}", r"local delimiter must be one character, e\.g\. \"\\t\" \(in double quotes\)"),
    ("{file: a.txt, format: xlsx}", r"local format must be one of csv, tsv, jsonl, parquet, conll, squad, folders, got 'xlsx'"),
    ("{file: a.txt, format: jsonl, delimiter: ';'}", r"a local delimiter ';' does not go with format jsonl"),
    ("{file: a.txt, split_column: set}", r"local 'split_column' and 'splits' go together"),
    ("{file: a.txt, split_column: s, splits: {train: A}}", r"local 'splits' must map train and eval"),
    ("{file: a.txt, split_column: s, splits: {train: A, eval: B, dev: C}}", r"unknown split 'dev'"),
    ("{file: a.txt, split_column: s, splits: {train: [A, B], eval: B}}", r"value 'B' is given for both train and eval"),
    ("{file: a.txt, split_column: s, splits: {train: A, eval: B}, label_map: {E: entails}}",
     r"local label_map must map each value in the file to a label \(entailment, neutral\)"),
    ("{file: a.txt}", r"local 'file' holds every split, so it needs 'split_column'"),
    ("{train: a.txt}", r"local names no eval file"),
])
def test_bad_local_sections_fail_when_the_task_is_read(tmp_path, local, message) -> None:
    (tmp_path / "t.yaml").write_text("name: t\nkind: pair\nlabels: [entailment, neutral]\nmetrics: [accuracy]\n"
                                     f"columns: {{text: a, pair: b, label: c}}\nlocal: {local}\n")
    with pytest.raises(UsageError, match=message):
        get_task(str(tmp_path / "t.yaml"))
