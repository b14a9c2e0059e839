"""Encoder-decoders (BART, mBART) on tiny random configs: stitching that leaves transformers' numerics alone
(training dropout included), AdapterHub's layer numbering across encoder and decoder, the cross-attention site,
the heads' pooling, and refusals. Parity with ``adapters`` 1.3.0 is tests/e2e/test_seq2seq_fixtures.py."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModel

from adapter_cli.errors import UnsupportedModel, UsageError
from conftest import FIXTURES, tiny_inputs, tiny_model

FAMILIES = ("bart", "mbart")


def _inputs():
    ids, mask = tiny_inputs(vocab=100)
    ids[:, -1] = 3  # each row ends with the end-of-sequence token (the tiny configs' eos id)
    ids[1, -3] = 3
    return ids, mask


@pytest.mark.parametrize("family", FAMILIES)
def test_inactive_adapters_leave_training_forward_bit_identical(family: str) -> None:
    """The sites take the layers' functional dropout over (adapters must see h after it): with no adapter active,
    a training forward (dropout 0.3, same seed) equals plain transformers' bit for bit."""
    model = tiny_model(family, dropout=0.3)
    plain = AutoModel.from_config(model.config)
    plain.load_state_dict(model.base.state_dict())
    model.add_adapter("a", "houlsby", {"cross_adapter": True})
    ids, mask = _inputs()
    model.train()
    plain.train()
    torch.manual_seed(5)
    ours = model(input_ids=ids, attention_mask=mask, active=None, head=None).last_hidden_state
    torch.manual_seed(5)
    theirs = plain(input_ids=ids, attention_mask=mask).last_hidden_state
    assert torch.equal(ours, theirs)
    torch.manual_seed(5)
    active = model(input_ids=ids, attention_mask=mask, active="a", head=None).last_hidden_state
    assert not torch.equal(active, theirs)


def test_layers_are_numbered_across_encoder_and_decoder() -> None:
    """AdapterHub's numbering: the decoder's layers follow the encoder's, so leave_out [1, 2] leaves out the
    encoder's last layer and the decoder's first; cross-attention sites are in decoder layers only."""
    model = tiny_model("bart")
    assert (model.num_layers, model.encoder_layers) == (4, 2)
    model.add_adapter("a", "houlsby", {"cross_adapter": True, "leave_out": [1, 2]})
    sites = {(loc, layer) for loc, layer, _ in model.adapters["a"].sites()}
    assert sites == {("mh_adapter", 0), ("output_adapter", 0), ("mh_adapter", 3), ("output_adapter", 3),
                     ("cross_adapter", 3)}
    counts = model.adapters["a"].config.parameter_count(model.hidden_size, model.num_layers,
                                                        encoder_layers=model.encoder_layers)
    assert counts["parameters"] == sum(p.numel() for p in model.adapters["a"].parameters())
    assert model._site("cross_adapter", 3).layer_norm is model.base.decoder.layers[1].encoder_attn_layer_norm


def test_cross_adapter_is_refused_where_there_is_no_cross_attention() -> None:
    with pytest.raises(UnsupportedModel, match="has cross_adapter: true, but BERT models have no cross-attention"):
        tiny_model("bert").add_adapter("a", "pfeiffer", {"cross_adapter": True})


def test_other_methods_are_refused_in_one_line() -> None:
    with pytest.raises(UnsupportedModel, match="adapt stitches only bottleneck adapters into BART models so far"):
        tiny_model("bart").add_adapter("a", "lora")


def test_classification_reads_the_last_eos_and_needs_one() -> None:
    model = tiny_model("bart")
    model.add_head("c", "classification", num_labels=3)
    ids, mask = _inputs()
    out = model(input_ids=ids, attention_mask=mask, active=None)
    states = model(input_ids=ids, attention_mask=mask, active=None, head=None).last_hidden_state
    want = model.heads["c"].logits(states[:, -1])  # every row's last eos is its last position
    assert torch.allclose(out.logits, want, atol=1e-6)
    ids[2, -1] = 7
    with pytest.raises(UsageError, match="row 3 has no end-of-sequence token"):
        model(input_ids=ids, attention_mask=mask, active=None)


def test_seq2seq_loss_reads_the_labels_shifted_right() -> None:
    model = tiny_model("bart")
    model.add_adapter("a", "pfeiffer", {"cross_adapter": True})
    model.add_head("a", "seq2seq_lm", vocab_size=model.vocab_size)
    ids, mask = _inputs()
    labels = torch.tensor([[11, 12, 3, -100], [13, 3, -100, -100], [14, 15, 16, 3]])
    out = model(input_ids=ids, attention_mask=mask, labels=labels, active="a")
    decoder = torch.tensor([[3, 11, 12, 3], [3, 13, 3, 0], [3, 14, 15, 16]])
    logits = model(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder, active="a").logits
    want = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))
    assert torch.allclose(out.loss, want) and torch.equal(out.logits, logits)


def test_adapterhub_files_are_inspected_without_a_model() -> None:
    """AdapterHub's files do not record the encoder's depth: without a model it is the least the weights allow,
    here 3 (the decoder's first layer is left out, as global layer 3)."""
    from adapter_cli.formats import check_weight_shapes, read_adapter, read_fusion

    root = FIXTURES / "seq2seq_bart"
    artifact = read_adapter(root / "adapters" / "cr", shapes_only=True)
    assert artifact.base.encoder_layers == 3
    assert {int(k.split(".")[1]) for k in artifact.weights if k.startswith("cross_adapter.")} == {4}
    check_weight_shapes(artifact)
    fusion = read_fusion(root / "fusions" / "cr,cr2", shapes_only=True)
    assert fusion.base.encoder_layers == 3
    check_weight_shapes(fusion)
