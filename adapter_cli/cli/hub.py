"""``adapt pack | publish | search | pull`` and ``adapt hub site | serve``: sharing adapters."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import typer

from ._common import emit_json, handle_errors, human_bytes, info, print_table
from .app import app

hub_app = typer.Typer(help="Registries as websites and servers: `hub site`, `hub serve`.", no_args_is_help=True)

REGISTRY_HELP = "A registry: a directory, an http(s):// base URL or hf://org/repo. Default: $ADAPT_REGISTRY."


Author = typer.Option(None, "--author", help="Who made it; part of the id (task/dataset@author). Default: $ADAPT_AUTHOR.")
Version = typer.Option("1", "--version", help="Version of this adapter; a published version never changes.")
Catalog = typer.Option(None, "--catalog", help="Place in the hub: CATEGORY/DATASET (default: from the task, "
                       "e.g. sst2 -> sentiment/sst-2).")
Description = typer.Option("", "--description", help="One paragraph on what it does and how it was trained.")
Citation = typer.Option("", "--citation", help="BibTeX to cite.")
License = typer.Option(None, "--license", help="License of the weights (e.g. apache-2.0).")
Url = typer.Option(None, "--url", help="A page about it (paper, code).")
Model = typer.Option(None, "--model", "-m", help="Base model it was trained on, when the name is cached for several.")


def _summary(card: Any, digest: str, path: Path) -> dict[str, Any]:
    return {"id": card.id, "version": card.version, "name": card.name, "base_model": card.base_model.id,
            "method": card.method, "architecture": card.architecture, "reduction_factor": card.reduction_factor,
            "rank": card.rank,
            "archive": str(path), "sha256": digest, "bytes": path.stat().st_size, "files": sorted(card.files)}


def json_record(record: dict[str, Any], registry: str) -> dict[str, Any]:
    """An index record as --json prints it: byte counts are ``bytes`` in every output (the index says ``size``)."""
    return {("bytes" if k == "size" else k): v for k, v in record.items()} | {"registry": registry}


@app.command("pack", epilog="Examples:\n\n  adapt pack sst2 --author me\n\n"
             "  adapt pack mrpc --author me --catalog sts/my-mrpc -o dist/ --json")
@handle_errors
def pack(name: str = typer.Argument(..., help="A cached adapter (see adapt cache ls) or an adapter directory."),
         output: Path = typer.Option(None, "--output", "-o", help="Archive file or directory (default: ./<id>.tar.gz)."),
         model: str = Model, author: str = Author, version: str = Version, catalog: str = Catalog,
         description: str = Description, citation: str = Citation, license: str = License, url: str = Url,
         json_out: bool = typer.Option(False, "--json", help="Print a JSON object on stdout.")) -> None:
    """Pack an adapter (weights, config, head) and its card into one verifiable .tar.gz.

    The card records the id (task/dataset@author), version, base model and revision, method, architecture
    and reduction factor (or LoRA rank), dev metrics, author, description, citation, license and the sha256
    of every file.
    """
    from ..hub.pack import pack as do_pack

    path, card, digest = do_pack(name, output, model=model, author=author, version=version, catalog=catalog,
                                 description=description, citation=citation, license=license, url=url)
    result = _summary(card, digest, path)
    if json_out:
        emit_json(result)
        return
    print(f"packed {card.id} v{card.version} ({card.base_model.id}) -> {path} "
          f"({human_bytes(result['bytes'])}, sha256 {digest[:12]})")


@app.command("publish", epilog="Examples:\n\n  adapt publish sst2 --author me --to ./hub\n\n"
             "  adapt publish sentiment_sst-2@me-1.tar.gz --to https://adapters.example.org/hub\n\n"
             "  adapt publish sst2 --author me --to hf://me/adapters")
@handle_errors
def publish(name: str = typer.Argument(..., help="A cached adapter, an adapter directory or a packed .tar.gz."),
            to: str = typer.Option(..., "--to", help="The registry: a directory, an http(s):// URL or hf://org/repo."),
            model: str = Model, author: str = Author, version: str = Version, catalog: str = Catalog,
            description: str = Description, citation: str = Citation, license: str = License, url: str = Url,
            force: bool = typer.Option(False, "--force", help="Replace a published version with other content "
                                       "(a directory or hf:// registry; a served one never allows it)."),
            token_file: Path = typer.Option(None, "--token-file", help="File holding the token of an http(s) "
                                            "registry served with --writable. Default: $ADAPT_REGISTRY_TOKEN."),
            json_out: bool = typer.Option(False, "--json", help="Print a JSON object on stdout.")) -> None:
    """Publish an adapter to a registry: its archive, then the index, atomically.

    Racing publishers are safe: a directory registry takes a lock for the index update; an HTTP registry
    uses conditional PUT (If-Match) and retries; an hf:// registry commits with a parent commit and retries.
    """
    from ..hub.http import read_token
    from ..hub.pack import publish as do_publish
    from ..hub.registries import open_registry
    from ..hub.site import model_argument

    registry = open_registry(to, read_token(token_file) if token_file is not None else None)
    done, card = do_publish(name, registry, force=force, model=model, author=author, version=version,
                            catalog=catalog, description=description, citation=citation, license=license, url=url)
    result = {**{k: v for k, v in done.record.items() if k in ("id", "version", "name", "archive", "sha256")},
              "bytes": done.record["size"], "base_model": card.base_model.id, "registry": to, "new": done.new,
              "url": registry.url_of(done.record)}
    if json_out:
        emit_json(result)
        return
    verb = "published" if done.new else "already published (same archive)"
    print(f"{verb}: {card.id} v{card.version} ({card.base_model.id}) in {to}")
    info(f"pull it with: adapt pull {card.id} --registry {to} --model {model_argument(card.base_model.id)}")


@app.command("search", epilog="Examples:\n\n  adapt search --registry ./hub\n\n"
             "  adapt search sentiment --model bert-base-uncased --arch pfeiffer\n\n"
             "  adapt search --task nli --reduction-factor 16 --json")
@handle_errors
def search(query: str = typer.Argument(None, help="Free text: every word must appear in the id, name, task, "
                                       "dataset, author, architecture, description or base model."),
           registry: list[str] = typer.Option(None, "--registry", "-r", help=REGISTRY_HELP),
           task: str = typer.Option(None, "--task", help="Task category, e.g. sentiment, nli, sts."),
           dataset: str = typer.Option(None, "--dataset", help="Dataset, e.g. sst-2."),
           model: str = typer.Option(None, "--model", "-m", help="Base model id (minilm for the embedded one)."),
           architecture: str = typer.Option(None, "--arch", help="Adapter architecture: pfeiffer, houlsby, ..."),
           reduction_factor: float = typer.Option(None, "--reduction-factor", help="Reduction factor, e.g. 16."),
           author: str = typer.Option(None, "--author", help="Author (the part after @)."),
           all_versions: bool = typer.Option(False, "--all-versions", help="List every version, not the latest."),
           json_out: bool = typer.Option(False, "--json", help="Print a JSON list on stdout.")) -> None:
    """Find adapters in registries by task, dataset, base model, architecture, reduction factor, author or text."""
    from ..defaults import canonical_model_id, model_id, resolve_model
    from ..errors import UsageError
    from ..hub.registries import configured_registries, open_registry
    from ..hub.registry import latest, search_records

    specs = configured_registries(registry)
    if not specs:
        raise UsageError("which registry? pass --registry DIR|URL|hf://org/repo (or set ADAPT_REGISTRY)")
    found: list[dict[str, Any]] = []
    for spec in specs:
        records = open_registry(spec).read_index()["adapters"]
        hits = search_records(records, query, task=task, dataset=dataset,
                              model=canonical_model_id(model_id(resolve_model(model))) if model else None,
                              architecture=architecture,
                              reduction_factor=reduction_factor, author=author)
        if not all_versions:
            newest = {id(r) for r in latest(hits)}
            hits = [r for r in hits if id(r) in newest]
        found.extend(json_record(r, spec) for r in hits)
    if json_out:
        emit_json(found)
    if not found:  # like grep: nothing found is exit 1, so scripts can branch on it
        print("no adapters match", file=sys.stderr)
        raise typer.Exit(1)
    if json_out:
        return
    rows = []
    for r in found:
        metrics = r.get("metrics") or {}
        key = r.get("main_metric") or next(iter(metrics), None)
        metric = f"{key} {metrics[key]:.3f}" if key in metrics else ""
        rows.append([r["id"], r["version"], r["base_model"]["id"], r.get("architecture") or "", _size(r), metric,
                     human_bytes(r.get("bytes") or 0)])
    print_table(["id", "version", "base model", "arch", "rf / r", "dev", "size"], rows)


def _size(record: dict[str, Any]) -> str:
    """A bottleneck's reduction factor (16), or a LoRA-family adapter's rank (r8)."""
    rf, rank = record.get("reduction_factor"), record.get("rank")
    if isinstance(rf, (int, float)):
        return f"{rf:g}"
    return f"r{rank}" if isinstance(rank, int) else ""


@app.command("pull", epilog="Examples:\n\n  adapt pull sentiment/sst-2@ukp --registry ./hub --model bert-base-uncased\n\n"
             "  adapt pull sst --registry https://adapters.example.org/hub\n\n"
             "  adapt pull hf://AdapterHub/bert-base-uncased-pf-mrpc\n\n  adapt pull ./sentiment_sst-2@me-1.tar.gz")
@handle_errors
def pull(adapter: str = typer.Argument(..., help="An id (task/dataset@author[:version]), an unambiguous part or "
                                       "name prefix, an hf://org/repo, or a .tar.gz archive."),
         registry: list[str] = typer.Option(None, "--registry", "-r", help=REGISTRY_HELP),
         model: str = typer.Option(None, "--model", "-m", help="The base model you will use it with; an adapter "
                                   "for another base model is refused."),
         architecture: str = typer.Option(None, "--arch", help="The architecture, when the id is published in "
                                          "several (e.g. pfeiffer and houlsby)."),
         json_out: bool = typer.Option(False, "--json", help="Print a JSON object on stdout.")) -> None:
    """Download an adapter, verify its sha256 and every file, and put it into the cache under its base model.

    Commands that take an adapter (infer, fuse, inspect-activations) also pull on the fly from
    $ADAPT_REGISTRY, or from an hf:// repo named directly.
    """
    from ..defaults import model_id, resolve_model
    from ..hub.pull import pull as do_pull
    from ..hub.site import model_argument

    entry = do_pull(adapter, model_id=model_id(resolve_model(model)) if model else None, registries=registry,
                    architecture=architecture)
    result = {"id": entry.id, "registry_id": entry.data.get("registry_id"), "version": entry.data.get("version"),
              "name": entry.name, "base_model": entry.model, "path": str(entry.path), "source": entry.data.get("source")}
    if json_out:
        emit_json(result)
        return
    print(f"pulled {result['registry_id'] or adapter} v{result['version']} for {entry.model} into {entry.path}")
    info(f"use it with: adapt infer --model {model_argument(entry.model)} -a {entry.id} \"some text\"")


@hub_app.command("site", epilog="Examples:\n\n  adapt hub site ./hub -o site/\n\n"
                 "  adapt hub site https://adapters.example.org/hub -o public/ --title 'Our adapters'")
@handle_errors
def site(registry: str = typer.Argument(..., help="The registry to describe: a directory, URL or hf://org/repo."),
         output: Path = typer.Option(..., "--output", "-o", help="Directory to write the site into."),
         title: str = typer.Option("Adapter hub", "--title", help="Title of the pages."),
         json_out: bool = typer.Option(False, "--json", help="Print a JSON summary on stdout.")) -> None:
    """Write a static explore website for a registry: task -> dataset -> adapters, filters by base model and
    architecture, and one page per adapter with its metadata and the command that uses it. No server needed."""
    from ..hub.registries import open_registry
    from ..hub.site import build_site

    reg = open_registry(registry)
    result = build_site(reg, output, title=title)
    if json_out:
        emit_json(result)
        return
    print(f"wrote {result['pages']} pages for {result['adapters']} adapters to {result['index']}")


@hub_app.command("serve", epilog="Examples:\n\n  adapt hub serve ./hub --port 8080\n\n"
                 "  adapt hub serve ./hub --writable --token-file ~/.config/adapt/registry-token\n\n"
                 "  (publishers: ADAPT_REGISTRY_TOKEN=... adapt publish NAME --to http://host:8000)")
@handle_errors
def serve(directory: Path = typer.Argument(..., help="The registry directory to serve."),
          host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
          port: int = typer.Option(8000, "--port", help="Port (0 picks a free one)."),
          writable: bool = typer.Option(False, "--writable", help="Accept publishing (needs --token-file)."),
          token_file: Path = typer.Option(None, "--token-file", help="File holding the token publishers must send "
                                          "(Authorization: Bearer); required with --writable."),
          max_upload_mb: float = typer.Option(512, "--max-upload-mb", help="Largest upload accepted (413 above)."),
          timeout: float = typer.Option(30, "--timeout", help="Seconds a connection may stay silent before it "
                                        "is dropped.")) -> None:
    """Serve a registry directory over HTTP (for a lab or a CI cache). Ctrl-C stops it.

    Writes need a token; archives are checked like `adapt pull` checks them, and a published version never
    changes. There is no TLS: put it behind an HTTPS proxy outside a trusted network.
    """
    from ..errors import UsageError
    from ..hub.http import read_token
    from ..hub.server import make_server

    if token_file is not None and not writable:
        raise UsageError("--token-file is for --writable (reading a registry needs no token)")
    token = read_token(token_file) if token_file is not None else None
    server = make_server(directory, host, port, writable, token=token, max_upload_mb=max_upload_mb, timeout=timeout)
    print(f"serving {directory} at http://{host}:{server.server_address[1]}"
          + (" (writable with the token)" if writable else ""), file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
