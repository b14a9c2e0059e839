"""Encoder-decoders (BART, mBART, T5, mT5) against ``adapters`` 1.3.0: tests/fixtures/seq2seq_*, made by
tests/fixtures/make_seq2seq_fixtures.py with the reference library.

Every case compares the encoder's and the decoder's last hidden states, the classification head's logits (read at
each row's last end-of-sequence token), the seq2seq-LM head's logits over given decoder ids and the
question-answering head's start and end logits; ``parallel`` cases compare each member's. The tolerance is test_adapterhub_fixtures.py's: 1e-5, widened per row by twice the spread
of equally valid evaluation orders (SDPA and eager attention, both fusion orders, fp64), which only the fusions'
sharp softmax over these large random weights makes wider than ~1e-6.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import FIXTURES

ATOL = 1e-5
ROOTS = sorted(d for d in FIXTURES.glob("seq2seq_*") if (d / "cases.json").is_file())


def _load(root: Path, attn: str = "sdpa", dtype: torch.dtype = torch.float32):
    from adapter_cli import AdapterModel

    model = AdapterModel.from_pretrained(root / "base", attn_implementation=attn)
    for adapter in sorted((root / "adapters").iterdir()):
        model.load_adapter(adapter, with_head=False)
    for fusion in sorted((root / "fusions").iterdir()):
        model.load_fusion(fusion)
    for head in sorted((root / "heads").iterdir()):
        model.load_head(head)
    return model.eval().to(dtype)


def _composition(active: str) -> str | None:
    """The reference's str() of a setup (``Stack[a, Fuse[b, c]]``) in our composition syntax."""
    if active == "None":
        return None
    for theirs, ours in (("Stack[", "stack("), ("Fuse[", "fuse("), ("Parallel[", "parallel(")):
        active = active.replace(theirs, ours)
    return active.replace("]", ")").replace(" ", "")


def _outputs(model, tensors: dict[str, torch.Tensor], active: str | None) -> dict[str, torch.Tensor]:
    ids, mask = tensors["input_ids"], tensors["attention_mask"]
    with torch.no_grad():
        cls = model(input_ids=ids, attention_mask=mask, active=active, head="cls")
        s2s = model(input_ids=ids, attention_mask=mask, decoder_input_ids=tensors["decoder_input_ids"],
                    active=active, head="s2s")
        qa = model(input_ids=ids, attention_mask=mask, active=active, head="qa")
    # parallel(...): the states of the replicated batch, one head output per member
    states = {"encoder": cls.encoder_last_hidden_state.float(), "decoder": cls.last_hidden_state.float()}
    heads = {"cls": cls, "s2s": s2s, "qa": qa}
    if cls.branches:
        return {**states, **{f"{h}.{i}": b.logits.float() for h, out in heads.items()
                             for i, b in enumerate(out.branches)}}
    return {**states, **{h: out.logits.float() for h, out in heads.items()}}


@pytest.mark.parametrize("root", ROOTS, ids=lambda p: p.name)
def test_reference_outputs_are_reproduced(root: Path) -> None:
    from adapter_cli.fusion import FusionLayer

    cases = json.loads((root / "cases.json").read_text())["cases"]
    expected = load_file(str(root / "cases.safetensors"))
    default = FusionLayer.restructured
    runs: dict[str, list[dict[str, torch.Tensor]]] = {name: [] for name in cases}
    try:  # the product's default first, then the other valid orders
        for attn, dtype, restructured in (("sdpa", torch.float32, default), ("eager", torch.float32, default),
                                          ("sdpa", torch.float32, not default), ("sdpa", torch.float64, False)):
            FusionLayer.restructured = restructured
            model = _load(root, attn, dtype)
            for name, case in cases.items():
                runs[name].append(_outputs(model, expected, _composition(case["active"])))
    finally:
        FusionLayer.restructured = default
    report, failures = [], []
    for name, case in cases.items():
        assert {f"{name}.{k}" for k in runs[name][0]} == set(case["outputs"]), name
        for field, ours in runs[name][0].items():
            values = torch.stack([run[field] for run in runs[name]])
            spread = (values.amax(0) - values.amin(0)).amax(-1, keepdim=True)
            err = (ours - expected[f"{name}.{field}"]).abs()
            report.append(f"{name}.{field}: max error {err.max():.2e}, fp32 sensitivity {spread.max():.1e}")
            if bool((err > ATOL + 2 * spread).any()):
                failures.append(report[-1])
    print("\n".join(report))
    assert not failures, "outside tolerance:\n" + "\n".join(failures)
    assert len(cases) >= 15  # singles at every placement, stacks, fusions (also at cross-attention), parallel


@pytest.mark.parametrize("root", ROOTS, ids=lambda p: p.name)
def test_reference_generation_is_reproduced_with_the_cache(root: Path) -> None:
    """Greedy steps of the seq2seq head: the reference's by whole forwards on each prefix, ours with the
    encoder run once and the decoder's key/value cache: the same tokens and, at every step, the same scores."""
    from adapter_cli.generation import Sampling, generate

    spec = json.loads((root / "cases.json").read_text())["generate"]
    expected = load_file(str(root / "cases.safetensors"))
    model, exact = _load(root), _load(root, dtype=torch.float64)
    ids, mask = expected["input_ids"], expected["attention_mask"]
    for name, case in spec.items():
        sequences, scores = expected[f"generate.{name}.sequences"], expected[f"generate.{name}.scores"]
        got, fp64 = (generate(m, ids, mask, _composition(case["active"]), "s2s",
                              Sampling(max_new_tokens=scores.shape[0]), eos_token_id=None, pad_token_id=1,
                              keep_scores=True) for m in (model, exact))
        assert got.tokens == sequences[:, 1:].tolist(), name
        ours = torch.stack(got.scores)
        err = (ours - scores).abs()
        assert bool((err <= ATOL + 2 * (ours - torch.stack(fp64.scores)).abs()).all()), f"{name}: {err.max():.2e}"
    assert {"single_cr", "fuse_cross"} <= set(spec)


@pytest.mark.parametrize("root", ROOTS, ids=lambda p: p.name)
def test_adapterhub_files_are_written_back_key_for_key(root: Path, tmp_path: Path) -> None:
    """Loaded and saved again in AdapterHub's format: the same weight names (the decoder's layers by their index
    in the decoder) and the same tensors, for every adapter, fusion and head."""
    model = _load(root)
    for kind, save in (("adapters", model.save_adapter), ("fusions", model.save_fusion), ("heads", model.save_head)):
        for d in sorted((root / kind).iterdir()):
            extra = {"with_head": False} if kind == "adapters" else {}
            out = save(tmp_path / kind / d.name, d.name, format="adapterhub", **extra)
            mine, theirs = _weights(Path(out)), _weights(d)
            assert mine.keys() == theirs.keys(), (kind, d.name, sorted(mine.keys() ^ theirs.keys())[:4])
            for key in theirs:
                assert torch.equal(mine[key], theirs[key]), (d.name, key)


def _weights(directory: Path) -> dict[str, torch.Tensor]:
    (file,) = [f for f in directory.iterdir() if f.suffix in (".safetensors", ".bin")]
    return load_file(str(file)) if file.suffix == ".safetensors" else torch.load(file, weights_only=True)


@pytest.mark.parametrize("root", ROOTS, ids=lambda p: p.name)
def test_our_format_round_trip_answers_the_same(root: Path, tmp_path: Path) -> None:
    """Saved in our format and loaded into a fresh model: the cross-attention adapter with layers left out on
    both sides of the encoder/decoder boundary, and its fusion, answer as before."""
    from adapter_cli import AdapterModel

    model = _load(root)
    tensors = load_file(str(root / "cases.safetensors"))
    model.save_adapter(tmp_path / "cr", "cr", with_head=False)
    model.save_adapter(tmp_path / "cr2", "cr2", with_head=False)
    model.save_fusion(tmp_path / "fusion", "cr,cr2")
    model.save_head(tmp_path / "s2s", "s2s")
    fresh = AdapterModel.from_pretrained(root / "base").eval()
    for name in ("cr", "cr2"):
        fresh.load_adapter(tmp_path / name)
    fresh.load_fusion(tmp_path / "fusion")
    fresh.load_head(tmp_path / "s2s")
    inputs = {k: tensors[k] for k in ("input_ids", "attention_mask", "decoder_input_ids")}
    for active in ("cr", "fuse(cr,cr2)"):
        with torch.no_grad():
            want = model(**inputs, active=active, head="s2s").logits
            got = fresh(**inputs, active=active, head="s2s").logits
        assert torch.equal(got, want), active
