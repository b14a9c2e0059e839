"""Finished runs gathered into the AdapterFusion paper's Table 1 layout: rows tasks, columns methods
(head, full, adapter, fusion), each cell the mean +- standard deviation of the task's main dev metric
over seeds.

A column is one method with one configuration: for adapters the adapter config (compared resolved, so
``seq_bn`` is ``pfeiffer``), for fusions the members and the fusion config, and for every method the
training settings that change what a run measures (model, learning rate, epochs, sample caps, ...).
Only runs that differ in nothing but their seed are averaged. A configuration run twice with the same
seed counts once, the most recent run, so ``n`` is the number of distinct seeds.

Run directories are read as ``adapt train`` / ``adapt fuse`` write them (training/loop.py):
``final_metrics.json`` (task, method, main metric, best result, fusion members), ``recipe.yaml`` (the
resolved recipe: seed, adapter config, fusion config, settings) and ``run.json`` (status, seed, time).

An MT-A run (``--method multitask``) is one run for several tasks: it gives each of its tasks a row in the
``mt-a`` column. A fusion whose base is an MT-A base (``<model>+mta-<hash>``) is ``fusion (mt-a)``: F. w/
MT-A. Every seed of an MT-A run makes a base of its own id, so ids are compared without their hash.
Table 2 of the paper compares each fusion column with the adapters it fuses (``comparisons``).
"""

from __future__ import annotations

import hashlib
import json
import math
import statistics
from functools import lru_cache
from pathlib import Path
from typing import Any

from .errors import UsageError

COLUMN_ORDER = ("head", "full", "adapter", "mt-a", "fusion")
SAME_WITHIN = 0.3  # points: Table 2's "same" band for a fusion against its adapters
UNBOUNDED = frozenset({"perplexity"})  # shown as they are, not as points (x100), and lower is better


def _points(metric: str, value: float) -> float:
    """A metric as the tables show it: proportions (accuracy, F1, correlations) in points, perplexity as is."""
    return value if metric in UNBOUNDED else 100 * value
FINAL = "final_metrics.json"
# Recipe keys that do not change what a run measures (or that are compared on their own below).
NOT_SETTINGS = frozenset({
    "seed", "task", "method", "name", "description", "data_dir", "device", "precision", "frozen_dtype",
    "gradient_checkpointing", "compile", "eval_batch_size", "save_every_steps", "log_every_steps",
    "adapter", "adapter_overrides", "fusion_adapters", "fusion", "unfreeze_adapters", "tasks", "data_dirs",
})
MULTITASK_ONLY = frozenset({"base_learning_rate", "alpha_start", "alpha_end", "alpha_schedule", "steps_per_epoch"})
FUSION_ONLY = frozenset({"fusion_reg_weight"})


def find_runs(paths: list[Path]) -> tuple[list[Path], list[Path]]:
    """The finished runs named by ``paths``: run directories, or directories holding runs one level down.

    Returns (finished runs, unfinished runs skipped inside a parent directory). A path that does not
    exist, an unfinished run named directly, or a directory with no finished run in it is an error.
    """
    found: dict[Path, Path] = {}
    skipped: list[Path] = []
    for path in paths:
        if not path.exists():
            raise UsageError(f"{path} does not exist; give finished run directories (or a folder of them), "
                             "e.g. adapt results runs/")
        if not path.is_dir():
            raise UsageError(f"{path} is not a run directory; give finished run directories (or a folder of them)")
        if _completed(path):
            found.setdefault(path.resolve(), path)
            continue
        if _is_run(path):
            raise UsageError(f"{path} is not a finished adapt run (status: {_status(path)}); leave it out, or "
                             f"give its folder ({path.parent}) to skip unfinished runs")
        children = sorted(c for c in path.iterdir() if c.is_dir())
        runs = [c for c in children if _completed(c)]
        if not runs:
            raise UsageError(f"{path} holds no finished adapt runs (none completed in it or in its subdirectories)")
        for run in runs:
            found.setdefault(run.resolve(), run)
        skipped += [c for c in children if _is_run(c) and not _completed(c)]
    return list(found.values()), skipped


def _completed(path: Path) -> bool:
    """A run that finished: its final metrics, and a run.json (where there is one) that says so. The metrics
    alone are not enough: a run writes them before its cache entry, which can still fail, and a run resumed
    since (say, after that failure) is running again."""
    if not (path / FINAL).is_file():
        return False
    try:
        return (json.loads((path / "run.json").read_text(encoding="utf-8")) or {}).get("status") == "completed"
    except FileNotFoundError:
        return True
    except (OSError, ValueError, AttributeError):
        return False


def _is_run(path: Path) -> bool:
    return (path / "run.json").is_file() or (path / "recipe.yaml").is_file()


def _status(path: Path) -> str:
    """The run's status; a "running" run that no process holds is marked killed on the way."""
    from .runs import settle_status

    try:
        return str(settle_status(path) or "unknown")
    except (OSError, ValueError, AttributeError, UsageError):
        return "unknown"


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UsageError(f"corrupt {path}: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise UsageError(f"corrupt {path}: expected a JSON object")
    return data


def _read_recipe(path: Path) -> dict[str, Any]:
    """A run's recipe as flat keys (``learning_rate``, ``adapter``, ``adapter_overrides`` ...), read by the
    recipe module so that every recipe.yaml layout it reads (sectioned, or flat from older runs) is understood;
    a recipe it refuses (keys of another version) is taken as written."""
    if not path.is_file():
        return {}
    import dataclasses

    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise UsageError(f"corrupt {path}: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise UsageError(f"corrupt {path}: expected a mapping of recipe keys")
    from .training.recipe import Recipe

    try:
        return dataclasses.asdict(Recipe().updated(data, source=str(path)))
    except (UsageError, TypeError):
        return data


def collect(run_dirs: list[Path]) -> list[dict[str, Any]]:
    """One record per finished run: task, method, seed, result, and what makes up its configuration."""
    runs = []
    for run in run_dirs:
        summary = _read_json(run / FINAL)
        if not summary:
            raise UsageError(f"{run} has no {FINAL}: not a finished adapt run")
        recipe = _read_recipe(run / "recipe.yaml")
        status = _read_json(run / "run.json")
        method = str(summary.get("method") or recipe.get("method") or status.get("method") or "?")
        seed = recipe.get("seed", status.get("seed"))
        best = summary.get("best") or {}
        base, identity = _configuration(method, recipe, summary, _fusion_base_id(run, recipe, summary))
        record = {"mta_base": identity.pop("mta_base", None), "member_runs": summary.get("fusion_member_runs"),
                  "train_examples": summary.get("train_examples"), "started": status.get("started"),
                  "run": str(run), "run_path": str(run.resolve()),
                  "task": summary.get("task") or recipe.get("task"), "kind": method,
                  "method": base, "seed": seed, "metric": summary.get("main_metric"),
                  "value": _number(best.get("metric")), "metrics": _numbers(best.get("metrics")),
                  "wall_time_s": summary.get("wall_time_s"), "finished": _finished(run, status),
                  "identity": identity}
        if method == "multitask":
            record["base_model"] = summary.get("base_model")
        runs += _per_task(record, summary) if method == "multitask" else [record]
    _link_mta(runs)
    _link_members(runs)
    _label_columns(runs)
    return runs


def _numbers(metrics: Any) -> Any:
    return {k: _number(v) for k, v in metrics.items()} if isinstance(metrics, dict) else metrics


def _number(value: Any) -> float | None:
    """A result as the tables take it: None for none, and for NaN (a run that diverged has no result)."""
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value


def _fusion_base_id(run: Path, recipe: dict[str, Any], summary: dict[str, Any]) -> str | None:
    """The id of the MT-A base a fusion ran on, from what the run recorded (its saved fusion's base model, else
    the model it was given by id), never from a path resolved against the current directory; None otherwise."""
    from .defaults import DERIVED_MARK

    if (summary.get("method") or recipe.get("method")) != "fusion":
        return None
    try:
        saved = json.loads((run / "best" / "fusion_config.json").read_text(encoding="utf-8"))
        named = str((saved.get("base_model") or {}).get("name_or_path") or "")
    except (OSError, ValueError, AttributeError):
        named = ""
    for candidate in (named, str(recipe.get("model") or ""), str(summary.get("model") or "")):
        if DERIVED_MARK in candidate:
            return candidate
    return None


def _link_mta(runs: list[dict[str, Any]]) -> None:
    """A fusion on an MT-A base belongs to the configuration of the MT-A run that made the base (when that run is
    among the runs read): fusions over MT-A runs of two seeds of one configuration average, over two
    configurations never. A base whose run is not among them stands for itself (each seed its own column)."""
    made_by = {r["base_model"]: r["identity"] for r in runs if r["kind"] == "multitask" and r.get("base_model")}
    for r in runs:
        base = r.pop("mta_base", None)
        if base is not None:
            mta = made_by.get(base)
            r["identity"]["mta"] = json.dumps(mta, sort_keys=True, default=str) if mta is not None else base


def _link_members(runs: list[dict[str, Any]]) -> None:
    """A fusion over single-task adapters belongs to the configurations of the adapter runs it fused (recorded
    by the fusion run; found among the runs given, by path or, moved, by name and start time, else on disk
    if the run there is still that run): fusions over adapters of two learning rates never average, and
    Table 2 compares each with its own adapters. A fusion with a member of unknown run (older runs,
    downloaded adapters) is told apart by its members' names only."""
    adapters = [r for r in runs if r["kind"] == "adapter"]
    by_path = {r["run_path"]: r for r in adapters}
    by_print: dict[tuple[Any, Any], list[dict[str, Any]]] = {}
    for r in adapters:
        by_print.setdefault((Path(r["run_path"]).name, r["started"]), []).append(r)
    on_disk: dict[tuple[str, str], tuple[str, dict[str, Any]] | None] = {}  # each run read once, not per fusion

    def member(source: Any) -> tuple[str, dict[str, Any]] | None:
        if not isinstance(source, dict) or not all(isinstance(source.get(k), str) for k in ("run_dir", "name", "started")):
            return None
        same = by_path.get(source["run_dir"])
        if same is not None and same["started"] == source["started"]:
            return same["method"], same["identity"]
        moved = by_print.get((source["name"], source["started"]), [])
        if len({json.dumps(r["identity"], sort_keys=True, default=str) for r in moved}) == 1:
            return moved[0]["method"], moved[0]["identity"]
        key = (source["run_dir"], source["started"])
        if key not in on_disk:
            there = Path(source["run_dir"])
            on_disk[key] = _adapter_run_on_disk(there) if _read_status(there).get("started") == source["started"] \
                else None
        return on_disk[key]

    for r in runs:
        sources = r.pop("member_runs", None)
        if r["kind"] != "fusion" or "mta" in r["identity"] or not isinstance(sources, list) or not sources:
            continue
        found = [member(source) for source in sources]
        if all(found):
            bases = {json.dumps(identity, sort_keys=True, default=str): base for base, identity in found}
            r["identity"]["members_from"] = sorted(bases)
            r["member_bases"] = bases  # to name the columns of adapters not among the runs read


def _read_status(run: Path) -> dict[str, Any]:
    try:
        return _read_json(run / "run.json")
    except UsageError:
        return {}


def _adapter_run_on_disk(path: Path) -> tuple[str, dict[str, Any]] | None:
    """(column name, configuration) of the finished adapter run at ``path`` (where a fusion recorded it)."""
    if not _completed(path):
        return None
    try:
        summary = _read_json(path / FINAL)
        return _configuration("adapter", _read_recipe(path / "recipe.yaml"), summary) \
            if summary.get("method") == "adapter" else None
    except UsageError:
        return None


def _per_task(record: dict[str, Any], summary: dict[str, Any]) -> list[dict[str, Any]]:
    """An MT-A run as one record per task: the task's main metric at the run's best epoch (the best mean)."""
    mains = summary.get("main_metrics") or {}
    out = []
    for task, metrics in (summary.get("per_task") or {}).items():
        metric = mains.get(task)
        out.append({**record, "task": task, "metric": metric, "value": _number((metrics or {}).get(metric)),
                    "metrics": _numbers(metrics)})
    if not out:
        raise UsageError(f"{record['run']}/{FINAL} is an MT-A run without per-task results (per_task); "
                         "was it written by an older adapt? Train it again")
    return out


def _finished(run: Path, status: dict[str, Any]) -> list[float]:
    """When the run finished: run.json's time, then the file's modification time (to break ties)."""
    from datetime import datetime

    stamp = 0.0
    try:
        stamp = datetime.strptime(str(status.get("updated")), "%Y-%m-%dT%H:%M:%S%z").timestamp()
    except ValueError:
        pass
    return [stamp, (run / FINAL).stat().st_mtime]


def _configuration(method: str, recipe: dict[str, Any], summary: dict[str, Any],
                   mta_base: str | None = None) -> tuple[str, dict[str, Any]]:
    """(column name before disambiguation, everything that must be equal for runs to be seeds of one
    configuration). ``mta_base``: the MT-A base a fusion ran on (its configuration is linked in later)."""
    from .defaults import DERIVED_MARK, canonical_model_id

    settings = {k: v for k, v in recipe.items()
                if k not in NOT_SETTINGS and (method == "fusion" or k not in FUSION_ONLY)
                and (method == "multitask" or k not in MULTITASK_ONLY)}
    settings.setdefault("model", summary.get("model"))
    settings["model"] = canonical_model_id(str(settings["model"]))
    on_mta_base = mta_base is not None
    if on_mta_base:  # each seed's MT-A base has an id of its own: what it is comes from the run that made it
        settings["model"] = DERIVED_MARK.strip("-")
    identity: dict[str, Any] = {"method": method, **settings}
    if on_mta_base:
        identity["mta_base"] = mta_base
    base = method
    if method in ("adapter", "multitask"):
        label, identity["config"] = _adapter_config(recipe.get("adapter", "pfeiffer"),
                                                    recipe.get("adapter_overrides") or {})
        base = "adapter" if method == "adapter" else "mt-a"
        base = base if label == "pfeiffer" else f"{base} ({label})"
        if method == "multitask":
            identity["tasks"] = "+".join(sorted(summary.get("tasks") or []))
    elif method == "fusion":
        fusion = recipe.get("fusion", "dynamic")
        qualifiers = ["mt-a"] if on_mta_base else []
        qualifiers += [] if fusion == "dynamic" else [fusion if isinstance(fusion, str) else "custom"]
        if recipe.get("unfreeze_adapters"):
            qualifiers.append("unfrozen adapters")
        members = summary.get("fusion_members") or [Path(str(a)).name for a in recipe.get("fusion_adapters") or []]
        identity.update(fusion=fusion, unfreeze_adapters=bool(recipe.get("unfreeze_adapters")),
                        members="+".join(map(str, members)))
        base = f"fusion ({', '.join(qualifiers)})" if qualifiers else "fusion"
    return base, identity


def _adapter_config(spec: Any, overrides: dict[str, Any]) -> tuple[str, str]:
    """(a name for the configuration, the configuration as canonical JSON) for a recipe's adapter spec.

    The name is the nearest preset and the fields that differ from it, however the recipe spelled it
    (``seq_bn``, ``pfeiffer[reduction_factor=8]``, a file, or ``adapter_overrides``)."""
    from .errors import ConfigError
    from .presets import resolve_adapter_config

    try:
        config = resolve_adapter_config(spec, overrides).to_dict()
    except ConfigError:  # e.g. a config file that is gone since: compare what the recipe says
        name = Path(spec).stem if isinstance(spec, str) else "custom"
        label = ", ".join([name] + [f"{k}={_text(v)}" for k, v in sorted(overrides.items())])
        return label, json.dumps({"adapter": spec, "overrides": overrides}, sort_keys=True, default=str)

    def changes(preset: dict[str, Any]) -> list[str]:
        return [f"{k}={_text(v)}" for k, v in config.items() if v != preset.get(k) and v is not None]

    def unset(preset: dict[str, Any]) -> int:  # what the preset sets and the config leaves out (houlsby+inv)
        return sum(1 for k, v in preset.items() if v is not None and config.get(k) is None)

    name, preset = min(_preset_configs(), key=lambda item: (len(changes(item[1])), unset(item[1]), item[0]))
    return ", ".join([name, *changes(preset)]), json.dumps(config, sort_keys=True)


@lru_cache(maxsize=1)
def _preset_configs() -> list[tuple[str, dict[str, Any]]]:
    """Every preset's name and resolved configuration."""
    from .presets import adapter_presets, resolve_adapter_config

    names = sorted({p.name for p in adapter_presets().values()})
    return [(name, resolve_adapter_config(name).to_dict()) for name in names]


def _text(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, dict)):
        return json.dumps(value, separators=(",", ":"))
    return "null" if value is None else str(value)


def _label_columns(runs: list[dict[str, Any]]) -> None:
    """Columns that would share a name but differ in configuration get the keys that tell them apart."""
    by_base: dict[str, dict[str, dict[str, Any]]] = {}
    for r in runs:
        r["group"] = json.dumps(r["identity"], sort_keys=True, default=str)
        by_base.setdefault(r["method"], {})[r["group"]] = r["identity"]
    unread: dict[str, dict[str, dict[str, Any]]] = {}  # adapters a fusion fused that are not among the runs
    for r in runs:
        for group, base in r.pop("member_bases", {}).items():
            if group not in by_base.get(base, {}):
                unread.setdefault(base, {})[group] = json.loads(group)
    labels: dict[str, str] = {}

    def part(key: str, value: Any) -> str:
        if key == "config":
            return "config " + hashlib.sha1(str(value).encode()).hexdigest()[:6]
        if key == "mta":  # the MT-A configuration a fusion's bases came from: that column's name (or the base id)
            return f"over {labels.get(value, value)}"
        if key == "members_from":  # the adapter columns its members came from
            return "over " + " + ".join(labels[g] for g in value) if value else "over adapters of unknown runs"
        return f"{key}={_text(value)}"

    def name(base: str, identities: dict[str, dict[str, Any]]) -> dict[str, str]:
        keys = sorted({k for ident in identities.values() for k in ident})
        differing = [k for k in keys if len({json.dumps(i.get(k), sort_keys=True, default=str)
                                              for i in identities.values()}) > 1]
        named = {}
        for group, ident in identities.items():
            parts = [part(k, ident.get(k)) for k in differing]
            if not parts:
                named[group] = base
            elif base.endswith(")"):  # "adapter (houlsby)" -> "adapter (houlsby, learning_rate=0.001)"
                named[group] = f"{base[:-1]}, {', '.join(parts)})"
            else:
                named[group] = f"{base} ({', '.join(parts)})"
        return named

    # fusions last: their names can name the MT-A and adapter columns
    def fusion_like(base: str) -> bool:
        return any("mta" in i or "members_from" in i for i in by_base.get(base, {}).values())

    for base in sorted(set(by_base) | set(unread), key=fusion_like):
        identities = by_base.get(base, {})
        if base in unread:  # named among the columns read, without renaming those
            labels.update({g: n for g, n in name(base, {**identities, **unread[base]}).items() if g in unread[base]})
        labels.update(name(base, identities))
    for r in runs:
        r["method"] = labels[r["group"]]


def deduplicate(runs: list[dict[str, Any]], notes: list[str] | None = None) -> list[dict[str, Any]]:
    """Mark, per configuration and seed, all but the most recent run as superseded (``counted`` False)."""
    by_seed: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in runs:
        r["counted"], r["superseded_by"] = True, None
        if r["seed"] is not None:
            by_seed.setdefault((str(r["task"]), r["group"], json.dumps(r["seed"])), []).append(r)
    for (task, _, _), same in by_seed.items():
        if len(same) < 2:
            continue
        same.sort(key=lambda r: r["finished"])
        kept = same[-1]
        for r in same[:-1]:
            r["counted"], r["superseded_by"] = False, kept["run"]
        if notes is not None:
            older = ", ".join(r["run"] for r in same[:-1])
            notes.append(f"note: {task} / {kept['method']} / seed {kept['seed']} was run {len(same)} times; "
                         f"counting only the most recent, {kept['run']} (not {older})")
    return runs


def table(runs: list[dict[str, Any]], notes: list[str] | None = None) -> dict[str, Any]:
    """Cells of mean, standard deviation and n over distinct seeds, per task and column."""
    deduplicate(runs, notes)
    counted = [r for r in runs if r["counted"] and r["value"] is not None]
    tasks = list(dict.fromkeys(r["task"] for r in runs))
    methods = sorted({r["method"] for r in runs}, key=lambda m: (
        COLUMN_ORDER.index(m.split(" ")[0]) if m.split(" ")[0] in COLUMN_ORDER else 99, m))
    cells: dict[str, dict[str, Any]] = {}
    for task in tasks:
        cells[task] = {}
        for method in methods:
            chosen = [r for r in counted if r["task"] == task and r["method"] == method]
            if not chosen:
                continue
            values = [r["value"] for r in chosen]
            _check_same_data(task, method, chosen, notes)
            cells[task][method] = {"mean": statistics.fmean(values),
                                   "std": statistics.stdev(values) if len(values) > 1 else None,
                                   "n": len(values), "seeds": [r["seed"] for r in chosen],
                                   "metric": chosen[0]["metric"], "runs": [r["run"] for r in chosen]}
    public = [{k: v for k, v in r.items() if k not in ("identity", "group", "finished", "run_path", "started")}
              for r in runs]
    return {"tasks": tasks, "methods": methods, "cells": cells, "wall_time_s": _wall_times(counted, methods),
            "comparisons": compare(runs, cells, methods, notes), "runs": public}


def _check_same_data(task: str, method: str, chosen: list[dict[str, Any]], notes: list[str] | None) -> None:
    """A note where one cell averages runs trained on different data: the data directory is not part of a
    configuration (the same task read from two places is one column), so SST-2 whole and SST-2 cut to a
    subset by another directory would otherwise average without a word."""
    sizes = {json.dumps(_task_examples(r, task)) for r in chosen} - {"null"}
    if len(sizes) > 1 and notes is not None:
        notes.append(f"note: {task} / {method} averages runs trained on different data ({', '.join(sorted(sizes))} "
                     "training examples); give the runs of one data set")


def _task_examples(record: dict[str, Any], task: str) -> Any:
    """The run's number of training examples of ``task`` (an MT-A run records one per task)."""
    examples = record.get("train_examples")
    return examples.get(task) if isinstance(examples, dict) else examples


def _wall_times(counted: list[dict[str, Any]], methods: list[str]) -> dict[str, float]:
    """Seconds of training per column, each run once (an MT-A run fills a cell per task)."""
    totals: dict[str, float] = {}
    for method in methods:
        seen = {r["run"]: r.get("wall_time_s") or 0.0 for r in counted if r["method"] == method}
        totals[method] = round(sum(seen.values()), 2)
    return totals


def compare(runs: list[dict[str, Any]], cells: dict[str, dict[str, Any]], methods: list[str],
            notes: list[str] | None = None) -> list[dict[str, Any]]:
    """Table 2: each fusion column against the adapters it fuses, per task, in points: improved above +0.3,
    the same within 0.3, worse below -0.3. ``fusion`` is compared with the one ``adapter`` column (none when
    several could be its adapters); ``fusion (mt-a)`` with the ``mt-a`` column of the MT-A runs that made its
    bases (none when those runs are not among the runs read)."""
    kind = {r["method"]: r["kind"] for r in runs}
    label = {r["group"]: r["method"] for r in runs}
    out = []
    for fused in (m for m in methods if kind.get(m) == "fusion"):
        identity = next(r["identity"] for r in runs if r["method"] == fused)
        link, members = identity.get("mta"), identity.get("members_from")
        if link is not None:
            against = [label[link]] if link in label else []
            why = "the MT-A runs that made its bases are not among the runs read"
        elif members is not None:  # the columns of the adapter runs it fused
            read = [label[g] for g in members if g in label]
            against = sorted(set(read)) if len(read) == len(members) else []
            why = "the runs of its adapters are not all among the runs read" if len(read) < len(members) else \
                f"its adapters are in {len(against)} columns ({', '.join(against)})"
        else:  # members of unknown runs: the one adapter column on the same base model, if there is one
            model = {r["method"]: r["identity"].get("model") for r in runs}
            against = [m for m in methods if kind.get(m) == "adapter" and model.get(m) == identity.get("model")]
            why = f"{len(against)} columns on its base model could be its adapters ({', '.join(against)})" \
                if against else "no adapter column is on its base model"
        if len(against) != 1:
            if notes is not None and (link is not None or members is not None
                                      or any(kind.get(m) == "adapter" for m in methods)):
                notes.append(f"note: {fused} is not compared with its adapters: {why}; give adapt results "
                             "the runs of one configuration")
            continue
        rows = {}
        for task, row in cells.items():
            if fused in row and against[0] in row:
                metric = row[fused].get("metric", "")
                gain = row[fused]["mean"] - row[against[0]]["mean"]
                if metric in UNBOUNDED:  # lower is better: an improvement is a drop
                    gain = -gain
                delta = round(_points(metric, gain), 6)
                shown = float(f"{delta:.1f}")  # the arrow agrees with the delta as printed: +0.31 is "= +0.3"
                arrow = "↑" if shown > SAME_WITHIN else "↓" if shown < -SAME_WITHIN else "="
                rows[task] = {"delta": delta, "arrow": arrow}
        if rows:
            out.append({"fusion": fused, "against": against[0], "tasks": rows})
    return out


def report(paths: list[Path]) -> dict[str, Any]:
    """The table for the runs at ``paths``, with ``notes`` (duplicates, skipped unfinished runs) for the
    caller to show: the library prints nothing."""
    run_dirs, skipped = find_runs(paths)
    notes: list[str] = []
    if skipped:
        notes.append(f"note: skipped {len(skipped)} unfinished run(s): {', '.join(map(str, skipped))}")
    result = table(collect(run_dirs), notes)
    result["notes"] = notes
    return result


def markdown(result: dict[str, Any], wall_time: bool = False) -> str:
    """Table 1 (and a wall-time row when ``wall_time``), then Table 2 when a fusion can be compared."""
    methods = result["methods"]
    lines = ["| task | metric | " + " | ".join(methods) + " |", "|---|---|" + "---|" * len(methods)]
    for task in result["tasks"]:
        row = result["cells"][task]
        metric = next((c["metric"] for c in row.values()), "")
        values = []
        for m in methods:
            c = row.get(m)
            if c is None:
                values.append("")
            else:
                spread = f" ± {_points(metric, c['std']):.1f}" if c["std"] is not None else ""
                values.append(f"{_points(metric, c['mean']):.1f}{spread} (n={c['n']})")
        lines.append(f"| {task} | {metric} | " + " | ".join(values) + " |")
    if wall_time:
        times = [f"{result['wall_time_s'].get(m, 0) / 60:.1f} min" for m in methods]
        lines.append("| wall time | | " + " | ".join(times) + " |")
    comparisons = result.get("comparisons") or []
    if comparisons:
        units = "in points" + (" (perplexity in its own units, a drop counted as a gain)"
                               if any(c.get("metric") in UNBOUNDED for row in result["cells"].values()
                                      for c in row.values()) else "")
        lines += ["", f"Fusion against its adapters, {units} (↑ above +{SAME_WITHIN}, = within, "
                  f"↓ below -{SAME_WITHIN}):", "",
                  "| task | " + " | ".join(f"{c['fusion']} vs {c['against']}" for c in comparisons) + " |",
                  "|---|" + "---|" * len(comparisons)]
        for task in result["tasks"]:
            marks = [c["tasks"].get(task) for c in comparisons]
            if any(marks):
                lines.append(f"| {task} | " + " | ".join(f"{m['arrow']} {m['delta']:+.1f}" if m else ""
                                                         for m in marks) + " |")
    return "\n".join(lines) + "\n"


def csv_text(result: dict[str, Any]) -> str:
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["task", "method", "metric", "mean", "std", "n"])
    for task in result["tasks"]:
        for method, c in result["cells"][task].items():
            std = "" if c["std"] is None else f"{c['std']:.6f}"
            writer.writerow([task, method, c["metric"], f"{c['mean']:.6f}", std, c["n"]])
    return buffer.getvalue()
