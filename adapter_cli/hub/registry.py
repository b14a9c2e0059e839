"""Registries: where shared adapters live. A registry is an ``index.json`` plus archives, reached as

- a directory (``./hub``, ``file:///srv/hub``): publishing takes a lock file, writes the archive, then
  replaces the index by rename, so readers never see half an index and racing publishers both land;
- an HTTP(S) base URL (``https://example.org/hub``): read with GET; publishing uses PUT with
  ``If-Match`` on the index's ETag and retries on 412, which any server with conditional writes
  (``adapt hub serve --writable``, WebDAV, object stores) makes safe against racing publishers;
- a Hugging Face repo (``hf://org/repo``, ``hf://datasets/org/repo``): see ``hub.hf``.

Layout (all paths relative to the registry)::

    index.json                              {"format": "adapt.registry", "adapters": [record, ...]}
    archives/<author>/<task>_<dataset>_<model>_<version>-<sha8>.tar.gz
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import AdaptError, ArtifactError, UsageError, positive_env
from ..fsutil import write_bytes_atomic
from ..reporting import log
from .card import Card, Query, parse_query, version_key

INDEX = "index.json"
INDEX_FORMAT = "adapt.registry"


class RegistryError(AdaptError):
    """A registry that cannot be reached or read (exit 1: the work failed, the input may be fine)."""


class IndexConflict(Exception):
    """Somebody else changed the index between our read and our write; read again and retry."""


def empty_index() -> dict[str, Any]:
    return {"format": INDEX_FORMAT, "format_version": 1, "adapters": []}


def max_index_bytes() -> int:
    """The largest index read (ADAPT_MAX_INDEX_MB, default 64 MB: about 50,000 adapters). An index is
    parsed in memory, so a registry must not be able to make a reader hold gigabytes."""
    return int(positive_env("ADAPT_MAX_INDEX_MB", "64", "megabytes") * 1_000_000)


def too_large(size: int, where: str, at_least: bool = False) -> RegistryError:
    """The failure (exit 1) for an index over the cap: the registry answered, but with too much."""
    # A body without a length is only known to pass the cap, by however much the last chunk happened to
    # carry; naming that chance amount would make the message differ from run to run.
    size_words = "goes past" if at_least else f"is {size / 1e6:.1f} MB, more than"
    return RegistryError(f"the index of {where} {size_words} the {max_index_bytes() / 1e6:g} MB allowed; refusing "
                         "it (raise ADAPT_MAX_INDEX_MB if the registry is really that large)")


def parse_index(raw: bytes, where: str, strict: bool = False) -> dict[str, Any]:
    """An index from bytes nobody vouches for. A malformed record is skipped with one warning (one broken
    record must not take a registry down), or, when ``strict`` (an upload to a server), refused."""
    from ..jsonio import load_json

    if len(raw) > max_index_bytes():
        raise too_large(len(raw), where)
    data = load_json(raw, f"the index of {where}", RegistryError)
    if not isinstance(data, dict) or data.get("format") != INDEX_FORMAT or not isinstance(data.get("adapters"), list):
        raise RegistryError(f"{where} does not hold an adapt registry index ({INDEX})")
    problems = [(i, record_problem(r)) for i, r in enumerate(data["adapters"])]
    bad = [(i, p) for i, p in problems if p is not None]
    if bad and strict:
        raise RegistryError(f"{where}: record {bad[0][0]} is malformed: {bad[0][1]}")
    if bad:
        log.warning(f"{where}: skipped {len(bad)} malformed index record(s)")
    data["adapters"] = [r for (i, p), r in zip(problems, data["adapters"]) if p is None]
    return data


def read_index_file(path: Path, where: str) -> dict[str, Any]:
    """An index file, its size checked before it is read into memory."""
    size = path.stat().st_size
    if size > max_index_bytes():
        raise too_large(size, where)
    return parse_index(path.read_bytes(), where)


def record_problem(record: Any) -> str | None:
    """What is wrong with one index record, or None. Records come from the network: every field that is
    used for a path, a comparison, a page or a command is checked."""
    from .card import SHA256_RE, common_problem, format_id

    if not isinstance(record, dict):
        return "not an object"
    problem = common_problem(record)
    if problem:
        return problem
    if record.get("id") != format_id(record["task"], record["dataset"], record["author"]):
        return "id does not match task, dataset and author"
    archive = record.get("archive")
    if not isinstance(archive, str) or not archive.startswith("archives/") or ".." in archive.split("/") \
            or not archive.endswith(".tar.gz") or "\\" in archive:
        return "archive must be a path under archives/"
    if not isinstance(record.get("sha256"), str) or not SHA256_RE.fullmatch(record["sha256"]):
        return "sha256 must be 64 hex digits"
    if not isinstance(record.get("size"), int) or record["size"] < 0:
        return "size must be a number of bytes"
    return None


def archive_path(card: Card, digest: str) -> str:
    return archive_path_of({**card.index_record(), "sha256": digest})


def archive_path_of(record: dict[str, Any]) -> str:
    """Where a record's archive lives: every part comes from checked fields, and the sha256 is in the name,
    so other bytes can never take a published archive's place."""
    model = re.sub(r"[^A-Za-z0-9_.\-]", "-", record["base_model"]["id"].replace("/", "--"))
    return (f"archives/{record['author']}/{record['task']}_{record['dataset']}_{model}_{record['architecture']}_"
            f"{record['version']}-{record['sha256'][:8]}.tar.gz")


def published_key(record: dict[str, Any]) -> tuple[str, str, str, str]:
    """What never changes once published: one version of one variant (id, base model, architecture)."""
    return (*variant(record), str(record.get("version")))


def record_for(card: Card, digest: str, size: int) -> dict[str, Any]:
    return {**card.index_record(), "archive": archive_path(card, digest), "sha256": digest, "size": size,
            "published": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def add_record(index: dict[str, Any], record: dict[str, Any], force: bool) -> bool:
    """Put ``record`` into ``index``; False if this exact archive is already there. A version is immutable:
    publishing other bytes under the same id, base model and version is refused (unless ``force``)."""
    same = [r for r in index["adapters"] if published_key(r) == published_key(record)]
    if any(r.get("sha256") == record["sha256"] for r in same):
        return False
    if same and not force:
        raise UsageError(f"{record['id']} ({record.get('architecture')}) version {record['version']} for "
                         f"{record['base_model']['id']} is already published with other content; publish a new "
                         "`version` (or `force` to replace it)")
    index["adapters"] = [r for r in index["adapters"] if r not in same] + [record]
    index["updated"] = record["published"]
    return True


@dataclass
class Published:
    record: dict[str, Any]
    registry: str
    new: bool


class Registry:
    """What every kind of registry does; subclasses supply the storage."""

    spec: str

    def read_index(self) -> dict[str, Any]:
        return self._read_index()[0]

    def _read_index(self) -> tuple[dict[str, Any], Any]:
        """The index and a token for conditional replacement (None if there is no index yet)."""
        raise NotImplementedError

    def fetch(self, record: dict[str, Any], dest: Path) -> None:
        """Download ``record``'s archive to ``dest``, refusing more bytes than it declares."""
        raise NotImplementedError

    def url_of(self, record: dict[str, Any]) -> str:
        raise NotImplementedError

    def publish(self, archive: Path, card: Card, digest: str, *, force: bool = False) -> Published:
        from .card import check_card

        check_card(card, "publish")  # the validator pull uses: nothing goes out that nobody could pull
        record = record_for(card, digest, archive.stat().st_size)
        problem = record_problem(record)
        if problem:
            raise UsageError(f"cannot publish {card.id}: {problem} (adapt pull would refuse this record)")
        return self._publish(archive, record, force)

    def _publish(self, archive: Path, record: dict[str, Any], force: bool) -> Published:
        raise NotImplementedError



class DirectoryRegistry(Registry):
    def __init__(self, root: Path, spec: str) -> None:
        self.root, self.spec = root, spec

    def _read_index(self) -> tuple[dict[str, Any], Any]:
        path = self.root / INDEX
        if not path.is_file():
            if not self.root.is_dir():
                raise RegistryError(f"registry {self.spec} does not exist (no such directory)")
            return empty_index(), None
        try:
            return read_index_file(path, self.spec), None
        except OSError as exc:
            raise RegistryError(f"cannot read the index of {self.spec}: {exc.strerror or exc}") from None

    def fetch(self, record: dict[str, Any], dest: Path) -> None:
        source = self._inside(record["archive"])
        if not source.is_file():
            raise RegistryError(f"registry {self.spec} lists {record['archive']} but the file is missing")
        try:
            copy_limited(source.open("rb"), dest, int(record.get("size") or 0), self.url_of(record))
        except OSError as exc:
            raise RegistryError(f"cannot read {record['archive']} from {self.spec}: {exc.strerror or exc}") from None

    def url_of(self, record: dict[str, Any]) -> str:
        return str(self._inside(record["archive"]))

    def _inside(self, relative: str) -> Path:
        target = (self.root / relative).resolve()
        if not target.is_relative_to(self.root.resolve()):
            raise RegistryError(f"registry {self.spec} points outside itself ({relative}); refusing it")
        return target

    def _publish(self, archive: Path, record: dict[str, Any], force: bool) -> Published:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            with _locked(self.root / ".lock", self.spec):
                index, _ = self._read_index()
                new = add_record(index, record, force)
                if new:
                    target = self._inside(record["archive"])
                    target.parent.mkdir(parents=True, exist_ok=True)
                    existed = target.exists()
                    write_bytes_atomic(target, archive.read_bytes())
                    try:
                        write_bytes_atomic(self.root / INDEX, dump_index(index))
                    except OSError:
                        if not existed:
                            target.unlink(missing_ok=True)  # no archive without an index entry
                        raise
        except OSError as exc:
            raise RegistryError(f"cannot publish to {self.spec}: {exc.strerror or exc}") from None
        return Published(record, self.spec, new)


def dump_index(index: dict[str, Any]) -> bytes:
    index["adapters"].sort(key=lambda r: (r["id"], r["base_model"]["id"], version_key(r["version"])))
    return (json.dumps(index, indent=1, sort_keys=True) + "\n").encode()


@contextmanager
def _locked(lock_path: Path, spec: str, timeout: float = 60.0) -> Iterator[None]:
    """An exclusive lock on the registry for one read-modify-write of its index (released if we die)."""
    import fcntl

    with lock_path.open("a") as fh:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise RegistryError(f"registry {spec} stayed locked by another publisher for {timeout:.0f} s; "
                                        "try again") from None
                time.sleep(0.05)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def copy_limited(source: Any, dest: Path, expected: int, label: str, progress: Any = None) -> None:
    """Stream ``source`` into ``dest``; more bytes than ``expected`` or fewer are a failed download."""
    from .archive import max_bytes

    limit = expected or max_bytes()
    written = 0
    with source, dest.open("wb") as out:
        for chunk in iter(lambda: source.read(1 << 20), b""):
            written += len(chunk)
            if written > limit:
                raise ArtifactError(f"refusing {label}: larger than its declared {limit} bytes")
            out.write(chunk)
            if progress:
                progress(len(chunk))
    if expected and written != expected:
        raise RegistryError(f"refusing {label}: got {written} of {expected} bytes (truncated download); "
                            "nothing was kept, try again")


# ------------------------------------------------------------------------------------------- search

def search_records(records: list[dict[str, Any]], query: str | None = None, **filters: Any) -> list[dict[str, Any]]:
    """Records matching every given filter (exact, case-insensitive; ``model`` also matches the end of an
    id such as bert-base-uncased for google-bert/bert-base-uncased) and the free text, latest version first."""
    def field(r: dict[str, Any], key: str) -> str:
        value = r.get("base_model", {}).get("id") if key == "model" else r.get(key)
        return "" if value is None else str(value).lower()

    out = []
    for r in records:
        ok = True
        for key, want in filters.items():
            if want is None:
                continue
            have, want_s = field(r, key), str(want).lower()
            if key == "reduction_factor":
                ok = ok and have != "" and float(have) == float(want)
            elif key == "model":
                ok = ok and (have == want_s or have.endswith("/" + want_s) or want_s.endswith("/" + have))
            else:
                ok = ok and have == want_s
        if ok and query:
            text = " ".join(str(r.get(k) or "") for k in ("id", "name", "task", "dataset", "author", "description",
                                                          "architecture")).lower() + " " + field(r, "model")
            ok = all(word in text for word in query.lower().split())
        if ok:
            out.append(r)
    out.sort(key=lambda r: version_key(r["version"]), reverse=True)
    return sorted(out, key=variant)  # stable: newest version first


def variant(record: dict[str, Any]) -> tuple[str, str, str]:
    """What one adapter is, across its versions: the same id may exist for several base models and, as on
    AdapterHub, in several architectures (sentiment/sst-2@ukp as pfeiffer and as houlsby)."""
    return record["id"], record["base_model"]["id"], str(record.get("architecture"))


def latest(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One record per variant: its highest version."""
    best: dict[tuple[str, str, str], dict[str, Any]] = {}
    for r in records:
        key = variant(r)
        if key not in best or version_key(r["version"]) > version_key(best[key]["version"]):
            best[key] = r
    return list(best.values())


def resolve(records: list[dict[str, Any]], text: str, model_id: str | None, where: str,
            architecture: str | None = None) -> dict[str, Any]:
    """The one record ``text`` names (an id, part of one, or a name prefix) for ``model_id`` (and
    ``architecture``, when the id exists in several).

    A name matching several adapters lists them; one published only for other base models is refused
    with those models named.
    """
    q: Query = parse_query(text)
    if q.version:
        records = [r for r in records if r.get("version") == q.version]
    if architecture:
        records = [r for r in records if str(r.get("architecture")).lower() == architecture.lower()]

    def matches(r: dict[str, Any]) -> bool:
        if q.structured or "@" in q.text:
            return ((q.task is None or r["task"] == q.task) and (q.dataset is None or r["dataset"] == q.dataset)
                    and (q.author is None or r["author"] == q.author))
        return False

    found = [r for r in records if matches(r)]
    if not found and not q.structured:
        name = q.text
        exact = [r for r in records if name in (r["dataset"], str(r.get("name", "")).lower())]
        found = exact or [r for r in records if r["dataset"].startswith(name) or
                          str(r.get("name", "")).lower().startswith(name) or r["id"].startswith(name)]
    if not found:
        raise UsageError(f"no adapter {text!r} in {where}; try `adapt search` to see what it holds")
    if model_id is not None:
        mine = [r for r in found if same_model(r["base_model"]["id"], model_id)]
        if not mine:
            others = sorted({r["base_model"]["id"] for r in found})
            raise UsageError(f"adapter {text!r} in {where} is published for {', '.join(others)}, not for {model_id}; "
                             "adapters only work with the base model they were trained on")
        found = mine
    found = latest(found)
    if len(found) > 1:
        listed = ", ".join(f"{r['id']} ({r['base_model']['id']}, {r.get('architecture')})"
                           for r in sorted(found, key=variant))
        raise UsageError(f"{text!r} is ambiguous in {where}: it matches {listed}; give the full id, `model` or `arch`")
    return found[0]


def same_model(a: str, b: str) -> bool:
    from ..defaults import canonical_model_id

    return canonical_model_id(a) == canonical_model_id(b)
