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
    """The MT-A base (``<model>+mta-<hash>``) that all of ``specs`` were made with, so that a fusion over MT-A
    adapters (or an inspection of it) runs on their base when no base model is given; None when none of them
    names an MT-A base. Members of different bases, one of them an MT-A base, are refused in one line. A spec
    is a directory (its adapter or fusion config records the base) or a cache name (the bases it is cached
    for; one of several counts as unknown)."""
    from .defaults import DERIVED_MARK

    bases = {spec: _recorded_bases(spec) for spec in specs}
    named = {spec: next(iter(found)) for spec, found in bases.items() if len(found) == 1}
    derived = {base for base in named.values() if DERIVED_MARK in base}
    if not derived:
        return None
    if len(derived) == 1 and len(named) == len(specs) and len(set(named.values())) == 1:
        return derived.pop()
    listed = ", ".join(f"{spec}: {named.get(spec) or 'unknown'}" for spec in specs)
    raise UsageError(f"the adapters were trained on different base models ({listed}); a fusion needs adapters "
                     "of one base model (an MT-A run's adapters load only into its own base)")


def _recorded_bases(spec: str) -> set[str]:
    """The base models an adapter or fusion given as ``spec`` was made for, as recorded."""
    import json

    from .cache import entries, short_names
    from .formats import ADAPTER_CONFIG, FUSION_CONFIGS

    path = Path(spec)
    config = next((path / f for f in (ADAPTER_CONFIG, *FUSION_CONFIGS) if (path / f).is_file()), None)
    if config is None:
        return {e.model for e in entries() if e.id == spec or spec in short_names(e)}
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
        named = (data.get("base_model") or {}).get("name_or_path") or data.get("model_name")
    except (OSError, ValueError, AttributeError):
        return set()
    return {str(named)} if named else set()
