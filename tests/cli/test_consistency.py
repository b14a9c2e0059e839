"""One command line: --json wherever results are printed, the same keys for the same things, --format for
on-disk formats only, click's usage errors as one line, exit 1 for unreachable registries, the short name
of the embedded model in the explore site, 0-based layers and progress in inspect-activations, and the
exit-code table (issue 11)."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, one_line_error, save_tiny_model, write_sentiment_task
from typer.testing import CliRunner

from adapter_cli.cli import app

runner = CliRunner()


def _commands() -> dict[str, object]:
    """Every leaf command of the app by its full name (``cache rm``), as click sees it."""
    import typer

    def walk(command: object, prefix: str) -> dict[str, object]:
        subs = getattr(command, "commands", None)
        if subs is None:
            return {prefix.strip(): command}
        out: dict[str, object] = {}
        for name, sub in subs.items():
            out.update(walk(sub, f"{prefix} {name}"))
        return out

    return walk(typer.main.get_command(app), "")


def _options(command: object) -> dict[str, object]:
    return {opt: p for p in command.params for opt in getattr(p, "opts", [])}  # type: ignore[attr-defined]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _keys(data: object) -> set[str]:
    """Every key anywhere in a JSON document."""
    if isinstance(data, dict):
        return set(data) | {k for v in data.values() for k in _keys(v)}
    if isinstance(data, list):
        return {k for v in data for k in _keys(v)}
    return set()


@pytest.fixture
def cached(tmp_path, monkeypatch):
    """A cache with one entry ``demo-run`` for the base model org/tiny (plain files: no model is loaded)."""
    from adapter_cli import cache

    monkeypatch.setenv("ADAPT_CACHE", str(tmp_path / "cache"))
    source = tmp_path / "src"
    source.mkdir()
    (source / "adapter_config.json").write_text('{"name": "demo"}')
    (source / "weights.safetensors").write_bytes(b"x" * 100)
    entry = cache.put(source, model_id="org/tiny", entry_id="demo-run", info={"name": "demo", "task": "sst2"})
    return entry


# ------------------------------------------------------------------------------------- 1: --json everywhere

# Commands that print results but take no --json: `infer` prints JSON lines already; `hub serve` is a server.
NO_JSON = {"infer", "hub serve"}


def test_every_command_that_prints_results_takes_json():
    lacking = sorted(name for name, command in _commands().items()
                     if name not in NO_JSON and "--json" not in _options(command))
    assert lacking == []


def test_recipes_show_json(tmp_path):
    r = runner.invoke(app, ["recipes", "show", "pfeiffer", "--json"])
    assert r.exit_code == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["kind"] == "adapter" and data["name"] == "pfeiffer"
    assert data["content"]["config"]["reduction_factor"] == 16
    assert data["yaml"] == Path(data["path"]).read_text(encoding="utf-8")


def test_recipes_cp_json(tmp_path):
    r = runner.invoke(app, ["recipes", "cp", "pfeiffer", f"{tmp_path}/mine/", "--json"])
    assert r.exit_code == 0, r.stderr
    data = json.loads(r.stdout)
    target = tmp_path / "mine" / "pfeiffer.yaml"  # a trailing / names a directory, even a new one
    assert data["path"] == str(target) and target.is_file()
    assert data["bytes"] == target.stat().st_size and data["name"] == "pfeiffer"


def test_cache_path_json(cached, tmp_path):
    root = json.loads(runner.invoke(app, ["cache", "path", "--json"]).stdout)
    assert root == {"path": str(tmp_path / "cache")}
    r = runner.invoke(app, ["cache", "path", "demo-run", "--model", "org/tiny", "--json"])
    assert r.exit_code == 0, r.stderr
    listed = json.loads(runner.invoke(app, ["cache", "ls", "--json"]).stdout)
    assert json.loads(r.stdout) == listed[0]  # the same object as cache ls --json
    plain = runner.invoke(app, ["cache", "path", "demo-run", "--model", "org/tiny"])
    assert plain.stdout.strip() == str(cached.path)


def test_cache_rm_json(cached):
    dry = runner.invoke(app, ["cache", "rm", "demo-run", "--dry-run", "--json"])
    assert dry.exit_code == 0, dry.stderr
    [entry] = json.loads(dry.stdout)
    assert entry["id"] == "demo-run" and entry["removed"] is False and cached.path.is_dir()
    assert entry["bytes"] > 100
    gone = runner.invoke(app, ["cache", "rm", "demo-run", "--yes", "--json"])
    assert gone.exit_code == 0, gone.stderr
    assert [e["removed"] for e in json.loads(gone.stdout)] == [True] and not cached.path.exists()


def test_cache_rm_refuses_without_yes_off_a_terminal(cached):
    assert "refusing to remove without --yes" in one_line_error(runner.invoke(app, ["cache", "rm", "demo-run",
                                                                                    "--json"]))
    assert cached.path.is_dir()


# ------------------------------------------------------------------------ 2: the same keys for the same things

@pytest.fixture(scope="module")
def hub_world(tmp_path_factory):
    """A tiny base model and one trained-looking adapter cached for it."""
    from adapter_cli import AdapterModel, cache
    from adapter_cli.defaults import model_id

    root = tmp_path_factory.mktemp("consistency")
    model_dir = save_tiny_model(root / "base")
    m = AdapterModel.from_pretrained(model_dir)
    m.add_adapter("sst2", "pfeiffer")
    m.add_head("sst2", num_labels=2)
    m.save_adapter(root / "saved", "sst2")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ADAPT_CACHE", str(root / "cache"))
        cache.put(root / "saved", model_id=model_id(str(model_dir)), entry_id="sst2-run",
                  info={"name": "sst2", "task": "sst2", "method": "adapter", "kind": "adapter",
                        "config_name": "pfeiffer", "metrics": {"accuracy": 0.9}, "main_metric": "accuracy"})
    return {"root": root, "model": model_dir, "cache": root / "cache"}


def test_byte_counts_are_bytes_in_every_json_output(hub_world, tmp_path, monkeypatch):
    monkeypatch.setenv("ADAPT_CACHE", str(hub_world["cache"]))
    monkeypatch.delenv("ADAPT_REGISTRY", raising=False)
    reg = tmp_path / "reg"
    outputs = {}
    for name, args in {
        "pack": ["pack", "sst2-run", "--author", "me", "-o", str(tmp_path / "out"), "--json"],
        "publish": ["publish", "sst2-run", "--author", "me", "--to", str(reg), "--json"],
        "search": ["search", "--registry", str(reg), "--json"],
        "cache ls": ["cache", "ls", "--json"],
        "recipes cp": ["recipes", "cp", "pfeiffer", str(tmp_path / "p.yaml"), "--json"],
    }.items():
        r = runner.invoke(app, args)
        assert r.exit_code == 0, (name, r.stderr)
        outputs[name] = json.loads(r.stdout)
    for name, data in outputs.items():
        assert "size" not in _keys(data), name
        records = data if isinstance(data, list) else [data]
        assert all(isinstance(r["bytes"], int) and r["bytes"] > 0 for r in records), name
    archive = tmp_path / "out"
    assert outputs["pack"]["bytes"] == Path(outputs["pack"]["archive"]).stat().st_size
    assert outputs["publish"]["bytes"] == outputs["search"][0]["bytes"]
    assert json.loads((reg / "index.json").read_text())["adapters"][0]["size"] > 0  # the index format is kept
    assert archive.is_dir()


# ------------------------------------------------------------------------------- 3: --format = on-disk format

def test_format_always_means_an_on_disk_format():
    for name, command in _commands().items():
        option = _options(command).get("--format")
        if option is not None and not getattr(option, "hidden", False):  # a hidden one only refuses the old use
            assert "adapterhub" in (option.help or ""), f"adapt {name} --format is not an on-disk format"


def test_the_old_results_format_flag_fails_with_a_hint(tmp_path):
    line = one_line_error(runner.invoke(app, ["results", str(tmp_path), "--format", "csv"]))
    assert "--csv" in line and "--json" in line


def test_add_format_still_chooses_the_on_disk_format(tmp_path):
    r = runner.invoke(app, ["add", "pfeiffer", "--model", "minilm", "--format", "adapterhub",
                            "--save", str(tmp_path / "ah"), "--json"])
    assert r.exit_code == 0, r.stderr
    assert (tmp_path / "ah" / "adapter_config.json").is_file()


# --------------------------------------------------------------------------- 4: click's errors as one line

@pytest.mark.parametrize("args, expected", [
    (["train", "--foo"], "error: no such option --foo; see adapt train --help"),
    (["cache", "rm", "--dry"], "error: no such option --dry (did you mean --dry-run?); see adapt cache rm --help"),
    (["recipes", "show"], "error: missing argument 'name'; see adapt recipes show --help"),
    (["hub", "serve", ".", "--port", "x"], "error: invalid value for '--port'"),
    (["inspect-activations", "f", "--batch-size", "0"], "error: invalid value for '--batch-size'"),
    (["cache", "path", "a", "b"], "error: got unexpected extra argument(s) (b)"),
    (["trian"], "error: no such command 'trian' (did you mean 'train'?); see adapt --help"),
], ids=lambda v: "-".join(v) if isinstance(v, list) else None)
def test_usage_errors_are_one_line_and_exit_2(capsys, args, expected):
    from adapter_cli.cli._common import run_app

    assert run_app(app, args) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1 and err.startswith(expected), err


def test_run_app_keeps_help_results_and_our_own_errors(capsys, cached):
    from adapter_cli.cli._common import run_app

    assert run_app(app, ["cache", "path", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["path"]
    assert run_app(app, ["cache", "--help"]) == 0
    assert "rm" in capsys.readouterr().out
    assert run_app(app, ["recipes", "show", "nosuch"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.strip() == "error: no recipe 'nosuch'; see `adapt recipes ls`"


def test_the_adapt_command_prints_one_line_for_a_usage_error():
    """Through the real entry point (`main` must call run_app)."""
    r = subprocess.run([sys.executable, "-m", "adapter_cli", "train", "--foo"], capture_output=True, text=True,
                       cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=120)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.strip().splitlines() == ["error: no such option --foo; see adapt train --help"]


# ------------------------------------------------------------------------ 5: unreachable registries: exit 1

@pytest.mark.parametrize("verb", ["pull", "search", "publish", "site"])
def test_an_unreachable_http_registry_is_exit_1(hub_world, tmp_path, monkeypatch, verb):
    monkeypatch.setenv("ADAPT_CACHE", str(tmp_path / "cache"))
    url = f"http://127.0.0.1:{_closed_port()}"
    args = {"pull": ["pull", "sentiment/sst-2@me", "--registry", url],
            "search": ["search", "--registry", url],
            "publish": ["publish", str(hub_world["root"] / "saved"), "--author", "me", "--catalog", "sentiment/x",
                        "--to", url],
            "site": ["hub", "site", url, "-o", str(tmp_path / "site")]}[verb]
    assert "cannot reach registry" in one_line_error(runner.invoke(app, args), code=1)
    assert not (tmp_path / "site").exists() and not (tmp_path / "cache").exists()


def test_an_unreachable_registry_among_others_is_still_exit_1(tmp_path, monkeypatch):
    monkeypatch.setenv("ADAPT_CACHE", str(tmp_path / "cache"))
    (tmp_path / "empty").mkdir()
    r = runner.invoke(app, ["pull", "sentiment/sst-2@me", "--registry", str(tmp_path / "empty"),
                            "--registry", f"http://127.0.0.1:{_closed_port()}"])
    assert "cannot reach registry" in one_line_error(r, code=1)


def test_a_typo_in_a_reachable_registry_stays_exit_2(tmp_path, monkeypatch):
    monkeypatch.setenv("ADAPT_CACHE", str(tmp_path / "cache"))
    (tmp_path / "empty").mkdir()
    r = runner.invoke(app, ["pull", "sentiment/sst-2@me", "--registry", str(tmp_path / "empty")])
    assert "no adapter" in one_line_error(r, code=2)


def test_an_unreachable_hugging_face_hub_is_exit_1(tmp_path):
    """A real huggingface_hub client against a closed port (its retry sleeps skipped), off a terminal."""
    code = ("import sys, time; time.sleep = lambda s: None\n"
            "from adapter_cli.cli import app\n"
            "from adapter_cli.cli._common import run_app\n"
            "sys.exit(run_app(app, sys.argv[1:]))\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "ADAPT_"))}
    env.update(HF_ENDPOINT=f"http://127.0.0.1:{_closed_port()}", HF_HOME=str(tmp_path / "hf"),
               ADAPT_CACHE=str(tmp_path / "cache"))
    for args in (["pull", "sentiment/sst-2@me", "--registry", "hf://org/repo"], ["pull", "hf://org/repo"],
                 ["search", "--registry", "hf://org/repo"]):
        r = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env,
                           cwd=tmp_path, timeout=120)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 1 and len(lines) == 1 and "cannot be reached" in lines[0], (args, r.stderr)


# -------------------------------------------------------------------- 6: the explore site names `minilm`

def _record(model: str, architecture: str = "pfeiffer") -> dict:
    return {"id": "sentiment/sst-2@me", "task": "sentiment", "dataset": "sst-2", "author": "me", "version": "1",
            "architecture": architecture, "base_model": {"id": model}}


@pytest.mark.parametrize("model", ["sentence-transformers/all-MiniLM-L6-v2", "all-minilm-l6-v2", "minilm"])
def test_the_site_names_the_embedded_model_minilm(model):
    from adapter_cli.defaults import resolve_model
    from adapter_cli.hub.site import use_command

    for unique in (True, False):
        command = use_command(_record(model), "./hub", unique)
        assert "--model minilm " in command and "MiniLM" not in command
        assert resolve_model("minilm") != "minilm"  # adapt resolves it to the installed copy, offline


def test_the_site_keeps_other_model_ids():
    from adapter_cli.hub.site import use_command

    assert "--model google-bert/bert-base-uncased " in use_command(_record("google-bert/bert-base-uncased"), "./hub")


# ----------------------------------------------------------- 7, 8: inspect-activations: layers from 0, progress

@pytest.fixture(scope="module")
def fusion_world(tmp_path_factory):
    """Two Houlsby adapters (both placements) and an untrained fusion over them, as directories."""
    from adapter_cli import AdapterModel

    root = tmp_path_factory.mktemp("activations")
    model_dir = save_tiny_model(root / "base")
    m = AdapterModel.from_pretrained(model_dir)
    for name in ("a", "b"):
        m.add_adapter(name, "houlsby")
        m.save_adapter(root / name, name)
    m.add_fusion(["a", "b"], name="ab")
    m.save_fusion(root / "ab", "ab")
    task = write_sentiment_task(root / "task", n_train=8, n_eval=10)
    return {"root": root, "model": str(model_dir), "task": str(task)}


def _inspect(fusion_world: dict, *extra: str):
    root = fusion_world["root"]
    return runner.invoke(app, ["inspect-activations", str(root / "ab"), "-a", str(root / "a"), "-a", str(root / "b"),
                               "--task", fusion_world["task"], "--model", fusion_world["model"], *extra])


def test_layers_are_numbered_from_0_in_csv_table_json_and_png(fusion_world, tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    titles: list[str] = []
    close = plt.close
    monkeypatch.setattr(plt, "close", lambda fig=None: (titles.extend(ax.get_title() for ax in fig.axes
                                                                      if ax.get_title()), close(fig)))
    out = tmp_path / "act"
    table = _inspect(fusion_world, "--out", str(out), "--batch-size", "4")
    assert table.exit_code == 0, table.stderr
    with open(out / "activations.csv", newline="") as f:
        csv_layers = {int(row["layer"]) for row in csv.DictReader(f)}
    assert csv_layers == {0, 1}  # the tiny model has 2 layers
    assert {int(t.split()[1]) for t in titles} == csv_layers
    assert "layer 0 (attention)" in titles and "layer 1" in titles
    rows = [line.split()[0] for line in table.stdout.splitlines() if line[:1].isdigit()]
    assert {int(r) for r in rows} == csv_layers
    data = json.loads(_inspect(fusion_world, "--json").stdout)
    assert {layer["layer"] for layer in data["results"][0]["layers"]} == csv_layers


def test_inspect_activations_reports_progress_over_batches(fusion_world, monkeypatch):
    from contextlib import contextmanager

    from adapter_cli.cli import _progress

    calls: list[dict] = []

    @contextmanager
    def recorder(total, description, quiet=False):
        call = {"total": total, "description": description, "quiet": quiet, "done": 0}
        calls.append(call)
        yield lambda n=1: call.update(done=call["done"] + n)

    monkeypatch.setattr(_progress, "batch_progress", recorder)
    r = _inspect(fusion_world, "--batch-size", "4", "--quiet")
    assert r.exit_code == 0, r.stderr
    assert calls == [{"total": math.ceil(10 / 4), "description": str(fusion_world["root"] / "ab"), "quiet": True,
                      "done": 3}]


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_batch_progress_draws_only_on_a_terminal(monkeypatch):
    from adapter_cli.cli._progress import batch_progress

    for stream, quiet, drawn in ((_Terminal(), False, True), (_Terminal(), True, False), (io.StringIO(), False, False)):
        monkeypatch.setattr(sys, "stderr", stream)
        with batch_progress(3, "infer mrpc", quiet) as advance:
            for _ in range(3):
                advance(1)
        assert ("infer mrpc" in stream.getvalue()) is drawn, (quiet, stream.getvalue())


# ------------------------------------------------------------------------------- 9, 10: Python API and docs

def test_from_pretrained_takes_the_embedded_short_name():
    from adapter_cli import AdapterModel
    from adapter_cli.defaults import EMBEDDED_ID

    m = AdapterModel.from_pretrained("minilm")
    assert m.name_or_path == EMBEDDED_ID and m.num_layers == 6


def test_the_docs_have_the_exit_codes_and_the_embedded_model():
    cli = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    for code in ("| 0 |", "| 1 |", "| 2 |", "| 130 |"):
        assert code in cli
    assert 'AdapterModel.from_pretrained("minilm")' in (ROOT / "docs" / "python-api.md").read_text(encoding="utf-8")
