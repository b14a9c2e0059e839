"""``adapt add`` and ``adapt inspect`` through typer's runner: exit codes, stdout/stderr, files, --json."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from typer.testing import CliRunner

from adapter_cli.cli import app
from conftest import one_line_error, ROOT, tiny_model

runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, list(args))




@pytest.fixture
def base_dir(tmp_path):
    model = tiny_model()
    model.base.save_pretrained(tmp_path / "base")
    return tmp_path / "base"


@pytest.mark.parametrize("factor, millions", [(64, 0.2), (16, 0.9), (2, 7.1)])
def test_add_reports_paper_parameter_counts(factor, millions) -> None:
    result = run("add", "pfeiffer", f"reduction_factor={factor}", "--hidden-size", "768", "--num-layers", "12", "--json")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert round(data["parameters"] / 1e6, 1) == millions
    assert data["placements"][0]["location"] == "output_adapter"
    assert data["placements"][0]["bottleneck"] == 768 // factor
    assert data["bytes_fp32"] == 4 * data["parameters"]


def test_add_houlsby_table_is_twice_pfeiffer() -> None:
    pf = json.loads(run("add", "pfeiffer", "--hidden-size", "768", "--num-layers", "12", "--json").stdout)
    hb = json.loads(run("add", "houlsby", "--hidden-size", "768", "--num-layers", "12", "--json").stdout)
    assert hb["parameters"] == 2 * pf["parameters"]
    table = run("add", "houlsby", "--hidden-size", "768", "--num-layers", "12")
    assert table.exit_code == 0
    assert "mh_adapter" in table.stdout and "output_adapter" in table.stdout and "1,789,056" in table.stdout


def test_add_into_a_real_model_and_save_both_formats(base_dir, tmp_path) -> None:
    for fmt in ("adapt", "adapterhub"):
        out = tmp_path / f"saved-{fmt}"
        result = run("add", "bapna", "reduction_factor=4", "--model", str(base_dir), "--name", "mine",
                     "--save", str(out), "--format", fmt, "--json")
        assert result.exit_code == 0, result.stderr
        data = json.loads(result.stdout)
        assert data["base_parameters"] > 0 and 0 < data["percent_of_base"] < 100
        info = json.loads(run("inspect", str(out), "--json").stdout)
        assert info["kind"] == "adapter" and info["name"] == "mine" and info["format"] == fmt
        assert info["parameters"] == data["parameters"]
        assert info["config"]["ln_before"] is True


def test_inspect_adapterhub_fixture(shared_dir) -> None:
    root = shared_dir / "fixtures" / "adapterhub"
    data = json.loads(run("inspect", str(root / "adapters" / "hb"), "--json").stdout)
    assert data["format"] == "adapterhub" and data["config"]["mh_adapter"] is True
    fusion = json.loads(run("inspect", str(root / "fusions" / "pf,pf2,lnb"), "--json").stdout)
    assert fusion["kind"] == "fusion" and fusion["adapters"] == ["pf", "pf2", "lnb"]
    assert fusion["parameters"] == 3 * (3 * 48 * 48 + 2 * 48)  # 3 layers x (Q, K with bias; V without)


@pytest.mark.parametrize("args, message", [
    (["add", "pfeifer", "--hidden-size", "768", "--num-layers", "12"], "did you mean 'pfeiffer'"),
    (["add", "pfeiffer", "reduction_factr=8", "--hidden-size", "768", "--num-layers", "12"], "did you mean"),
    (["add", "pfeiffer", "reduction_factor=1000", "--hidden-size", "768", "--num-layers", "12"], "zero-width"),
    (["add", "pfeiffer", "--name", "a.b", "--hidden-size", "768", "--num-layers", "12"], "invalid adapter name"),
    (["add", "pfeiffer", "--name", "x/y", "--hidden-size", "768", "--num-layers", "12"], "invalid adapter name"),
    (["add", "pfeiffer", "oops", "--hidden-size", "768", "--num-layers", "12"], "key=value"),
    (["add", "pfeiffer"], "--hidden-size"),
    (["inspect", "/nonexistent/adapter"], "no adapter or fusion directory"),
])
def test_bad_input_gives_one_line_and_exit_2(args, message) -> None:
    assert message in one_line_error(run(*args))


def test_bad_input_writes_nothing(base_dir, tmp_path) -> None:
    out = tmp_path / "never"
    for args in (["add", "pfeiffer", "reduction_factor=1000", "--model", str(base_dir), "--save", str(out)],
                 ["add", "pfeiffer", "--model", str(base_dir), "--save", str(out), "--format", "zip"],
                 ["add", "pfeiffer", "--model", str(tmp_path / "missing"), "--save", str(out)]):
        one_line_error(run(*args))
        assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base"]  # no temp directories left behind


def test_wrong_model_for_adapter(base_dir, tmp_path) -> None:
    model = tiny_model(hidden_size=48)
    model.add_adapter("a")
    model.save_adapter(tmp_path / "a", "a")
    from adapter_cli.model import AdapterModel

    from adapter_cli.errors import BaseModelMismatch

    with pytest.raises(BaseModelMismatch):
        AdapterModel.from_pretrained(base_dir).load_adapter(tmp_path / "a")


def test_corrupt_inspect(tmp_path) -> None:
    d = tmp_path / "bad"
    d.mkdir()
    (d / "adapter_config.json").write_text("{")
    assert "corrupt" in one_line_error(run("inspect", str(d)))


def test_help_does_not_import_torch() -> None:
    code = ("import sys; from adapter_cli.cli import app; from typer.testing import CliRunner; "
            "r = CliRunner().invoke(app, ['--help']); assert r.exit_code == 0; "
            "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'heavy import'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_help_teaches() -> None:
    result = run("add", "--help")
    assert result.exit_code == 0
    for word in ("pfeiffer", "houlsby", "Examples", "--json", "reduction_factor"):
        assert word in result.stdout


def test_inspect_reads_weight_shapes_from_headers(tmp_path) -> None:
    """Without torch, shapes and dtypes come from the safetensors headers; they equal the loaded tensors'."""
    from adapter_cli.formats import read_adapter, read_fusion, read_head

    model = tiny_model()
    model.add_adapter("a", "houlsby")
    model.add_head("a", num_labels=3)
    model.add_adapter("b", "houlsby")
    model.add_fusion(["a", "b"], name="f")
    for fmt in ("adapt", "adapterhub"):
        model.save_adapter(tmp_path / fmt, "a", format=fmt, safetensors=True, dtype=torch.float16)
        model.save_fusion(tmp_path / f"{fmt}-fusion", "f", format=fmt, safetensors=True)
        for reader, path in ((read_adapter, tmp_path / fmt), (read_head, tmp_path / fmt),
                             (read_fusion, tmp_path / f"{fmt}-fusion")):
            loaded = {k: (tuple(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in reader(path).weights.items()}
            described = {k: (v.shape, v.dtype) for k, v in reader(path, shapes_only=True).weights.items()}
            assert loaded == described and loaded
        info = json.loads(run("inspect", str(tmp_path / fmt), "--json").stdout)
        assert info["parameters"] == sum(p.numel() for p in model.adapters["a"].parameters())
        assert info["head"]["parameters"] == sum(p.numel() for p in model.heads["a"].parameters())


@pytest.mark.parametrize("damage", ["truncated", "header too long", "header not json", "wrong size", "tiny"])
def test_inspect_of_damaged_weights_is_one_line(tmp_path, damage) -> None:
    model = tiny_model()
    model.add_adapter("a")
    model.save_adapter(tmp_path / "a", "a")
    weights = tmp_path / "a" / "adapter_weights.safetensors"
    data = weights.read_bytes()
    length = int.from_bytes(data[:8], "little")
    if damage == "truncated":
        data = data[:-4]
    elif damage == "header too long":
        data = (len(data) * 2).to_bytes(8, "little") + data[8:]
    elif damage == "header not json":
        data = data[:8] + b"\xff" * length + data[8 + length:]
    elif damage == "wrong size":  # a float32 tensor declared float16: its bytes no longer match its shape
        assert b'"F32"' in data[8:8 + length]
        data = data[:8] + data[8:8 + length].replace(b'"F32"', b'"F16"', 1) + data[8 + length:]
    else:
        data = data[:5]
    weights.write_bytes(data)
    assert "corrupt weights file" in one_line_error(run("inspect", str(tmp_path / "a")))


def test_add_save_never_replaces_a_directory_silently(base_dir, tmp_path) -> None:
    out = tmp_path / "trained"
    assert run("add", "pfeiffer", "--model", str(base_dir), "--head", "classification:3", "--save", str(out)).exit_code == 0
    before = {f.name: f.read_bytes() for f in out.iterdir()}
    line = one_line_error(run("add", "houlsby", "--model", str(base_dir), "--save", str(out)))
    assert "exists" in line and "--overwrite" in line
    assert {f.name: f.read_bytes() for f in out.iterdir()} == before  # the head and weights are still there
    result = run("add", "houlsby", "--model", str(base_dir), "--save", str(out), "--overwrite", "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(run("inspect", str(out), "--json").stdout)["config"]["mh_adapter"] is True
    (tmp_path / "empty").mkdir()
    assert run("add", "pfeiffer", "--model", str(base_dir), "--save", str(tmp_path / "empty")).exit_code == 0
