"""Compacter and Compacter++ against the reference implementation (AdapterHub ``adapters`` 1.3.0).

The fixtures (tests/fixtures/compacter_<model type>/) were made by the real library on tiny BERT, RoBERTa,
XLM-RoBERTa, DistilBERT and ELECTRA models (tests/fixtures/make_compacter_fixtures.py): both presets, a grid of
non-default PHM fields, a plain Pfeiffer adapter, fusions, a head, and the outputs every case gave. Each case is
reproduced here through the public API within 1e-5 absolute, with the default fast paths and in the reference
order; every AdapterHub file is written back key for key and value for value.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import FIXTURES

ATOL = 1e-5
ROOTS = sorted(d for d in FIXTURES.glob("compacter_*") if (d / "cases.json").is_file())

# The reference's composition objects, written in our language.
ACTIVE = {
    "base": None,
    "stack_compacter_pf": "stack(compacter,pf)",
    "stack_pf_compacter_pp": "stack(pf,compacter_pp)",
    "stack_pp_pp_b": "stack(compacter_pp,compacter_pp_b)",
    "fuse_pp_pf": "fuse(compacter_pp,pf)",
    "fuse_pp_pp_b": "fuse(compacter_pp,compacter_pp_b)",
    "fuse_compacter_phm8": "fuse(compacter,phm8)",
    "parallel": "parallel(compacter_pp,pf)",
    "batch_split": "batch_split(compacter_pp,compacter_pp_b,sizes=[2,2])",
}


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """These models are tiny: one intra-op thread computes them faster than two, and far faster when other
    processes share the cores (two threads then wait on each other at every small matmul)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _load(root: Path):
    from adapter_cli import AdapterModel

    model = AdapterModel.from_pretrained(root / "base")
    for adapter in sorted((root / "adapters").iterdir()):
        model.load_adapter(adapter, with_head=False)
    for fusion in sorted((root / "fusions").iterdir()):
        model.load_fusion(fusion)
    model.load_head(root / "head")
    return model.eval()


@pytest.fixture(scope="module", params=ROOTS, ids=lambda p: p.name)
def world(request):
    from safetensors.torch import load_file

    root = request.param
    return root, _load(root), load_file(str(root / "cases.safetensors")), json.loads((root / "cases.json").read_text())


def _active(case: str) -> str | None:
    return case.removeprefix("single_") if case.startswith("single_") else ACTIVE[case]


def _errors(model, tensors: dict, meta: dict) -> dict[str, float]:
    """Max |error| per case, over the last hidden state and every head output the reference recorded."""
    errors = {}
    for case, spec in meta["cases"].items():
        with torch.no_grad():
            out = model(input_ids=tensors["input_ids"], attention_mask=tensors["attention_mask"],
                        active=_active(case))
        ours = {"last_hidden_state": out.last_hidden_state}
        if case == "parallel":
            ours.update({f"logits.{i}": branch.logits for i, branch in enumerate(out.branches)})
        else:
            ours["logits"] = out.logits
        errors[case] = max((ours[key.split(".", 1)[1]].float() - tensors[key]).abs().max().item()
                           for key in spec["outputs"])
    return errors


def test_every_case_matches_with_the_fast_paths(world):
    root, model, tensors, meta = world
    errors = _errors(model, tensors, meta)
    print(root.name, {k: f"{v:.1e}" for k, v in errors.items()})
    assert len(errors) >= 23 and set(ACTIVE) - {"fuse_compacter_phm8"} <= set(errors)
    assert max(errors.values()) <= ATOL, {k: v for k, v in errors.items() if v > ATOL}


def test_every_case_matches_in_the_reference_order(world, monkeypatch):
    from adapter_cli import fastpaths
    from adapter_cli.fusion import FusionLayer

    root, model, tensors, meta = world
    monkeypatch.setattr(fastpaths, "ENABLED", False)  # ADAPT_REFERENCE_ORDER=1
    monkeypatch.setattr(FusionLayer, "restructured", False)
    errors = _errors(model, tensors, meta)
    assert max(errors.values()) <= ATOL, {k: v for k, v in errors.items() if v > ATOL}


def test_one_phm_layer_is_the_references_bit_for_bit(world):
    """The reference's PHMLayer (layer 0, recorded in the forward pass) and ours, on the same input: the same
    operations in the same order, so the same bits."""
    root, model, tensors, meta = world
    if not meta.get("phm_layers"):
        pytest.skip("the layers are probed in the BERT set only")
    assert len(meta["phm_layers"]) >= 14
    for key in meta["phm_layers"]:
        _, name, side = key.split(".")
        layer = getattr(model.adapters[name].site("output_adapter", 0), side)
        with torch.no_grad():
            assert torch.equal(layer(tensors[f"{key}.x"]), tensors[f"{key}.y"]), key


def test_adapterhub_files_are_written_back_key_for_key(world, tmp_path):
    """Every adapter saved in AdapterHub's format gives its original file: the same config (every PHM field)
    and the same weights under the same names, the shared rule as ``shared_parameters.<name>.*``."""
    root, model, _, _ = world
    for adapter in sorted((root / "adapters").iterdir()):
        out = model.save_adapter(tmp_path / adapter.name, adapter.name, format="adapterhub")
        theirs = torch.load(adapter / "pytorch_adapter.bin", weights_only=True)
        ours = torch.load(out / "pytorch_adapter.bin", weights_only=True)
        assert sorted(ours) == sorted(theirs), adapter.name
        assert all(torch.equal(ours[k], theirs[k]) for k in theirs), adapter.name
        want = json.loads((adapter / "adapter_config.json").read_text())["config"]
        got = json.loads((out / "adapter_config.json").read_text())["config"]
        assert got == want, adapter.name


def test_our_format_round_trips_and_inspects(world, tmp_path):
    from adapter_cli.formats import describe

    root, model, tensors, meta = world
    for name in ("compacter", "own_fact_rule", "shared_w", "ln_phm"):
        model.save_adapter(tmp_path / name, name)
        assert describe(tmp_path / name)["parameters"] == sum(p.numel() for p in model.adapters[name].parameters())
        copy = model.load_adapter(tmp_path / name, name=f"{name}_copy")
        try:
            with torch.no_grad():
                a, b = (model(input_ids=tensors["input_ids"], attention_mask=tensors["attention_mask"], active=n)
                        for n in (name, copy))
            assert torch.equal(a.last_hidden_state, b.last_hidden_state), name
        finally:
            model.delete_adapter(copy)
    assert describe(root / "adapters" / "compacter")["method"] == "bottleneck"  # AdapterHub's, checked as loaded


def test_safetensors_copy_loads_the_same(world):
    root, model, tensors, _ = world
    name = model.load_adapter(root / "adapters_safetensors" / "compacter", name="compacter_st", with_head=False)
    try:
        with torch.no_grad():
            out = model(input_ids=tensors["input_ids"], attention_mask=tensors["attention_mask"], active=name)
        err = (out.last_hidden_state - tensors["single_compacter.last_hidden_state"]).abs().max().item()
        assert err <= ATOL
    finally:
        model.delete_adapter(name)


def test_what_the_reference_cannot_build_is_refused_in_one_line(world):
    from adapter_cli.errors import ConfigError
    from adapter_cli.presets import resolve_adapter_config

    root, model, _, meta = world
    changes = {"shared_w_unfactorized": {"shared_W_phm": True, "factorized_phm_W": False},
               "houlsby_init": {"init_weights": "houlsby"}, "mam_init": {"init_weights": "mam_adapter"},
               "phm_dim_3": {"phm_dim": 3}}
    assert set(meta["refused"]) == set(changes) and "built" not in meta["refused"].values()
    for case, change in changes.items():
        with pytest.raises(ConfigError) as caught:
            model.add_adapter(case, resolve_adapter_config("compacter++", {"reduction_factor": 5, **change}))
        assert "\n" not in str(caught.value) and case not in model.adapters, case
