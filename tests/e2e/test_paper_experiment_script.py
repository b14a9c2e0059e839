"""docs/paper-experiment.sh before any training: its SST2_TRAIN subset and its refusals (no model runs:
ADAPT=false stops the script at its first training, after the data is prepared)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from conftest import ROOT

SCRIPT = ROOT / "docs" / "paper-experiment.sh"


def _tasks(root: Path) -> list[str]:
    """An SST-2-like directory (a header, 20 rows) and a second task's, as TASK=DIR arguments."""
    sst2, rte = root / "SST-2", root / "RTE"
    for d in (sst2, rte):
        d.mkdir(parents=True)
    (sst2 / "train.tsv").write_text("sentence\tlabel\n" + "".join(f"row {i}\t{i % 2}\n" for i in range(20)))
    (sst2 / "dev.tsv").write_text("sentence\tlabel\nfine\t1\n")
    return [f"sst2={sst2}", f"rte={rte}"]


def _run(out: Path, args: list[str], **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "OUT": str(out), "ADAPT": "false", **env})


def test_sst2_alone_is_cut_to_the_same_rows_every_time(tmp_path) -> None:
    args = _tasks(tmp_path / "data")
    subsets = []
    for out in (tmp_path / "a", tmp_path / "b"):
        result = _run(out, args, SST2_TRAIN="5")
        assert result.returncode != 0  # ADAPT=false: the first training "fails", after the subset is made
        lines = (out / "data" / "sst2-5" / "train.tsv").read_text().splitlines()
        assert lines[0] == "sentence\tlabel" and len(lines) == 6 and len(set(lines[1:])) == 5
        assert set(lines[1:]) <= {f"row {i}\t{i % 2}" for i in range(20)}
        assert (out / "data" / "sst2-5" / "dev.tsv").is_file() and "sst2_train=5" in (out / "settings.txt").read_text()
        subsets.append(lines)
    assert subsets[0] == subsets[1]


def test_bad_sst2_train_is_refused_before_anything_is_written(tmp_path) -> None:
    args = _tasks(tmp_path / "data")
    for value, message in (("x", "SST2_TRAIN=x is not a number of rows (e.g. 2000)"),
                           ("0", "SST2_TRAIN=0 is not a number of rows")):
        result = _run(tmp_path / "out", args, SST2_TRAIN=value)
        assert result.returncode == 2 and result.stderr.startswith(f"error: {message}")
        assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "out").exists()
    result = _run(tmp_path / "out", args[1:] + [f"mrpc={tmp_path / 'data' / 'RTE'}"], SST2_TRAIN="5")
    assert result.returncode == 2 and "sst2 is not one of the tasks (rte mrpc)" in result.stderr
    assert not (tmp_path / "out").exists()


def test_overrides_reach_the_training_command_and_the_settings(tmp_path) -> None:
    fake = tmp_path / "adapt"  # records its arguments, then fails: the script stops at its first training
    fake.write_text(f'#!/bin/bash\necho "$@" > {tmp_path / "args"}\nexit 1\n')
    fake.chmod(0o755)
    result = _run(tmp_path / "out", _tasks(tmp_path / "data"), ADAPT=str(fake),
                  OVERRIDES="precision=bf16 group_by_length=true")
    assert result.returncode != 0
    args = (tmp_path / "args").read_text().split()
    assert args[:2] == ["train", "--task"] and args[-6:-4] == ["precision=bf16", "group_by_length=true"]
    assert "overrides=precision=bf16 group_by_length=true" in (tmp_path / "out" / "settings.txt").read_text()


def test_a_bad_override_is_refused_before_anything_is_written(tmp_path) -> None:
    result = _run(tmp_path / "out", _tasks(tmp_path / "data"), OVERRIDES="precision=bf16 bf16")
    assert result.returncode == 2 and not (tmp_path / "out").exists()
    assert result.stderr == "error: OVERRIDES: 'bf16' is not a recipe key=value (e.g. precision=bf16)\n"
