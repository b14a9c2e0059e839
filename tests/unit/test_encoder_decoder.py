"""Encoder-decoders (BART, mBART, T5, mT5) on tiny random configs: stitching that leaves transformers' numerics alone
(training dropout included), AdapterHub's layer numbering across encoder and decoder, the cross-attention site,
the heads' pooling, and refusals. Parity with ``adapters`` 1.3.0 is tests/e2e/test_seq2seq_fixtures.py."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModel

from adapter_cli.errors import UnsupportedModel, UsageError
from conftest import FIXTURES, randomise, tiny_inputs, tiny_model

FAMILIES = ("bart", "mbart", "t5", "mt5")


def _inputs():
    ids, mask = tiny_inputs(vocab=100)
    ids[:, -1] = 3  # each row ends with the end-of-sequence token (the tiny configs' eos id)
    ids[1, -3] = 3
    return ids, mask


@pytest.mark.parametrize("family", FAMILIES)
def test_inactive_adapters_leave_training_forward_bit_identical(family: str) -> None:
    """The sites take the layers' functional dropout over (adapters must see h after it): with no adapter active,
    a training forward (dropout 0.3, same seed) equals plain transformers' bit for bit."""
    model = tiny_model(family, **{"dropout_rate" if "t5" in family else "dropout": 0.3})
    plain = AutoModel.from_config(model.config)
    plain.load_state_dict(model.base.state_dict())
    model.add_adapter("a", "houlsby", {"cross_adapter": True})
    ids, mask = _inputs()
    model.train()
    plain.train()
    torch.manual_seed(5)
    ours = model(input_ids=ids, attention_mask=mask, active=None, head=None).last_hidden_state
    torch.manual_seed(5)
    theirs = plain(input_ids=ids, attention_mask=mask, decoder_input_ids=model._shift_right(ids)).last_hidden_state
    assert torch.equal(ours, theirs)
    torch.manual_seed(5)
    active = model(input_ids=ids, attention_mask=mask, active="a", head=None).last_hidden_state
    assert not torch.equal(active, theirs)


@pytest.mark.parametrize("family", ["bart", "t5"])
def test_layers_are_numbered_across_encoder_and_decoder(family: str) -> None:
    """AdapterHub's numbering: the decoder's layers follow the encoder's, so leave_out [1, 2] leaves out the
    encoder's last layer and the decoder's first; cross-attention sites are in decoder layers only."""
    model = tiny_model(family)
    assert (model.num_layers, model.encoder_layers) == (4, 2)
    model.add_adapter("a", "houlsby", {"cross_adapter": True, "leave_out": [1, 2]})
    sites = {(loc, layer) for loc, layer, _ in model.adapters["a"].sites()}
    assert sites == {("mh_adapter", 0), ("output_adapter", 0), ("mh_adapter", 3), ("output_adapter", 3),
                     ("cross_adapter", 3)}
    counts = model.adapters["a"].config.parameter_count(model.hidden_size, model.num_layers,
                                                        encoder_layers=model.encoder_layers)
    assert counts["parameters"] == sum(p.numel() for p in model.adapters["a"].parameters())
    if family == "bart":
        assert model._site("cross_adapter", 3).layer_norm is model.base.decoder.layers[1].encoder_attn_layer_norm
    else:  # T5's decoder feed-forward is its third sub-layer; its sites hook each sub-layer's Dropout
        assert model._sites[("output_adapter", 3)].location == "output_adapter"
        assert "cross_adapter" in model.base.decoder.block[1].layer[1].dropout._adapt_sites
        assert "output_adapter" in model.base.decoder.block[1].layer[2].dropout._adapt_sites
        assert "output_adapter" in model.base.encoder.block[0].layer[1].dropout._adapt_sites


def test_cross_adapter_is_refused_where_there_is_no_cross_attention() -> None:
    with pytest.raises(UnsupportedModel, match="has cross_adapter: true, but BERT models have no cross-attention"):
        tiny_model("bert").add_adapter("a", "pfeiffer", {"cross_adapter": True})


def test_other_methods_are_refused_in_one_line() -> None:
    with pytest.raises(UnsupportedModel, match="adapt stitches only bottleneck, lora, prefix tuning and invertible "
                                               "adapters into BART models so far"):
        tiny_model("bart").add_adapter("a", "prompt_tuning")


@pytest.mark.parametrize("family", ["bart", "t5"])
def test_prefixes_join_each_kind_of_attention_as_adapterhub_places_them(family: str) -> None:
    """One generator per location (the encoder's self-attention, the decoder's self- and cross-attention), each
    over its layers not left out; the counts equal the built modules; every generator trains."""
    from adapter_cli.errors import ConfigError

    model = tiny_model(family)
    model.add_adapter("p", "prefix_tuning", {"prefix_length": 3, "bottleneck_size": 8, "leave_out": [1, 2],
                                             "use_gating": True})
    adapter = model.adapters["p"]
    assert adapter.locations == {"encoder": [0], "self": [3], "cross": [3]}
    assert sorted(adapter.sites(), key=str) == sorted([("attention", 0, adapter), ("attention", 3, adapter),
                                                       ("cross_attention", 3, adapter)], key=str)
    counts = adapter.config.parameter_count(model.hidden_size, model.num_layers, encoder_layers=model.encoder_layers)
    assert counts["parameters"] == sum(p.numel() for p in adapter.parameters())
    assert [p["location"] for p in counts["placements"]] == ["attention", "attention", "cross_attention"]
    model.add_head("p", "seq2seq_lm", vocab_size=model.vocab_size)
    ids, mask = _inputs()
    model.train()
    model(input_ids=ids, attention_mask=mask, labels=ids[:, :3], active="p").loss.backward()
    for location in ("encoder", "self", "cross"):
        grad = adapter.prefixes[location].control_trans[2].weight.grad
        assert grad is not None and bool(grad.abs().sum() > 0), location
    assert adapter.cross_gates["3"].weight.grad is not None
    model.add_adapter("q", "prefix_tuning", {"encoder_prefix": False, "cross_prefix": False})
    assert model.adapters["q"].locations == {"self": [2, 3]}
    with pytest.raises(ConfigError, match="leaves no attention to prefix"):
        model.add_adapter("r", "prefix_tuning", {"encoder_prefix": False, "leave_out": [2, 3]})


def test_a_prefix_needs_as_many_heads_in_the_decoder_as_in_the_encoder() -> None:
    with pytest.raises(UnsupportedModel, match="decoder has 2 attention heads where its encoder has 4"):
        tiny_model("bart", decoder_attention_heads=2).add_adapter("p", "prefix_tuning")
    with pytest.raises(UnsupportedModel, match="adapter 'm' has a prefix"):  # a union names itself too
        tiny_model("bart", decoder_attention_heads=2).add_adapter("m", "mam")


def test_prefix_files_of_a_t5_with_attention_wider_than_d_model_pass_the_shape_check(tmp_path) -> None:
    """mT5, Flan-T5 and T5 v1.1 have heads x d_kv above d_model: the check reads the key width off the
    generators' output (found in review: `adapt inspect` refused these files), and still finds a wrong one."""
    from safetensors.torch import load_file, save_file

    from adapter_cli.errors import ArtifactError
    from adapter_cli.formats import check_weight_shapes, read_adapter

    model = tiny_model("t5", d_kv=16)  # 4 heads x 16 = 64, d_model 32
    for preset in ("prefix_tuning", "prefix_tuning_flat", "unipelt"):
        model.add_adapter(preset, preset)
        for fmt in ("adapt", "adapterhub"):
            out = model.save_adapter(tmp_path / fmt / preset, preset, with_head=False, format=fmt)
            check_weight_shapes(read_adapter(out, shapes_only=True))
    (file,) = (tmp_path / "adapt" / "prefix_tuning").glob("*.safetensors")
    weights = load_file(str(file))
    key = next(k for k in weights if k.endswith("prefixes.cross.control_trans.2.bias"))
    assert tuple(weights[key].shape) == (2 * 2 * 64,)  # 2 decoder layers x keys and values x 4 heads x 16
    weights[key] = weights[key][:-2].clone()
    save_file(weights, str(file))
    with pytest.raises(ArtifactError, match="prefixes.cross.control_trans.2.bias"):
        check_weight_shapes(read_adapter(tmp_path / "adapt" / "prefix_tuning", shapes_only=True))


@pytest.mark.parametrize("family", ["bart", "t5"])
def test_gated_adapters_generate_by_recomputing_the_decoder(family: str) -> None:
    """A gated bottleneck adapter's gate averages over the decoder's whole sequence: each step reads it all
    again, and the tokens are those of greedy whole forwards."""
    from adapter_cli.generation import Sampling, generate

    model = tiny_model(family)
    model.add_adapter("g", "pfeiffer", {"use_gating": True, "cross_adapter": True})
    randomise(model.adapters["g"], scale=0.5)
    model.add_head("s", "seq2seq_lm", vocab_size=model.vocab_size)
    randomise(model.heads["s"], seed=3, scale=1.0)
    ids, mask = _inputs()
    got = generate(model, ids, mask, "g", "s", Sampling(max_new_tokens=4), eos_token_id=None, pad_token_id=0)
    start = model.config.decoder_start_token_id
    seq = torch.full((ids.shape[0], 1), start if start is not None else model.config.eos_token_id)
    with torch.no_grad():
        for _ in range(4):
            logits = model(input_ids=ids, attention_mask=mask, decoder_input_ids=seq, active="g", head="s").logits
            seq = torch.cat([seq, logits[:, -1].argmax(-1, keepdim=True)], dim=-1)
    assert got.tokens == seq[:, 1:].tolist()


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


def test_classification_with_decoder_ids_of_another_length_is_refused() -> None:
    """The eos positions are the input's: a decoder reading a longer sequence would be read at the wrong token
    (found in review: exit 0 with a wrong answer), a shorter one out of range."""
    model = tiny_model("bart")
    model.add_head("c", "classification", num_labels=3)
    ids, mask = _inputs()
    for length in (ids.shape[1] + 2, 2):
        with pytest.raises(UsageError, match="need input_ids and a decoder reading as many tokens"):
            model(input_ids=ids, attention_mask=mask, decoder_input_ids=torch.full((3, length), 3), active=None)
    same = model(input_ids=ids, attention_mask=mask, decoder_input_ids=model._shift_right(ids), active=None)
    assert torch.allclose(same.logits, model(input_ids=ids, attention_mask=mask, active=None).logits)


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


def test_mbart_decoder_starts_with_each_rows_language_code() -> None:
    """mBART shifts its labels (and inputs) as transformers and AdapterHub do: the row's last token before the
    padding (the language code) comes first; BART and T5 start with decoder_start_token_id."""
    from transformers.models.mbart.modeling_mbart import shift_tokens_right

    labels = torch.tensor([[11, 12, 3, 50, 0, 0], [13, 14, 15, 3, 51, 0]])
    assert torch.equal(tiny_model("mbart")._shift_right(labels), shift_tokens_right(labels, 0))
    assert tiny_model("bart")._shift_right(labels)[:, 0].tolist() == [3, 3]


@pytest.mark.parametrize("family", ["bart", "t5"])
def test_parallel_seq2seq_loss_reads_the_labels(family: str) -> None:
    """Under parallel(a,b) each member's seq2seq loss is the one it has alone: the decoder reads the labels."""
    model = tiny_model(family)
    for name in ("a", "b"):
        model.add_adapter(name, "pfeiffer", {"cross_adapter": True})
        model.add_head(name, "seq2seq_lm", vocab_size=model.vocab_size)
    randomise(model.adapters, seed=4)
    ids, mask = _inputs()
    labels = torch.tensor([[11, 12, 3], [13, 3, -100], [14, 15, 3]])
    both = model(input_ids=ids, attention_mask=mask, labels=labels, active="parallel(a,b)")
    for branch, name in zip(both.branches, ("a", "b")):
        alone = model(input_ids=ids, attention_mask=mask, labels=labels, active=name)
        assert torch.allclose(branch.loss, alone.loss, atol=1e-6) and torch.allclose(branch.logits, alone.logits,
                                                                                      atol=1e-5)


def test_adapterhub_file_for_another_split_of_layers_is_refused() -> None:
    """The fixture's BART has 3 encoder and 2 decoder layers; a model of 2 + 3 has as many layers in all."""
    from adapter_cli.errors import ArtifactError

    model = tiny_model("bart", d_model=40, encoder_layers=2, decoder_layers=3, vocab_size=120)
    with pytest.raises(ArtifactError, match="name encoder layer 2, but this model's encoder has 2 layers"):
        model.load_adapter(FIXTURES / "seq2seq_bart" / "adapters" / "pf")


def test_generation_starts_with_the_forced_first_token() -> None:
    """A config's forced_bos_token_id (BART's <s>, mBART-50's language) follows the decoder's start token and is
    not counted as new: the steps equal whole forwards from [start, forced]."""
    from adapter_cli.generation import Sampling, generate

    model = tiny_model("bart")
    assert model.forced_bos_token_id is None
    model.config.forced_bos_token_id = 7  # transformers 5 keeps it in generation_config.json (next test)
    model.add_adapter("a", "pfeiffer", {"cross_adapter": True})
    model.add_head("a", "seq2seq_lm", vocab_size=model.vocab_size)
    randomise(model.adapters, seed=5)
    ids, mask = _inputs()
    got = generate(model, ids, mask, "a", "a", Sampling(max_new_tokens=3), eos_token_id=None, pad_token_id=0)
    seq = torch.tensor([[3, 7]] * ids.shape[0])
    for _ in range(3):
        logits = model(input_ids=ids, attention_mask=mask, decoder_input_ids=seq, active="a").logits[:, -1]
        seq = torch.cat([seq, logits.argmax(-1, keepdim=True)], dim=1)
    assert got.tokens == seq[:, 2:].tolist()


def test_forced_first_token_is_read_from_the_model_directory(tmp_path) -> None:
    import json

    from adapter_cli import AdapterModel

    tiny_model("bart").base.save_pretrained(tmp_path)
    assert AdapterModel.from_pretrained(tmp_path).forced_bos_token_id is None
    (tmp_path / "generation_config.json").write_text(json.dumps({"forced_bos_token_id": 0}))
    assert AdapterModel.from_pretrained(tmp_path).forced_bos_token_id == 0
