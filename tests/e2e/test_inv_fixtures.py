"""Invertible adapters (MAD-X) against the reference implementation (AdapterHub ``adapters`` 1.3.0).

The fixtures (tests/fixtures/inv_<model type>/, made by tests/fixtures/make_inv_fixtures.py with the real library
on the tiny models of tests/fixtures/lora_<model type>/base) hold adapters with invertible layers in AdapterHub's
format (seq_bn_inv, double_seq_bn_inv, a non-default factor with another activation), plain task adapters (two
sequential, one parallel), fusions of two and three of them, the outputs of every composition, and the invertible
layers' reverse pass. Every output is reproduced within 1e-5 absolute, with the fast paths and in the reference
order; the files are written back key for key. Where the reference skips an invertible layer silently, adapt
refuses the composition; where it fails (GLOW), adapt refuses the config.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import FIXTURES

ATOL = 1e-5
ROOTS = sorted(d for d in FIXTURES.glob("inv_*") if (d / "cases.json").is_file())
ACTIVE = {
    "base": None, "single_lang": "lang", "single_hlang": "hlang", "single_lang4": "lang4",
    "stack_lang_ta": "stack(lang,ta)", "stack_hlang_tb": "stack(hlang,tb)", "stack_lang_fuse": "stack(lang,fuse(ta,tb))",
    "stack_lang_fuse3": "stack(lang,fuse(ta,tb,tc))",
    "batch_split": "batch_split(stack(hlang,ta),stack(hlang,tb),sizes=[1,2])",
    "parallel": "parallel(stack(hlang,ta),stack(hlang,tb))",
}
SKIPPED = {  # the reference's setups that skip (calls 0) or misapply (calls 1) an invertible layer: refused here
    "stack_ta_lang": ("stack(ta,lang)", "adapter 'lang' has an invertible adapter but is not at the bottom"),
    "parallel_ta_lang": ("parallel(ta,lang)", "adapter 'lang' has an invertible adapter but is not at the bottom"),
    "parallel_lang_ta": ("parallel(lang,ta)", "also on the rows of ta, which does not start with 'lang'"),
    "stack_lang_fuse_lang4": ("stack(lang,fuse(ta,lang4))", "adapter 'lang4' has an invertible adapter"),
}


@pytest.fixture(scope="module", params=ROOTS, ids=lambda p: p.name)
def world(request):
    from safetensors.torch import load_file

    from adapter_cli import AdapterModel

    root = request.param
    meta = json.loads((root / "cases.json").read_text())
    model = AdapterModel.from_pretrained(root / meta["base"])
    for adapter in sorted((root / "adapters").iterdir()):
        if adapter.name != "glow":  # refused: see test_glow_is_refused_as_the_reference_fails_on_it
            model.load_adapter(adapter, with_head=False)
    for fusion in sorted((root / "fusions").iterdir()) if (root / "fusions").is_dir() else []:
        model.load_fusion(fusion)
    return root, model.eval(), load_file(str(root / "cases.safetensors")), meta


def _hidden(model, tensors, active) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=tensors["input_ids"], attention_mask=tensors["attention_mask"], active=active,
                     head=None).last_hidden_state


def errors(model, tensors, meta) -> dict[str, float]:
    """Max |error| of every case (docs/numerics.md's table prints these)."""
    out = {case: (_hidden(model, tensors, ACTIVE[case]) - tensors[f"{case}.last_hidden_state"]).abs().max().item()
           for case in meta["cases"]}
    with torch.no_grad():
        for name in ("lang", "lang4"):
            ours = model.adapters[name].invertible(tensors["embeddings"], rev=True)
            out[f"reverse {name}"] = (ours - tensors[f"inv_reverse.{name}"]).abs().max().item()
    return out


def test_every_case_matches_the_reference(world) -> None:
    root, model, tensors, meta = world
    found = errors(model, tensors, meta)
    assert len(found) >= 10 and set(ACTIVE) - {"stack_lang_fuse"} <= set(found)
    bad = {case: f"{err:.2e}" for case, err in found.items() if not err <= ATOL}
    assert bad == {}, f"{root.name}: max |error| above {ATOL}"


def test_every_case_matches_in_the_reference_order(world, monkeypatch) -> None:
    """ADAPT_REFERENCE_ORDER=1: the fast paths off, fusions (fuse(ta, tb), fuse(ta, tb, tc)) in AdapterHub's order."""
    from adapter_cli import fastpaths
    from adapter_cli.fusion import FusionLayer

    root, model, tensors, meta = world
    monkeypatch.setattr(fastpaths, "ENABLED", False)
    monkeypatch.setattr(FusionLayer, "restructured", False)
    found = errors(model, tensors, meta)
    assert "stack_lang_fuse3" in found
    bad = {case: f"{err:.2e}" for case, err in found.items() if not err <= ATOL}
    assert bad == {}, f"{root.name}: max |error| above {ATOL}"


def test_the_reverse_pass_through_the_model_api(world) -> None:
    _, model, tensors, _ = world
    with torch.no_grad():
        ours = model.invert_embeddings(tensors["embeddings"], active="stack(lang,ta)")
    assert (ours - tensors["inv_reverse.lang"]).abs().max().item() <= ATOL


def test_counts_equal_the_references(world) -> None:
    _, model, _, meta = world
    for name, expected in meta["param_counts"].items():
        if name == "glow":
            continue
        config = model.adapters[name].config
        counted = config.parameter_count(model.hidden_size, model.num_layers, embedding_size=model.embedding_size)
        assert counted["parameters"] == expected == sum(p.numel() for p in model.adapters[name].parameters()), name


def test_what_the_reference_skips_silently_is_refused(world) -> None:
    from adapter_cli.errors import CompositionError

    _, model, _, meta = world
    assert set(meta["skipped"]) == set(SKIPPED)
    for label, (active, message) in SKIPPED.items():
        assert meta["skipped"][label]["calls"] == (1 if label == "parallel_lang_ta" else 0), label
        with pytest.raises(CompositionError, match=message):
            model.resolve_composition(active)


def test_adapterhub_format_round_trip(world, tmp_path) -> None:
    """Written in AdapterHub's format: the reference's keys, tensors and config; read back: the same outputs."""
    from safetensors.torch import load_file

    from adapter_cli import AdapterModel

    root, model, tensors, meta = world
    again = AdapterModel.from_pretrained(root / meta["base"]).eval()
    for name in ("lang", "hlang", "lang4"):
        model.save_adapter(tmp_path / name, name, format="adapterhub", safetensors=True)
        ours, theirs = (load_file(str(d / "adapter.safetensors")) for d in (tmp_path / name, root / "adapters" / name))
        assert sorted(ours) == sorted(theirs) and any(".invertible_adapters." in k for k in ours)
        assert all(torch.equal(ours[k], theirs[k]) for k in ours)
        config, reference = (json.loads((d / "adapter_config.json").read_text())["config"]
                             for d in (tmp_path / name, root / "adapters" / name))
        assert config == reference
        again.load_adapter(tmp_path / name)
        model.save_adapter(tmp_path / f"{name}-adapt", name)  # and our own format
        again.load_adapter(tmp_path / f"{name}-adapt", name=f"{name}_native")
    for case in ("single_lang", "single_hlang", "single_lang4"):
        name = case.removeprefix("single_")
        for loaded in (name, f"{name}_native"):
            err = (_hidden(again, tensors, loaded) - tensors[f"{case}.last_hidden_state"]).abs().max().item()
            assert err <= ATOL, (loaded, err)


def test_glow_is_refused_as_the_reference_fails_on_it() -> None:
    """AdapterHub's GLOW block fails in both directions on every input (recorded in the BERT fixture): its
    adapters cannot exist, so loading one is one line, not a shape error in the middle of a forward pass."""
    from adapter_cli import AdapterModel
    from adapter_cli.errors import ConfigError

    root = FIXTURES / "inv_bert"
    refused = json.loads((root / "cases.json").read_text())["refused"]
    assert {"single_glow", "glow_reverse", "glow_reverse_2d"} <= set(refused)
    model = AdapterModel.from_pretrained(FIXTURES / "lora_bert" / "base")
    with pytest.raises(ConfigError, match="inv_adapter 'glow' is not supported") as info:
        model.load_adapter(Path(root / "adapters" / "glow"))
    assert "\n" not in str(info.value)


def test_inspect_reads_the_embedding_width_from_the_weights() -> None:
    from adapter_cli.formats import describe

    for root in ROOTS:
        meta = json.loads((root / "cases.json").read_text())
        for name in ("lang", "hlang", "lang4"):
            assert describe(root / "adapters" / name)["parameters"] == meta["param_counts"][name], (root.name, name)
