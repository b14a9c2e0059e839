"""``adapt cache``: the local adapter cache, keyed by base model."""

from __future__ import annotations

import typer

from ._common import emit_json, handle_errors, human_bytes, print_table

cache_app = typer.Typer(help="List, locate and remove cached adapters (keyed by base model).", no_args_is_help=True)


def _model_id(model: str | None) -> str | None:
    if model is None:
        return None
    from ..defaults import model_id, resolve_model

    return model_id(resolve_model(model)) if model.lower() != "all" else None


@cache_app.command("ls", epilog="Examples:\n\n  adapt cache ls\n\n  adapt cache ls --model minilm --json")
@handle_errors
def ls(model: str = typer.Option(None, "--model", "-m", help="Only adapters for this base model."),
       json_out: bool = typer.Option(False, "--json", help="Print a JSON list.")) -> None:
    """List cached adapters: id, task, method, base model, dev metric, size."""
    from .. import cache

    found = [e.summary() for e in cache.entries(_model_id(model))]
    if json_out:
        emit_json(found)
        return
    if not found:
        print(f"no cached adapters in {cache.cache_root()}")
        return
    rows = []
    for e in found:
        metric = ""
        if e["metrics"]:
            key = e["main_metric"] if e["main_metric"] in e["metrics"] else next(iter(e["metrics"]))
            metric = f"{key} {e['metrics'][key]:.4f}"
        rows.append([e["id"], e["task"] or "", e["config"] or e["method"] or "", e["base_model"], metric,
                     human_bytes(e["bytes"])])
    print_table(["id", "task", "config", "base model", "dev", "size"], rows)


@cache_app.command("models", epilog="Examples:\n\n  adapt cache models\n\n  adapt cache models --json")
@handle_errors
def models(json_out: bool = typer.Option(False, "--json", help="Print a JSON list.")) -> None:
    """List the base models adapt made (MT-A's fine-tuned bases, `<model>+mta-<hash>`): id, the base it was
    fine-tuned from, adapters cached under it, size. `adapt cache rm ID` removes one with its adapters."""
    from .. import cache

    found = cache.base_models()
    if json_out:
        emit_json(found)
        return
    if not found:
        print(f"no base models made by adapt in {cache.cache_root()}")
        return
    print_table(["id", "fine-tuned from", "adapters", "size"],
                [[b["id"], b["derived_from"] or "?", b["adapters"], human_bytes(b["bytes"])] for b in found])


@cache_app.command("path", epilog="Examples:\n\n  adapt cache path\n\n  adapt cache path mrpc --model minilm --json")
@handle_errors
def path(entry: str = typer.Argument(None, help="A cache name; without it, the cache root."),
         model: str = typer.Option("minilm", "--model", "-m", help="Base model the adapter was trained on."),
         json_out: bool = typer.Option(False, "--json", help="Print a JSON object: {\"path\": ...} for the root, "
                                       "the entry (as in cache ls --json) for a name.")) -> None:
    """Print the cache root, or the directory of one cached adapter."""
    from .. import cache

    found = {"path": str(cache.cache_root())} if entry is None else cache.find(entry, _model_id(model)).summary()
    if json_out:
        emit_json(found)
        return
    print(found["path"])


@cache_app.command("rm", epilog="Examples:\n\n  adapt cache rm mrpc-pfeiffer-s42 --yes\n\n"
                   "  adapt cache rm old-run --dry-run --json")
@handle_errors
def rm(entry: str = typer.Argument(..., help="The entry id (see adapt cache ls), or the id of a base model adapt "
                                   "made (see adapt cache models): it goes with its adapters."),
       model: str = typer.Option(None, "--model", "-m", help="Only for this base model."),
       yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask (required when not on a terminal)."),
       dry_run: bool = typer.Option(False, "--dry-run", help="Show what would be removed."),
       json_out: bool = typer.Option(False, "--json", help="Print a JSON list of the entries (as in cache ls "
                                     "--json) with \"removed\": true, or false for --dry-run.")) -> None:
    """Remove a cached adapter."""
    import sys

    from .. import cache
    from ..errors import UsageError

    if not dry_run and not yes and not sys.stdin.isatty():
        raise UsageError("refusing to remove without --yes when not on a terminal")
    base = next((b for b in cache.base_models() if b["id"] == entry), None)
    if base is not None:
        _rm_base_model(base, yes, dry_run, json_out)
        return
    found = cache.with_id(entry, _model_id(model))
    done = []
    for e in found:
        summary = {**e.summary(), "removed": False}
        if not dry_run:
            if not yes and not typer.confirm(f"remove {e.id} ({e.model})?", err=True):
                if json_out:
                    emit_json(done)  # what was removed before the answer "no"
                raise typer.Exit(1)
            cache.delete(e)  # the name goes first, in one step: nobody reads half an entry
            summary["removed"] = True
        done.append(summary)
        if not json_out:
            print(f"removed {e.id} ({e.model})" if summary["removed"] else
                  f"would remove {e.id} ({e.model}) at {e.path}")
    if json_out:
        emit_json(done)


def _rm_base_model(base: dict, yes: bool, dry_run: bool, json_out: bool) -> None:
    """A base model adapt made goes with the entries cached for it (they load into no other base)."""
    from .. import cache

    adapters = [e.summary() for e in cache.entries(base["id"])]
    what = f"{base['id']} and the {len(adapters)} entries cached for it ({', '.join(a['id'] for a in adapters)})"
    if not dry_run and not yes and not typer.confirm(f"remove the base model {what}?", err=True):
        raise typer.Exit(1)
    if not dry_run:
        cache.delete_base_model(base["id"])
    if json_out:
        emit_json({**base, "removed": not dry_run, "entries": [{**a, "removed": not dry_run} for a in adapters]})
        return
    print(f"removed the base model {what}" if not dry_run else f"would remove the base model {what} ({base['path']})")
