"""`adapt pack`: a cached adapter (or an adapter directory) and what is known about it, as one archive."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from ..errors import UsageError
from .card import BaseModelRef, Card, inside, path_part, slug


def architecture_name(config: dict[str, Any]) -> str:
    """The preset a configuration is an instance of (width and activation aside), as AdapterHub names it."""
    from ..methods import config_from_dict
    from ..presets import adapter_presets

    free = {"reduction_factor", "bottleneck_size", "non_linearity", "init_weights", "init_weights_seed",
            "dropout", "stochastic_depth", "kind", "r", "alpha", "inv_adapter_reduction_factor", "prefix_length",
            "prompt_length"}

    def strip(d: dict[str, Any]) -> dict[str, Any]:  # a union's parts too
        return {k: ([strip(p) for p in v] if k == "configs" else v) for k, v in d.items() if k not in free}

    def shape(cfg: Any) -> dict[str, Any]:
        return strip(cfg.to_dict())

    parsed = config_from_dict(config)
    mine = shape(parsed)
    for name, preset in sorted(adapter_presets().items()):
        if name == preset.name and shape(config_from_dict({**preset.config, "architecture": preset.method})) == mine:
            return name
    variant = getattr(parsed, "variant", "custom")  # a LoRA-family adapter is at least its variant (lora, dora, ...)
    return variant if variant.isidentifier() else parsed.architecture  # a union's "prefix_tuning+lora": "union"


def method_fields(config: Any, hidden_size: int) -> dict[str, Any]:
    """What a card records of an adapter's method: a bottleneck's reduction factor and non-linearity, or a
    LoRA-family adapter's rank ((IA)³ learns vectors and has none)."""
    fields: dict[str, Any] = {"method": config.architecture, "architecture": architecture_name(config.to_dict()),
                              "reduction_factor": None, "non_linearity": None, "rank": None}
    if config.architecture in ("lora", "reft"):
        fields["rank"] = None if config.variant == "ia3" else config.r
        return fields
    if config.architecture in ("prompt_tuning", "prefix_tuning", "union"):  # vectors per token; a union: its parts
        return fields
    rf = config.reduction_factor if isinstance(config.reduction_factor, (int, float)) else None
    if isinstance(config.bottleneck_size, int):
        rf = hidden_size / config.bottleneck_size
    fields.update(reduction_factor=rf, non_linearity=config.non_linearity)
    return fields


def _catalog(entry_data: dict[str, Any]) -> str | None:
    """The task's place in the hub hierarchy, from the built-in task or the task file it was trained on."""
    from ..tasks import get_task

    specs = [entry_data.get("task_source"), entry_data.get("task")]
    recipe = Path(str(entry_data.get("run_dir") or "")) / "recipe.yaml"
    if entry_data.get("run_dir") and recipe.is_file():
        import yaml

        specs.insert(1, (yaml.safe_load(recipe.read_text(encoding="utf-8")) or {}).get("task"))
    for spec in specs:
        if not spec:
            continue
        try:
            catalog = get_task(str(spec)).catalog
        except UsageError:
            continue
        if catalog:
            return catalog
    return None


def card_for(directory: Path, entry_data: dict[str, Any], *, author: str | None, version: str = "1",
             catalog: str | None = None, description: str = "", citation: str = "", license: str | None = None,
             url: str | None = None, kind: str | None = None) -> Card:
    """A card for the adapter in ``directory`` (ours or AdapterHub's), with what the cache entry knows."""
    from .._version import __version__
    from ..formats import has_head, read_adapter, read_head

    if (directory / "fusion_config.json").is_file() or (directory / "adapter_fusion_config.json").is_file():
        raise UsageError(f"{directory} holds a fusion; only single adapters can be packed for now "
                         "(pack each member adapter instead)")
    if not (directory / "adapter_config.json").is_file():
        raise UsageError(f"{directory} holds no adapter (a head-only run has nothing to share); "
                         "pack an adapter from `adapt cache ls`")
    version = path_part(str(version), "`version`", "version")  # it becomes part of file names: checked first
    artifact = read_adapter(directory)
    author = author or os.environ.get("ADAPT_AUTHOR")
    if not author:
        raise UsageError("who made this adapter? pass `author` NAME (or set ADAPT_AUTHOR); "
                         "it becomes part of the id, as in sentiment/sst-2@ukp")
    catalog = catalog or _catalog(entry_data)
    if not catalog or "/" not in catalog:
        task = entry_data.get("task") or artifact.name
        raise UsageError(f"task {task!r} has no place in the hub hierarchy; pass `catalog` CATEGORY/DATASET "
                         "(e.g. sentiment/my-reviews) or add `catalog:` to its task file")
    category, dataset = catalog.split("/", 1)
    config = artifact.config
    head = None
    if has_head(directory):
        head_cfg = read_head(directory).config
        labels = sorted((head_cfg.label2id or {}).items(), key=lambda kv: kv[1]) if getattr(head_cfg, "label2id", None) else []
        head = {"type": head_cfg.head_type, "num_labels": head_cfg.num_labels, "labels": [k for k, _ in labels]}
    raw = json.loads((directory / "adapter_config.json").read_text(encoding="utf-8"))
    base_model = entry_data.get("base_model") or artifact.base.name_or_path
    if not base_model:
        raise UsageError(f"{directory} does not record its base model; load it into a model and save it again")
    return Card(
        name=artifact.name, task=slug(category, "catalog category"), dataset=slug(dataset, "catalog dataset"),
        author=slug(author, "author"), version=version,
        base_model=BaseModelRef(id=base_model, model_type=artifact.base.model_type,
                                hidden_size=artifact.base.hidden_size, num_layers=artifact.base.num_layers,
                                revision=artifact.base.revision),
        kind=kind or config.kind, **method_fields(config, artifact.base.hidden_size),
        language=artifact.meta.get("language"), trained_under=_under(artifact.meta.get("trained_under")),
        parameters=raw.get("parameters"), config=config.to_dict(), head=head,
        metrics=dict(entry_data.get("metrics") or {}), main_metric=entry_data.get("main_metric"),
        description=description or "", citation=citation or "", license=license, url=url,
        # when the adapter was made, not when it was packed: packing twice gives the same bytes
        created=entry_data.get("created") or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(
            (directory / "adapter_config.json").stat().st_mtime)), adapt_version=__version__)


def _under(record: Any) -> dict[str, Any] | None:
    """The language adapter a task adapter was trained under, as a card says it (name and language; where it
    was loaded from is a local path or cache name, of no use to whoever pulls the card)."""
    return {"name": record["name"], "language": record["language"]} if isinstance(record, dict) else None


def resolve_source(name: str, model: str | None) -> tuple[Path, dict[str, Any]]:
    """A cache name (for ``model``, or the only base model it is cached for) or an adapter directory. A bare
    name means the cache entry even when a folder of that name is in the current directory (write
    ``./NAME`` for the folder); a folder is used when nothing of that name is cached."""
    from .. import cache
    from ..defaults import model_id, resolve_model

    path = Path(name)
    as_path = "/" in name or name.startswith((".", "~"))
    found = [] if as_path else [e for e in cache.entries() if e.id == name or name in cache.short_names(e)]
    if path.is_dir() and not found:
        if (path / cache.ENTRY).is_file():
            return path, json.loads((path / cache.ENTRY).read_text(encoding="utf-8"))
        return path, {}
    if model:
        entry = cache.find(name, model_id(resolve_model(model)))
    else:
        models = sorted({e.model for e in found})
        if len(models) > 1:
            raise UsageError(f"{name!r} is cached for several base models ({', '.join(models)}); choose one with `model`")
        if not found:
            raise UsageError(f"no cached adapter {name!r} and no such directory; see `adapt cache ls`")
        entry = cache.find(name, models[0])
    cache.verify(entry)
    return entry.path, entry.data


def pack(name: str, output: Path | None = None, *, model: str | None = None, **card_fields: Any) -> tuple[Path, Card, str]:
    """Write the archive for ``name``; returns (path, card, sha256)."""
    from .archive import write_archive

    directory, entry_data = resolve_source(name, model)
    card = card_for(directory, entry_data, **card_fields)
    file_name = f"{card.task}_{card.dataset}@{card.author}-{card.version}.tar.gz"
    if output is None:
        output = Path(file_name)
    elif not output.name.endswith((".tar.gz", ".tgz")):  # a directory to put it in
        output = inside(output, file_name, "the archive name")
    from ..cache import ENTRY
    from ..errors import ArtifactError

    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        digest = write_archive(directory, card, output, skip=(ENTRY,))
    except OSError as exc:
        raise ArtifactError(f"cannot write {output}: {exc.strerror or exc}") from None
    return output, card, digest


def publish(name: str, registry: Any, *, force: bool = False, model: str | None = None,
            **card_fields: Any) -> tuple[Any, Card]:
    """Publish ``name`` (a cached adapter, an adapter directory, or an archive made by ``pack``) to an open
    ``registry``: an archive is published only once it verifies as ``pull`` would; anything else is packed
    first. Returns (the registry's Published record, the card)."""
    import tempfile

    from .archive import extract_archive, file_digest

    with tempfile.TemporaryDirectory(prefix="adapt-publish-") as tmp:
        if name.endswith((".tar.gz", ".tgz")) and Path(name).is_file():
            archive = Path(name)
            card = extract_archive(archive, Path(tmp), source=name).card
            digest = file_digest(archive)
        else:
            archive, card, digest = pack(name, Path(tmp), model=model, **card_fields)
        return registry.publish(archive, card, digest, force=force), card
