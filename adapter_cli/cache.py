"""The local cache of trained adapters, keyed by base model.

Layout (root: ``$ADAPT_CACHE``, else the platform's user cache directory, e.g. ~/.cache/adapt)::

    adapters/<model key>/<entry id>/    adapter (+ head) files in our format, and entry.json

``entry.json`` records the name, task, method, config, dev metrics, versions, the run it came from and
the sha256 of every file. Commands take an adapter by directory or by cache name for the chosen base
model: an entry id, an adapter name or a task name; a name matching several entries lists them.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ArtifactError, UsageError
from .fsutil import atomic_directory, dump_json

ENTRY = "entry.json"


class NotCached(UsageError):
    """No cache entry of that name for this base model (there may be one in a registry)."""


def cache_root() -> Path:
    if os.environ.get("ADAPT_CACHE"):
        return Path(os.environ["ADAPT_CACHE"]).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("adapt"))


def model_key(model_id: str) -> str:
    """A directory name for a base model id (hf cache style: models--org--name)."""
    return "models--" + re.sub(r"[^A-Za-z0-9_.\-]", "-", model_id.replace("/", "--"))


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class Entry:
    id: str
    path: Path
    data: dict[str, Any]

    @property
    def name(self) -> str:
        return self.data.get("name", self.id)

    @property
    def model(self) -> str:
        return self.data.get("base_model", "?")

    def summary(self) -> dict[str, Any]:
        d = self.data
        return {"id": self.id, "name": self.name, "task": d.get("task"), "method": d.get("method"),
                "config": d.get("config_name"), "base_model": self.model, "metrics": d.get("metrics"),
                "main_metric": d.get("main_metric"), "kind": d.get("kind"), "created": d.get("created"), "path": str(self.path),
                "bytes": sum(f.stat().st_size for f in self.path.iterdir() if f.is_file())}


def entries(model_id: str | None = None) -> list[Entry]:
    root = cache_root() / "adapters"
    if not root.is_dir():
        return []
    keys = [model_key(model_id)] if model_id else sorted(p.name for p in root.iterdir() if p.is_dir())
    out = []
    for key in keys:
        for path in sorted((root / key).glob("*/" + ENTRY)) if (root / key).is_dir() else []:
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError):
                continue  # a damaged entry is skipped, not fatal
            out.append(Entry(path.parent.name, path.parent, data))
    return out


def put(source: Path, *, model_id: str, entry_id: str, info: dict[str, Any], overwrite: bool = True) -> Entry:
    """Copy an adapter (or head) directory into the cache atomically, with entry.json."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.@\-]{0,199}", entry_id) or ".." in entry_id:
        raise UsageError(f"bad cache entry id {entry_id[:80]!r}: letters, digits, '_', '.', '@' and '-' only")
    root = (cache_root() / "adapters").resolve()
    target = root / model_key(model_id) / entry_id
    if not target.resolve().is_relative_to(root):  # defence in depth: ids above cannot climb out
        raise UsageError(f"refusing to write outside the cache: {target}")
    with atomic_directory(target, overwrite=overwrite) as tmp:
        for f in sorted(Path(source).iterdir()):
            if f.is_file():
                shutil.copy2(f, tmp / f.name)
        files = {f.name: sha256(f) for f in sorted(tmp.iterdir()) if f.is_file()}
        data = {**info, "id": entry_id, "base_model": model_id, "files": files,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        (tmp / ENTRY).write_text(dump_json(data), encoding="utf-8")
    return Entry(entry_id, target, data)


def verify(entry: Entry) -> None:
    for name, digest in (entry.data.get("files") or {}).items():
        path = entry.path / name
        if not path.is_file() or sha256(path) != digest:
            raise ArtifactError(f"cached adapter {entry.id} is damaged ({name} changed or missing); "
                                f"remove it with `adapt cache rm {entry.id}` and extract it again")


def find(query: str, model_id: str) -> Entry:
    """The single entry for ``query`` (entry id, adapter name or task) cached for ``model_id``."""
    mine = entries(model_id)
    exact = [e for e in mine if e.id == query] or \
        [e for e in mine if query in (e.data.get("registry_id"), f"{e.data.get('registry_id')}:{e.data.get('version')}",
                                      e.data.get("source"))]
    matches = exact or [e for e in mine if e.name == query] or [e for e in mine if e.data.get("task") == query]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        listed = ", ".join(e.id for e in matches)
        raise UsageError(f"cache name {query!r} is ambiguous for {model_id}: it matches {listed}; use one of these ids")
    elsewhere = sorted({e.model for e in entries() if query in (e.id, e.name, e.data.get("task"),
                                                                 e.data.get("registry_id"))})
    if elsewhere:
        raise NotCached(f"adapter {query!r} is cached for {', '.join(elsewhere)}, not for {model_id}; "
                         "it was trained on another base model")
    have = ", ".join(sorted(e.id for e in mine)) or "none"
    raise NotCached(f"no cached adapter {query!r} for {model_id} (cached for this model: {have}); "
                    "give a directory, train one with `adapt train` or pull one with `adapt pull`")


def remove(entry_id: str, model_id: str | None = None) -> list[Entry]:
    found = [e for e in entries(model_id) if e.id == entry_id]
    if not found:
        raise UsageError(f"no cache entry {entry_id!r}" + (f" for {model_id}" if model_id else "") +
                         "; see `adapt cache ls`")
    return found


def locate(spec: str, model_id: str) -> Path:
    """An adapter or fusion given as a directory (ours or AdapterHub's), a cache name for ``model_id``, or a
    registry id / hf:// repo pulled on the fly when not cached; a cached entry's files are checked against
    their sha256 first."""
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
        entry = find(spec, model_id)
    except NotCached:
        pulled = ensure(spec, model_id)  # from ADAPT_REGISTRY, or the hf:// repo it names
        if pulled is None:
            raise
        return pulled
    verify(entry)
    return entry.path
