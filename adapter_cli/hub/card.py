"""The card of a shared adapter: what it is, what it was trained on and for which base model, who made it,
and the sha256 of every file. One card travels inside each archive (``adapt-card.json``) and a copy of its
searchable part sits in the registry index.

Identifiers follow AdapterHub's hub: ``<task>/<dataset>@<author>``, e.g. ``sentiment/sst-2@ukp``, where the
task is a category and the dataset the data the adapter was trained on.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UsageError

CARD = "adapt-card.json"
CARD_FORMAT = "adapt.card"
CARD_VERSION = 1

_PART = r"[a-z0-9][a-z0-9_.\-]{0,95}"  # bounded: every part ends up in a file name
SLUG = re.compile(_PART)
ID_RE = re.compile(rf"(?:(?P<task>{_PART})/)?(?P<dataset>{_PART})?(?:@(?P<author>{_PART}))?")
VERSION_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,39}")


def slug(text: str, what: str) -> str:
    """A lower-case identifier part; anything else is refused rather than silently rewritten."""
    value = str(text).strip().lower()
    if not SLUG.fullmatch(value):
        raise UsageError(f"{what} {text!r} must be {PATH_PARTS['slug'][1]}")
    return value


# Every value that becomes part of a file or directory name (id parts, architecture, version, name) is
# checked by ``path_part`` where it enters (an option, a card, an index record); the patterns exclude '/',
# '\\', a leading '.' and overlong names, so none can climb out of the directory it is written to.
PATH_PARTS: dict[str, tuple[re.Pattern[str], str]] = {
    "slug": (SLUG, "lower-case letters, digits, '.', '_' or '-' (starting with a letter or digit, at most 96)"),
    "version": (VERSION_RE, "at most 40 letters, digits, '.', '_' or '-' (starting with a letter or digit), "
                            "e.g. 2 or 1.1"),
}


def path_part(value: Any, what: str, kind: str = "slug") -> str:
    """``value`` if it is a safe ``kind`` of name part, else one UsageError line naming ``what``."""
    pattern, rule = PATH_PARTS[kind]
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise UsageError(f"{what} {value!r} must be {rule}")
    return value


def inside(root: Path, name: str, what: str) -> Path:
    """``root / name``, refused unless it resolves inside ``root`` (a second line of defence behind
    ``path_part``: a symlinked or odd name must not write elsewhere)."""
    target = root / name
    if not target.resolve().is_relative_to(root.resolve()) or target.resolve() == root.resolve():
        raise UsageError(f"{what} {name!r} would be written outside {root}; use a plain name")
    return target


def _first_line(exc: BaseException) -> str:
    text = (str(exc).splitlines() or [type(exc).__name__])[0]
    return text if len(text) <= 120 else text[:120] + "…"


def format_id(task: str, dataset: str, author: str) -> str:
    return f"{task}/{dataset}@{author}"


@dataclass(frozen=True)
class Query:
    """A parsed identifier or name, possibly partial: ``sst-2``, ``sst-2@ukp``, ``sentiment/sst-2``..."""

    text: str
    task: str | None = None
    dataset: str | None = None
    author: str | None = None
    version: str | None = None

    @property
    def structured(self) -> bool:
        return bool(self.task or self.author)


def parse_query(text: str) -> Query:
    """Split ``task/dataset@author[:version]``; every part is optional but something must be given."""
    raw = text.strip()
    version = None
    if ":" in raw:
        raw, version = raw.rsplit(":", 1)
        if not VERSION_RE.fullmatch(version):
            raise UsageError(f"bad version {version!r} in {text!r}; write ID:VERSION, e.g. sentiment/sst-2@ukp:1")
    m = ID_RE.fullmatch(raw.lower())
    if not raw or not m or not (m["dataset"] or m["task"] or m["author"]):
        raise UsageError(f"{text!r} is not an adapter identifier; write task/dataset@author "
                         "(e.g. sentiment/sst-2@ukp), a part of it, or an adapter name")
    return Query(text=raw.lower(), task=m["task"], dataset=m["dataset"], author=m["author"], version=version)


@dataclass
class BaseModelRef:
    id: str
    model_type: str
    hidden_size: int
    num_layers: int | None = None
    revision: str | None = None


@dataclass
class Card:
    name: str
    task: str
    dataset: str
    author: str
    version: str
    base_model: BaseModelRef
    kind: str = "task"                     # task | language (AdapterHub's text_task / text_lang)
    language: str | None = None            # a language adapter's language (en, de, ...)
    trained_under: dict[str, Any] | None = None  # a task adapter's language adapter: {name, language, source}
    method: str = "bottleneck"             # bottleneck or lora (the LoRA family: lora, ia3, dora, vera)
    architecture: str = "custom"           # the preset the config equals: pfeiffer, houlsby, lora, ...
    reduction_factor: float | None = None  # bottleneck adapters
    non_linearity: str | None = None       # bottleneck adapters
    rank: int | None = None                # LoRA, DoRA and VeRA (absent from older cards: None)
    parameters: int | None = None
    config: dict[str, Any] = field(default_factory=dict)
    head: dict[str, Any] | None = None     # {type, num_labels, labels} when a prediction head ships with it
    metrics: dict[str, float] = field(default_factory=dict)
    main_metric: str | None = None
    description: str = ""
    citation: str = ""
    license: str | None = None
    url: str | None = None
    files: dict[str, dict[str, Any]] = field(default_factory=dict)   # name -> {sha256, size}
    created: str | None = None
    adapt_version: str | None = None

    @property
    def id(self) -> str:
        return format_id(self.task, self.dataset, self.author)

    def to_dict(self) -> dict[str, Any]:
        return {"format": CARD_FORMAT, "format_version": CARD_VERSION, "id": self.id, **asdict(self)}

    def index_record(self) -> dict[str, Any]:
        """What the registry index keeps: everything but the per-file hashes (the archive hash covers them)."""
        record = self.to_dict()
        for key in ("format", "format_version", "files", "config"):
            record.pop(key)
        return record

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str) -> Card:
        """A card from JSON that nobody vouches for: every field that reaches a path, a page or a command
        line is checked, so a hostile card is refused with one line instead of being used."""
        if not isinstance(data, dict) or data.get("format") != CARD_FORMAT:
            raise UsageError(f"{source} is not an adapter card ({CARD_FORMAT})")
        if not isinstance(data.get("format_version"), int):
            raise UsageError(f"{source} is not a valid adapter card: format_version must be a number")
        if data["format_version"] > CARD_VERSION:
            raise UsageError(f"{source} was written by a newer adapt (card version {data['format_version']}); "
                             "upgrade adapt")
        problem = card_problem(data)
        if problem:
            raise UsageError(f"{source} is not a valid adapter card: {problem}")
        fields = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        fields["base_model"] = BaseModelRef(**{k: v for k, v in data["base_model"].items()
                                               if k in BaseModelRef.__dataclass_fields__})
        return cls(**fields)


def version_key(version: str) -> tuple[Any, ...]:
    """Order versions naturally: 2 < 10, 1.2 < 1.10; text parts sort after numbers."""
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"[.\-_]", version))


NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_\-]{0,63}")
MODEL_ID_RE = re.compile(r"[A-Za-z0-9_.\-]+(/[A-Za-z0-9_.\-]+)*")
SHA256_RE = re.compile(r"[0-9a-f]{64}")
LANGUAGE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_\-]{0,31}")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def common_problem(data: dict[str, Any]) -> str | None:
    """What is wrong with the fields a card and an index record share, or None."""
    for key in ("task", "dataset", "author"):
        if not isinstance(data.get(key), str) or not SLUG.fullmatch(data[key]):
            return f"{key} must be a lower-case identifier"
    if not isinstance(data.get("architecture"), str) or not SLUG.fullmatch(data["architecture"]):
        return "architecture must be a lower-case identifier"
    if not isinstance(data.get("name"), str) or not NAME_RE.fullmatch(data["name"]):
        return "name must be letters, digits, '_' or '-'"
    if not isinstance(data.get("version"), str) or not VERSION_RE.fullmatch(data["version"]):
        return "version must be a short string of letters, digits, '.', '_' or '-'"
    if data.get("kind", "task") not in ("task", "language"):
        return "kind must be task or language"
    language = data.get("language")
    if language is not None and not (isinstance(language, str) and LANGUAGE_RE.fullmatch(language)):
        return "language must be a short language code"
    under = data.get("trained_under")
    if under is not None and not (isinstance(under, dict) and isinstance(under.get("name"), str)
                                  and NAME_RE.fullmatch(under["name"]) and isinstance(under.get("language"), str)
                                  and LANGUAGE_RE.fullmatch(under["language"])):
        return "trained_under must name the language adapter (name, language)"
    base = data.get("base_model")
    if not isinstance(base, dict) or not isinstance(base.get("id"), str) or len(base["id"]) > 200 \
            or not (MODEL_ID_RE.fullmatch(base["id"]) or base["id"].startswith("/")) or any(c.isspace() for c in base["id"]):
        return "base_model.id must be a model id"
    if not isinstance(base.get("model_type"), str) or not SLUG.fullmatch(base["model_type"]) \
            or not isinstance(base.get("hidden_size"), int):
        return "base_model needs model_type and hidden_size"
    metrics = data.get("metrics") or {}
    if not isinstance(metrics, dict) or not all(isinstance(k, str) and _number(v) for k, v in metrics.items()):
        return "metrics must map names to numbers"
    if data.get("reduction_factor") is not None and not _number(data["reduction_factor"]):
        return "reduction_factor must be a number"
    rank = data.get("rank")
    if rank is not None and (not isinstance(rank, int) or isinstance(rank, bool) or rank < 1):
        return "rank must be a whole number of at least 1"
    head = data.get("head")
    labels = (head.get("labels") or []) if isinstance(head, dict) else None
    if head is not None and (not isinstance(labels, list) or not all(isinstance(x, str) for x in labels)):
        return "head.labels must be strings"
    for key in ("description", "citation", "license", "url", "main_metric", "non_linearity", "method"):
        if data.get(key) is not None and not isinstance(data[key], str):
            return f"{key} must be text"
    if data.get("url") and not str(data["url"]).startswith(("https://", "http://")):
        return "url must be an http(s) address"
    return None


def card_problem(data: dict[str, Any]) -> str | None:
    problem = common_problem(data)
    if problem:
        return problem
    files = data.get("files")
    if not isinstance(files, dict) or not all(
            isinstance(v, dict) and isinstance(v.get("sha256"), str) and SHA256_RE.fullmatch(v["sha256"])
            and _number(v.get("size")) and isinstance(v["size"], int) and v["size"] >= 0 for v in files.values()):
        return "files must map names to {sha256, size}"
    if not isinstance(data.get("config", {}), dict):
        return "config must be an object"
    return None


def check_card(card: Card, what: str) -> None:
    """Refuse, before anything is written, a card that ``adapt pull`` would refuse: pack and publish use
    the very validator pull uses, so nobody publishes what nobody can install."""
    problem = card_problem(card.to_dict())
    if problem:
        raise UsageError(f"cannot {what} {card.id}: {problem} (adapt pull would refuse this card)")
