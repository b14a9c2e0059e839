"""``adapt train`` and ``adapt extract``."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import typer

from ._common import emit_json, handle_errors, info
from .app import app


@app.command(
    "train",
    epilog=(
        "Examples:\n\n"
        "  adapt train --task mrpc --config pfeiffer --data-dir glue/MRPC\n\n"
        "  adapt train --task rte --method full --data-dir glue/RTE epochs=3\n\n"
        "  adapt train --task sst2 --config houlsby reduction_factor=32 learning_rate=3e-4 seed=2\n\n"
        "  adapt train --task mrpc --config lora --data-dir glue/MRPC r=16 alpha=32 learning_rate=5e-4\n\n"
        "  adapt train --task mlm --data-dir corpus/ --config pfeiffer+inv --language en   # a language adapter\n\n"
        "  adapt train --task sst2 --data-dir glue/SST-2 --stack-under mlm-en-pfeiffer_inv-s42   # MAD-X task adapter\n\n"
        "  adapt train --recipe runs/mrpc-pfeiffer-s42/recipe.yaml --run-dir runs/rerun\n\n"
        "  adapt train --resume --run-dir runs/mrpc-pfeiffer-s42        # continue a killed run\n\n"
        "  adapt train --method multitask --tasks sst2,mrpc,rte --config pfeiffer -d sst2=glue/SST-2 "
        "-d mrpc=glue/MRPC -d rte=glue/RTE   # MT-A\n\n"
        "  torchrun --nproc_per_node 4 -m adapter_cli train --task mnli  # data parallel"
    ),
)
@handle_errors
def train(
    overrides: list[str] = typer.Argument(None, help="Recipe changes as key=value (learning_rate=3e-4 epochs=5 "
                                          "seed=2 max_train_samples=1000 ...) and adapter config changes "
                                          "(reduction_factor=32, r=16 ...); see `adapt recipes show adapter`.",
                                          show_default=False),
    task: str = typer.Option(None, "--task", "-t", help="Task name (mrpc, rte, sst-2, ...) or a task YAML file."),
    config: str = typer.Option(None, "--config", "-c", help="Adapter config: preset (bottleneck: pfeiffer, "
                               "houlsby, bapna, parallel, compacter, pfeiffer+inv; LoRA family: lora, ia3, dora, "
                               "vera; ReFT: loreft, noreft, direft; prefix_tuning, prefix_tuning_flat, "
                               "prompt_tuning; unions: mam, unipelt; `adapt recipes ls`), preset[key=value], or a "
                               "file."),
    method: str = typer.Option(None, "--method", help="adapter (default), full (all weights), head (head only) or "
                               "multitask (MT-A: a shared base, unfrozen, and an adapter and head per task of "
                               "--tasks)."),
    tasks: str = typer.Option(None, "--tasks", help="--method multitask: the tasks, comma-separated "
                              "(sst2,mrpc,stsb,rte,cola), each with --data-dir TASK=DIR."),
    recipe: str = typer.Option(None, "--recipe", "-r", help="Built-in recipe name or YAML file "
                               "(default: the one for --method)."),
    model: str = typer.Option(None, "--model", "-m", help="Base model directory or Hub id (default: minilm, the "
                              "embedded all-MiniLM-L6-v2)."),
    data_dirs: list[str] = typer.Option(None, "--data-dir", "-d", help="Directory with the task's original files "
                                        "(e.g. GLUE's train.tsv/dev.tsv); with --tasks, TASK=DIR once per task. "
                                        "Default: the Hugging Face Hub."),
    run_dir: Path = typer.Option(None, "--run-dir", help="Where the run is written (default: runs/<task>-<config>-s<seed>)."),
    name: str = typer.Option(None, "--name", "-n", help="Adapter and head name (default: the task name)."),
    language: str = typer.Option(None, "--language", help="--task mlm: the language of the text, recorded with the "
                                 "language adapter (en, de, ...; default: unknown)."),
    stack_under: str = typer.Option(None, "--stack-under", help="Train the new adapter under stack(LANG, task) with "
                                    "LANG, a language adapter (cache name or directory), loaded and frozen."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --run-dir from its last checkpoint."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing run directory."),
    no_cache: bool = typer.Option(False, "--no-cache", help="Do not put the result into the adapter cache."),
    json_out: bool = typer.Option(False, "--json", help="Print a JSON summary on stdout."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress on stderr."),
) -> None:
    """Train an adapter (bottleneck or LoRA family), a head, or the whole model on a task with the base frozen.

    Evaluates on the dev split every epoch, keeps the best checkpoint, stops early, and at the end puts
    the best adapter and head into the local cache (see `adapt cache ls`).
    """
    from ..errors import UsageError
    from ..presets import parse_overrides
    from ..training.recipe import load_recipe

    changes = parse_overrides(overrides or [])
    if resume:
        given = [flag for flag, value in (("--task", task), ("--tasks", tasks), ("--config", config),
                                          ("--method", method), ("--recipe", recipe), ("--model", model),
                                          ("--data-dir", data_dirs or None),
                                          ("--name", name), ("--language", language),
                                          ("--stack-under", stack_under)) if value is not None]
        if given or changes:
            raise UsageError(f"--resume continues the recipe saved in {run_dir}; drop {', '.join(given) or 'the key=value overrides'}")
        resolved, no_cache, done = _resumable(run_dir, no_cache)
        if done:  # finished already: report it as a finished run would, and train nothing
            _report(resolved, _read_summary(run_dir), run_dir, json_out)
            return
    else:
        base = load_recipe(recipe or {"full": "full", "head": "head", "multitask": "multitask"}.get(method or "",
                                                                                                  "adapter"))
        if (method or base.method) == "multitask" and (name or language):
            raise UsageError("--name and --language name one adapter; a multitask run names each adapter after its "
                             "task and trains task adapters")
        flags = {"task": task, "adapter": config, "method": method, "model": model, "name": name,
                 "language": language, "stack_under": stack_under,
                 **_task_flags(method or base.method, task, tasks, data_dirs, base)}
        resolved = base.updated({**{k: v for k, v in flags.items() if v is not None}, **changes})
        _precheck(resolved)
        run_dir = _fresh_run_dir(run_dir or Path("runs") / _run_name(resolved), overwrite)
    _run(resolved, run_dir, resume, no_cache, json_out, quiet)


def _task_flags(method: str | None, task: str | None, tasks: str | None, data_dirs: list[str] | None,
                base: Any = None) -> dict:
    """--task/--data-dir for one task, or --tasks with --data-dir TASK=DIR for --method multitask (the recipe's
    tasks and data directories hold where the command line says nothing else: a run's recipe.yaml reruns)."""
    from ..errors import UsageError

    dirs = list(data_dirs or [])
    if method != "multitask":
        if tasks is not None:
            raise UsageError("--tasks is for --method multitask; one task is --task NAME")
        if len(dirs) > 1:
            raise UsageError(f"--data-dir is given {len(dirs)} times for one task; give it once")
        return {"task": task, "data_dir": dirs[0] if dirs else None}
    if task is not None:
        raise UsageError("--method multitask takes --tasks A,B,... (two or more), not --task")
    if not tasks and not getattr(base, "tasks", None):
        raise UsageError("--method multitask needs --tasks A,B,... (two or more tasks, e.g. sst2,mrpc)")
    out: dict[str, str] = dict(getattr(base, "data_dirs", None) or {})
    for item in dirs:
        key, sep, path = item.partition("=")
        if not sep or not key or not path:
            raise UsageError(f"--data-dir {item}: with --tasks give TASK=DIR (e.g. mrpc=glue/MRPC)")
        out[key] = path
    return {"tasks": [t.strip() for t in tasks.split(",") if t.strip()] if tasks else None, "data_dirs": out}


def _resumable(run_dir: Path | None, no_cache: bool) -> tuple[Any, bool, bool]:
    """The recipe to continue ``run_dir`` with, whether to skip the cache (--no-cache given when the run
    started still holds), and whether the run is complete already."""
    from ..errors import UsageError
    from ..runs import in_use, read_json, settle_status
    from ..training.recipe import load_recipe

    if run_dir is None:
        raise UsageError("--resume needs --run-dir (the run to continue)")
    if not (run_dir / "recipe.yaml").is_file():
        raise UsageError(f"{run_dir} is not a run directory (no recipe.yaml)")
    resolved = load_recipe(str(run_dir / "recipe.yaml"))
    status = settle_status(run_dir)
    if status == "running" or in_use(run_dir):
        raise UsageError(f"run directory {run_dir} is in use by another adapt process; wait for it to finish")
    no_cache = no_cache or bool((run_dir / "run.json").is_file() and read_json(run_dir / "run.json").get("no_cache"))
    if status == "completed" and (run_dir / "final_metrics.json").is_file():
        print(f"note: {run_dir} is already complete; nothing to resume (--overwrite trains it again)",
              file=sys.stderr)
        return resolved, no_cache, True
    return resolved, no_cache, False


def _read_summary(run_dir: Path) -> dict[str, Any]:
    """A finished run's summary, with its cache entry when it has one."""
    from .. import cache
    from ..runs import read_json

    summary = read_json(run_dir / "final_metrics.json")
    if summary.get("method") == "multitask":  # its base and adapters: `adapt cache ls --model BASE_MODEL`
        return summary
    entry = next((e for e in cache.entries() if e.data.get("run_dir") == str(run_dir.resolve())), None)
    if entry is not None:
        summary["cache"] = {"id": entry.id, "path": str(entry.path)}
    return summary


def _run(resolved: Any, run_dir: Path, resume: bool, no_cache: bool, json_out: bool, quiet: bool) -> dict:
    from ..training import loop
    from ._progress import reporter

    def finish(summary: dict[str, Any]) -> None:
        # inside the training (main process, run still held), before run.json says "completed"
        if not no_cache and resolved.method == "multitask":
            from ..runs import extract_multitask

            summary["cache"] = extract_multitask(run_dir)
        elif not no_cache and resolved.method != "full":
            from ..runs import extract

            entry = extract(run_dir)
            summary["cache"] = {"id": entry.id, "path": str(entry.path)}

    trainer = None
    if resolved.method == "multitask":
        from ..training.multitask import MultiTaskTrainer as trainer  # type: ignore[assignment]
    # loop.train looked up now, not at import: the kill tests (tests/kill_at_step.py) wrap it
    summary: dict[str, Any] = loop.train(resolved, run_dir, resume=resume, reporter=reporter(quiet),
                                         notes={"no_cache": True} if no_cache else None, finish=finish,
                                         trainer=trainer)
    _report(resolved, summary, run_dir, json_out)
    return summary


def _report(resolved: Any, summary: dict[str, Any], run_dir: Path, json_out: bool) -> None:
    if json_out:
        emit_json(summary)
        return
    if summary["method"] == "multitask":
        _report_multitask(summary, run_dir, resolved.tasks[0])
        return
    best = summary["best"]
    metrics = ", ".join(f"{k} {v:.4f}" for k, v in (best["metrics"] or {}).items())
    print(f"{summary['task']} ({summary['method']}): best dev {metrics} at epoch {best['epoch']} "
          f"({summary['epochs_run']} epochs, {summary['steps']} steps, {summary['wall_time_s']:.0f}s)")
    print(f"run: {run_dir}")
    if "cache" in summary:
        print(f"cached as {summary['cache']['id']}; next: {_next_command(resolved, summary, run_dir)}")


def _report_multitask(summary: dict[str, Any], run_dir: Path, first_task: str) -> None:
    best = summary["best"]
    tasks = "; ".join(f"{t} {', '.join(f'{k} {v:.4f}' for k, v in m.items())}" for t, m in summary["per_task"].items())
    print(f"MT-A {'+'.join(summary['tasks'])}: best mean {best['metric']:.4f} at epoch {best['epoch']} ({tasks}; "
          f"{summary['epochs_run']} epochs, {summary['steps']} steps, {summary['wall_time_s']:.0f}s)")
    print(f"run: {run_dir}")
    print(f"new base model: {summary['base_model']} (fine-tuned from {summary['derived_from']})")
    if "cache" in summary:
        ids = ", ".join(a["id"] for a in summary["cache"]["adapters"])
        first = summary["cache"]["adapters"][0]
        print(f"cached under {summary['base_model']}: {ids}; next: adapt infer -m {summary['base_model']} "
              f"-a {first['id']} {_input_example(first_task)}")


def _input_example(task_name: str) -> str:
    """What `adapt infer` reads for a task's head: a text, a pair, a prompt to continue, or images."""
    from ..tasks import get_task

    task = get_task(task_name)
    if task.kind == "lm":  # a decoder's adapter: continue text with it
        return "--generate 'Once upon a time'"
    if task.kind == "image":  # image files, or folders of them
        return "photo.jpg more-photos/"
    return "--pair 'a first text' 'a second text'" if task.text_pair else "'some text'"


def _next_command(recipe: Any, summary: dict, run_dir: Path) -> str:
    """The `adapt infer` command that uses what was just cached, in the input form its head expects."""
    from ..tasks import get_task

    if get_task(recipe.task).kind == "mlm":  # a language adapter: train a task adapter on top of it
        return f"adapt train --task TASK --stack-under {summary['cache']['id']} --model {recipe.model}"
    loads = " ".join(f"-a {a}" for a in recipe.fusion_adapters) + f" -f {summary['cache']['id']}" \
        if recipe.method == "fusion" else f"-a {summary['cache']['id']}"
    if recipe.method == "head":  # a head alone is no adapter: it is given as a head directory
        loads = f"--head {run_dir / 'best'}"
    if recipe.stack_under:
        lang = summary.get("trained_under", {}).get("name", "LANG")
        loads = f"-a {recipe.stack_under} {loads} --active 'stack({lang},{recipe.name or get_task(recipe.task).name})'"
    return f"adapt infer -m {recipe.model} {loads} {_input_example(recipe.task)}"


def _fresh_run_dir(run_dir: Path, overwrite: bool) -> Path:
    """A run directory to start in: an existing non-empty one only with --overwrite."""
    from ..errors import UsageError

    if run_dir.exists() and not run_dir.is_dir():
        raise UsageError(f"--run-dir {run_dir} is a file; give a directory")
    if run_dir.exists() and any(run_dir.iterdir()):
        if not overwrite:
            raise UsageError(f"run directory {run_dir} already exists; pass --resume to continue it, "
                             "--overwrite to replace it, or --run-dir for a new one")
        from ..runs import in_use

        if in_use(run_dir):
            raise UsageError(f"run directory {run_dir} is in use by another adapt process; it cannot be replaced "
                             "while that runs")
        import shutil

        shutil.rmtree(run_dir)
    return run_dir


def _precheck(recipe: Any) -> None:
    """Fail on bad names before any data is read or any directory is made."""
    from ..composition import check_name
    from ..presets import resolve_adapter_config
    from ..tasks import get_task

    if recipe.method == "multitask":
        from ..training.sampling import check_tasks

        check_tasks(recipe)
        resolve_adapter_config(recipe.adapter, recipe.adapter_overrides)
        return
    if recipe.task is None:
        from ..errors import UsageError

        raise UsageError("no task: pass --task NAME (built-in tasks: `adapt recipes ls --kind task`)")
    task = get_task(recipe.task)
    check_name(recipe.name or task.name)
    if recipe.method == "adapter":
        resolve_adapter_config(recipe.adapter, recipe.adapter_overrides)
    if recipe.stack_under is not None:
        _precheck_stack_under(recipe, task)
    if recipe.method == "fusion":
        from ..resolve import locate
        from ..defaults import model_id, resolve_model
        from ..errors import UsageError
        from ..fusion_config import resolve_fusion_config

        resolve_fusion_config(recipe.fusion)
        if len(recipe.fusion_adapters) < 2:
            raise UsageError("a fusion needs at least two adapters")
        seen = [s for s in recipe.fusion_adapters if recipe.fusion_adapters.count(s) > 1]
        if seen:
            raise UsageError(f"adapter {seen[0]!r} is named twice; a fusion combines different adapters")
        base = model_id(resolve_model(recipe.model))
        for spec in recipe.fusion_adapters:
            if not locate(spec, base, "adapter").is_dir():
                raise UsageError(f"no adapter directory {spec}")


def _precheck_stack_under(recipe: Any, task: Any) -> None:
    """--stack-under names a language adapter that exists, for a task adapter."""
    from ..defaults import model_id, resolve_model
    from ..errors import UsageError
    from ..resolve import locate
    from ..training.setup import language_adapter_kind

    if task.kind == "mlm":
        raise UsageError("--stack-under trains a task adapter under a language adapter; a language adapter (--task "
                         "mlm) is trained alone")
    path = locate(recipe.stack_under, model_id(resolve_model(recipe.model)), "adapter")
    if not path.is_dir():
        raise UsageError(f"--stack-under {recipe.stack_under}: no adapter directory or cached adapter of that name")
    language_adapter_kind(path, recipe.stack_under)


def _run_name(recipe: Any) -> str:
    """TASK-CONFIG-sSEED for adapters (mrpc-pfeiffer-s42), TASK-METHOD-sSEED otherwise (rte-fusion-s42,
    mrpc-head-s42): short, and the cache id of the result, so the names in docs and hints are the real ones."""
    from ..tasks import get_task

    label = recipe.adapter if recipe.method == "adapter" and isinstance(recipe.adapter, str) else recipe.method
    label = re.sub(r"[^A-Za-z0-9_\-]", "_", Path(str(label)).stem)
    if recipe.method == "multitask":  # mta-sst2_mrpc-pfeiffer-s42
        names = "_".join(re.sub(r"[^A-Za-z0-9_\-]", "_", get_task(t).name) for t in recipe.tasks)
        adapter = recipe.adapter if isinstance(recipe.adapter, str) else "adapter"
        return f"mta-{names}-{re.sub(r'[^A-Za-z0-9_-]', '_', Path(adapter).stem)}-s{recipe.seed}"
    task = get_task(recipe.task)
    if task.kind == "mlm":  # a language adapter: mlm-en-seq_bn_inv-s42
        return f"{task.name}-{recipe.language or 'unknown'}-{label}-s{recipe.seed}"
    return f"{task.name}-{label}-s{recipe.seed}"


@app.command(
    "fuse",
    epilog=(
        "Examples:\n\n"
        "  adapt fuse mnli qqp rte --target rte --data-dir glue/RTE\n\n"
        "  adapt fuse ./adapters/sst2 ./adapters/mrpc AdapterHub/bert-base-uncased-pf-rte --target rte \\\n"
        "      --model bert-base-uncased epochs=5 --export-adapterhub ./rte-fusion-ah"
    ),
)
@handle_errors
def fuse(
    adapters: list[str] = typer.Argument(..., help="Member adapters: cache names (for --model), directories "
                                         "(ours or AdapterHub's), then key=value recipe changes."),
    target: str = typer.Option(..., "--target", "-t", help="The target task the fusion is trained on."),
    model: str = typer.Option(None, "--model", "-m", help="Base model (default: the MT-A base the members were "
                              "trained with, if they were, else minilm)."),
    data_dir: str = typer.Option(None, "--data-dir", "-d", help="The target task's original files."),
    recipe: str = typer.Option("fusion", "--recipe", "-r", help="Recipe (default: fusion, the paper's settings)."),
    fusion: str = typer.Option(None, "--fusion-config", help="dynamic (default) or static."),
    unfreeze_adapters: bool = typer.Option(False, "--unfreeze-adapters", help="Also train the member adapters."),
    run_dir: Path = typer.Option(None, "--run-dir", help="Where the run is written."),
    export_adapterhub: Path = typer.Option(None, "--export-adapterhub", help="Also write the best fusion and head "
                                           "in AdapterHub's format to this directory."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing run directory."),
    no_cache: bool = typer.Option(False, "--no-cache", help="Do not put the result into the cache."),
    json_out: bool = typer.Option(False, "--json", help="Print a JSON summary on stdout."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress on stderr."),
) -> None:
    """Train AdapterFusion over frozen adapters for a target task (Pfeiffer et al. 2021).

    Per layer, a query/key/value attention over the members' outputs learns which adapters help the
    target. The result (fusion + the target's head) goes into the cache under the target task.
    """
    from ..presets import parse_overrides
    from ..training.recipe import load_recipe

    members = [a for a in adapters if "=" not in a]
    changes = parse_overrides([a for a in adapters if "=" in a])
    if model is None and "model" not in changes:
        model = _members_base(members, quiet)
    base = load_recipe(recipe)
    flags = {"task": target, "method": "fusion", "fusion_adapters": members, "model": model, "data_dir": data_dir,
             "fusion": fusion, "unfreeze_adapters": unfreeze_adapters or None}
    resolved = base.updated({**{k: v for k, v in flags.items() if v is not None}, **changes})
    _precheck(resolved)
    run_dir = _fresh_run_dir(run_dir or Path("runs") / _run_name(resolved), overwrite)
    _run(resolved, run_dir, False, no_cache, json_out, quiet)
    if export_adapterhub is not None:
        from ..runs import export_fusion

        export_fusion(run_dir, export_adapterhub, format="adapterhub")


def _members_base(members: list[str], quiet: bool) -> str | None:
    """The MT-A base all members were trained with, when no --model is given (None: the recipe's model)."""
    from ..resolve import mta_base_of

    base = mta_base_of(members)
    if base is not None and not quiet:
        info(f"base model: {base} (the MT-A base the members were trained with)")
    return base


@app.command("extract", epilog="Examples:\n\n  adapt extract runs/mrpc-pfeiffer-s42 --json\n\n"
             "  adapt extract runs/mrpc-prefix_tuning-s42 --flat")
@handle_errors
def extract_cmd(
    run: Path = typer.Argument(..., help="A run directory made by adapt train."),
    flat: bool = typer.Option(False, "--flat", help="Prefix tuning: cache the keys and values alone, without "
                              "the MLP that made them in training (same outputs, a 10-20x smaller file)."),
    json_out: bool = typer.Option(False, "--json", help="Print the cache entry as JSON."),
) -> None:
    """Put a run's best adapter and head into the local cache, keyed by base model (done by train too)."""
    from ..runs import extract, extract_multitask
    from ..training.recipe import read_run_recipe

    if (run / "recipe.yaml").is_file() and read_run_recipe(run / "recipe.yaml").get("method") == "multitask":
        if flat:
            from ..errors import UsageError

            raise UsageError(f"{run} is a multitask run; making its prefixes flat is not supported yet: extract it "
                             "without --flat")
        cached = extract_multitask(run)
        if json_out:
            emit_json(cached)
        else:
            print(f"cached base model {cached['base_model']['id']} at {cached['base_model']['path']} and "
                  f"{', '.join(a['id'] for a in cached['adapters'])} under it")
        return
    entry = extract(run, flat=flat)
    if json_out:
        emit_json(entry.summary())
    else:
        print(f"cached {entry.id} for {entry.model} at {entry.path}")
