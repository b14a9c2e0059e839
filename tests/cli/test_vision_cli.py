"""adapt add / train / infer with a vision encoder (a tiny random ViT) on a toy image task: noisy pictures whose
strongest colour channel is the label, a folder of images per label."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from adapter_cli.cli import app
from tests.conftest import COLOURS, one_line_error, save_tiny_model, save_tiny_vit, write_image_task

runner = CliRunner()


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("vision")
    return {"root": root, "vit": str(save_tiny_vit(root / "vit")), "task": str(write_image_task(root / "toy")),
            "bert": str(save_tiny_model(root / "bert"))}


@pytest.fixture(scope="module")
def trained(env):
    run_dir = env["root"] / "runs" / "adapter"
    result = runner.invoke(app, ["train", "--task", env["task"], "--model", env["vit"], "--config", "pfeiffer",
                                 "--run-dir", str(run_dir), "--no-cache", "epochs=4", "learning_rate=1e-2",
                                 "batch_size=6", "--json"])
    assert result.exit_code == 0, result.stderr
    return run_dir, json.loads(result.stdout)


def test_train_an_adapter_on_image_folders(trained) -> None:
    run_dir, summary = trained
    assert summary["best"]["metrics"]["accuracy"] >= 0.75, summary["best"]  # chance is 1/3
    head = json.loads((run_dir / "best" / "head_config.json").read_text())["config"]
    assert head["head_type"] == "classification" and head["layers"] == 1  # AdapterHub's image head: one layer
    assert head["label2id"] == {c: i for i, c in enumerate(COLOURS)}


def test_infer_a_folder_and_single_files_as_json(env, trained) -> None:
    run_dir, _ = trained
    val = env["root"] / "toy" / "val"
    result = runner.invoke(app, ["infer", "-m", env["vit"], "-a", str(run_dir / "best"), str(val / "red"),
                                 str(val / "blue" / "1.png"), "--json"])
    assert result.exit_code == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["image"] for line in lines] == [str(p) for p in sorted((val / "red").iterdir())] + \
        [str(val / "blue" / "1.png")]
    assert all(line["label"] in COLOURS and 0 < line["score"] <= 1 for line in lines)


def test_infer_scores_the_image_task(env, trained, tmp_path) -> None:
    run_dir, summary = trained
    metrics = tmp_path / "m.json"
    result = runner.invoke(app, ["infer", "-m", env["vit"], "-a", str(run_dir / "best"), "--task", env["task"],
                                 "--metrics", str(metrics), "--output", str(tmp_path / "p.csv")])
    assert result.exit_code == 0, result.stderr
    scored = json.loads(metrics.read_text())
    assert scored["rows"] == 12 and scored["accuracy"] == pytest.approx(summary["best"]["metrics"]["accuracy"])
    header = (tmp_path / "p.csv").read_text().splitlines()[0]
    assert header.startswith("image,")


def test_a_broken_image_is_one_line_and_nothing_written(env, trained, tmp_path) -> None:
    run_dir, _ = trained
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff not really a jpeg")
    out = tmp_path / "p.jsonl"
    result = runner.invoke(app, ["infer", "-m", env["vit"], "-a", str(run_dir / "best"),
                                 str(env["root"] / "toy" / "val" / "red" / "0.jpg"), str(bad), "--output", str(out)])
    assert "cannot decode" in one_line_error(result) and "broken.jpg" in result.stderr
    assert not out.exists()


def test_a_broken_training_image_stops_before_the_run(env, tmp_path) -> None:
    import shutil

    task = tmp_path / "toy"
    shutil.copytree(env["root"] / "toy", task)
    (task / "train" / "green" / "99.png").write_bytes(b"\x89PNG broken")
    run_dir = tmp_path / "run"
    result = runner.invoke(app, ["train", "--task", str(task / "task.yaml"), "--model", env["vit"], "--config",
                                 "pfeiffer", "--run-dir", str(run_dir), "--no-cache", "epochs=1"])
    line = one_line_error(result)
    assert "cannot decode" in line and "99.png" in line
    assert not run_dir.exists()


@pytest.mark.parametrize("method", ["head", "full"])
def test_head_only_and_full_fine_tuning(env, tmp_path, method) -> None:
    run_dir = tmp_path / method
    result = runner.invoke(app, ["train", "--task", env["task"], "--model", env["vit"], "--method", method,
                                 "--run-dir", str(run_dir), "--no-cache", "epochs=2", "batch_size=6", "--json"])
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["best"]["metrics"]["accuracy"] > 0
    if method == "full":  # best/ is a model of its own, with its image processor and head
        assert (run_dir / "best" / "preprocessor_config.json").is_file()
        image = env["root"] / "toy" / "val" / "green" / "0.jpg"
        found = runner.invoke(app, ["infer", "-m", str(run_dir / "best"), str(image)])
        assert found.exit_code == 0, found.stderr
        assert json.loads(found.stdout)["label"] in COLOURS


def test_parallel_answers_per_member(env, trained) -> None:
    run_dir, _ = trained
    image = str(env["root"] / "toy" / "val" / "blue" / "0.jpg")
    alone = json.loads(runner.invoke(app, ["infer", "-m", env["vit"], "-a", str(run_dir / "best"), image]).stdout)
    result = runner.invoke(app, ["infer", "-m", env["vit"], "-a", str(run_dir / "best"), "--active",
                                 f"parallel({alone['active']},{alone['active']})", image])
    assert result.exit_code == 0, result.stderr
    members = json.loads(result.stdout)["members"]
    assert members[alone["active"]]["label"] == alone["label"]


def test_wrong_input_for_the_family_is_one_line(env, trained) -> None:
    run_dir, _ = trained
    image = str(env["root"] / "toy" / "val" / "blue" / "0.jpg")
    assert "one image at a time" in one_line_error(runner.invoke(
        app, ["infer", "-m", env["vit"], "-a", str(run_dir / "best"), "--pair", image, image]))
    assert "classifies images, for vision encoders" in one_line_error(runner.invoke(
        app, ["train", "--task", env["task"], "--model", env["bert"], "--run-dir", str(env["root"] / "x"),
              "--no-cache"]))
    assert "ViT models cannot carry" in one_line_error(runner.invoke(
        app, ["add", "pfeiffer", "--model", env["vit"], "--head", "tagging:3"]))
    assert "no image file" in one_line_error(runner.invoke(
        app, ["infer", "-m", env["vit"], "-a", str(run_dir / "best"), "missing.png"]))


def test_add_an_image_classification_head(env, tmp_path) -> None:
    result = runner.invoke(app, ["add", "pfeiffer", "--model", env["vit"], "--head", "image_classification:5",
                                 "--save", str(tmp_path / "a"), "--format", "adapterhub"])
    assert result.exit_code == 0, result.stderr
    head = json.loads((tmp_path / "a" / "head_config.json").read_text())["config"]
    assert head["head_type"] == "image_classification" and head["num_labels"] == 5 and head["layers"] == 1
    assert head["multilabel"] is False


def test_fuse_two_image_adapters_and_look_at_the_fusion(env, trained, tmp_path) -> None:
    """AdapterFusion over two adapters on the ViT, trained on the image task; inspect-activations reads its
    attention over the dev images."""
    run_dir, _ = trained
    other = tmp_path / "second"
    result = runner.invoke(app, ["train", "--task", env["task"], "--model", env["vit"], "--config", "pfeiffer",
                                 "--name", "colours_b", "--run-dir", str(other), "--no-cache", "epochs=1", "seed=7"])
    assert result.exit_code == 0, result.stderr
    fused = tmp_path / "fusion"
    result = runner.invoke(app, ["fuse", str(run_dir / "best"), str(other / "best"), "--target", env["task"],
                                 "--model", env["vit"], "--run-dir", str(fused), "--no-cache", "epochs=1",
                                 "min_steps=null", "--json"])
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["best"]["metrics"]["accuracy"] > 0
    looked = runner.invoke(app, ["inspect-activations", str(fused / "best"), "--model", env["vit"], "-a",
                                 str(run_dir / "best"), "-a", str(other / "best"), "--task", env["task"], "--json",
                                 "--quiet"])
    assert looked.exit_code == 0, looked.stderr
    layers = json.loads(looked.stdout)["results"][0]["layers"]
    assert layers and all(abs(sum(layer["weights"]) - 1) < 1e-4 for layer in layers)


def test_merge_a_lora_into_the_vit(env, tmp_path) -> None:
    lora = tmp_path / "lora"
    assert runner.invoke(app, ["add", "lora", "--model", env["vit"], "--save", str(lora)]).exit_code == 0
    merged = tmp_path / "merged"
    result = runner.invoke(app, ["merge", str(lora), "--model", env["vit"], "--out", str(merged)])
    assert result.exit_code == 0, result.stderr
    assert (merged / "preprocessor_config.json").is_file() and (merged / "model.safetensors").is_file()


def test_route_each_image_to_its_adapter(env, trained, tmp_path) -> None:
    run_dir, _ = trained
    val = env["root"] / "toy" / "val"
    rows = tmp_path / "rows.csv"
    rows.write_text(f"path,adapter\n{val / 'red' / '0.jpg'},colours\n{val / 'blue' / '1.png'},colours\n")
    result = runner.invoke(app, ["infer", "-m", env["vit"], "-a", str(run_dir / "best"), "--input", str(rows),
                                 "--text-column", "path", "--route-column", "adapter"])
    assert result.exit_code == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["image"] for line in lines] == [str(val / "red" / "0.jpg"), str(val / "blue" / "1.png")]
    assert all(line["active"] == "colours" for line in lines)


def test_builtin_beans_task_from_its_original_folders(env, tmp_path) -> None:
    """The built-in image task reads its original train/ and validation/ folders with --data-dir (without
    them it needs the Hub: tests/reliability/test_bad_input.py checks that path's one line offline)."""
    import shutil

    data = tmp_path / "beans"
    for split, source in (("train", "train"), ("validation", "val")):
        for label, colour in zip(("angular_leaf_spot", "bean_rust", "healthy"), COLOURS):
            shutil.copytree(env["root"] / "toy" / source / colour, data / split / label)
    result = runner.invoke(app, ["train", "--task", "beans", "--data-dir", str(data), "--model", env["vit"],
                                 "--run-dir", str(tmp_path / "run"), "--no-cache", "epochs=1", "--json"])
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["eval_examples"] == 12


def test_input_folder_and_foreign_files_are_one_line(env, trained, tmp_path) -> None:
    run_dir, _ = trained
    assert "is a folder; give a file of rows" in one_line_error(runner.invoke(
        app, ["infer", "-m", env["vit"], "-a", str(run_dir / "best"), "--input", str(env["root"] / "toy")]))
    import shutil

    task = tmp_path / "toy"
    shutil.copytree(env["root"] / "toy", task)
    (task / "val" / "red" / "notes.txt").write_text("not a picture")
    line = one_line_error(runner.invoke(app, ["train", "--task", str(task / "task.yaml"), "--model", env["vit"],
                                              "--run-dir", str(tmp_path / "run"), "--no-cache", "epochs=1"]))
    assert "cannot decode" in line and "notes.txt" in line
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("config", ["prefix_tuning", "prompt_tuning"])
def test_prefix_and_prompt_tuning_train_on_images(env, tmp_path, config) -> None:
    run_dir = tmp_path / config
    result = runner.invoke(app, ["train", "--task", env["task"], "--model", env["vit"], "--config", config,
                                 "--run-dir", str(run_dir), "--no-cache", "epochs=8", "learning_rate=1e-3",
                                 "batch_size=6", "--json"])
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["best"]["metrics"]["accuracy"] > 1 / 3
    image = str(env["root"] / "toy" / "val" / "green" / "0.jpg")
    found = runner.invoke(app, ["infer", "-m", env["vit"], "-a", str(run_dir / "best"), image])
    assert found.exit_code == 0 and json.loads(found.stdout)["label"] in COLOURS, found.stderr
