"""LoRA, (IA)³, DoRA and VeRA against the reference implementation (AdapterHub ``adapters`` 1.3.0).

The fixtures (tests/fixtures/lora_<model type>/) were made by the real library on tiny BERT, RoBERTa,
XLM-RoBERTa, DistilBERT and ELECTRA models (tests/fixtures/make_lora_fixtures.py): adapters saved in its
format, a head, and the outputs every case gave. Each case is reproduced here through the public API,
within 1e-5 absolute. Two reference behaviours are not copied, by design, and are checked as such:
``average`` (AdapterHub divides by the number of members once more) and its DoRA merge (which does not
reproduce its own unmerged outputs).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import FIXTURES

ATOL = 1e-5
ROOTS = sorted(d for d in FIXTURES.glob("lora_*") if (d / "cases.json").is_file())

# The reference's composition objects, written in our language.
ACTIVE = {
    "base": None,
    "stack_lora_lora_b": "stack(lora,lora_b)",
    "stack_ia3_ia3_b": "stack(ia3,ia3_b)",
    "stack_seq_lora": "stack(seq,lora)",
    "batch_split": "batch_split(lora,lora_b,sizes=[2,2])",
    "batch_split_ia3": "batch_split(ia3,ia3_b,sizes=[1,3])",
}


def _load(root: Path):
    from adapter_cli import AdapterModel

    model = AdapterModel.from_pretrained(root / "base")
    for adapter in sorted((root / "adapters").iterdir()):
        model.load_adapter(adapter, with_head=False)
    model.load_head(root / "head")
    return model.eval()


@pytest.fixture(scope="module", params=ROOTS, ids=lambda p: p.name)
def world(request):
    from safetensors.torch import load_file

    root = request.param
    return root, _load(root), load_file(str(root / "cases.safetensors")), json.loads((root / "cases.json").read_text())


def _run(model, tensors, active):
    with torch.no_grad():
        return model(input_ids=tensors["input_ids"], attention_mask=tensors["attention_mask"], active=active)


def _close(ours: torch.Tensor, theirs: torch.Tensor, what: str) -> None:
    err = (ours.float() - theirs).abs().max().item()
    assert err <= ATOL, f"{what}: max |error| {err:.2e} > {ATOL}"


def test_every_single_adapter_and_composition_matches(world):
    root, model, tensors, meta = world
    checked = 0
    for case in meta["cases"]:
        if case.startswith("single_"):
            active = case.removeprefix("single_")
        elif case in ACTIVE:
            active = ACTIVE[case]
        else:
            continue
        out = _run(model, tensors, active)
        _close(out.last_hidden_state, tensors[f"{case}.last_hidden_state"], f"{root.name} {case}")
        _close(out.logits, tensors[f"{case}.logits"], f"{root.name} {case} logits")
        checked += 1
    # GPT-2: the reference runs no composition with a LoRA on its fused layers, so singles only
    assert checked >= (10 if root.name == "lora_gpt2" else 17)


def _reference_has(meta: dict, case: str) -> None:
    if case not in meta["cases"]:
        pytest.skip(f"the reference refuses {case} here: {meta['refused'].get(case, 'not made')}")


def test_parallel_runs_each_member_on_the_whole_batch(world):
    root, model, tensors, meta = world
    _reference_has(meta, "parallel")
    out = _run(model, tensors, "parallel(lora,lora_b)")
    _close(out.last_hidden_state, tensors["parallel.last_hidden_state"], f"{root.name} parallel")
    for i, branch in enumerate(out.branches):
        _close(branch.logits, tensors[f"parallel.logits.{i}"], f"{root.name} parallel logits {i}")


def test_average_differs_from_the_reference_only_by_its_extra_division(world):
    """AdapterHub: mean_i(w_i · term_i) = (1/N) Σ w_i term_i. Ours: Σ w_i term_i. Weights (0.15, 0.35),
    which we normalise to (0.3, 0.7), give ours the reference's terms when those are halved: so ours with
    lora_B halved in both adapters must equal the reference."""
    root, model, tensors, meta = world
    _reference_has(meta, "average")
    with torch.no_grad():
        for name in ("lora", "lora_b"):
            for _, _, delta in model.adapters[name].sites():
                delta.lora_B.mul_(0.5)
        try:
            out = _run(model, tensors, "average(lora,lora_b,weights=[0.3,0.7])")
        finally:
            for name in ("lora", "lora_b"):
                for _, _, delta in model.adapters[name].sites():
                    delta.lora_B.mul_(2.0)
    _close(out.last_hidden_state, tensors["average.last_hidden_state"], f"{root.name} average")


def test_merged_adapters_give_the_unmerged_outputs(world):
    """LoRA and (IA)³ merged equal the reference's merged outputs; DoRA merged equals the *unmerged*
    reference (AdapterHub's own merge misses it by ~0.2, recorded in cases.json)."""
    root, model, tensors, meta = world
    for name, expected in (("lora", "merged_lora"), ("ia3", "merged_ia3"), ("dora_r4", "single_dora_r4")):
        if expected not in meta["cases"]:  # GPT-2: the reference builds no DoRA on a Conv1D
            continue
        model.merge_adapter(name)
        try:
            out = _run(model, tensors, None)
        finally:
            model.unmerge_adapter()
        _close(out.last_hidden_state, tensors[f"{expected}.last_hidden_state"], f"{root.name} merged {name}")
    if "dora_r4" in meta["merge_error"]:
        assert meta["merge_error"]["dora_r4"]["merged_vs_unmerged"] > 0.01  # the reference's flaw, not ours
    _close(_run(model, tensors, None).last_hidden_state, tensors["base.last_hidden_state"], "unmerged again")


def test_fuse_over_lora_is_refused_as_the_reference_refuses_it(world):
    from adapter_cli.errors import CompositionError

    _, model, _, meta = world
    assert "fuse" in meta["refused"]
    with pytest.raises(CompositionError, match="fuse works over bottleneck adapters only.*'lora' is a lora"):
        model.add_fusion(["lora", "lora_b"])


def test_safetensors_files_load_the_same(world):
    root, model, tensors, _ = world
    name = model.load_adapter(root / "adapters_safetensors" / "lora", name="lora_st", with_head=False)
    try:
        _close(_run(model, tensors, name).last_hidden_state, tensors["single_lora.last_hidden_state"],
               f"{root.name} safetensors")
    finally:
        model.delete_adapter(name)
