"""The Hugging Face Hub, through huggingface_hub (downloads, its cache, tokens, offline mode, retries).

``hf://org/repo[@revision]`` (``hf://datasets/org/repo`` for a dataset repo) is either

- an adapt registry: the repo holds ``index.json`` and archives, and publishing is one commit that adds
  the archive and the new index, made with ``parent_commit`` so that a racing publisher's commit makes
  ours fail and retry from theirs; or
- one adapter in AdapterHub's format, as in AdapterHub's own repos (``hf://AdapterHub/bert-base-uncased-pf-mrpc``):
  pulled and cached as it is, read by adapt's AdapterHub reader.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import UsageError
from .registry import (
    INDEX,
    IndexConflict,
    Published,
    Registry,
    RegistryError,
    add_record,
    copy_limited,
    dump_index,
    empty_index,
    read_index_file,
)

RETRIES = 10
SPEC = re.compile(r"hf://(?:(?P<type>datasets|spaces)/)?(?P<repo>[\w.\-]+/[\w.\-]+)(?:@(?P<rev>[\w.\-/]+))?/?")


@dataclass
class HfRepo:
    repo_id: str
    repo_type: str | None
    revision: str | None

    @classmethod
    def parse(cls, spec: str) -> HfRepo:
        m = SPEC.fullmatch(spec)
        if not m:
            raise UsageError(f"bad Hugging Face reference {spec!r}; write hf://org/repo[@revision] "
                             "(hf://datasets/org/repo for a dataset repo)")
        kind = {"datasets": "dataset", "spaces": "space"}.get(m["type"] or "")
        return cls(m["repo"], kind, m["rev"])

    def download(self, filename: str, probe: bool = False) -> Path:
        """A file of the repo (through the HF cache). FileNotFoundError if the repo has no such file, or,
        when ``probe`` is set, if it cannot be known offline."""
        from huggingface_hub import hf_hub_download

        with _hub_errors(self, filename, probe):
            return Path(hf_hub_download(self.repo_id, filename, repo_type=self.repo_type, revision=self.revision,
                                        library_name="adapt"))

    def snapshot(self, patterns: list[str]) -> Path:
        from huggingface_hub import snapshot_download

        with _hub_errors(self, None):
            return Path(snapshot_download(self.repo_id, repo_type=self.repo_type, revision=self.revision,
                                          allow_patterns=patterns, library_name="adapt"))

    def url(self, filename: str) -> str:
        prefix = {"dataset": "datasets/", "space": "spaces/"}.get(self.repo_type or "", "")
        return f"https://huggingface.co/{prefix}{self.repo_id}/resolve/{self.revision or 'main'}/{filename}"


class _hub_errors:
    """huggingface_hub's exceptions as one line each."""

    def __init__(self, repo: HfRepo, filename: str | None, probe: bool = False, conflicts: bool = False) -> None:
        self.repo, self.filename, self.probe, self.conflicts = repo, filename, probe, conflicts

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, exc: BaseException | None, tb: Any) -> bool:
        if exc is None:
            return False
        from huggingface_hub import errors

        where = f"hf://{self.repo.repo_id}" + (f" ({self.filename})" if self.filename else "")
        status = getattr(getattr(exc, "response", None), "status_code", None)
        if self.conflicts and isinstance(exc, errors.HfHubHTTPError) and status in (409, 412):
            raise IndexConflict() from None
        if isinstance(exc, errors.LocalEntryNotFoundError) and not self.probe:
            raise RegistryError(f"{where} is not in the local Hugging Face cache and the Hub cannot be reached "
                                "(offline?)") from None
        if isinstance(exc, errors.EntryNotFoundError):
            raise FileNotFoundError(self.filename) from None
        if isinstance(exc, errors.RepositoryNotFoundError):
            raise UsageError(f"{where}: no such repository (or it is private: log in with `hf auth login`)") from None
        if isinstance(exc, errors.RevisionNotFoundError):
            raise UsageError(f"{where}: no revision {self.repo.revision!r}") from None
        from ..errors import AdaptError

        if isinstance(exc, Exception) and not isinstance(exc, AdaptError):  # network, HTTP, parsing: one line
            raise RegistryError(f"{where}: {(str(exc).splitlines() or [type(exc).__name__])[0][:200]}") from None
        return False


class HfRegistry(Registry):
    def __init__(self, repo: HfRepo, spec: str) -> None:
        self.repo, self.spec = repo, spec

    @classmethod
    def from_spec(cls, spec: str) -> HfRegistry:
        return cls(HfRepo.parse(spec), spec)

    def _read_index(self) -> tuple[dict[str, Any], Any]:
        try:
            path = self.repo.download(INDEX)
        except FileNotFoundError:
            raise UsageError(f"{self.spec} holds no {INDEX}, so it is not an adapt registry; if it holds one "
                             f"adapter (as AdapterHub's repos do), use it directly: adapt pull {self.spec}") from None
        return read_index_file(path, self.spec), None

    def fetch(self, record: dict[str, Any], dest: Path) -> None:
        try:
            local = self.repo.download(record["archive"])
        except FileNotFoundError:
            raise RegistryError(f"{self.spec} lists {record['archive']} but the file is missing") from None
        copy_limited(local.open("rb"), dest, int(record.get("size") or 0), self.url_of(record))

    def url_of(self, record: dict[str, Any]) -> str:
        return self.repo.url(record["archive"])

    def _index_at(self, commit: str | None) -> dict[str, Any]:
        """The index as of ``commit`` (the one our commit will name as its parent)."""
        if not commit:
            return empty_index()
        try:
            return read_index_file(HfRepo(self.repo.repo_id, self.repo.repo_type, commit).download(INDEX), self.spec)
        except FileNotFoundError:
            return empty_index()

    def _publish(self, archive: Path, record: dict[str, Any], force: bool, api: Any = None) -> Published:
        from huggingface_hub import CommitOperationAdd, HfApi

        api = api or HfApi(library_name="adapt")
        repo = self.repo
        with _hub_errors(repo, None):
            api.create_repo(repo.repo_id, repo_type=repo.repo_type, exist_ok=True)
        for _ in range(RETRIES):
            with _hub_errors(repo, None):
                head = api.repo_info(repo.repo_id, repo_type=repo.repo_type, revision=repo.revision).sha
            index = self._index_at(head)
            if not add_record(index, record, force):
                return Published(record, self.spec, False)
            operations = [CommitOperationAdd(record["archive"], str(archive)),
                          CommitOperationAdd(INDEX, dump_index(index))]
            try:
                with _hub_errors(repo, None, conflicts=True):
                    api.create_commit(repo.repo_id, operations, repo_type=repo.repo_type, revision=repo.revision,
                                      parent_commit=head, commit_message=f"Publish {record['id']} {record['version']}")
                return Published(record, self.spec, True)
            except IndexConflict:
                continue  # another publisher committed first: start again from their index
        raise RegistryError(f"{self.spec} kept changing under us ({RETRIES} tries); try again")


def adapterhub_card(directory: Path, spec: str) -> tuple[Path, Any]:
    """Describe an AdapterHub adapter repo with a card (from its config and README front matter)."""
    from ..formats import read_adapter, read_head
    from ..jsonio import load_json
    from .card import BaseModelRef, Card, slug
    from .pack import method_fields

    if not (directory / "adapter_config.json").is_file():
        raise UsageError(f"{spec} holds neither an adapt index nor an adapter (no adapter_config.json)")
    artifact = read_adapter(directory)  # refuses configs and weights it cannot use, with one line
    repo = HfRepo.parse(spec)
    front = _front_matter(directory / "README.md")
    org, name = repo.repo_id.split("/", 1)
    head = None
    if (directory / "head_config.json").is_file():
        h = read_head(directory).config
        head = {"type": h.head_type, "num_labels": h.num_labels, "labels": list((h.label2id or {}).keys())}
    raw = load_json((directory / "adapter_config.json").read_bytes(), f"{spec}: adapter_config.json")
    card = Card(name=re.sub(r"[^A-Za-z0-9_\-]", "_", artifact.name)[:64] or "adapter", task="hf",
                # the repo name, not the README's datasets (often just "glue" for every GLUE task)
                dataset=slug(re.sub(r"[^a-z0-9_.\-]", "-", name.lower()).lstrip(".-_") or "adapter", "dataset"),
                author=slug(re.sub(r"[^a-z0-9_.\-]", "-", org.lower()), "author"), version=repo.revision or "main",
                base_model=BaseModelRef(id=artifact.base.name_or_path or raw.get("model_name") or "unknown",
                                        model_type=artifact.base.model_type, hidden_size=artifact.base.hidden_size),
                **method_fields(artifact.config, artifact.base.hidden_size), config=artifact.config.to_dict(),
                head=head, license=front.get("license"),
                url=f"https://huggingface.co/{repo.repo_id}", description=f"AdapterHub adapter {repo.repo_id}")
    return directory, Card.from_dict(card.to_dict(), spec)  # checked like a downloaded card


def _front_matter(readme: Path) -> dict[str, Any]:
    import yaml

    if not readme.is_file():
        return {}
    text = readme.read_text(encoding="utf-8", errors="replace")
    if not text.startswith("---"):
        return {}
    try:
        data = yaml.safe_load(text.split("---", 2)[1])
    except (yaml.YAMLError, IndexError, RecursionError):  # a README is a courtesy: a hostile one is ignored
        return {}
    return data if isinstance(data, dict) else {}
