"""Recipes in sections: dotted and short overrides, adapter fields overridable, old flat files still load."""

from __future__ import annotations

import json

import pytest
import yaml
from typer.testing import CliRunner

from adapter_cli.errors import UsageError
from adapter_cli.training.recipe import SECTIONS, Recipe, load_recipe
from conftest import one_line_error, save_tiny_model, write_sentiment_task

FLAT_RUN_RECIPE = """
task: mrpc
model: minilm
method: adapter
adapter: houlsby
adapter_overrides: {reduction_factor: 8}
learning_rate: 0.0003
epochs: 4
seed: 7
max_length: 64
"""


def test_an_old_flat_recipe_still_loads(tmp_path) -> None:
    path = tmp_path / "recipe.yaml"
    path.write_text(FLAT_RUN_RECIPE)
    r = load_recipe(str(path))
    assert (r.adapter, r.adapter_overrides, r.learning_rate, r.epochs, r.seed, r.max_length) == \
        ("houlsby", {"reduction_factor": 8}, 0.0003, 4, 7, 64)


def test_sections_round_trip() -> None:
    r = load_recipe("fusion").updated({"fusion.adapters": ["a", "b"], "adapter.reduction_factor": 4})
    written = r.to_dict()
    # the multitask section only in multitask recipes: the others read as they always did
    assert set(written) == {"task", "model", "method", "name", "description", *SECTIONS} - {"multitask"}
    assert written["fusion"] == {"adapters": ["a", "b"], "config": "dynamic", "reg_weight": 0.01,
                                 "unfreeze_adapters": False}
    assert Recipe().updated(yaml.safe_load(yaml.safe_dump(written))).flat() == r.flat()


def test_a_multitask_recipe_round_trips() -> None:
    r = load_recipe("multitask").updated({"tasks": ["sst2", "mrpc"], "multitask.data_dirs": {"mrpc": "glue/MRPC"},
                                          "alpha_end": 0.5})
    written = r.to_dict()
    assert written["multitask"]["tasks"] == ["sst2", "mrpc"] and written["multitask"]["alpha_end"] == 0.5
    assert Recipe().updated(yaml.safe_load(yaml.safe_dump(written))).flat() == r.flat()


@pytest.mark.parametrize("change, attribute, value", [
    ({"optim.learning_rate": 3e-4}, "learning_rate", 3e-4),
    ({"learning_rate": 3e-4}, "learning_rate", 3e-4),
    ({"train.epochs": 2}, "epochs", 2),
    ({"data.max_length": 32}, "max_length", 32),
    ({"adapter.config": "houlsby"}, "adapter", "houlsby"),
    ({"fusion.reg_weight": 0.1}, "fusion_reg_weight", 0.1),
])
def test_dotted_and_short_keys(change, attribute, value) -> None:
    assert getattr(load_recipe("adapter").updated(change), attribute) == value


def test_adapter_fields_are_overridable() -> None:
    r = load_recipe("adapter").updated({"reduction_factor": 32, "adapter.non_linearity": "swish"})
    assert r.adapter_overrides == {"reduction_factor": 32, "non_linearity": "swish"}


@pytest.mark.parametrize("change, message", [
    ({"optim.epochs": 3}, "unknown key 'epochs' in recipe section 'optim'"),
    ({"optimizer.learning_rate": 1}, "unknown recipe section 'optimizer'"),
    ({"reduction_factr": 3}, "did you mean 'reduction_factor'"),
    ({"learning_rat": 3}, "did you mean 'learning_rate'"),
])
def test_unknown_keys_are_one_line(change, message) -> None:
    with pytest.raises(UsageError, match=message):
        load_recipe("adapter").updated(change)


def test_the_train_help_example_with_an_adapter_field_runs(tmp_path, monkeypatch) -> None:
    """`adapt train --task sst2 --config houlsby reduction_factor=32` failed with 'unknown recipe key'."""
    from adapter_cli.cli import app

    monkeypatch.setenv("ADAPT_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    model, task = save_tiny_model(tmp_path / "tiny"), write_sentiment_task(tmp_path / "task")
    runner = CliRunner()
    result = runner.invoke(app, ["train", "--task", str(task), "--model", str(model), "--config", "houlsby",
                                 "reduction_factor=16", "optim.learning_rate=3e-3", "seed=2", "epochs=1",
                                 "--quiet", "--json"])
    assert result.exit_code == 0, result.stderr
    run = json.loads(result.stdout)["run_dir"]
    saved = yaml.safe_load((tmp_path / run / "recipe.yaml").read_text())
    assert saved["adapter"] == {"config": "houlsby", "reduction_factor": 16}
    assert saved["optim"]["learning_rate"] == 3e-3 and saved["train"]["seed"] == 2
    config = json.loads((tmp_path / run / "best" / "adapter_config.json").read_text())
    assert config["config"]["reduction_factor"] == 16
    line = one_line_error(runner.invoke(app, ["train", "--task", str(task), "--model", str(model),
                                              "adapter.reduction_factr=16"]))
    assert "did you mean 'reduction_factor'" in line
