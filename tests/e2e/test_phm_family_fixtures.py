"""Compacter (a bottleneck adapter with PHM layers) on BART, T5 and GPT-2 against ``adapters`` 1.3.0:
tests/fixtures/phm_families, made by tests/fixtures/make_phm_family_fixtures.py (the base models of the
seq2seq and GPT-2 fixtures, a Compacter with PHM dimension 2 and reduction factor 4, weights redrawn)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import FIXTURES

ROOT = FIXTURES / "phm_families"


@pytest.mark.parametrize("family", ["bart", "t5", "gpt2"])
def test_compacter_matches_the_reference(family: str) -> None:
    from adapter_cli import AdapterModel

    meta = json.loads((ROOT / family / "cases.json").read_text())
    expected = load_file(str(ROOT / family / "cases.safetensors"))
    model = AdapterModel.from_pretrained(FIXTURES / meta["base"]).eval()
    model.load_adapter(ROOT / family / meta["adapter"], with_head=False)
    ids = expected["input_ids"]
    extra = {} if family == "gpt2" else {"decoder_input_ids": ids}
    with torch.no_grad():
        states = model(input_ids=ids, active=meta["adapter"], head=None, **extra).last_hidden_state
        plain = model(input_ids=ids, active=None, head=None, **extra).last_hidden_state
    assert (states - expected["last_hidden_state"]).abs().max() <= 1e-5
    assert (plain - expected["last_hidden_state"]).abs().max() > 1e-3  # the adapter is what the test checks
