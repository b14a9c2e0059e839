"""``adapt add`` and ``adapt inspect`` through typer's runner: exit codes, stdout/stderr, files, --json."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
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
