"""Prefix tuning, invertible adapters and ReFT on decoders (GPT-2, Llama, Mistral) against the reference
implementation (``adapters`` 1.3.0).

tests/fixtures/make_decoder_method_fixtures.py made the fixtures (tests/fixtures/methods_{gpt2,llama,mistral}) on
the tiny decoders of make_decoder_fixtures.py, Llama and Mistral with grouped-query attention (2 key/value heads,
so a prefix has 2 heads too): reparametrised, flat, gated, left-out and ejected prefixes, MAM and UniPELT, an
invertible adapter, LoReFT and NoReFT (prefix and suffix positions), stacks, a classification and a causal-LM
head, and greedy continuations (ReFT's and gated prefixes' decoded by recomputation). The reference ran with eager
attention: under SDPA its decoder prefixes are wrong (recorded in cases.json: with padding its boolean mask
hides the prefix, without padding SDPA's ``is_causal`` hides real tokens). adapt answers the same under SDPA and
eager, so both are checked against the eager reference.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from conftest import FIXTURES

ATOL = 1e-5
ROOTS = [FIXTURES / f"methods_{family}" for family in ("gpt2", "llama", "mistral")
         if (FIXTURES / f"methods_{family}" / "cases.json").is_file()]
HEADS = ("cls", "lm")


def _load(root: Path, attn: str):
    from adapter_cli import AdapterModel

    model = AdapterModel.from_pretrained(root / "base", attn_implementation=attn)
    for adapter in sorted((root / "adapters").iterdir()):
        model.load_adapter(adapter, with_head=False)
    for head in HEADS:
        model.load_head(root / "heads" / head)
    return model.eval()


@pytest.fixture(scope="module", params=ROOTS, ids=lambda p: p.name)
def world(request):
    from safetensors.torch import load_file

    root = request.param
    return root, load_file(str(root / "cases.safetensors")), json.loads((root / "cases.json").read_text())


def _active(spec: str) -> str | None:
    """The reference's composition string (``Stack[a, b]``) in ours (``stack(a,b)``); its batch splits were [2, 2]."""
    if spec == "None":
        return None
    inner = re.sub(r"^\w+\[(.*)\]$", r"\1", spec).replace(" ", "")
    if spec.startswith("BatchSplit["):
        return f"batch_split({inner},sizes=[2,2])"
    return f"stack({inner})" if spec.startswith("Stack[") else spec


def _err(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    return (ours.float() - theirs).abs().max().item()


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_every_case_matches_the_reference(world, attn):
    root, tensors, meta = world
    model = _load(root, attn)
    inputs = {"input_ids": tensors["input_ids"], "attention_mask": tensors["attention_mask"]}
    checked = 0
    for case, spec in meta["cases"].items():
        for head in HEADS:
            with torch.no_grad():
                out = model(**inputs, active=_active(spec["active"]), head=head)
            err = _err(out.last_hidden_state, tensors[f"{case}.last_hidden_state"])
            assert err <= ATOL, f"{root.name} {attn} {case} hidden: max |error| {err:.2e}"
            err = _err(out.logits, tensors[f"{case}.{head}.logits"])
            assert err <= ATOL, f"{root.name} {attn} {case} {head}: max |error| {err:.2e}"
        checked += 1
    assert checked >= 17


def test_generation_with_the_cache_equals_the_reference(world):
    """Greedy continuations decoded with the key/value cache (the prefixes are joined to the cached keys at every
    step, never stored in the cache) against the reference's, made without it."""
    from adapter_cli.generation import Sampling, generate

    root, tensors, meta = world
    model = _load(root, "sdpa")
    prompts = tensors["generate.prompt_ids"]
    for name, case in meta["generate"].items():
        sequences, scores = tensors[f"generate.{name}.sequences"], tensors[f"generate.{name}.scores"]
        steps = sequences.shape[1] - prompts.shape[1]
        got = generate(model, prompts, torch.ones_like(prompts), _active(case["active"]), "lm",
                       Sampling(max_new_tokens=steps), eos_token_id=None, pad_token_id=0, keep_scores=True)
        assert got.tokens == sequences[:, prompts.shape[1]:].tolist(), (root.name, name)
        err = _err(torch.stack(got.scores), scores)
        assert err <= ATOL, f"{root.name} {name}: scores differ by {err:.2e}"


def test_the_reference_is_wrong_under_sdpa_and_adapt_is_not(world):
    """What the fixtures recorded of the reference's SDPA path, and adapt's SDPA answers equal to its eager ones
    (padded and unpadded rows; the unpadded case is where transformers drops the mask for SDPA's is_causal)."""
    root, tensors, meta = world
    probes = meta["reference_behaviour"]["sdpa"]
    assert probes["prefix, no padding (rows 0 and 2): max |sdpa - eager|"] > 0.5
    assert probes["prefix under sdpa, padded batch: max |out - base|"] < 1e-5  # its prefix masked away
    sdpa, eager = _load(root, "sdpa"), _load(root, "eager")
    ids = tensors["input_ids"][[0, 2]]
    with torch.no_grad():
        for name in ("prefix", "prefix_flat"):
            a = sdpa(input_ids=ids, active=name, head=None).last_hidden_state
            b = eager(input_ids=ids, active=name, head=None).last_hidden_state
            assert _err(a, b) <= 1e-5, (root.name, name)


def test_compositions_the_reference_cannot_run_answer_as_their_members(world):
    """batch_split and parallel of a prefix with a bottleneck adapter (the reference raises KeyError on both)."""
    root, tensors, meta = world
    assert "KeyError" in meta["reference_behaviour"]["refused"]["parallel_prefix_seq"]
    model = _load(root, "sdpa")
    inputs = {"input_ids": tensors["input_ids"], "attention_mask": tensors["attention_mask"]}
    with torch.no_grad():
        split = model(**inputs, active="batch_split(prefix,seq,sizes=[1,3])", head="cls").logits
        par = model(**inputs, active="parallel(prefix,seq)", head="cls").branches
    assert _err(split[:1], tensors["single_prefix.cls.logits"][:1]) <= ATOL
    assert _err(split[1:], tensors["single_seq.cls.logits"][1:]) <= ATOL
    for branch, name in zip(par, ("prefix", "seq")):
        assert _err(branch.logits, tensors[f"single_{name}.cls.logits"]) <= ATOL, (root.name, name)


def test_adapterhub_files_are_written_key_for_key(world, tmp_path):
    root, _, meta = world
    model = _load(root, "sdpa")
    for name in ("prefix_flat", "prefix_gated2", "prefix_grid", "mam", "unipelt"):
        model.save_adapter(tmp_path / name, name, format="adapterhub", safetensors=False)
        keys = sorted(torch.load(tmp_path / name / "pytorch_adapter.bin", weights_only=True))
        assert keys == meta["saved"][name]["keys"], (root.name, name)
        config = json.loads((tmp_path / name / "adapter_config.json").read_text())["config"]
        assert config == meta["saved"][name]["adapter_config"]["config"], (root.name, name)


def test_shapes_are_checked_without_torch_for_narrow_keys(world, tmp_path):
    """``adapt inspect``'s check reads a grouped-query prefix's key width off its weights, in AdapterHub's
    files (no layer count) and in ours (one), and still finds a weight of the wrong shape."""
    from adapter_cli.errors import ArtifactError
    from adapter_cli.formats import check_weight_shapes, read_adapter

    root, _, _ = world
    for name in ("prefix", "prefix_flat", "prefix_grid", "unipelt"):
        check_weight_shapes(read_adapter(root / "adapters" / name, shapes_only=True))
    model = _load(root, "sdpa")
    model.save_adapter(tmp_path / "ours", "prefix_grid")
    check_weight_shapes(read_adapter(tmp_path / "ours", shapes_only=True))
    artifact = read_adapter(tmp_path / "ours")
    artifact.weights["prefix.control_trans.0.bias"] = torch.zeros(3)
    with pytest.raises(ArtifactError):
        check_weight_shapes(artifact)
