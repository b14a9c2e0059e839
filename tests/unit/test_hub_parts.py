"""Hub pieces without a server: identifiers, versions, the Hugging Face paths (through huggingface_hub's
own offline cache), and the retry of a racing hf:// publish."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import FIXTURES

from adapter_cli.errors import UsageError
from adapter_cli.hub.card import parse_query, version_key


def test_identifiers_parse_like_adapterhub():
    q = parse_query("sentiment/sst-2@ukp")
    assert (q.task, q.dataset, q.author, q.version) == ("sentiment", "sst-2", "ukp", None)
    q = parse_query("sst-2@ukp:2")
    assert (q.task, q.dataset, q.author, q.version) == (None, "sst-2", "ukp", "2")
    assert parse_query("@ukp").author == "ukp" and parse_query("sst").dataset == "sst"
    for bad in ("", "a/b/c", "x@", "sst:bad version"):
        with pytest.raises(UsageError):
            parse_query(bad)


def test_versions_sort_naturally():
    assert sorted(["10", "2", "1.10", "1.2", "1"], key=version_key) == ["1", "1.2", "1.10", "2", "10"]


def _fake_hf_cache(root: Path, repo: str, files: list[Path], readme: str | None = None) -> None:
    """What huggingface_hub leaves after downloading ``repo``: refs/main -> a snapshot holding the files."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    folder = root / ("models--" + repo.replace("/", "--"))
    snap = folder / "snapshots" / commit
    snap.mkdir(parents=True)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text(commit)
    for f in files:
        shutil.copy(f, snap / f.name)
    if readme:
        (snap / "README.md").write_text(readme)


def test_an_adapterhub_repo_on_the_hf_hub_loads_as_it_is(tmp_path, monkeypatch):
    """hf://AdapterHub/... through huggingface_hub (offline, from its cache): cached under its base model and
    reproducing the reference library's outputs."""
    from safetensors.torch import load_file

    from adapter_cli import AdapterModel, resolve
    from adapter_cli.defaults import model_id

    fx = FIXTURES / "adapterhub_roberta"
    files = sorted((fx / "adapters" / "pfr").iterdir()) + sorted((fx / "head").iterdir())
    _fake_hf_cache(tmp_path / "hf", "AdapterHub/roberta-tiny-pf-demo", files,
                   readme="---\ntags: [adapter-transformers, roberta]\ndatasets: [glue]\nlicense: apache-2.0\n---\n")
    _fake_hf_cache(tmp_path / "hf", "AdapterHub/roberta-tiny-pf-other", files,
                   readme="---\ndatasets: [glue]\n---\n")  # same README datasets: must not share an entry
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("ADAPT_CACHE", str(tmp_path / "cache"))

    base = fx / "base"
    path = resolve.locate("hf://AdapterHub/roberta-tiny-pf-demo", model_id(str(base)))  # pulled on the fly
    entry = json.loads((path / "entry.json").read_text())
    assert entry["source"] == "hf://AdapterHub/roberta-tiny-pf-demo" and entry["config_name"] == "pfeiffer"
    assert (path / "pytorch_adapter.bin").is_file()  # AdapterHub's files, as they are
    assert resolve.locate("hf://AdapterHub/roberta-tiny-pf-demo", model_id(str(base))) == path  # now cached
    other = resolve.locate("hf://AdapterHub/roberta-tiny-pf-other", model_id(str(base)))
    assert other != path and path.is_dir() and path.name == "hf--roberta-tiny-pf-demo@adapterhub--pfeiffer"

    model = AdapterModel.from_pretrained(base)
    name = model.load_adapter(path, with_head=False)
    inputs = load_file(str(fx / "cases.safetensors"))
    with torch.no_grad():
        out = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], active=name)
    expected = inputs["single_pfr.last_hidden_state"]
    assert (out.last_hidden_state - expected).abs().max().item() < 1e-5


def test_hf_registry_publish_retries_when_another_commit_lands_first(tmp_path):
    httpx = pytest.importorskip("httpx2", reason="huggingface_hub builds its HTTP errors from httpx2")
    from huggingface_hub.errors import HfHubHTTPError

    from adapter_cli.hub.card import BaseModelRef, Card
    from adapter_cli.hub.hf import HfRegistry
    from adapter_cli.hub.registry import add_record, empty_index, record_for

    theirs = record_for(Card(name="a", task="nli", dataset="rte", author="them", version="1",
                             base_model=BaseModelRef("bert-base-uncased", "bert", 768)), "a" * 64, 10)
    remote = {"commit": "c0", "index": empty_index()}

    class Api:
        commits: list[dict] = []

        def create_repo(self, *a, **k):
            return None

        def repo_info(self, *a, **k):
            return type("Info", (), {"sha": remote["commit"]})()

        def create_commit(self, repo_id, operations, parent_commit=None, **k):
            if not self.commits:  # somebody else's commit lands between our read and our write
                add_record(remote["index"], theirs, False)
                remote["commit"] = "c1"
                self.commits.append({"by": "them"})
            if parent_commit != remote["commit"]:
                request = httpx.Request("POST", "https://huggingface.co/api/models/x/commit/main")
                raise HfHubHTTPError("412 parent commit moved", response=httpx.Response(412, request=request))
            index = json.loads(next(op for op in operations if op.path_in_repo == "index.json").path_or_fileobj)
            remote["index"], remote["commit"] = index, "c2"
            self.commits.append({"by": "us", "parent": parent_commit})

    class Registry(HfRegistry):
        def _index_at(self, commit):
            return json.loads(json.dumps(remote["index"]))

    archive = tmp_path / "a.tar.gz"
    archive.write_bytes(b"x" * 10)
    ours = Card(name="b", task="sentiment", dataset="sst-2", author="us", version="1",
                base_model=BaseModelRef("bert-base-uncased", "bert", 768))
    api = Api()
    done = Registry.from_spec("hf://us/adapters")._publish(archive, record_for(ours, "b" * 64, 10), False, api=api)
    assert done.new and api.commits[-1] == {"by": "us", "parent": "c1"}
    assert sorted(r["id"] for r in remote["index"]["adapters"]) == ["nli/rte@them", "sentiment/sst-2@us"]


# ------------------------------------------------------------------ the validators every edge shares


@pytest.mark.parametrize("text, problem", [
    ("[" * 100_000 + "]" * 100_000, "nested too deeply"),        # RecursionError inside json
    ("[" * 40 + "]" * 40, "nested too deeply"),                  # parses, but deeper than any card or index
    ("[" + "1" * 5000 + "]", "not valid JSON"),                  # over-long integer: a ValueError, not JSON's
    (b"\xff\xfe", "not valid JSON"),
])
def test_untrusted_json_is_one_error(text, problem):
    from adapter_cli.jsonio import load_json
    from adapter_cli.hub.registry import RegistryError, parse_index

    with pytest.raises(UsageError, match=problem):
        load_json(text, "the card")
    with pytest.raises(RegistryError, match=problem):
        parse_index(text.encode() if isinstance(text, str) else text, "here")


def test_the_json_depth_limit_leaves_real_cards_alone():
    from adapter_cli.jsonio import MAX_JSON_DEPTH, json_depth, load_json

    assert json_depth({"a": [{"b": 1}]}) == 3 and json_depth(5) == 0
    assert load_json("[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH, "x") is not None


@pytest.mark.parametrize("value", ["v/../../..", "..", ".x", "a/b", "a\\b", "x" * 41, "", "v 1", "é"])
def test_names_that_become_paths_are_checked_at_the_edge(value, tmp_path):
    from adapter_cli.hub.card import path_part

    with pytest.raises(UsageError, match="--version"):
        path_part(value, "--version", "version")


def test_a_resolved_path_must_stay_inside_its_root(tmp_path):
    from adapter_cli.hub.card import inside

    assert inside(tmp_path, "a.tar.gz", "x") == tmp_path / "a.tar.gz"
    (tmp_path / "link").symlink_to("/")
    for name in ("../a.tar.gz", "link/a.tar.gz", "."):
        with pytest.raises(UsageError, match="outside"):
            inside(tmp_path, name, "the archive name")


def test_a_strict_index_names_its_first_bad_record():
    from adapter_cli.hub.registry import RegistryError, parse_index

    raw = json.dumps({"format": "adapt.registry", "adapters": ["junk"]}).encode()
    assert parse_index(raw, "lenient")["adapters"] == []
    with pytest.raises(RegistryError, match="record 0 is malformed: not an object"):
        parse_index(raw, "upload", strict=True)


@pytest.mark.parametrize("size, problem", [("65", "is 65.0 MB, more than the 64 MB"), ("x", "ADAPT_MAX_INDEX_MB")])
def test_the_index_cap(monkeypatch, tmp_path, size, problem):
    from adapter_cli.errors import AdaptError
    from adapter_cli.hub.registries import open_registry

    with (tmp_path / "index.json").open("wb") as f:
        f.truncate(65_000_000)  # a sparse file: refused by its size, before a byte of it is read
    monkeypatch.setenv("ADAPT_MAX_INDEX_MB", "64" if size == "65" else size)
    with pytest.raises(AdaptError, match=problem):
        open_registry(str(tmp_path)).read_index()
