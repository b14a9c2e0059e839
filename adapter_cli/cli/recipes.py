"""``adapt recipes``: the built-in YAML recipes (adapter presets, training recipes, tasks)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import typer

from ._common import emit_json, handle_errors, print_table

recipes_app = typer.Typer(help="Built-in recipes: adapter presets, training recipes and tasks.", no_args_is_help=True)
KINDS = {"adapter": "adapters", "train": "train", "task": "tasks"}


def _all() -> list[dict]:
    import yaml

    from ..builtins import recipes_root

    out = []
    for kind, folder in KINDS.items():
        for path in sorted((recipes_root() / folder).glob("*.yaml")):
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
            out.append({"kind": kind, "name": data.get("name", path.stem), "aliases": data.get("aliases") or [],
                        "description": data.get("description", ""), "path": str(path)})
    return out


def _find(name: str) -> dict:
    from ..errors import UsageError, suggest

    items = _all()
    for item in items:
        if name in (item["name"], *item["aliases"]) or name == f"{item['kind']}/{item['name']}":
            return item
    names = [i["name"] for i in items]
    raise UsageError(f"no recipe {name!r}{suggest(name, names)}; see `adapt recipes ls`")


@recipes_app.command("ls", epilog="Examples:\n\n  adapt recipes ls\n\n  adapt recipes ls --kind task --json")
@handle_errors
def ls(kind: str = typer.Option(None, "--kind", "-k", help="adapter, train or task."),
       json_out: bool = typer.Option(False, "--json", help="Print a JSON list.")) -> None:
    """List built-in recipes."""
    from ..errors import UsageError

    if kind is not None and kind not in KINDS:
        raise UsageError(f"--kind must be one of {', '.join(KINDS)}")
    items = [i for i in _all() if kind is None or i["kind"] == kind]
    if json_out:
        emit_json(items)
        return
    print_table(["kind", "name", "aliases", "description"],
                [[i["kind"], i["name"], ",".join(i["aliases"]), i["description"]] for i in items])


@recipes_app.command("show", epilog="Examples:\n\n  adapt recipes show pfeiffer\n\n  adapt recipes show mrpc --json")
@handle_errors
def show(name: str = typer.Argument(..., help="A recipe name (see adapt recipes ls)."),
         json_out: bool = typer.Option(False, "--json", help="Print a JSON object: the recipe's kind, name, "
                                       "path, its YAML text and its parsed content.")) -> None:
    """Print a recipe's YAML, to read which keys can be overridden."""
    import yaml

    item = _find(name)
    text = Path(item["path"]).read_text(encoding="utf-8")
    if json_out:
        emit_json({**item, "yaml": text, "content": yaml.safe_load(text) or {}})
        return
    print(text, end="")


@recipes_app.command("cp", epilog="Examples:\n\n  adapt recipes cp adapter my-recipe.yaml && adapt train --recipe "
                     "my-recipe.yaml --task mrpc --data-dir glue/MRPC\n\n  adapt recipes cp mrpc recipes/ --json")
@handle_errors
def cp(name: str = typer.Argument(..., help="A recipe name."),
       dest: str = typer.Argument(..., help="Destination file or directory (a trailing / makes a directory)."),
       force: bool = typer.Option(False, "--force", help="Overwrite an existing file."),
       json_out: bool = typer.Option(False, "--json", help="Print a JSON object: what was copied where.")) -> None:
    """Copy a built-in recipe to edit it."""
    from ..errors import AdaptError, UsageError, disk_full
    from ..fsutil import write_bytes_atomic

    item = _find(name)
    source = Path(item["path"])
    target = Path(dest) / source.name if Path(dest).is_dir() or dest.endswith(("/", os.sep)) else Path(dest)
    if target.exists() and not force:
        raise UsageError(f"{target} exists; pass --force to overwrite it")
    if target.is_dir():
        raise UsageError(f"{target} is a directory; give a file name or a directory without that file")
    made = [d for d in (target.parent, *target.parent.parents) if not d.exists()]  # deepest first
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(target, source.read_bytes())  # whole or not at all
    except OSError as exc:
        for folder in made:  # nothing left behind: not even the folders made for it
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise disk_full(exc, str(target)) or AdaptError(
            f"cannot copy {source.name} to {target}: {exc.strerror or exc}") from None
    if json_out:
        emit_json({"kind": item["kind"], "name": item["name"], "source": str(source), "path": str(target),
                   "bytes": target.stat().st_size})
        return
    print(f"copied {source.name} to {target}")
