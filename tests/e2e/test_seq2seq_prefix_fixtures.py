"""Prefix tuning on encoder-decoders (BART, mBART, T5, mT5) against ``adapters`` 1.3.0: tests/fixtures/encdec_prefix_*,
made by tests/fixtures/make_seq2seq_prefix_fixtures.py with the reference library (eager attention) on the base
models of tests/fixtures/seq2seq_*.

Every case compares the encoder's and the decoder's last hidden states and the classification, seq2seq-LM and
question-answering heads' logits, under SDPA and eager attention: prefixes at the encoder's self-attention, the
decoder's self-attention and its cross-attention, reparametrised, flat, gated, with layers left out on both sides
of the boundary (on T5 that also checks the reference's shared relative position bias), stacked, in parallel, in
batch splits, and in the MAM and UniPELT unions.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import FIXTURES
from test_seq2seq_fixtures import _composition, _outputs

ATOL = 1e-5
ROOTS = sorted(d for d in FIXTURES.glob("encdec_prefix_*") if (d / "cases.json").is_file())


def _meta(root: Path) -> dict:
    return json.loads((root / "cases.json").read_text())


def _load(root: Path, attn: str = "sdpa", dtype: torch.dtype = torch.float32, names: tuple[str, ...] = ()):
    from adapter_cli import AdapterModel

    model = AdapterModel.from_pretrained(FIXTURES / _meta(root)["base"], attn_implementation=attn)
    for adapter in sorted((root / "adapters").iterdir()):
        if not names or adapter.name in names:
            model.load_adapter(adapter, with_head=False)
    for head in sorted((root / "heads").iterdir()):
        model.load_head(head)
    return model.eval().to(dtype)


def _active(case: dict) -> str | None:
    if case["active"].startswith("BatchSplit["):
        inner = case["active"].removeprefix("BatchSplit[").removesuffix("]").replace(" ", "")
        return f"batch_split({inner},sizes={case['batch_sizes']})".replace(" ", "")
    return _composition(case["active"])


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("root", ROOTS, ids=lambda p: p.name)
def test_reference_outputs_are_reproduced(root: Path, attn: str) -> None:
    cases, expected = _meta(root)["cases"], load_file(str(root / "cases.safetensors"))
    model = _load(root, attn)
    report, failures = [], []
    for name, case in cases.items():
        ours = _outputs(model, expected, _active(case))
        assert {f"{name}.{k}" for k in ours} == set(case["outputs"]), name
        err = max(float((v - expected[f"{name}.{k}"]).abs().max()) for k, v in ours.items())
        report.append(f"{name}: max error {err:.2e}")
        if err > ATOL:
            failures.append(report[-1])
    print("\n".join(report))
    assert not failures, "outside tolerance:\n" + "\n".join(failures)
    assert {"single_prefix_lo", "single_mam", "single_unipelt", "batch_split_prefix_prefix5",
            "parallel_prefix_prefix5", "stack_seq_prefix_lo"} <= set(cases)


@pytest.mark.parametrize("root", ROOTS, ids=lambda p: p.name)
def test_reference_generation_is_reproduced(root: Path) -> None:
    """Greedy seq2seq steps, the reference's by whole forwards: ours against the decoder's cache, where the
    prefix is never stored, and with a gated prefix (whose gates average over the whole decoded sequence) by
    reading the whole sequence again."""
    from adapter_cli.generation import Sampling, generate

    spec, expected = _meta(root)["generate"], load_file(str(root / "cases.safetensors"))
    model, exact = _load(root), _load(root, dtype=torch.float64)
    ids, mask = expected["input_ids"], expected["attention_mask"]
    for name in spec:
        sequences, scores = expected[f"generate.{name}.sequences"], expected[f"generate.{name}.scores"]
        got, fp64 = (generate(m, ids, mask, name, "s2s", Sampling(max_new_tokens=scores.shape[0]),
                              eos_token_id=None, pad_token_id=0, keep_scores=True) for m in (model, exact))
        assert got.tokens == sequences[:, 1:].tolist(), name
        ours = torch.stack(got.scores)
        err = (ours - scores).abs()
        assert bool((err <= ATOL + 2 * (ours - torch.stack(fp64.scores)).abs()).all()), f"{name}: {err.max():.2e}"
    assert model.caches_exactly(model.resolve_composition("prefix"))
    assert not model.caches_exactly(model.resolve_composition("prefix_gated"))


@pytest.mark.parametrize("root", ROOTS, ids=lambda p: p.name)
def test_adapterhub_files_are_written_back_key_for_key(root: Path, tmp_path: Path) -> None:
    """The pool's generators (one per location) and their copies at every self- and cross-attention module,
    and each layer's gates by its index in the decoder: the reference's keys and tensors."""
    model = _load(root)
    keys = _meta(root)["adapter_keys"]
    for d in sorted((root / "adapters").iterdir()):
        out = Path(model.save_adapter(tmp_path / d.name, d.name, format="adapterhub", with_head=False,
                                      safetensors=False))
        mine = torch.load(out / "pytorch_adapter.bin", weights_only=True)
        theirs = torch.load(d / "pytorch_adapter.bin", weights_only=True)
        assert sorted(mine) == keys[d.name], (d.name, sorted(set(mine) ^ set(keys[d.name]))[:4])
        for key in theirs:
            assert torch.equal(mine[key], theirs[key]), (d.name, key)


@pytest.mark.parametrize("root", ROOTS, ids=lambda p: p.name)
def test_our_format_and_the_flat_export_answer_the_same(root: Path, tmp_path: Path) -> None:
    """Saved in our format and loaded into a fresh model, a prefix with layers left out on both sides and a
    gated union answer as before; a prefix made flat (``eject_prefix``) answers as the reparametrised one."""
    names = ("prefix", "prefix_lo", "unipelt")
    model = _load(root, names=names)
    tensors = load_file(str(root / "cases.safetensors"))
    fresh = _load(root, names=("none",))
    for name in names:
        model.save_adapter(tmp_path / name, name, with_head=False)
        fresh.load_adapter(tmp_path / name)
    inputs = {k: tensors[k] for k in ("input_ids", "attention_mask", "decoder_input_ids")}
    with torch.no_grad():
        for name in names:
            want = model(**inputs, active=name, head="s2s").logits
            assert torch.equal(fresh(**inputs, active=name, head="s2s").logits, want), name
        before = model(**inputs, active="prefix", head="s2s").logits
        model.eject_prefix("prefix")
        assert sorted(k.split(".")[1] for k in model.adapters["prefix"].state_dict() if k.startswith("prefixes.")) \
            == ["cross", "encoder", "self"]
        assert (model(**inputs, active="prefix", head="s2s").logits - before).abs().max() <= ATOL


@pytest.mark.parametrize("root", ROOTS, ids=lambda p: p.name)
def test_compositions_the_reference_cannot_run_answer_as_their_members(root: Path) -> None:
    """parallel and batch_split of a prefix with a bottleneck adapter (the reference raises KeyError on both):
    each member answers as it does alone, also on T5, where the member without a prefix keeps its relative
    position bias."""
    meta = _meta(root)
    assert "KeyError" in meta["reference_refused"]["parallel_prefix_seq"]
    model = _load(root, names=("prefix", "seq"))
    tensors = load_file(str(root / "cases.safetensors"))
    inputs = {k: tensors[k] for k in ("input_ids", "attention_mask", "decoder_input_ids")}
    with torch.no_grad():
        split = model(**inputs, active="batch_split(prefix,seq,sizes=[1,3])", head="s2s").logits
        par = model(**inputs, active="parallel(prefix,seq)", head="s2s").branches
    assert (split[:1] - tensors["single_prefix.s2s"][:1]).abs().max() <= ATOL
    assert (split[1:] - tensors["single_seq.s2s"][1:]).abs().max() <= ATOL
    for branch, name in zip(par, ("prefix", "seq")):
        assert (branch.logits - tensors[f"single_{name}.s2s"]).abs().max() <= ATOL, name


@pytest.mark.parametrize("root", ROOTS, ids=lambda p: p.name)
def test_shapes_are_checked_without_torch(root: Path, tmp_path: Path) -> None:
    """``adapt inspect``'s check: every file's generators and gates as the reference made them (the layer
    counts read off the pool's copies), and a generator of the wrong width refused."""
    import shutil

    from adapter_cli.errors import ArtifactError
    from adapter_cli.formats import check_weight_shapes, read_adapter

    for d in sorted((root / "adapters").iterdir()):
        art = read_adapter(d, shapes_only=True)
        check_weight_shapes(art)
        assert art.base.encoder_layers == 3 or art.config.architecture != "prefix_tuning", d.name
    bad = tmp_path / "prefix_flat"
    shutil.copytree(root / "adapters" / "prefix_flat", bad)
    weights = torch.load(bad / "pytorch_adapter.bin", weights_only=True)
    torch.save({k: v[:-1] if "cross_prefix" in k else v for k, v in weights.items()}, bad / "pytorch_adapter.bin")
    with pytest.raises(ArtifactError, match="prefixes.cross.control_trans"):
        check_weight_shapes(read_adapter(bad, shapes_only=True))
