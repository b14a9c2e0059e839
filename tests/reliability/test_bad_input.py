"""No traceback for any input (issue 12, item 6). Every case of the table runs through the CLI and must end
in exactly one ``error: ...`` line on stderr, nothing on stdout, the documented exit code (2 bad input, 1 a
failure such as a full disk) and a file tree (the working directory, the cache, the shared inputs) exactly
as it was: nothing half-written, no run directory, no temporaries.

Cases run in-process through typer's CliRunner, or as a real ``python -m adapter_cli`` process where a
process matters: a file-size limit (RLIMIT_FSIZE, the full disk), or a command that would spin or serve
forever if it were not refused (a timeout then fails the case instead of hanging the suite)."""

from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from adapter_cli.cli import app
from conftest import ROOT, one_line_error, save_tiny_model, write_sentiment_task

runner = CliRunner()
DEEP = 100_000  # levels of nesting: far beyond Python's recursion limit


@dataclass(frozen=True)
class Case:
    id: str
    args: tuple[str, ...]  # {model} {adapter} {task} are the shared inputs; other paths are in the case's folder
    code: int = 2
    says: str = ""  # a fragment the error line must hold
    prepare: Callable[[Path, dict], None] | None = None  # writes the case's input files (before the snapshot)
    fsize: int | None = None  # run as a process under this file-size limit (bytes): a full disk
    process: bool = False  # run as a process (with a timeout)
    never_says: str = ""  # what the line must not echo (file contents)


# ------------------------------------------------------------------------------------------- inputs


def bad_weights(kind: str) -> Callable[[Path, dict], None]:
    """The shared adapter (made by `adapt add --save --head`) with one tensor rewritten."""

    def prepare(work: Path, world: dict) -> None:
        import torch
        from safetensors.torch import load_file, save_file

        shutil.copytree(world["adapter"], work / "bad")
        path = work / "bad" / "adapter_weights.safetensors"
        weights = load_file(str(path))
        key = "output_adapter.0.down.weight"
        if kind == "int":
            weights[key] = weights[key].to(torch.int64)
        elif kind == "bool":
            weights[key] = weights[key] > 0
        elif kind == "nan":
            weights[key][0, 0] = float("nan")
        elif kind == "inf":
            weights[key][0, 0] = float("-inf")
        elif kind == "shape":
            weights[key] = torch.zeros(weights[key].shape[0] + 1, weights[key].shape[1])
        elif kind == "head_int":
            path = work / "bad" / "head_weights.safetensors"
            weights = load_file(str(path))
            weights = {k: v.to(torch.int32) for k, v in weights.items()}
        save_file(weights, str(path), metadata={"format": "pt"})

    return prepare


def bad_config(change: Callable[[dict], None], file: str = "adapter_config.json") -> Callable[[Path, dict], None]:
    def prepare(work: Path, world: dict) -> None:
        shutil.copytree(world["adapter"], work / "bad")
        path = work / "bad" / file
        data = json.loads(path.read_text())
        change(data)
        path.write_text(json.dumps(data))

    return prepare


def nested_config(work: Path, world: dict) -> None:
    shutil.copytree(world["adapter"], work / "bad")
    (work / "bad" / "adapter_config.json").write_text("[" * DEEP + "]" * DEEP)


def write(name: str, text: str) -> Callable[[Path, dict], None]:
    def prepare(work: Path, world: dict) -> None:
        (work / name).parent.mkdir(parents=True, exist_ok=True)
        (work / name).write_text(text)

    return prepare


def task_reading(name: str) -> Callable[[Path, dict], None]:
    """A task YAML in work/t whose train file is ``name``, beside a file of secrets one folder up."""

    def prepare(work: Path, world: dict) -> None:
        (work / "secret.csv").write_text("SECRET-COLUMN,TOP-SECRET\nx,y\n")
        (work / "t").mkdir()
        shutil.copy(world["task"].parent / "dev.csv", work / "t" / "dev.csv")
        (work / "t" / "task.yaml").write_text(
            "name: t\nkind: single\nlabels: [neg, pos]\nmetrics: [accuracy]\ncolumns: {text: text, label: label}\n"
            f"local: {{train: {json.dumps(name.format(work=work))}, eval: dev.csv}}\n")

    return prepare


def task_with_link(work: Path, world: dict) -> None:
    task_reading("train.csv")(work, world)
    (work / "t" / "train.csv").symlink_to(work / "secret.csv")


def many_rows(work: Path, world: dict) -> None:
    (work / "rows.txt").write_text("".join(f"a good film, number {i}\n" for i in range(300)))


def labelled_rows(work: Path, world: dict) -> None:
    (work / "rows.csv").write_text("text,label\n" + "".join(f"good film {i},LABEL_{i % 2}\n" for i in range(40)))


def both(*steps: Callable[[Path, dict], None]) -> Callable[[Path, dict], None]:
    def prepare(work: Path, world: dict) -> None:
        for step in steps:
            step(work, world)

    return prepare


def file_size_limit(limit: int) -> Callable[[], None]:
    def limit_writes() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG, no signal
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return limit_writes


# ------------------------------------------------------------------------------------------- the table

TRAIN = ("train", "--task", "{task}", "--model", "{model}", "--run-dir", "run", "--quiet", "epochs=1",
         "batch_size=16", "max_train_samples=16", "max_eval_samples=8")
ADD = ("add", "pfeiffer", "--model", "{model}", "--save", "out")
INFER = ("infer", "--model", "{model}", "-a")

CASES = [
    # recipe values (refused before a run directory or a cache entry exists)
    Case("warmup_ratio=nan", (*TRAIN, "warmup_ratio=nan"), says="warmup_ratio"),
    Case("learning_rate=inf", (*TRAIN, "learning_rate=inf"), says="learning_rate"),
    Case("learning_rate=nan", (*TRAIN, "learning_rate=nan"), says="learning_rate"),
    Case("weight_decay=inf", (*TRAIN, "weight_decay=inf"), says="weight_decay"),
    Case("max_grad_norm=nan", (*TRAIN, "max_grad_norm=nan"), says="max_grad_norm"),
    Case("fusion.reg_weight=inf", (*TRAIN, "fusion.reg_weight=inf"), says="fusion_reg_weight"),
    Case("huge seed", (*TRAIN, "seed=99999999999999999999999"), says="seed"),
    Case("negative seed", (*TRAIN, "seed=-1"), says="seed"),
    Case("max_length beyond the positions", (*TRAIN, "max_length=100000"), says="max_length 100000"),
    Case("adapter.reduction_factor=nan", (*TRAIN, "adapter.reduction_factor=nan"), says="reduction_factor"),
    Case("reduction_factor=1e-300", (*TRAIN, "reduction_factor=1e-300"), says="reduction_factor"),
    Case("reduction_factor=0", (*TRAIN, "reduction_factor=0"), says="reduction_factor"),
    Case("reduction_factor=-4", (*TRAIN, "reduction_factor=-4"), says="reduction_factor"),
    Case("scaling=inf", (*TRAIN, "scaling=inf"), says="scaling"),
    Case("init_weights_seed=-1", (*TRAIN, "init_weights_seed=-1"), says="init_weights_seed"),
    Case("add: reduction_factor=1e-300", ("add", "pfeiffer", "reduction_factor=1e-300", "--hidden-size", "768",
                                          "--num-layers", "12"), says="reduction_factor"),
    Case("add: value nested too deeply", ("add", "pfeiffer", "leave_out=" + "[" * 5000 + "]" * 5000,
                                          "--hidden-size", "768", "--num-layers", "12"), says="nested too deeply"),
    # adapt add: sane ranges, heads
    Case("add --num-layers 1000000000", ("add", "pfeiffer", "--hidden-size", "768", "--num-layers", "1000000000"),
         says="--num-layers", process=True),
    Case("add --hidden-size 0", ("add", "pfeiffer", "--hidden-size", "0", "--num-layers", "12"), says="--hidden-size"),
    Case("add --hidden-size 10**9", ("add", "pfeiffer", "--hidden-size", "1000000000", "--num-layers", "12"),
         says="--hidden-size", process=True),
    Case("--head classification:0", (*ADD, "--head", "classification:0"), says="labels"),
    Case("--head classification:1", (*ADD, "--head", "classification:1"), says="regression"),
    Case("--head classification:abc", (*ADD, "--head", "classification:abc"), says="number"),
    Case("--head regression:3", (*ADD, "--head", "regression:3"), says="regression"),
    Case("--head multiple_choice:-2", (*ADD, "--head", "multiple_choice:-2"), says="choices"),
    Case("--head classification:10**9", (*ADD, "--head", "classification:1000000000"), says="labels"),
    # weights that are not floating point or not finite: loading refuses them, naming file and tensor
    Case("infer: int weights", (*INFER, "bad", "good film"), prepare=bad_weights("int"),
         says="'output_adapter.0.down.weight' is int64"),
    Case("infer: bool weights", (*INFER, "bad", "good film"), prepare=bad_weights("bool"), says="is bool"),
    Case("infer: NaN weights", (*INFER, "bad", "good film"), prepare=bad_weights("nan"), says="NaN"),
    Case("infer: -inf weights", (*INFER, "bad", "good film"), prepare=bad_weights("inf"), says="infinite"),
    Case("infer: int head weights", (*INFER, "bad", "good film"), prepare=bad_weights("head_int"),
         says="head_weights.safetensors"),
    # adapt inspect checks what loading checks: dtypes, shapes, config ranges
    Case("inspect: int weights", ("inspect", "bad"), prepare=bad_weights("int"), says="adapter_weights.safetensors"),
    Case("inspect: bool weights", ("inspect", "bad"), prepare=bad_weights("bool"), says="is bool"),
    Case("inspect: int head weights", ("inspect", "bad"), prepare=bad_weights("head_int"), says="int32"),
    Case("inspect: wrong shape", ("inspect", "bad"), prepare=bad_weights("shape"), says="has shape"),
    Case("infer: wrong shape", (*INFER, "bad", "good film"), prepare=bad_weights("shape"), says="has shape"),
    Case("inspect: reduction_factor=-1", ("inspect", "bad"),
         prepare=bad_config(lambda d: d["config"].update(reduction_factor=-1)), says="reduction_factor"),
    Case("inspect: reduction_factor=0.5", ("inspect", "bad"),
         prepare=bad_config(lambda d: d["config"].update(reduction_factor=0.5)), says="reduction_factor"),
    Case("inspect: hidden_size 0", ("inspect", "bad"),
         prepare=bad_config(lambda d: d["base_model"].update(hidden_size=0)), says="hidden_size"),
    Case("inspect: head num_labels 10**9", ("inspect", "bad"),
         prepare=bad_config(lambda d: d["config"].update(num_labels=10**9), "head_config.json"), says="labels"),
    Case("inspect: head dropout_prob=2", ("inspect", "bad"),
         prepare=bad_config(lambda d: d["config"].update(dropout_prob=2.0), "head_config.json"), says="dropout_prob"),
    # deeply nested JSON and YAML
    Case("inspect: nested adapter_config.json", ("inspect", "bad"), prepare=nested_config, says="nested too deeply"),
    Case("infer: nested adapter_config.json", (*INFER, "bad", "hi"), prepare=nested_config, says="nested too deeply"),
    Case("add --config nested JSON", ("add", "deep.json", "--hidden-size", "768", "--num-layers", "12"),
         prepare=write("deep.json", '{"a":' * DEEP + "1" + "}" * DEEP), says="nested too deeply"),
    Case("add --config nested YAML (flow)", ("add", "deep.yaml", "--hidden-size", "768", "--num-layers", "12"),
         prepare=write("deep.yaml", "a: " + "[" * DEEP + "]" * DEEP + "\n"), says="nested too deeply"),
    Case("add --config nested YAML (block)", ("add", "deep.yaml", "--hidden-size", "768", "--num-layers", "12"),
         prepare=write("deep.yaml", "".join("  " * i + "k:\n" for i in range(2000)) + "  " * 2000 + "1\n"),
         says="nested too deeply"),
    Case("train --config nested JSON", (*TRAIN, "--config", "deep.json"),
         prepare=write("deep.json", "[" * DEEP + "]" * DEEP), says="nested too deeply"),
    Case("train --config nested YAML", (*TRAIN, "--config", "deep.yaml"),
         prepare=write("deep.yaml", "[" * DEEP + "]" * DEEP), says="nested too deeply"),
    Case("train --recipe nested YAML", ("train", "--recipe", "r.yaml", "--task", "{task}", "--model", "{model}"),
         prepare=write("r.yaml", "a: " + "[" * DEEP + "]" * DEEP), says="nested too deeply"),
    Case("train --task nested YAML", ("train", "--task", "t.yaml", "--model", "{model}"),
         prepare=write("t.yaml", "a: " + "{a: " * DEEP + "1" + "}" * DEEP), says="nested too deeply"),
    # outputs into missing directories: refused up front, before any work
    Case("infer --metrics into a missing directory",
         (*INFER, "{adapter}", "--input", "rows.csv", "--label-column", "label", "--metrics", "missing/dir/m.json"),
         prepare=labelled_rows, says="missing/dir does not exist"),
    Case("infer --output into a missing directory", (*INFER, "{adapter}", "--output", "missing/dir/p.jsonl", "hi"),
         says="missing/dir does not exist"),
    Case("infer --max-length beyond the positions", (*INFER, "{adapter}", "--max-length", "100000", "hi"),
         says="--max-length 100000"),
    # done before, kept in the table
    Case("--run-dir names a file", TRAIN, prepare=write("run", "not a directory"), says="is a file"),
    Case("hub serve --port 99999", ("hub", "serve", "./hub", "--port", "99999"),
         prepare=lambda work, world: (work / "hub").mkdir(), says="--port 99999", process=True),
    # a full disk: one line, exit 1, no partial file
    Case("disk full: add --save", (*ADD, "reduction_factor=1"), code=1, fsize=4096, says="File too large"),
    Case("disk full: recipes cp", ("recipes", "cp", "pfeiffer", "copy.yaml"), code=1, fsize=200,
         says="copy.yaml"),
    Case("disk full: recipes cp into new folders", ("recipes", "cp", "pfeiffer", "new/folder/"), code=1, fsize=200,
         says="File too large"),
    Case("disk full: infer --output .jsonl", (*INFER, "{adapter}", "--input", "rows.txt", "--output", "p.jsonl"),
         code=1, fsize=4096, prepare=many_rows, says="p.jsonl"),
    Case("disk full: infer --output .csv", (*INFER, "{adapter}", "--input", "rows.txt", "--output", "p.csv"),
         code=1, fsize=4096, prepare=many_rows, says="p.csv"),
    # task files name files inside the task's folder; errors never echo a file's contents
    Case("task local train ../secret.csv", ("train", "--task", "t/task.yaml", "--model", "{model}"),
         prepare=task_reading("../secret.csv"), says="outside the task's directory", never_says="SECRET"),
    Case("task local train /abs/secret.csv", ("train", "--task", "t/task.yaml", "--model", "{model}"),
         prepare=task_reading("{work}/secret.csv"), says="outside the task's directory", never_says="SECRET"),
    Case("task local train ~/x.csv", ("train", "--task", "t/task.yaml", "--model", "{model}"),
         prepare=task_reading("~/x.csv"), says="outside the task's directory"),
    Case("task local train a link out", ("train", "--task", "t/task.yaml", "--model", "{model}"),
         prepare=task_with_link, says="a link", never_says="SECRET"),
    Case("infer --task with local train ../secret.csv", (*INFER, "{adapter}", "--task", "t/task.yaml"),
         prepare=task_reading("../secret.csv"), says="outside the task's directory", never_says="SECRET"),
]


# ------------------------------------------------------------------------------------------- running


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    """The shared inputs: a tiny model, a task, and an adapter with a head made by `adapt add --save`."""
    root = tmp_path_factory.mktemp("world")
    model = save_tiny_model(root / "model")
    task = write_sentiment_task(root / "task", n_train=32, n_eval=16)
    result = runner.invoke(app, ["add", "pfeiffer", "--model", str(model), "--save", str(root / "adapter"),
                                 "--head", "classification:2"])
    assert result.exit_code == 0, result.stderr
    return {"root": root, "model": model, "task": task, "adapter": root / "adapter"}


def snapshot(*roots: Path) -> dict[str, object]:
    """Every path under ``roots`` (hidden ones included) with its kind and, for files, size and sha256."""
    seen: dict[str, object] = {}
    for root in roots:
        if not root.exists():
            continue
        for folder, dirs, files in os.walk(root):
            for name in dirs + files:
                path = Path(folder, name)
                if path.is_symlink():
                    seen[str(path)] = ("link", os.readlink(path))
                elif path.is_dir():
                    seen[str(path)] = "dir"
                else:
                    seen[str(path)] = (path.stat().st_size, hashlib.sha256(path.read_bytes()).hexdigest())
    return seen


def run(case: Case, args: list[str], work: Path) -> SimpleNamespace:
    if case.fsize is None and not case.process:
        result = runner.invoke(app, args)
        assert result.exception is None or isinstance(result.exception, SystemExit), \
            f"{type(result.exception).__name__}: {result.exception}"
        return SimpleNamespace(exit_code=result.exit_code, stdout=result.stdout, stderr=result.stderr)
    env = {**os.environ, "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-m", "adapter_cli", *args], cwd=work, env=env, capture_output=True,
                          text=True, timeout=120,
                          preexec_fn=file_size_limit(case.fsize) if case.fsize is not None else None)
    return SimpleNamespace(exit_code=proc.returncode, stdout=proc.stdout, stderr=proc.stderr)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_line(case: Case, world: dict, tmp_path: Path, monkeypatch) -> None:
    work, cache = tmp_path / "work", tmp_path / "cache"
    work.mkdir()
    monkeypatch.setenv("ADAPT_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(work)
    if case.prepare is not None:
        case.prepare(work, world)
    args = [a.format(model=world["model"], adapter=world["adapter"], task=world["task"]) for a in case.args]
    before = snapshot(work, cache, world["root"])
    result = run(case, args, work)
    line = one_line_error(result, case.code)
    assert case.says in line, line
    if case.never_says:
        assert case.never_says not in line, line
    assert snapshot(work, cache, world["root"]) == before, "the file tree changed"


def test_the_defaults_fit_a_model_with_few_positions(world: dict, tmp_path: Path, monkeypatch) -> None:
    """The default --max-length (128) is cut to a smaller model's limit (the tiny model has 64 positions):
    a row longer than that is truncated, not an index error."""
    monkeypatch.setenv("ADAPT_CACHE", str(tmp_path / "cache"))
    long_row = " ".join(["good film"] * 200)
    result = runner.invoke(app, ["infer", "--model", str(world["model"]), "-a", str(world["adapter"]), long_row])
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["label"] in ("LABEL_0", "LABEL_1")


def test_weight_shapes_from_the_config_match_the_modules() -> None:
    """What `adapt inspect` checks without torch is what the modules hold."""
    import itertools

    from adapter_cli.fusion import FusionSet
    from adapter_cli.fusion_config import FusionConfig
    from adapter_cli.head_config import HeadConfig
    from adapter_cli.heads import PredictionHead
    from adapter_cli.methods.bottleneck import BottleneckConfig
    from adapter_cli.methods.bottleneck_layers import BottleneckAdapterSet

    def shapes(module) -> dict:
        return {k: tuple(v.shape) for k, v in module.state_dict().items()}

    for ln_before, ln_after, gating, scaling, mh, parallel in itertools.product(
            (False, True), (False, True), (False, True), (1.0, "learned", "channel"), (False, True), (False, True)):
        config = BottleneckConfig(ln_before=ln_before, ln_after=ln_after, use_gating=gating, scaling=scaling,
                                  mh_adapter=mh, is_parallel=parallel, leave_out=(1,),
                                  reduction_factor={"0": 4, "default": 8})
        assert shapes(BottleneckAdapterSet(config, 32, 3)) == config.weight_shapes(32, 3)
    for layers, act, bias, kind in itertools.product((1, 2, 3), (None, "tanh"), (True, False),
                                                     ("classification", "regression", "multiple_choice")):
        head = HeadConfig(head_type=kind, layers=layers, activation_function=act, bias=bias,
                          num_labels=3 if kind == "classification" else 1,
                          num_choices=4 if kind == "multiple_choice" else None)
        assert shapes(PredictionHead(head, 32)) == head.weight_shapes(32)
    for query, key, value in itertools.product((False, True), repeat=3):
        fusion = FusionConfig(query=query, key=key, value=value)
        locations = ["mh_adapter", "output_adapter"]
        assert shapes(FusionSet(fusion, ["a", "b"], locations, 32, 2, 0.0)) == fusion.weight_shapes(32, locations, 2)
