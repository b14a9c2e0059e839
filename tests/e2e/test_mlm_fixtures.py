"""The masked-LM head of language adapters against the reference implementation (AdapterHub ``adapters``
1.3.0): fixtures made by tests/fixtures/make_mlm_fixtures.py (a seq_bn_inv language adapter with AdapterHub's
masked-LM head, all five model families) load, and give the reference's logits over every token within 1e-5,
with the adapter active (the invertible layer's reverse pass between the head's transform and its tied decoder)
and with none; written back in AdapterHub's format they are the same files' tensors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import FIXTURES

ROOTS = sorted(d for d in FIXTURES.glob("mlm_*") if (d / "cases.json").is_file())


@pytest.mark.parametrize("root", ROOTS, ids=lambda p: p.name)
def test_reference_logits_reproduced(root: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from adapter_cli import AdapterModel

    cases = load_file(str(root / "cases.safetensors"))
    model = AdapterModel.from_pretrained(root / json.loads((root / "cases.json").read_text())["base"]).eval()
    name = model.load_adapter(root / "lang")
    assert model.heads[name].config.head_type == "masked_lm"
    batch = {"input_ids": cases["input_ids"], "attention_mask": cases["attention_mask"]}
    with torch.no_grad():
        active = model(**batch, active=name).logits
        alone = model(**batch, active=None, head=name).logits
    torch.testing.assert_close(active, cases["lang.logits"], rtol=0, atol=1e-5)
    torch.testing.assert_close(alone, cases["none.logits"], rtol=0, atol=1e-5)
    model.save_adapter(tmp_path / "again", name, format="adapterhub")
    ours = torch.load(tmp_path / "again" / "pytorch_model_head.bin", weights_only=True)
    theirs = torch.load(root / "lang" / "pytorch_model_head.bin", weights_only=True)
    assert set(ours) == set(theirs) and all(torch.equal(ours[k], theirs[k]) for k in theirs)
    head_config = json.loads((tmp_path / "again" / "head_config.json").read_text())["config"]
    assert head_config == json.loads((root / "lang" / "head_config.json").read_text())["config"]
