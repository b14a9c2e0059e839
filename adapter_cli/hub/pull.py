"""`adapt pull`: find an adapter in a registry (or take an archive file or an hf:// repo), download it,
verify it and put it into the cache under its base model. Work happens in a temporary directory; the
cache sees only a complete, verified entry, or nothing."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import Any

from ..errors import ArtifactError, UsageError
from .card import Card
from .registries import configured_registries, open_registry
from .registry import RegistryError, resolve, same_model


def entry_id(task: str, dataset: str, author: str, architecture: str | None) -> str:
    """The cache entry of a pulled adapter: its id and architecture, as one directory name."""
    return f"{task}--{dataset}@{author}--{architecture}"


def install(directory: Path, card: Card, *, model_id: str | None, source: str, digest: str | None = None) -> Any:
    """Put a verified, unpacked adapter (its card already checked) into the cache; refuse one made for
    another base model."""
    from .. import cache
    from ..tasks import builtin_tasks

    if model_id is not None and not same_model(card.base_model.id, model_id) and not _unnamed(card.base_model.id):
        raise UsageError(f"{card.id} was trained on {card.base_model.id}, not on {model_id}; "
                         "adapters only work with the base model they were trained on")
    local_task = next((t.name for t in builtin_tasks().values() if t.catalog == f"{card.task}/{card.dataset}"),
                      card.dataset)
    info = {"name": card.name, "task": local_task, "method": "adapter", "kind": "adapter",
            "adapter_kind": card.kind, "language": card.language, "trained_under": card.trained_under,
            "config_name": card.architecture, "config": card.config, "metrics": card.metrics or None,
            "main_metric": card.main_metric, "registry_id": card.id, "version": card.version,
            "author": card.author, "source": source, "archive_sha256": digest}
    return cache.put(directory, model_id=model_id or card.base_model.id, entry_id=entry_id(card.task, card.dataset, card.author, card.architecture), info=info)


def _unnamed(base_model: str) -> bool:
    """AdapterHub records a local path as the model name when the base was loaded from disk: that names no
    model, so only the structural check at load time (model type, hidden size, layers) applies."""
    return base_model.startswith(("/", "~", ".")) or re.match(r"[A-Za-z]:\\", base_model) is not None


def pull_archive(archive: Path, *, model_id: str | None, source: str, expected_sha256: str | None = None,
                 record: dict[str, Any] | None = None) -> Any:
    """Verify and install an archive; ``record`` (the index entry it was found by) must describe its card."""
    from .archive import extract_archive, file_digest
    from .registry import published_key

    digest = file_digest(archive)
    if expected_sha256 and digest != expected_sha256:
        raise UsageError(f"refusing {source}: its sha256 is {digest[:12]}…, the registry says {expected_sha256[:12]}… "
                         "(tampered or damaged); nothing was installed")
    with tempfile.TemporaryDirectory(prefix="adapt-unpack-") as tmp:
        unpacked = extract_archive(archive, Path(tmp), source=source)
        card = unpacked.card
        if record is not None and published_key(record) != published_key({**card.index_record()}):
            # an index that lies about what an archive holds must not get another adapter installed
            raise ArtifactError(f"refusing {source}: it holds {card.id} v{card.version} ({card.base_model.id}, "
                                f"{card.architecture}), not what the index says ({record['id']} v{record['version']})")
        return install(unpacked.directory, card, model_id=model_id, source=source, digest=digest)


def pull(spec: str, *, model_id: str | None = None, registries: list[str] | None = None,
         architecture: str | None = None) -> Any:
    """Pull ``spec`` (an id, part of one or a name; an archive file; or hf://org/repo) into the cache."""
    path = Path(spec).expanduser()
    if spec.endswith((".tar.gz", ".tgz")) and path.is_file():
        return pull_archive(path, model_id=model_id, source=str(path.resolve()))
    if spec.startswith("hf://"):
        return pull_hf(spec, model_id=model_id)
    specs = configured_registries(registries)
    if not specs:
        raise UsageError(f"where should {spec!r} come from? pass `registry` DIR|URL|hf://org/repo "
                         "(or set ADAPT_REGISTRY)")
    misses: list[str] = []
    unreachable = False
    for registry_spec in specs:
        registry = open_registry(registry_spec)
        try:
            record = resolve(registry.read_index()["adapters"], spec, model_id, registry_spec, architecture)
        except (UsageError, RegistryError) as exc:  # not there, or unreachable: try the next registry
            misses.append(str(exc))
            unreachable = unreachable or isinstance(exc, RegistryError)
            continue
        with tempfile.TemporaryDirectory(prefix="adapt-pull-") as tmp:
            archive = Path(tmp) / "adapter.tar.gz"
            registry.fetch(record, archive)
            return pull_archive(archive, model_id=model_id, source=registry.url_of(record),
                                expected_sha256=record["sha256"], record=record)
    # A registry that could not be read may hold it: that is a failure (exit 1), not bad input (exit 2).
    error = RegistryError if unreachable else UsageError
    if len(misses) == 1:
        raise error(misses[0])
    raise error(f"{spec!r} is in none of the registries: " + "; ".join(misses))


def pull_hf(spec: str, *, model_id: str | None) -> Any:
    """An adapter straight from a Hugging Face repo: an adapt archive set (via its index) or AdapterHub's files."""
    from .hf import HfRepo, adapterhub_card
    from .registry import INDEX, read_index_file

    repo = HfRepo.parse(spec)
    try:
        index_path = repo.download(INDEX, probe=True)
    except FileNotFoundError:
        index_path = None
    if index_path is not None:
        records = read_index_file(index_path, spec)["adapters"]
        if len(records) != 1:
            raise UsageError(f"{spec} is a registry of {len(records)} adapters; name one: "
                             f"`adapt pull ID --registry {spec}`")
        return pull(records[0]["id"], model_id=model_id, registries=[spec])
    directory = repo.snapshot(["*.json", "*.bin", "*.safetensors", "README.md"])
    return install(*adapterhub_card(directory, spec), model_id=model_id, source=spec)


def is_full_id(spec: str) -> bool:
    """Only a complete id (task/dataset@author[:version]) or an hf:// repo is pulled on the fly: a short
    name that misses the cache is a typo, not a request for whatever a registry has under that prefix."""
    from .card import parse_query

    if spec.startswith("hf://"):
        return True
    try:
        q = parse_query(spec)
    except UsageError:
        return False
    return bool(q.task and q.dataset and q.author)


def ensure(spec: str, model_id: str) -> Path | None:
    """On-the-fly pulling for commands that take an adapter: the cached copy's directory after pulling,
    or None when no registry is configured and ``spec`` is not an hf:// repo."""
    if not is_full_id(spec) or not (spec.startswith("hf://") or configured_registries()):
        return None
    return pull(spec, model_id=model_id).path
