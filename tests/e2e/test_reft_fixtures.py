"""LoReFT, NoReFT and DiReFT against the reference implementation (AdapterHub ``adapters`` 1.3.0).

The fixtures (tests/fixtures/reft_<model type>/) were made by the real library on tiny BERT, RoBERTa,
XLM-RoBERTa, DistilBERT and ELECTRA models (tests/fixtures/make_reft_fixtures.py): adapters saved in its format,
a head, and the outputs every case gave, on right-padded, left-padded, one-row, short and unmasked batches. Each
case is reproduced through the public API within 1e-5 absolute. Where the reference ignores a ReFT adapter,
applies it to every row or fails inside, adapt refuses in one line; ``reference_behaviour`` in cases.json
records what the reference did.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from conftest import FIXTURES, fixture_inputs

ATOL = 1e-5
ROOTS = sorted(d for d in FIXTURES.glob("reft_*") if (d / "cases.json").is_file())
STACKS = {"stack_loreft_seq": "stack(loreft,seq)", "stack_noreft_lora": "stack(noreft,lora)",
          "stack_loreft_r4_seq_lora": "stack(loreft_r4,seq,lora)"}
DIREFT = ("direft", "direft_mix")


def _load(root: Path, tmp: Path):
    """Every adapter as saved, and each DiReFT adapter once more as ``<name>_explicit`` with
    ``subtract_projection: false`` in its config (what it computed before AdapterHub saved it)."""
    from adapter_cli import AdapterModel

    model = AdapterModel.from_pretrained(root / "base")
    for adapter in sorted((root / "adapters").iterdir()):
        model.load_adapter(adapter, with_head=False)
    for name in DIREFT:
        copy = tmp / name
        shutil.copytree(root / "adapters" / name, copy)
        data = json.loads((copy / "adapter_config.json").read_text())
        data["config"]["subtract_projection"] = False
        (copy / "adapter_config.json").write_text(json.dumps(data))
        model.load_adapter(copy, name=f"{name}_explicit", with_head=False)
    model.load_head(root / "head")
    return model.eval()


@pytest.fixture(scope="module", params=ROOTS, ids=lambda p: p.name)
def world(request, tmp_path_factory):
    from safetensors.torch import load_file

    root = request.param
    model = _load(root, tmp_path_factory.mktemp(root.name))
    return root, model, load_file(str(root / "cases.safetensors")), json.loads((root / "cases.json").read_text())


def _active(case: str) -> str | None:
    """The reference's composition for a case, in our language (DiReFT as it was before saving)."""
    if case == "base":
        return None
    if case in STACKS:
        return STACKS[case]
    if case.startswith("reloaded_"):  # as AdapterHub loads the saved file
        return case.removeprefix("reloaded_")
    for batch in ("single_", "leftpad_", "one_row_", "short_", "nomask_"):
        if case.startswith(batch):
            name = case.removeprefix(batch)
            return f"{name}_explicit" if name in DIREFT else name
    raise AssertionError(f"unknown case {case!r}")


def _close(ours: torch.Tensor, theirs: torch.Tensor, what: str) -> float:
    err = (ours.float() - theirs).abs().max().item()
    assert err <= ATOL, f"{what}: max |error| {err:.2e} > {ATOL}"
    return err


def test_every_case_matches_the_reference(world):
    root, model, tensors, meta = world
    for case, spec in meta["cases"].items():
        with torch.no_grad():
            out = model(**fixture_inputs(tensors, spec["batch"]), active=_active(case))
        _close(out.last_hidden_state, tensors[f"{case}.last_hidden_state"], f"{root.name} {case}")
        _close(out.logits, tensors[f"{case}.logits"], f"{root.name} {case} logits")
    assert len(meta["cases"]) >= 22


def test_an_adapterhub_direft_file_computes_as_adapterhub_loads_it(world):
    """AdapterHub's files do not record subtract_projection and its loader computes with true: read as it is,
    the file gives the reference's reloaded outputs (checked above); the config says so."""
    _, model, _, meta = world
    assert meta["reloaded_subtract_projection"] == {"direft": True, "direft_mix": True}
    assert model.adapter_config("direft").subtract_projection is True
    assert model.adapter_config("direft_explicit").variant == "direft"


def test_seeded_initialisation_draws_the_reference_weights(world):
    """init_weights_seed: the weights AdapterHub draws (it reseeds before every intervention), bit for bit."""
    _, model, _, _ = world
    name = model.add_adapter("seeded", "loreft[init_weights_seed=7,prefix_positions=2,suffix_positions=1]")
    try:
        ours, theirs = model.adapters[name].state_dict(), model.adapters["loreft_seed"].state_dict()
        assert ours.keys() == theirs.keys()
        assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    finally:
        model.delete_adapter(name)


def test_compositions_the_reference_mishandles_are_refused(world):
    from adapter_cli.errors import CompositionError

    _, model, _, meta = world
    seen = meta["reference_behaviour"]
    assert seen["stack_seq_loreft"] == "equals single_seq"  # the ReFT adapter ignored
    assert seen["stack_loreft_noreft"] == "equals single_loreft"  # the second one ignored
    assert seen["batch_split_loreft_noreft"] == "equals single_loreft"  # the first on every row
    assert seen["average_loreft_noreft"] == "equals single_loreft"
    for spec in ("stack(seq,loreft)", "batch_split(loreft,seq,sizes=[2,2])", "average(loreft,seq)",
                 "parallel(loreft,seq)", "stack(loreft,seq,loreft)"):
        with pytest.raises(CompositionError, match="runs alone or first in a stack"):
            model.resolve_composition(spec)
    for spec in ("stack(loreft,noreft)", "batch_split(loreft,noreft,sizes=[2,2])", "average(loreft,noreft)",
                 "parallel(loreft,noreft)"):
        with pytest.raises(CompositionError, match="holds 2 ReFT adapters"):
            model.resolve_composition(spec)
    with pytest.raises(CompositionError, match="fuse works over bottleneck adapters only"):
        model.add_fusion(["loreft", "seq"])


def test_positions_the_reference_cannot_index_are_refused(world):
    from adapter_cli.errors import UsageError

    _, model, tensors, meta = world
    assert "index -1 is out of bounds" in meta["reference_behaviour"]["suffix_longer_than_a_row"]
    with pytest.raises(UsageError, match=r"edits the last 3 tokens of each row, but row 0 has 2"):
        model(**fixture_inputs(tensors, "tiny"), active="noreft_suffix")
    short = {"input_ids": tensors["short.input_ids"][:, :1], "attention_mask": tensors["short.attention_mask"][:, :1]}
    with pytest.raises(UsageError, match="would write prefix states into suffix positions"):
        model(**short, active="direft_mix_explicit")


def test_adapterhub_and_adapt_formats_round_trip(world, tmp_path):
    """Saved by us in AdapterHub's format (bin and safetensors) and in ours, loaded back: the same outputs
    and, for AdapterHub's, the reference's keys and config."""
    from safetensors.torch import load_file

    root, model, tensors, _ = world
    case = "single_loreft_r4"
    for fmt, safetensors in (("adapterhub", False), ("adapterhub", True), ("adapt", True)):
        out = tmp_path / f"{fmt}{safetensors}"
        model.save_adapter(out, "loreft_r4", format=fmt, safetensors=safetensors)
        name = model.load_adapter(out, name="again", with_head=False, overwrite=True)
        with torch.no_grad():
            hidden = model(**fixture_inputs(tensors, "default"), active=name).last_hidden_state
        _close(hidden, tensors[f"{case}.last_hidden_state"], f"{root.name} {fmt} round trip")
    theirs = json.loads((root / "adapters" / "loreft_r4" / "adapter_config.json").read_text())
    ours = json.loads((tmp_path / "adapterhubFalse" / "adapter_config.json").read_text())
    assert ours["config"] == theirs["config"]
    mine = load_file(str(tmp_path / "adapterhubTrue" / "adapter.safetensors"))
    assert set(mine) == set(torch.load(root / "adapters" / "loreft_r4" / "pytorch_adapter.bin", weights_only=True))
    model.delete_adapter("again")


def test_direft_is_not_written_in_a_format_adapterhub_misreads(world, tmp_path):
    from adapter_cli.errors import UsageError

    _, model, _, _ = world
    with pytest.raises(UsageError, match="DiReFT adapter .* cannot be saved in AdapterHub's format"):
        model.save_adapter(tmp_path / "d", "direft_explicit", format="adapterhub")
    assert not (tmp_path / "d").exists()


def test_safetensors_files_load_the_same(world):
    root, model, tensors, _ = world
    name = model.load_adapter(root / "adapters_safetensors" / "loreft", name="loreft_st", with_head=False)
    try:
        with torch.no_grad():
            hidden = model(**fixture_inputs(tensors, "default"), active=name).last_hidden_state
        _close(hidden, tensors["single_loreft.last_hidden_state"], f"{root.name} safetensors")
    finally:
        model.delete_adapter(name)


def test_parameter_counts_are_adapterhubs():
    from adapter_cli.presets import resolve_adapter_config

    data = json.loads((FIXTURES / "reft_param_counts.json").read_text())
    for spec, counted in data["counts"].items():
        config = resolve_adapter_config(spec.replace("True", "true"))
        assert config.parameter_count(data["hidden_size"], data["num_layers"])["parameters"] == counted["parameters"]
