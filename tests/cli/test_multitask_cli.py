"""``adapt train --method multitask`` (MT-A) on a tiny model and two tiny tasks: the summary, the new base
model and its cached adapters, refusal on the original base, resume after SIGKILL, and bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from adapter_cli.cli import app
from conftest import ROOT, one_line_error, save_tiny_model, write_sentiment_task

runner = CliRunner()
FAST = ["epochs=2", "batch_size=16", "learning_rate=5e-3", "save_every_steps=1", "patience=null", "max_length=32"]


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("ADAPT_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    a = write_sentiment_task(tmp_path / "ta", n_train=32, n_eval=16)
    b = write_sentiment_task(tmp_path / "tb", n_train=32, n_eval=16, seed=1)
    b.write_text(b.read_text().replace("toy_sentiment", "toy_two"))
    return {"model": str(save_tiny_model(tmp_path / "tiny")), "tasks": f"{a},{b}", "root": tmp_path}


def mta(env, *args: str):
    return runner.invoke(app, ["train", "--method", "multitask", "--tasks", env["tasks"], "--model", env["model"],
                               "--quiet", *args, *FAST])


def test_one_run_trains_every_task_and_makes_a_new_base(env) -> None:
    result = mta(env, "--json")
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["method"] == "multitask" and summary["tasks"] == ["toy_sentiment", "toy_two"]
    assert set(summary["per_task"]) == {"toy_sentiment", "toy_two"}
    assert summary["mean"] == pytest.approx(sum(m["accuracy"] for m in summary["per_task"].values()) / 2)
    base = summary["base_model"]
    assert base.startswith("tiny+mta-") and summary["cache"]["base_model"]["id"] == base
    records = [json.loads(x) for x in (Path(summary["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if r["type"] == "eval"]
    assert [r["alpha"] for r in evals] == [1.0, pytest.approx(0.2)] and "toy_two/accuracy" in evals[0]
    listed = json.loads(runner.invoke(app, ["cache", "ls", "--json"]).stdout)
    assert sorted(e["task"] for e in listed) == ["toy_sentiment", "toy_two"]
    assert {e["base_model"] for e in listed} == {base}
    # by name on the new base (resolved from the cache), refused by path on the original one
    ok = runner.invoke(app, ["infer", "-m", base, "-a", "toy_two", "good film"])
    assert ok.exit_code == 0, ok.stderr
    refused = runner.invoke(app, ["infer", "-m", env["model"], "-a", listed[0]["path"], "good film"])
    assert refused.exit_code == 2 and "fine-tuned base model" in one_line_error(refused)


def test_resume_after_sigkill_equals_an_uninterrupted_run(env) -> None:
    args = ["--method", "multitask", "--tasks", env["tasks"], "--model", env["model"], "--quiet", "--no-cache",
            *FAST, "max_train_samples=24"]
    killed = subprocess.run([sys.executable, str(ROOT / "tests" / "kill_at_step.py"), "3", "train", *args,
                             "--run-dir", "killed"], cwd=env["root"], capture_output=True)
    assert killed.returncode == -9, killed.stderr.decode()[-400:]
    recorded = json.loads((env["root"] / "killed" / "subset.json").read_text())
    assert sorted(recorded) == ["toy_sentiment", "toy_two"] and len(recorded["toy_two"]["train"]["indices"]) == 24
    # resume reads the recorded rows (and says so when a task's record is missing)
    (env["root"] / "killed" / "subset.json").write_text(json.dumps({"toy_sentiment": recorded["toy_sentiment"]}))
    broken = runner.invoke(app, ["train", "--resume", "--run-dir", "killed", "--quiet"])
    assert broken.exit_code == 2 and "no subset record for task toy_two" in one_line_error(broken)
    (env["root"] / "killed" / "subset.json").write_text(json.dumps(recorded))
    resumed = runner.invoke(app, ["train", "--resume", "--run-dir", "killed", "--quiet", "--json"])
    assert resumed.exit_code == 0, resumed.stderr
    whole = runner.invoke(app, ["train", *args, "--run-dir", "whole", "--json"])
    assert whole.exit_code == 0, whole.stderr
    a, b = json.loads(resumed.stdout), json.loads(whole.stdout)
    assert a["best"] == b["best"] and a["base_model"] == b["base_model"] and a["steps"] == b["steps"]
    meta = [json.loads((env["root"] / run / "best" / "multitask.json").read_text()) for run in ("killed", "whole")]
    assert meta[0]["fingerprint"] == meta[1]["fingerprint"]


@pytest.mark.parametrize("args, words", [
    (["--method", "multitask"], "needs --tasks"),
    (["--method", "multitask", "--tasks", "sst2"], "two or more tasks"),
    (["--method", "multitask", "--tasks", "sst2,mrcp"], "mrpc"),
    (["--method", "multitask", "--tasks", "sst2,sst-2"], "same task"),
    (["--tasks", "sst2,mrpc"], "--method multitask"),
    (["--method", "multitask", "--tasks", "sst2,mrpc", "-d", "glue/SST-2"], "TASK=DIR"),
    (["--method", "multitask", "--tasks", "sst2,mrpc", "-d", "rte=glue/RTE"], "not one of the tasks"),
    (["--method", "multitask", "--tasks", "sst2,mlm"], "task mlm is language modelling on plain text"),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, monkeypatch, args, words) -> None:
    monkeypatch.setenv("ADAPT_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["train", *args])
    assert result.exit_code == 2, result.output
    assert words in one_line_error(result)
    assert list(tmp_path.iterdir()) == []


def test_review_fixes_a_recipe_reruns_and_identities_do_not_leak(env, tmp_path) -> None:
    """A run's recipe.yaml reruns without --tasks; --name with multitask is refused; an adapter file that names
    an MT-A base (its fingerprint lost in AdapterHub's format) is refused by another base; a full fine-tune of an
    MT-A base no longer claims its id."""
    from adapter_cli import AdapterModel
    from adapter_cli.defaults import model_id
    from adapter_cli.errors import BaseModelMismatch

    assert "--name" in one_line_error(mta(env, "--name", "x"))
    first = mta(env, "--run-dir", "mt", "--json")
    assert first.exit_code == 0, first.stderr
    again = runner.invoke(app, ["train", "--recipe", "mt/recipe.yaml", "--run-dir", "mt2", "--no-cache", "--quiet"])
    assert again.exit_code == 0, again.stderr
    base = Path("mt/best/base")
    adapter = next(p for p in Path("mt/best").iterdir() if (p / "adapter_config.json").is_file())
    tuned = AdapterModel.from_pretrained(base)
    name = tuned.load_adapter(adapter)
    tuned.save_adapter(tmp_path / "ah", name, format="adapterhub")
    with pytest.raises(BaseModelMismatch, match="MT-A base"):
        AdapterModel.from_pretrained(env["model"]).load_adapter(tmp_path / "ah")
    full = runner.invoke(app, ["train", "--method", "full", "--task", env["tasks"].split(",")[0], "--model", str(base),
                               "--run-dir", "full", "--no-cache", "--quiet", *FAST])
    assert full.exit_code == 0, full.stderr
    assert "+mta-" not in model_id(str(Path("full/best").resolve()))


def test_fusion_over_mt_a_runs_on_their_base_and_fills_table_1(env) -> None:
    """Fusion w/ MT-A: `adapt fuse` over MT-A adapters (cache names or directories) finds their base without
    --model; inspect-activations too; `adapt results` puts the MT-A run in a row per task and the fusion in
    ``fusion (mt-a)``, compared with ``mt-a`` (Table 2)."""
    first = mta(env, "--run-dir", "mt", "--json")
    assert first.exit_code == 0, first.stderr
    base = json.loads(first.stdout)["base_model"]
    target = env["tasks"].split(",")[1]
    fast = ["--quiet", "--json", "epochs=1", "min_steps=null", "batch_size=16", "max_length=32"]
    by_name = runner.invoke(app, ["fuse", "mt-toy_sentiment", "mt-toy_two", "--target", target,
                                  "--run-dir", "fused", *fast])
    assert by_name.exit_code == 0, by_name.stderr
    assert json.loads(by_name.stdout)["model"] == base
    by_dir = runner.invoke(app, ["fuse", "mt/best/toy_sentiment", "mt/best/toy_two", "--target", target,
                                 "--run-dir", "fused-dirs", "--no-cache", *fast])
    assert by_dir.exit_code == 0, by_dir.stderr
    shown = runner.invoke(app, ["inspect-activations", "fused", "--task", target, "--json", "--quiet"])
    assert shown.exit_code == 0, shown.stderr
    table = json.loads(runner.invoke(app, ["results", "mt", "fused", "--json"]).stdout)
    assert table["methods"] == ["mt-a", "fusion (mt-a)"]
    assert set(table["cells"]["toy_sentiment"]) == {"mt-a"} and len(table["cells"]["toy_two"]) == 2
    assert table["comparisons"][0]["against"] == "mt-a" and "toy_two" in table["comparisons"][0]["tasks"]
    # members of two bases, one an MT-A base: one line naming each member's base, nothing written
    single = runner.invoke(app, ["train", "--task", target, "--model", env["model"], "--run-dir", "st", "--name",
                                 "st_two", "--quiet", "epochs=1", "batch_size=16", "max_length=32"])
    assert single.exit_code == 0, single.stderr
    mixed = runner.invoke(app, ["fuse", "mt-toy_sentiment", "st", "--target", target, "--run-dir", "mixed", *fast])
    assert mixed.exit_code == 2 and "trained on different base models" in one_line_error(mixed)
    assert base in one_line_error(mixed) and not Path("mixed").exists()
    # the original base is still refused, with --model given
    refused = runner.invoke(app, ["fuse", "mt-toy_sentiment", "mt-toy_two", "--target", target, "--model",
                                  env["model"], "--run-dir", "nope", *fast])
    assert refused.exit_code == 2 and "another base model" in one_line_error(refused)
    assert not Path("nope").exists()


def test_cached_base_models_are_listed_and_removed_with_their_adapters(env) -> None:
    first = mta(env, "--json")
    assert first.exit_code == 0, first.stderr
    base = json.loads(first.stdout)["base_model"]
    listed = json.loads(runner.invoke(app, ["cache", "models", "--json"]).stdout)
    assert [(b["id"], b["adapters"]) for b in listed] == [(base, 2)] and listed[0]["derived_from"].startswith("local/tiny")
    assert "without --yes" in one_line_error(runner.invoke(app, ["cache", "rm", base]))
    dry = json.loads(runner.invoke(app, ["cache", "rm", base, "--dry-run", "--json"]).stdout)
    assert dry["removed"] is False and len(dry["entries"]) == 2 and Path(listed[0]["path"]).is_dir()
    gone = runner.invoke(app, ["cache", "rm", base, "--yes"])
    assert gone.exit_code == 0 and "2 entries cached for it" in gone.stdout and "toy_two" in gone.stdout
    assert not Path(listed[0]["path"]).exists() and json.loads(runner.invoke(app, ["cache", "ls", "--json"]).stdout) == []
    assert "no base models" in runner.invoke(app, ["cache", "models"]).stdout
    assert not any(Path(listed[0]["path"]).parent.parent.joinpath("adapters").glob("*mta*"))  # no empty folders left
    # an adapter directory of the removed base: one line naming what to do, not a message about Hub repo names
    best = Path(json.loads(first.stdout)["run_dir"]) / "best"
    stale = runner.invoke(app, ["fuse", str(best / "toy_sentiment"), str(best / "toy_two"), "--target",
                                env["tasks"].split(",")[1], "--quiet", "epochs=1", "min_steps=null", "--run-dir", "stale"])
    assert stale.exit_code == 2 and "not in the cache" in one_line_error(stale) and not Path("stale").exists()
