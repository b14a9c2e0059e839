"""Names -> artifacts: one resolver above both the local cache and the registries. An adapter or fusion is
a directory, a cache name for the base model, or a registry id / hf:// repo pulled on the fly; the cache
knows nothing of registries and the registries write through the cache."""

from __future__ import annotations

from pathlib import Path

from .cache import NotCached, find, verify
from .errors import UsageError


def locate(spec: str, model_id: str, kind: str | None = None) -> Path:
    """An adapter or fusion given as a directory (ours or AdapterHub's), a cache name for ``model_id``, or a
    registry id / hf:// repo pulled on the fly when not cached; a cached entry's files are checked against
    their sha256 first. ``kind`` ("adapter", "fusion") decides between entries sharing a short name."""
    from .formats import ADAPTER_CONFIG, FUSION_CONFIGS, HEAD_CONFIG
    from .hub.card import parse_query
    from .hub.pull import ensure

    path = Path(spec)
    if any((path / f).is_file() for f in (ADAPTER_CONFIG, *FUSION_CONFIGS, HEAD_CONFIG)):
        return path
    if "/" in spec and not spec.startswith("hf://"):
        try:
            parse_query(spec)
            if path.exists():
                return path  # a directory that happens to look like an id: the reader says what is wrong
        except UsageError:
            return path  # not an id like task/dataset@author: a missing directory, reported by the reader
    try:
        entry = find(spec, model_id, kind)
    except NotCached:
        pulled = ensure(spec, model_id)  # from ADAPT_REGISTRY, or the hf:// repo it names
        if pulled is None:
            raise
        return pulled
    verify(entry)
    return entry.path


def mta_base_of(specs: list[str]) -> str | None:
    """The MT-A base (``<model>+mta-<hash>``) that every one of ``specs`` was made with, when they agree on one,
    else None: so that a fusion over MT-A adapters (or an inspection of it) runs on their base without
    ``--model``. A spec is a directory (its adapter or fusion config records the base) or a cache name, taken
    here only when it is cached under MT-A bases alone."""
    import json

    from .cache import entries, short_names
    from .defaults import DERIVED_MARK
    from .formats import ADAPTER_CONFIG, FUSION_CONFIGS

    cached = entries()
    bases = set()
    for spec in specs:
        path = Path(spec)
        config = next((path / f for f in (ADAPTER_CONFIG, *FUSION_CONFIGS) if (path / f).is_file()), None)
        if config is not None:
            try:
                data = json.loads(config.read_text(encoding="utf-8"))
                named = (data.get("base_model") or {}).get("name_or_path") or data.get("model_name")
            except (OSError, ValueError, AttributeError):
                return None
            found = {str(named)} if named else set()
        else:
            found = {e.model for e in cached if e.id == spec or spec in short_names(e)}
        if len(found) != 1 or DERIVED_MARK not in next(iter(found)):
            return None
        bases |= found
    return bases.pop() if len(bases) == 1 else None
