"""``adapt results``: runs grouped by task x method x configuration, averaged over distinct seeds only,
and mistyped paths as errors. Runs are written as ``adapt train`` writes them (training/loop.py); one
test trains real ones."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from adapter_cli.cli import app
from conftest import one_line_error, save_tiny_model, write_sentiment_task

runner = CliRunner()


def fake_run(root: Path, name: str, *, value: float, seed: int = 42, task: str = "mrpc", method: str = "adapter",
             updated: str = "2025-01-01T00:00:00+0000", finished: bool = True, flat: bool = False, **changes) -> Path:
    """A run directory with the files a finished (or running) ``adapt train`` run leaves; ``flat``: its
    recipe.yaml in the flat layout of older runs (every key at the top)."""
    import dataclasses

    from adapter_cli.training.recipe import Recipe

    recipe = Recipe(task=task, method=method, seed=seed).updated(changes)
    run = root / name
    run.mkdir(parents=True)
    written = dataclasses.asdict(recipe) if flat else recipe.to_dict()
    (run / "recipe.yaml").write_text(yaml.safe_dump(written, sort_keys=False))
    best = {"metric": value, "epoch": 1, "step": 10, "metrics": {"accuracy": value}}
    status = {"status": "completed" if finished else "running", "task": task, "method": method,
              "model": recipe.model, "seed": seed, "updated": updated, "started": updated}
    (run / "run.json").write_text(json.dumps({**status, "best": best} if finished else status))
    if finished:
        summary = {"task": task, "method": method, "name": task, "model": recipe.model, "main_metric": "accuracy",
                   "best": best, "epochs_run": 1, "steps": 10, "stopped_early": False, "train_examples": 100,
                   "eval_examples": 50, "wall_time_s": 1.0, "run_dir": str(run)}
        if method == "fusion":
            summary["fusion_members"] = [Path(a).name for a in recipe.fusion_adapters]
        (run / "final_metrics.json").write_text(json.dumps(summary))
    return run


def results(*args: str):
    return runner.invoke(app, ["results", *map(str, args)])


def table(*args: str) -> dict:
    result = results(*args, "--json")
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def test_configs_with_the_same_seed_are_not_averaged(tmp_path) -> None:
    a = fake_run(tmp_path, "pf", value=0.80)
    b = fake_run(tmp_path, "pf64", value=0.70, adapter_overrides={"reduction_factor": 64})
    c = fake_run(tmp_path, "pf64-inline", value=0.72, seed=43, adapter="pfeiffer[reduction_factor=64]")
    data = table(a, b, c)
    cells = data["cells"]["mrpc"]
    assert set(cells) == {"adapter", "adapter (pfeiffer, reduction_factor=64)"}
    assert cells["adapter"]["n"] == 1 and cells["adapter"]["mean"] == pytest.approx(0.80)
    assert cells["adapter"]["std"] is None
    # the inline spelling is the same configuration: averaged with it, over two seeds
    wide = cells["adapter (pfeiffer, reduction_factor=64)"]
    assert wide["n"] == 2 and wide["mean"] == pytest.approx(0.71) and sorted(wide["seeds"]) == [42, 43]
    md = results(a, b, c)
    assert md.exit_code == 0 and "80.0 (n=1)" in md.stdout and "71.0 ± 1.4 (n=2)" in md.stdout


def test_distinct_seeds_are_averaged_whatever_the_preset_is_called(tmp_path) -> None:
    runs = [fake_run(tmp_path, f"s{seed}", value=v, seed=seed) for seed, v in ((1, 0.80), (2, 0.82), (3, 0.84))]
    runs.append(fake_run(tmp_path, "alias", value=0.86, seed=4, adapter="seq_bn"))
    runs.append(fake_run(tmp_path, "explicit", value=0.88, seed=5, adapter_overrides={"reduction_factor": 16}))
    runs.append(fake_run(tmp_path, "houlsby", value=0.5, seed=1, adapter="houlsby"))
    data = table(*runs)
    assert data["methods"] == ["adapter", "adapter (houlsby)"]
    cell = data["cells"]["mrpc"]["adapter"]
    assert cell["n"] == 5 and cell["mean"] == pytest.approx(0.84) and sorted(cell["seeds"]) == [1, 2, 3, 4, 5]
    assert cell["std"] == pytest.approx(0.0316, abs=1e-4)


def test_the_same_seed_twice_counts_once_the_most_recent(tmp_path) -> None:
    old = fake_run(tmp_path, "b-first", value=0.60, updated="2025-01-01T10:00:00+0000")
    new = fake_run(tmp_path, "a-rerun", value=0.90, updated="2025-01-02T10:00:00+0000")
    other = fake_run(tmp_path, "c-seed7", value=0.80, seed=7)
    result = results(old, new, other, "--json")
    assert result.exit_code == 0, result.stderr
    cell = json.loads(result.stdout)["cells"]["mrpc"]["adapter"]
    assert cell["n"] == 2 and cell["mean"] == pytest.approx(0.85) and sorted(cell["seeds"]) == [7, 42]
    assert str(old) not in cell["runs"] and str(new) in cell["runs"]
    note = result.stderr.strip()
    assert note.startswith("note: ") and len(note.splitlines()) == 1
    assert "seed 42" in note and f"most recent, {new}" in note and str(old) in note
    runs = {r["run"]: r for r in json.loads(result.stdout)["runs"]}
    assert runs[str(old)]["counted"] is False and runs[str(old)]["superseded_by"] == str(new)


def test_flat_recipes_of_older_runs_are_read_the_same(tmp_path) -> None:
    runs = [fake_run(tmp_path, "flat-s1", value=0.70, seed=1, flat=True, adapter_overrides={"reduction_factor": 64}),
            fake_run(tmp_path, "new-s2", value=0.72, seed=2, adapter_overrides={"reduction_factor": 64}),
            fake_run(tmp_path, "flat-pf", value=0.8, seed=1, flat=True)]
    cells = table(*runs)["cells"]["mrpc"]
    assert set(cells) == {"adapter", "adapter (pfeiffer, reduction_factor=64)"}
    assert cells["adapter (pfeiffer, reduction_factor=64)"]["n"] == 2


def test_fusions_are_grouped_by_members_and_fusion_config(tmp_path) -> None:
    fusion = {"method": "fusion", "task": "rte"}
    runs = [fake_run(tmp_path, "ab-s1", value=0.70, seed=1, fusion_adapters=["x/a", "x/b"], **fusion),
            fake_run(tmp_path, "ab-s2", value=0.72, seed=2, fusion_adapters=["y/a", "y/b"], **fusion),
            fake_run(tmp_path, "ac-s1", value=0.60, seed=1, fusion_adapters=["a", "c"], **fusion),
            fake_run(tmp_path, "ab-static", value=0.50, seed=1, fusion_adapters=["a", "b"], fusion="static",
                     **fusion),
            fake_run(tmp_path, "head", value=0.55, seed=1, method="head", task="rte")]
    data = table(*runs)
    assert data["methods"] == ["head", "fusion (members=a+b)", "fusion (members=a+c)", "fusion (static)"]
    cells = data["cells"]["rte"]
    assert cells["fusion (members=a+b)"]["n"] == 2 and cells["fusion (members=a+b)"]["mean"] == pytest.approx(0.71)
    assert cells["fusion (members=a+c)"]["n"] == 1 and cells["fusion (static)"]["n"] == 1


def test_runs_with_other_training_settings_are_other_columns(tmp_path) -> None:
    fast = fake_run(tmp_path, "lr3", value=0.80, learning_rate=1e-3)
    slow = fake_run(tmp_path, "lr4", value=0.70, learning_rate=1e-4)
    elsewhere = fake_run(tmp_path, "lr4-cpu", value=0.71, seed=2, learning_rate=1e-4, device="cpu",
                         save_every_steps=7)  # bookkeeping keys do not make a configuration
    data = table(fast, slow, elsewhere)
    cells = data["cells"]["mrpc"]
    assert set(cells) == {"adapter (learning_rate=0.001)", "adapter (learning_rate=0.0001)"}
    assert cells["adapter (learning_rate=0.0001)"]["n"] == 2


def test_a_folder_of_runs_skips_unfinished_ones(tmp_path) -> None:
    fake_run(tmp_path / "runs", "s1", value=0.8, seed=1)
    fake_run(tmp_path / "runs", "s2", value=0.9, seed=2)
    fake_run(tmp_path / "runs", "s3", value=0.0, seed=3, finished=False)
    result = results(tmp_path / "runs", "--csv")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines()[1].startswith("mrpc,adapter,accuracy,0.850000,") and \
        result.stdout.splitlines()[1].endswith(",2")
    assert "skipped 1 unfinished run(s)" in result.stderr and "s3" in result.stderr


def test_mistyped_paths_are_errors(tmp_path) -> None:
    run = fake_run(tmp_path / "runs", "s1", value=0.8)
    running = fake_run(tmp_path / "runs", "s2", value=0.0, finished=False)
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.txt").write_text("x")
    assert "does not exist" in one_line_error(results(run, tmp_path / "runz"))
    assert "does not exist" in one_line_error(results(tmp_path / "nothing" / "*"))
    assert "holds no finished adapt runs" in one_line_error(results(tmp_path / "empty"))
    assert "is not a run directory" in one_line_error(results(tmp_path / "notes.txt"))
    message = one_line_error(results(run, running))
    assert "not a finished adapt run (status: killed" in message and "skip unfinished runs" in message
    assert "contradict" in one_line_error(results(run, "--json", "--csv"))
    assert "use --csv or --json" in one_line_error(results(run, "--format", "json"))
    assert "does not exist" in one_line_error(results(run, "--output", tmp_path / "nodir" / "t.md"))


def test_json_csv_and_output(tmp_path) -> None:
    run = fake_run(tmp_path, "s1", value=0.8)
    result = results(run, "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["cells"]["mrpc"]["adapter"]["n"] == 1
    assert results(run, "--json", "--output", tmp_path / "t.json").stdout == ""
    assert json.loads((tmp_path / "t.json").read_text())["methods"] == ["adapter"]
    assert results(run, "--csv", "-o", tmp_path / "t.csv").exit_code == 0
    assert (tmp_path / "t.csv").read_text().splitlines() == ["task,method,metric,mean,std,n",
                                                              "mrpc,adapter,accuracy,0.800000,,1"]


def test_corrupt_run_files_are_one_line_errors(tmp_path) -> None:
    run = fake_run(tmp_path, "s1", value=0.8)
    (run / "final_metrics.json").write_text("{")
    assert "corrupt" in one_line_error(results(run))
    run2 = fake_run(tmp_path, "s2", value=0.8)
    (run2 / "recipe.yaml").write_text("a: [")
    assert "corrupt" in one_line_error(results(run2))


def test_real_runs_of_two_configs_and_a_rerun(tmp_path, monkeypatch) -> None:
    """Real ``adapt train`` runs: pfeiffer and pfeiffer reduction_factor=8 with the same seed, and the
    first one run again into another directory."""
    monkeypatch.setenv("ADAPT_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    model, task = str(save_tiny_model(tmp_path / "tiny")), str(write_sentiment_task(tmp_path / "task", n_train=32,
                                                                                    n_eval=16))
    fast = ["epochs=1", "batch_size=16", "patience=null", "--quiet", "--no-cache"]
    for run_dir, extra in (("runs/pf", []), ("runs/pf8", ["--config", "pfeiffer[reduction_factor=8]"])):
        result = runner.invoke(app, ["train", "--task", task, "--model", model, "--run-dir", run_dir, *extra, *fast])
        assert result.exit_code == 0, result.stderr
    shutil.copytree("runs/pf", "runs/pf-again")  # the same run again, finished later
    status = json.loads(Path("runs/pf-again/run.json").read_text())
    status["updated"] = "2999-01-01T00:00:00+0000"
    Path("runs/pf-again/run.json").write_text(json.dumps(status))
    result = results("runs")
    assert result.exit_code == 0, result.stderr
    header, _, row = result.stdout.splitlines()
    assert header == "| task | metric | adapter | adapter (pfeiffer, reduction_factor=8) |"
    assert row.startswith("| toy_sentiment | accuracy | ") and row.count("(n=1)") == 2
    assert "seed 42 was run 2 times" in result.stderr and "runs/pf-again" in result.stderr


def fake_mta_run(root: Path, name: str, values: dict[str, float], seed: int, base: str, **changes) -> Path:
    """A finished ``adapt train --method multitask`` run: one run, a result per task, a base of its own."""
    run = fake_run(root, name, value=sum(values.values()) / len(values), seed=seed, task="+".join(values),
                   method="multitask", tasks=list(values), **changes)
    summary = json.loads((run / "final_metrics.json").read_text())
    summary.update(tasks=list(values), main_metric="mean", base_model=base, wall_time_s=60.0,
                   per_task={t: {"accuracy": v, "f1": v / 2} for t, v in values.items()},
                   main_metrics={t: "accuracy" for t in values})
    (run / "final_metrics.json").write_text(json.dumps(summary))
    return run


def test_table_1_and_2_with_mt_a_and_fusion_over_it(tmp_path) -> None:
    """Each seed of MT-A makes its own base (its own id); its rows and the fusions over it still average."""
    runs = []
    for seed, (st, mt, f_st, f_mt) in {1: (0.60, 0.65, 0.62, 0.640), 2: (0.62, 0.67, 0.64, 0.672)}.items():
        base = f"minilm+mta-{seed:012x}"
        runs += [fake_run(tmp_path, f"rte-adapter-s{seed}", value=st, seed=seed, task="rte"),
                 fake_run(tmp_path, f"mrpc-adapter-s{seed}", value=0.8, seed=seed),
                 fake_mta_run(tmp_path, f"mta-s{seed}", {"rte": mt, "mrpc": 0.7}, seed, base),
                 fake_run(tmp_path, f"rte-fusion-s{seed}", value=f_st, seed=seed, task="rte", method="fusion",
                          fusion_adapters=["rte-adapter", "mrpc-adapter"]),
                 fake_run(tmp_path, f"rte-fusion-mta-s{seed}", value=f_mt, seed=seed, task="rte", method="fusion",
                          fusion_adapters=["mta-rte", "mta-mrpc"], model=base)]
    data = table(*runs)
    assert data["methods"] == ["adapter", "mt-a", "fusion", "fusion (mt-a)"]
    rte, mrpc = data["cells"]["rte"], data["cells"]["mrpc"]
    assert rte["mt-a"]["n"] == 2 and rte["mt-a"]["mean"] == pytest.approx(0.66)
    assert mrpc["mt-a"]["mean"] == pytest.approx(0.7) and mrpc["mt-a"]["metric"] == "accuracy"
    assert rte["fusion (mt-a)"]["n"] == 2 and rte["fusion (mt-a)"]["mean"] == pytest.approx(0.656)
    assert data["wall_time_s"]["mt-a"] == 120.0  # two runs, each counted once (not once per task)
    by_fusion = {c["fusion"]: c for c in data["comparisons"]}
    assert by_fusion["fusion"]["against"] == "adapter" and by_fusion["fusion (mt-a)"]["against"] == "mt-a"
    assert by_fusion["fusion"]["tasks"]["rte"] == {"delta": pytest.approx(2.0), "arrow": "↑"}
    assert by_fusion["fusion (mt-a)"]["tasks"]["rte"] == {"delta": pytest.approx(-0.4), "arrow": "↓"}
    assert "mrpc" not in by_fusion["fusion"]["tasks"]  # no fusion for mrpc
    text = results(*runs, "--wall-time").stdout
    assert "| wall time | | 0.1 min | 2.0 min | 0.0 min | 0.0 min |" in text
    assert "| task | fusion vs adapter | fusion (mt-a) vs mt-a |" in text and "| rte | ↑ +2.0 | ↓ -0.4 |" in text
    assert "| mrpc | accuracy | 80.0 ± 0.0 (n=2) | 70.0 ± 0.0 (n=2) |  |  |" in text
    assert "--wall-time adds a row" in one_line_error(results(*runs, "--wall-time", "--csv"))


def test_a_fusion_is_compared_only_with_one_column_of_its_adapters(tmp_path) -> None:
    runs = [fake_run(tmp_path, "a-lr3", value=0.6, task="rte", learning_rate=1e-3),
            fake_run(tmp_path, "a-lr4", value=0.5, task="rte", learning_rate=1e-4),
            fake_run(tmp_path, "f", value=0.7, task="rte", method="fusion", fusion_adapters=["a", "b"])]
    result = results(*runs)
    assert result.exit_code == 0 and "vs" not in result.stdout
    assert "is not compared with its adapters: 2 columns" in result.stderr
    same = [fake_run(tmp_path / "s", "a", value=0.6, task="rte"),
            fake_run(tmp_path / "s", "f", value=0.602, task="rte", method="fusion", fusion_adapters=["a", "b"])]
    assert "| rte | = +0.2 |" in results(*same).stdout


def test_fusions_over_two_mt_a_configurations_stay_apart(tmp_path, monkeypatch) -> None:
    """Review: fusions over MT-A runs of other settings are other columns, each compared with its own MT-A
    column; a fusion given its base by path is read from what the run recorded, wherever results runs from;
    a fusion whose MT-A run is not read stands alone per base."""
    runs = []
    for lr, (mt, fused) in {1e-5: (0.60, 0.70), 1e-3: (0.50, 0.40)}.items():
        for seed in (1, 2):
            base = f"minilm+mta-{int(lr * 1e6):06d}{seed:06d}"
            runs.append(fake_mta_run(tmp_path, f"mta-{lr}-s{seed}", {"rte": mt, "mrpc": 0.7}, seed, base,
                                     base_learning_rate=lr))
            fusion = fake_run(tmp_path, f"fuse-{lr}-s{seed}", value=fused, seed=seed, task="rte", method="fusion",
                              fusion_adapters=["rte", "mrpc"], model="runs/whatever/best/base")
            (fusion / "best").mkdir()
            (fusion / "best" / "fusion_config.json").write_text(json.dumps({"base_model": {"name_or_path": base}}))
            runs.append(fusion)
    monkeypatch.chdir(tmp_path / "mta-1e-05-s1")  # not where the runs' relative paths point
    data = table(*runs)
    fusions = [m for m in data["methods"] if m.startswith("fusion")]
    assert len(fusions) == 2 and all("mt-a" in m for m in fusions)
    assert {data["cells"]["rte"][m]["n"] for m in fusions} == {2}
    pairs = {round(data["cells"]["rte"][c["fusion"]]["mean"], 2): (c["against"], c["tasks"]["rte"]["arrow"])
             for c in data["comparisons"]}
    assert pairs[0.7][1] == "↑" and pairs[0.4][1] == "↓" and pairs[0.7][0] != pairs[0.4][0]
    assert all("base_learning_rate" in against for against, _ in pairs.values())
    assert set(fusions) == {f"fusion (mt-a, over {against})" for against, _ in pairs.values()}  # readable names
    alone = table(*[r for r in runs if "fuse-1e-05" in r.name])  # their MT-A runs not given
    assert len(alone["methods"]) == 2 and alone["comparisons"] == []


def _record_members(fusion: Path, *adapter_runs: Path) -> None:
    """What a fusion run records of its members: the (absolute) runs they were trained in."""
    summary = json.loads((fusion / "final_metrics.json").read_text())
    summary["fusion_member_runs"] = [{"run_dir": str(r.resolve()), "name": r.name,
                                      "started": json.loads((r / "run.json").read_text())["started"]}
                                     for r in adapter_runs]
    (fusion / "final_metrics.json").write_text(json.dumps(summary))


def test_fusions_over_adapters_of_two_settings_stay_apart(tmp_path) -> None:
    """Review: a fusion belongs with the adapter runs it fused. Two sweeps name their adapters alike, so the
    members' names cannot tell a fusion over lr-1e-3 adapters from one over lr-1e-4 adapters; their recorded
    runs do, whether or not those runs are among the runs read."""
    runs = []
    for lr, (adapter, fused) in {1e-3: (0.60, 0.70), 1e-4: (0.50, 0.40)}.items():
        for seed in (1, 2):
            members = [fake_run(tmp_path / f"lr{lr}", f"{task}-s{seed}", value=adapter, seed=seed, task=task,
                                learning_rate=lr) for task in ("rte", "mrpc")]
            summary = json.loads((members[1] / "final_metrics.json").read_text())  # tasks differ in size
            (members[1] / "final_metrics.json").write_text(json.dumps({**summary, "train_examples": 300}))
            fusion = fake_run(tmp_path / f"lr{lr}", f"fuse-s{seed}", value=fused, seed=seed, task="rte",
                              method="fusion", fusion_adapters=["rte", "mrpc"])
            _record_members(fusion, *members)
            runs += [*members, fusion]
    data = table(*runs)
    fusions = [m for m in data["methods"] if m.startswith("fusion")]
    assert len(fusions) == 2 and {data["cells"]["rte"][m]["n"] for m in fusions} == {2}
    pairs = {round(data["cells"]["rte"][c["fusion"]]["mean"], 2): (c["against"], c["tasks"]["rte"])
             for c in data["comparisons"]}
    assert pairs[0.7][1]["arrow"] == "↑" and pairs[0.7][1]["delta"] == pytest.approx(10.0)
    assert pairs[0.4][1]["arrow"] == "↓" and pairs[0.4][1]["delta"] == pytest.approx(-10.0)
    assert "learning_rate=0.001" in pairs[0.7][0] and "learning_rate=0.0001" in pairs[0.4][0]
    assert set(fusions) == {f"fusion (over {against})" for against, _ in pairs.values()}
    assert len(data["methods"]) == 4  # one adapter column per learning rate, whatever each task's size
    only = table(*[r for r in runs if r.name.startswith("fuse")])  # adapters read from their recorded runs
    assert len(only["methods"]) == 2 and only["comparisons"] == []


def test_a_fusion_is_not_compared_with_adapters_on_another_base(tmp_path) -> None:
    """Review: a fusion whose members' runs are unknown is compared only with the one adapter column on its
    own base model; here the only adapters ran on another, so there is no Table 2 (and a note says why)."""
    adapter = fake_run(tmp_path, "rte-adapter", value=0.6, task="rte")
    fusion = fake_run(tmp_path, "rte-fusion", value=0.7, task="rte", method="fusion", fusion_adapters=["rte", "mrpc"],
                      model="bert-base-uncased")
    result = results(adapter, fusion)
    assert result.exit_code == 0 and " vs " not in result.stdout
    assert "no adapter column is on its base model" in result.stderr


def test_a_run_that_failed_after_its_metrics_is_not_counted(tmp_path) -> None:
    """Review: a run writes final_metrics.json before its cache entry; when that fails, run.json says
    "failed" (or "running" once resumed). Such a run is skipped in a folder and refused by name."""
    fake_run(tmp_path / "runs", "ok", value=0.80, seed=1)
    failed = fake_run(tmp_path / "runs", "failed", value=0.20, seed=2)
    status = json.loads((failed / "run.json").read_text())
    (failed / "run.json").write_text(json.dumps({**status, "status": "failed"}))
    result = results(tmp_path / "runs")
    assert result.exit_code == 0 and "| 80.0 (n=1) |" in result.stdout
    assert "skipped 1 unfinished run(s)" in result.stderr and "failed" in result.stderr
    assert "not a finished adapt run (status: failed)" in one_line_error(results(failed))


def test_what_a_column_is_made_of(tmp_path) -> None:
    """compile changes no result, so it makes no column of its own; a cell that averages runs on other data
    (SST-2 whole and cut to a subset by another data directory) says so; a run that diverged (NaN) has no
    cell, and --json stays JSON."""
    fake_run(tmp_path, "plain", value=0.80, seed=1)
    fake_run(tmp_path, "compiled", value=0.82, seed=2, compile=True)
    data = table(tmp_path / "plain", tmp_path / "compiled")
    assert data["methods"] == ["adapter"] and data["cells"]["mrpc"]["adapter"]["n"] == 2
    cut = fake_run(tmp_path, "cut", value=0.70, seed=3)
    summary = json.loads((cut / "final_metrics.json").read_text())
    (cut / "final_metrics.json").write_text(json.dumps({**summary, "train_examples": 50}))
    mixed = results(tmp_path / "plain", cut)
    assert "| 75.0 ± 7.1 (n=2) |" in mixed.stdout
    assert "note: mrpc / adapter averages runs trained on different data (100, 50 training examples)" in mixed.stderr
    assert "different data" not in results(tmp_path / "plain", tmp_path / "compiled").stderr
    nan = fake_run(tmp_path, "nan", value=float("nan"), seed=4)
    result = results(tmp_path / "plain", nan, "--json")
    assert result.exit_code == 0 and "NaN" not in result.stdout
    assert json.loads(result.stdout)["cells"]["mrpc"]["adapter"]["n"] == 1


def test_the_arrow_agrees_with_the_delta_printed(tmp_path) -> None:
    """Review: +0.31 printed as +0.3 was marked improved; the arrow now reads the delta as printed."""
    adapter = fake_run(tmp_path, "a", value=0.6000, task="rte")
    fusion = fake_run(tmp_path, "f", value=0.6031, task="rte", method="fusion", fusion_adapters=["a", "b"])
    assert "| rte | = +0.3 |" in results(adapter, fusion).stdout
    fusion4 = fake_run(tmp_path, "f4", value=0.6036, task="rte", method="fusion", fusion_adapters=["a", "b"])
    assert "| rte | ↑ +0.4 |" in results(adapter, fusion4).stdout


def _sweep(root: Path, lr: float, adapter: float, fused: float, started: str, seeds=(1,)) -> list[Path]:
    """Adapters for rte and mrpc at ``lr`` and a fusion of them for rte, per seed, as paper-experiment.sh names them."""
    runs = []
    for seed in seeds:
        members = [fake_run(root, f"{task}-adapter-s{seed}", value=adapter, seed=seed, task=task, learning_rate=lr,
                            updated=started) for task in ("rte", "mrpc")]
        fusion = fake_run(root, f"rte-fusion-s{seed}", value=fused, seed=seed, task="rte", method="fusion",
                          fusion_adapters=["rte", "mrpc"], updated=started)
        _record_members(fusion, *members)
        runs += [*members, fusion]
    return runs


def test_a_moved_sweep_keeps_its_own_adapters(tmp_path) -> None:
    """Review: a sweep moved away (out -> out-lr3) and another run at its old path: the moved fusions find
    their adapters by name and start time, never the new runs that now sit where they were trained."""
    _sweep(tmp_path / "out", 1e-3, 0.60, 0.70, "2025-01-01T00:00:00+0000")
    (tmp_path / "out").rename(tmp_path / "out-lr3")
    _sweep(tmp_path / "out", 1e-4, 0.50, 0.40, "2025-02-01T00:00:00+0000")
    moved = table(tmp_path / "out-lr3")
    assert moved["methods"] == ["adapter", "fusion"]
    assert moved["comparisons"][0]["tasks"]["rte"] == {"delta": pytest.approx(10.0), "arrow": "↑"}
    both = table(tmp_path / "out-lr3", tmp_path / "out")
    assert {c["tasks"]["rte"]["arrow"] for c in both["comparisons"]} == {"↑", "↓"}
    assert all(r["counted"] for r in both["runs"])


def test_fusions_with_and_without_recorded_members(tmp_path) -> None:
    """Review: a fusion of an older adapt (no record of its members' runs) next to one that has it: two
    columns, no crash; a fusion over adapters of two configurations, one of them not read, is not compared,
    and the column read keeps its plain name."""
    runs = _sweep(tmp_path / "new", 1e-3, 0.60, 0.70, "2025-01-01T00:00:00+0000", seeds=(1,))
    old = fake_run(tmp_path / "old", "rte-fusion-s2", value=0.68, seed=2, task="rte", method="fusion",
                   fusion_adapters=["rte", "mrpc"])
    data = table(*runs, old)
    assert "fusion (over adapters of unknown runs)" in data["methods"] and "fusion (over adapter)" in data["methods"]
    mixed = tmp_path / "mixed"
    rte = fake_run(mixed, "rte-adapter", value=0.6, task="rte", learning_rate=1e-3)
    mrpc = fake_run(tmp_path / "elsewhere", "mrpc-adapter", value=0.6, task="mrpc", learning_rate=1e-4)
    fusion = fake_run(mixed, "rte-fusion", value=0.7, task="rte", method="fusion", fusion_adapters=["rte", "mrpc"])
    _record_members(fusion, rte, mrpc)
    result = results(mixed)
    assert result.exit_code == 0 and " vs " not in result.stdout
    assert result.stdout.startswith("| task | metric | adapter | fusion |")
    assert "not all among the runs read" in result.stderr
