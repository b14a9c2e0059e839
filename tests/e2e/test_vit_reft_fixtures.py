"""ReFT on ViT against ``adapters`` 1.3.0: tests/fixtures/vit_reft, made by tests/fixtures/make_vit_reft_fixtures.py
with the reference library on the base model and classification head of tests/fixtures/adapterhub_vit.

With no padding in an image batch, an intervention edits the first ``prefix_positions`` tokens ([CLS] and the
first patches) and the last ``suffix_positions`` patches; each case compares the last hidden state and the
classification head's logits, under SDPA and eager attention, and the files are written back key for key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import FIXTURES

ROOT = FIXTURES / "vit_reft"
ATOL = 1e-5


def _load(attn: str):
    from adapter_cli import AdapterModel

    meta = json.loads((ROOT / "cases.json").read_text())
    model = AdapterModel.from_pretrained(FIXTURES / meta["base"], attn_implementation=attn)
    for adapter in sorted((ROOT / "adapters").iterdir()):
        model.load_adapter(adapter, with_head=False)
    model.load_head(FIXTURES / meta["head"])
    return model.eval(), meta


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_reference_outputs_are_reproduced(attn: str) -> None:
    model, meta = _load(attn)
    expected = load_file(str(ROOT / "cases.safetensors"))
    pixels = expected["pixel_values"]
    for case, spec in meta["cases"].items():
        active = None if spec["active"] == "None" else \
            spec["active"].replace("Stack[", "stack(").replace("]", ")").replace(" ", "")
        with torch.no_grad():
            states = model(pixel_values=pixels, active=active, head=None).last_hidden_state
            logits = model(pixel_values=pixels, active=active, head="cls").logits
        assert (states - expected[f"{case}.last_hidden_state"]).abs().max() <= ATOL, case
        assert (logits - expected[f"{case}.cls"]).abs().max() <= ATOL, case
    assert {"single_loreft", "single_noreft_suffix", "stack_loreft_r4_seq"} <= set(meta["cases"])


def test_adapterhub_files_are_written_back_key_for_key(tmp_path: Path) -> None:
    """AdapterHub's names for ViT's layers are transformers 4's (``vit.encoder.layer.<i>``), not 5's."""
    model, _ = _load("sdpa")
    for d in sorted((ROOT / "adapters").iterdir()):
        out = Path(model.save_adapter(tmp_path / d.name, d.name, format="adapterhub", with_head=False,
                                      safetensors=False))
        mine = torch.load(out / "pytorch_adapter.bin", weights_only=True)
        theirs = torch.load(d / "pytorch_adapter.bin", weights_only=True)
        assert mine.keys() == theirs.keys(), (d.name, sorted(mine.keys() ^ theirs.keys())[:4])
        for key in theirs:
            assert torch.equal(mine[key], theirs[key]), (d.name, key)
