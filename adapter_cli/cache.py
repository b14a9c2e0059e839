"""The local cache of trained adapters, keyed by base model.

Layout (root: ``$ADAPT_CACHE``, else the platform's user cache directory, e.g. ~/.cache/adapt)::

    adapters/<model key>/<entry id>                      a symbolic link to the entry's current version
    adapters/<model key>/.store/<entry id>/v-<token>/    adapter (+ head) files in our format, and entry.json
    adapters/<model key>/.store/<entry id>/.lock         held (flock) by the one process writing the entry
    models/<model key>/                                  a base model adapt made (MT-A's fine-tuned base,
                                                         id ``<base>+mta-<hash>``); its adapters are keyed by it

``entry.json`` records the name, task, method, config, dev metrics, versions, the run it came from and
the sha256 of every file. Commands take an adapter by directory or by cache name for the chosen base
model: an entry id, an adapter name or a task name; a name matching several entries lists them.

An entry appears whole or not at all: a writer takes the entry's lock, writes a new version completely,
flushes it to disk and only then replaces the link, in one rename; a kill at any point leaves either the
old entry or the new one. What a killed writer left behind (a half-written version, a replaced one) is
removed by the next writer of that entry, which can tell it is dead because it holds the lock. Names
starting with "." are never entries. Entries written before the store (plain directories) are read as
they are and become links when next written; where symbolic links cannot be made, the version directory
itself is moved into place, the old one moved aside first and put back by the next writer or reader if the
writer died in between.
"""

from __future__ import annotations

import errno
import json
import os
import re
import secrets
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .defaults import cache_root, model_key  # one rule, in foundations: resolve_model reads it too
from .errors import AdaptError, ArtifactError, UsageError, disk_full
from .fsutil import dump_json, file_sha256, fsync_dir, fsync_tree

ENTRY = "entry.json"


class NotCached(UsageError):
    """No cache entry of that name for this base model (there may be one in a registry)."""




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
                "main_metric": d.get("main_metric"), "kind": d.get("kind"), "adapter_kind": d.get("adapter_kind"),
                "language": d.get("language"), "trained_under": d.get("trained_under"),
                "created": d.get("created"), "path": str(self.path),
                "bytes": sum(f.stat().st_size for f in self.path.iterdir() if f.is_file())}


def entries(model_id: str | None = None) -> list[Entry]:
    root = cache_root() / "adapters"
    if not root.is_dir():
        return []
    keys = [model_key(model_id)] if model_id else sorted(p.name for p in root.iterdir()
                                                         if p.is_dir() and not p.name.startswith("."))
    out = []
    for key in keys:
        folder = root / key
        if not folder.is_dir():
            continue
        with suppress(OSError):  # a cache this user cannot write: list what is there
            _tidy(folder, orphans_only=True)
        for path in sorted(folder.iterdir()):
            if path.name.startswith("."):
                continue  # the store, or a temporary a killed writer of an older adapt left: never an entry
            try:
                data = json.loads((path / ENTRY).read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError):
                continue  # a damaged entry is skipped, not fatal
            if isinstance(data, dict):
                out.append(Entry(path.name, path, data))
    return out


STORE = ".store"
LOCK = ".lock"
ENTRY_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@\-]{0,199}")
# what older adapt versions left beside an entry when killed while writing it
_LEGACY = re.compile(r"\.(?P<id>.+)\.(?:tmp-[0-9a-z_]+|old-\d+)")


@contextmanager
def _locked(store: Path, wait: bool = True) -> Iterator[bool]:
    """Hold the writer lock of one entry (``store``/.lock): writers of one name take turns, and whoever
    holds it knows every other writer of that name is dead. Yields False when ``wait`` is off and another
    process holds it, or where there are no locks (then nothing may be swept)."""
    try:
        import fcntl
    except ImportError:
        yield False
        return
    while True:
        store.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(store / LOCK, os.O_RDWR | os.O_CREAT, 0o666)
        except FileNotFoundError:
            continue  # the entry was removed between the two lines: make its directory again
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            if os.path.samestat(os.fstat(fd), os.stat(store / LOCK)):
                break
        except FileNotFoundError:
            pass
        except BlockingIOError:  # a live writer has it (only without ``wait``)
            os.close(fd)
            yield False
            return
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)  # the entry was removed while this process waited on its lock: take the new one
    try:
        yield True
    finally:
        os.close(fd)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        path.unlink(missing_ok=True)


def _current(link: Path) -> str | None:
    """The version directory ``link`` points to (None for a plain directory or nothing)."""
    return Path(os.readlink(link)).name if link.is_symlink() else None


def _sweep(folder: Path, entry_id: str) -> None:
    """Remove what killed writers of ``entry_id`` left; the caller holds its lock, so none of them lives."""
    link, store = folder / entry_id, folder / STORE / entry_id
    legacy = [p for p in folder.iterdir() if (m := _LEGACY.fullmatch(p.name)) and m["id"] == entry_id]
    if not os.path.lexists(link):  # a writer died between moving the old entry aside and putting the new one in
        aside = sorted([*store.glob("old-*"), *(p for p in legacy if ".old-" in p.name)],
                       key=lambda p: p.lstat().st_mtime_ns)
        if aside:
            os.replace(aside[-1], link)
    keep = {LOCK, _current(link)}
    for path in [*(p for p in store.iterdir() if p.name not in keep), *legacy]:
        _remove(path)


def _drop_store(store: Path) -> None:
    """Remove the (swept) store of an entry that no longer exists; the caller holds its lock."""
    (store / LOCK).unlink(missing_ok=True)  # a writer waiting on it notices, and takes a new lock (see _locked)
    with suppress(OSError):
        store.rmdir()


def _tidy(folder: Path, orphans_only: bool = False) -> None:
    """Sweep the entries of ``folder`` that a killed writer left untidy, and drop the stores of entries that
    are gone. Readers (``orphans_only``) only put back an entry a killed writer had moved aside, so that
    none is missed. Entries being written now are skipped (their lock is held)."""
    store = folder / STORE
    aside: set[str] = set()  # ids with a version moved aside: put back if the entry itself is missing
    untidy: set[str] = set()
    for path in folder.iterdir():
        if m := _LEGACY.fullmatch(path.name):
            (aside if ".old-" in path.name else untidy).add(m["id"])
    for path in store.iterdir() if store.is_dir() else []:
        names = {p.name for p in path.iterdir()} if path.is_dir() else set()
        if any(n.startswith("old-") for n in names):
            aside.add(path.name)
        if names - {LOCK, _current(folder / path.name)} or not os.path.lexists(folder / path.name):
            untidy.add(path.name)
    dirty = {i for i in aside if not os.path.lexists(folder / i)} if orphans_only else aside | untidy
    for entry_id in sorted(i for i in dirty if ENTRY_ID.fullmatch(i)):
        with _locked(store / entry_id, wait=False) as held:
            if held:
                _sweep(folder, entry_id)
                if not os.path.lexists(folder / entry_id):
                    _drop_store(store / entry_id)


def _write_version(source: Path, store: Path, entry_id: str, model_id: str,
                   info: dict[str, Any]) -> tuple[Path, dict[str, Any]]:
    """A complete new version of an entry in ``store``, flushed to disk; not yet visible."""
    version = store / f"v-{secrets.token_hex(8)}"
    os.mkdir(version)
    for f in sorted(Path(source).iterdir()):
        if f.is_file():
            shutil.copy2(f, version / f.name)
    files = {f.name: file_sha256(f) for f in sorted(version.iterdir()) if f.is_file() and f.name != ENTRY}
    data = {**info, "id": entry_id, "base_model": model_id, "files": files,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    (version / ENTRY).write_text(dump_json(data), encoding="utf-8")
    fsync_tree(version)
    fsync_dir(store)
    return version, data


def _no_symlinks(exc: OSError) -> bool:
    return isinstance(exc, PermissionError) or exc.errno in (errno.EPERM, errno.ENOSYS, errno.EOPNOTSUPP) or \
        getattr(exc, "winerror", None) == 1314  # ERROR_PRIVILEGE_NOT_HELD


def _publish(folder: Path, entry_id: str, version: Path) -> Path | None:
    """Make ``version`` the entry: one rename of a new link over the old one. Returns what it replaced."""
    link, store = folder / entry_id, version.parent
    replaced = store / _current(link) if _current(link) else None
    if link.is_dir() and not link.is_symlink():  # an entry from before the store: moved aside, put back if we die
        replaced = store / f"old-{secrets.token_hex(6)}"
        os.replace(link, replaced)
    pointer = store / f"link-{secrets.token_hex(6)}"
    try:
        os.symlink(f"{STORE}/{entry_id}/{version.name}", pointer)  # relative: the cache can be moved
    except (NotImplementedError, OSError) as exc:
        if isinstance(exc, OSError) and not _no_symlinks(exc):
            raise
        os.replace(version, link)  # no symbolic links here (FAT, Windows without the right): the directory
    else:
        os.replace(pointer, link)
    fsync_dir(folder)
    return replaced


def put_base_model(source: Path, base_id: str) -> Path:
    """A base model adapt made (MT-A's fine-tuned base) as a model directory of its own in the cache,
    ``models/<key>``, whole or not at all; the same id means the same weights, so one already there stays."""
    from .fsutil import atomic_directory

    target = cache_root() / "models" / model_key(base_id)
    if (target / "config.json").is_file():
        return target
    try:
        with atomic_directory(target) as tmp:
            for path in Path(source).iterdir():
                if path.is_file():
                    shutil.copy2(path, tmp / path.name)
    except OSError as exc:
        raise disk_full(exc, f"the base model {base_id}", f"free some space in {cache_root()} and run it again") or \
            ArtifactError(f"cannot write the base model {target}: {exc.strerror or exc}") from None
    return target


def base_models() -> list[dict[str, Any]]:
    """The base models adapt made (MT-A's fine-tuned bases) in the cache: id, the base it was fine-tuned from,
    how many adapters are cached under it, size and directory."""
    from .defaults import recorded_base_id

    root = cache_root() / "models"
    found = []
    for folder in sorted(root.iterdir()) if root.is_dir() else []:
        config = folder / "config.json"
        base_id = recorded_base_id(config) if not folder.name.startswith(".") and config.is_file() else None
        if base_id is None:  # a directory being written (atomic_directory) or not one adapt made
            continue
        source = None
        with suppress(OSError, ValueError):
            source = json.loads(config.read_text(encoding="utf-8")).get("adapt_derived_from")
        found.append({"id": base_id, "derived_from": source, "adapters": len(entries(base_id)),
                      "bytes": sum(f.stat().st_size for f in folder.iterdir() if f.is_file()), "path": str(folder)})
    return found


def delete_base_model(base_id: str) -> list[Entry]:
    """Remove a cached base model with the adapters cached under it (they load into no other base): the model
    first, its directory renamed aside in one step (nothing can load it after that), then the adapters, then
    their folder."""
    target = cache_root() / "models" / model_key(base_id)
    aside = target.with_name(f".gone-{secrets.token_hex(6)}")
    try:
        os.replace(target, aside)
    except OSError as exc:
        raise AdaptError(f"cannot remove {target}: {exc.strerror or exc}") from None
    shutil.rmtree(aside, ignore_errors=True)
    removed = entries(base_id)
    for entry in removed:
        delete(entry)
    shutil.rmtree(cache_root() / "adapters" / model_key(base_id), ignore_errors=True)
    return removed


def put(source: Path, *, model_id: str, entry_id: str, info: dict[str, Any], overwrite: bool = True) -> Entry:
    """Copy an adapter (or head) directory into the cache, with entry.json: whole or not at all, one writer
    of a name at a time (the others wait their turn, and the last one's copy stays)."""
    if not ENTRY_ID.fullmatch(entry_id) or ".." in entry_id:
        raise UsageError(f"bad cache entry id {entry_id[:80]!r}: letters, digits, '_', '.', '@' and '-' only")
    root = (cache_root() / "adapters").resolve()
    folder = root / model_key(model_id)
    if not (folder / entry_id).absolute().is_relative_to(root):  # defence in depth: ids above cannot climb out
        raise UsageError(f"refusing to write outside the cache: {folder / entry_id}")
    try:
        with _locked(folder / STORE / entry_id) as held:
            if held:
                _sweep(folder, entry_id)
            if not overwrite and os.path.lexists(folder / entry_id):
                raise UsageError(f"{folder / entry_id} already exists; choose another path")
            try:
                version, data = _write_version(Path(source), folder / STORE / entry_id, entry_id, model_id, info)
                replaced = _publish(folder, entry_id, version)
            finally:
                if held:
                    with suppress(OSError):  # what is left now is removed by the next writer
                        _sweep(folder, entry_id)
        if not held and replaced is not None:  # no locks here: remove just what this writer replaced
            _remove(replaced)
        with suppress(OSError):
            _tidy(folder)
    except OSError as exc:
        raise disk_full(exc, f"the cache entry {entry_id}", f"free some space in {root} and run it again") or \
            ArtifactError(f"cannot write the cache entry {folder / entry_id}: {exc.strerror or exc}") from None
    return Entry(entry_id, folder / entry_id, data)


def delete(entry: Entry) -> None:
    """Remove a cache entry: its name first (one step: readers see it whole or not at all), then its files."""
    folder, store = entry.path.parent, entry.path.parent / STORE / entry.id
    try:
        with _locked(store):
            _sweep(folder, entry.id)  # first, so that nothing a killed writer moved aside comes back later
            if entry.path.is_dir() and not entry.path.is_symlink():  # an entry from before the store
                os.replace(entry.path, store / f"gone-{secrets.token_hex(6)}")
            else:
                entry.path.unlink(missing_ok=True)
            for path in store.iterdir():
                if path.name != LOCK:
                    _remove(path)
            _drop_store(store)
    except OSError as exc:
        raise AdaptError(f"cannot remove {entry.path}: {exc.strerror or exc}") from None


def _damaged(path: Path, data: dict[str, Any]) -> str | None:
    for name, digest in (data.get("files") or {}).items():
        if not (path / name).is_file() or file_sha256(path / name) != digest:
            return name
    return None


def verify(entry: Entry) -> None:
    bad = _damaged(entry.path, entry.data)
    if bad is not None:
        try:  # replaced by another process since it was read? then the new version is what is there
            fresh = json.loads((entry.path / ENTRY).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            fresh = entry.data
        if isinstance(fresh, dict) and fresh != entry.data:
            entry.data = fresh
            bad = _damaged(entry.path, fresh)
    if bad is not None:
        raise ArtifactError(f"cached adapter {entry.id} is damaged ({bad} changed or missing); "
                            f"remove it with `adapt cache rm {entry.id}` and extract it again")


# When a short name matches entries of several kinds, this order decides (an adapter is what most commands
# take; a fusion or a head baseline trained on the same task must not make the task name ambiguous).
KIND_ORDER = ("adapter", "fusion", "head")


def short_names(entry: Entry) -> set[str]:
    """The names an entry answers to besides its id: its adapter name, its task, TASK-CONFIG (e.g.
    mrpc-pfeiffer) and TASK-KIND (e.g. rte-fusion, mrpc-head)."""
    d = entry.data
    task = d.get("task")
    names = {entry.name, task} if task else {entry.name}
    if task and d.get("config_name"):
        names.add(f"{task}-{d['config_name']}")
    if task and d.get("kind"):
        names.add(f"{task}-{d['kind']}")
    return {n for n in names if n}


def _newest(found: list[Entry]) -> Entry:
    def age(e: Entry) -> tuple[str, int]:
        stamp = e.path / ENTRY
        return str(e.data.get("created") or ""), stamp.stat().st_mtime_ns if stamp.exists() else 0
    return max(found, key=age)


def find(query: str, model_id: str, kind: str | None = None) -> Entry:
    """The entry for ``query`` cached for ``model_id``: an entry id, a registry id, or a short name (see
    ``short_names``). A short name matching several entries means the most recent one of the wanted
    ``kind`` (else of the first kind in KIND_ORDER that has one), so `mrpc` is the newest mrpc adapter and
    `rte-fusion` the newest fusion trained on rte; their ids are in `adapt cache ls`."""
    mine = entries(model_id)
    exact = [e for e in mine if e.id == query] or \
        [e for e in mine if query in (e.data.get("registry_id"), f"{e.data.get('registry_id')}:{e.data.get('version')}",
                                      e.data.get("source"))]
    if len(exact) == 1:
        return exact[0]
    matches = exact or [e for e in mine if query in short_names(e)]
    if matches:
        for wanted in ([kind] if kind else []) + list(KIND_ORDER):
            of_kind = [e for e in matches if e.data.get("kind") == wanted]
            if of_kind:
                return _newest(of_kind)
        return _newest(matches)
    elsewhere = sorted({e.model for e in entries() if e.id == query or query in short_names(e)
                        or query == e.data.get("registry_id")})
    if elsewhere:
        raise NotCached(f"adapter {query!r} is cached for {', '.join(elsewhere)}, not for {model_id}; "
                         "it was trained on another base model")
    have = ", ".join(sorted(e.id for e in mine)) or "none"
    raise NotCached(f"no cached adapter {query!r} for {model_id} (cached for this model: {have}); "
                    "give a directory, train one with `adapt train` or pull one with `adapt pull`")


def with_id(entry_id: str, model_id: str | None = None) -> list[Entry]:
    """The entries with this exact id (for ``model_id``, or for every base model); one line when none."""
    found = [e for e in entries(model_id) if e.id == entry_id]
    if not found:
        raise UsageError(f"no cache entry {entry_id!r}" + (f" for {model_id}" if model_id else "") +
                         "; see `adapt cache ls`")
    return found
