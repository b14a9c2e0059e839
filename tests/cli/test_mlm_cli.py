"""Language adapters from the command line (MAD-X): `adapt train --task mlm` on a plain text file, a task
adapter trained with `--stack-under` it, `adapt infer` with the stack, perplexity with `adapt infer --task mlm`,
the metadata (kind, language, trained under) in the files, the cache and `adapt inspect`; resume after SIGKILL
equal to the uninterrupted run; bad input in one line with nothing written."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from adapter_cli.cli import app
from conftest import FILLER, ROOT, WORDS_NEG, WORDS_POS, one_line_error, save_tiny_model, write_sentiment_task

runner = CliRunner()
FAST = ["epochs=2", "batch_size=8", "max_length=24", "learning_rate=5e-3", "save_every_steps=2", "log_every_steps=2",
        "patience=null"]


def _corpus(root: Path, lines: int = 120, seed: int = 0) -> Path:
    rng = random.Random(seed)
    words = FILLER + WORDS_POS + WORDS_NEG
    root.mkdir(parents=True, exist_ok=True)
    text = "".join(" ".join(rng.choice(words) for _ in range(rng.randint(3, 9))) + "\n" for _ in range(lines))
    (root / "train.txt").write_text(text)
    return root


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A language adapter and a task adapter trained under it, once for the module's tests."""
    root = tmp_path_factory.mktemp("madx")
    mp = pytest.MonkeyPatch()
    mp.setenv("ADAPT_CACHE", str(root / "cache"))
    mp.chdir(root)
    env = {"model": str(save_tiny_model(root / "tiny")), "task": str(write_sentiment_task(root / "task", 48, 24)),
           "corpus": str(_corpus(root / "corpus")), "root": root}
    lang = runner.invoke(app, ["train", "--task", "mlm", "--data-dir", env["corpus"], "--config", "pfeiffer+inv",
                               "--model", env["model"], "--language", "en", "--name", "lang_en", "--json", *FAST])
    assert lang.exit_code == 0, lang.stderr
    env["lang"], env["lang_stderr"] = json.loads(lang.stdout), lang.stderr
    task = runner.invoke(app, ["train", "--task", env["task"], "--model", env["model"], "--stack-under",
                               env["lang"]["cache"]["id"], "--json", *FAST])
    assert task.exit_code == 0, task.stderr
    env["task_run"] = json.loads(task.stdout)
    yield env
    mp.undo()


def test_language_adapter_run_cache_and_metadata(world) -> None:
    summary = world["lang"]
    assert summary["main_metric"] == "perplexity" and summary["cache"]["id"] == "mlm-en-pfeiffer_inv-s42"
    assert set(summary["best"]["metrics"]) == {"perplexity", "masked_accuracy"}
    assert "held out as the dev split" in world["lang_stderr"]
    best = Path(summary["run_dir"]) / "best"
    config = json.loads((best / "adapter_config.json").read_text())
    assert config["kind"] == "language" and config["language"] == "en" and config["config"]["inv_adapter"] == "nice"
    assert json.loads((best / "head_config.json").read_text())["config"]["head_type"] == "masked_lm"
    listed = {e["id"]: e for e in json.loads(runner.invoke(app, ["cache", "ls", "--json"]).stdout)}
    entry = listed["mlm-en-pfeiffer_inv-s42"]
    assert (entry["adapter_kind"], entry["language"], entry["main_metric"]) == ("language", "en", "perplexity")
    shown = runner.invoke(app, ["inspect", str(best)])
    assert "language          en" in shown.stdout and "masked_lm" in shown.stdout
    described = json.loads(runner.invoke(app, ["inspect", str(best), "--json"]).stdout)
    assert (described["adapter_kind"], described["language"]) == ("language", "en")


def test_perplexity_from_infer_equals_the_runs_best(world) -> None:
    result = runner.invoke(app, ["infer", "-m", world["model"], "-a", world["lang"]["cache"]["id"], "--task", "mlm",
                                 "--data-dir", world["corpus"], "--batch-size", "3", "--max-length", "24"])
    assert result.exit_code == 0, result.stderr
    scored = json.loads(result.stdout)
    best = world["lang"]["best"]["metrics"]
    assert scored["perplexity"] == pytest.approx(best["perplexity"], rel=1e-5)
    assert scored["masked_accuracy"] == pytest.approx(best["masked_accuracy"])


def test_task_adapter_records_its_language_adapter_and_infers_with_the_stack(world) -> None:
    run = world["task_run"]
    config = json.loads((Path(run["run_dir"]) / "best" / "adapter_config.json").read_text())
    assert config["kind"] == "task"
    assert config["trained_under"] == {"name": "lang_en", "language": "en", "source": "mlm-en-pfeiffer_inv-s42"}
    listed = {e["id"]: e for e in json.loads(runner.invoke(app, ["cache", "ls", "--json"]).stdout)}
    assert listed[run["cache"]["id"]]["trained_under"]["name"] == "lang_en"
    result = runner.invoke(app, ["infer", "-m", world["model"], "-a", world["lang"]["cache"]["id"], "-a",
                                 run["cache"]["id"], "--active", "stack(lang_en,toy_sentiment)", "the film was good"])
    assert result.exit_code == 0, result.stderr
    line = json.loads(result.stdout)
    assert line["active"] == "stack(lang_en,toy_sentiment)" and line["head"] == "toy_sentiment"
    alone = runner.invoke(app, ["infer", "-m", world["model"], "-a", world["lang"]["cache"]["id"], "the film"])
    assert "masked-LM head" in one_line_error(alone)


def test_resume_after_a_kill_reaches_the_same_result(world, tmp_path) -> None:
    args = ["--task", "mlm", "--data-dir", world["corpus"], "--config", "pfeiffer+inv", "--model", world["model"],
            "--quiet", "--no-cache", *FAST]
    killer = [sys.executable, str(ROOT / "tests" / "kill_at_step.py"), "7", "train"]
    killed = subprocess.Popen(killer + args + ["--run-dir", str(tmp_path / "killed")], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)  # a real SIGKILL, while the whole run trains in-process
    whole = runner.invoke(app, ["train", *args, "--run-dir", str(tmp_path / "whole")])
    assert whole.exit_code == 0, whole.stderr
    assert killed.wait() == -9
    state = torch.load(tmp_path / "killed" / "checkpoint.pt", weights_only=True)
    assert (state["step"], state["epoch"], state["batch"]) == (6, 1, 2)  # mid-epoch 2: masks resume mid-epoch
    resumed = runner.invoke(app, ["train", "--resume", "--run-dir", str(tmp_path / "killed"), "--quiet"])
    assert resumed.exit_code == 0, resumed.stderr
    runs = []
    for name in ("whole", "killed"):
        run = tmp_path / name
        runs.append((json.loads((run / "final_metrics.json").read_text())["best"],
                     (run / "metrics.jsonl").read_text(),
                     torch.load(run / "checkpoint.pt", weights_only=True)["trainable"]))
    assert runs[0][:2] == runs[1][:2]
    assert all(torch.equal(runs[0][2][k], runs[1][2][k]) for k in runs[0][2])


def _refused(world, args: list[str], monkeypatch=None) -> str:
    before = sorted(p.name for p in (world["root"] / "runs").iterdir())
    result = runner.invoke(app, ["train", "--model", world["model"], *args, *FAST])
    line = one_line_error(result)
    assert sorted(p.name for p in (world["root"] / "runs").iterdir()) == before  # nothing written
    return line


def test_bad_input_is_one_line_and_writes_nothing(world, monkeypatch, tmp_path) -> None:
    task_id = world["task_run"]["cache"]["id"]
    assert "is a task adapter" in _refused(world, ["--task", world["task"], "--stack-under", task_id])
    line = _refused(world, ["--task", world["task"], "--method", "head", "--stack-under", world["lang"]["cache"]["id"]])
    assert "--stack-under" in line and "--method head" in line
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "train.txt").write_text("\n \n")
    assert "holds no text" in _refused(world, ["--task", "mlm", "--data-dir", str(tmp_path / "empty")])
    assert "a language adapter (--task mlm) is trained alone" in _refused(
        world, ["--task", "mlm", "--data-dir", world["corpus"], "--stack-under", world["lang"]["cache"]["id"]])
    assert "--method head is not an adapter" in _refused(
        world, ["--task", "mlm", "--data-dir", world["corpus"], "--method", "head"])
    assert "--language must be" in _refused(world, ["--task", "mlm", "--data-dir", world["corpus"], "--language", "e n"])
    import dataclasses

    from adapter_cli import architectures

    bert = architectures.ARCHITECTURES["bert"]
    monkeypatch.setitem(architectures.ARCHITECTURES, "bert", dataclasses.replace(bert, tied_lm_head=False))
    assert "cannot carry masked-LM head" in _refused(world, ["--task", "mlm", "--data-dir", world["corpus"]])


def test_cards_record_kind_language_and_the_language_adapter(world, tmp_path) -> None:
    import tarfile

    cards = {}
    for key, entry in (("lang", world["lang"]), ("task", world["task_run"])):
        result = runner.invoke(app, ["pack", entry["cache"]["id"], "--author", "me", "--catalog", f"{key}/toy",
                                     "-o", str(tmp_path / f"{key}.tar.gz"), "--json"])
        assert result.exit_code == 0, result.stderr
        with tarfile.open(tmp_path / f"{key}.tar.gz") as archive:
            member = next(m for m in archive.getmembers() if m.name.endswith("adapt-card.json"))
            cards[key] = json.loads(archive.extractfile(member).read())
    assert (cards["lang"]["kind"], cards["lang"]["language"], cards["lang"]["trained_under"]) == ("language", "en", None)
    assert (cards["task"]["kind"], cards["task"]["trained_under"]) == ("task", {"name": "lang_en", "language": "en"})
