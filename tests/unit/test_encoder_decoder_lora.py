"""LoRA-family adapters on encoder-decoders (BART, mBART, T5, mT5) on tiny random configs: where they go (the
decoder's cross-attention too, as AdapterHub wraps it), what the reference cannot run (``parallel``), the
hook order at a module that is both a LoRA layer and a bottleneck site (BART's fc2), merging, formats and
refusals. Parity with ``adapters`` 1.3.0 is tests/e2e/test_seq2seq_fixtures.py (``lo``, ``ia``, ``do``, ``ve``)."""

from __future__ import annotations

import pytest
import torch

from adapter_cli.errors import UsageError
from conftest import FIXTURES, randomise, tiny_model

FAMILIES = ("bart", "mbart", "t5", "mt5")
ALL = {"r": 2, "alpha": 4, "attn_matrices": ["q", "k", "v"], "intermediate_lora": True, "output_lora": True}


def _inputs():
    ids = torch.tensor([[21, 22, 23, 24, 25, 3], [31, 32, 33, 3, 0, 0], [41, 42, 43, 44, 3, 0]])
    return ids, (ids != 0).long()


def _model(family: str, *adapters: tuple[str, str, dict]):
    model = tiny_model(family)
    for name, preset, overrides in adapters:
        model.add_adapter(name, preset, overrides)
        model.add_head(name, "seq2seq_lm", vocab_size=model.vocab_size)
    randomise(model.adapters, seed=7, scale=0.2)
    return model


@pytest.mark.parametrize("family", FAMILIES)
def test_decoder_layers_change_their_cross_attention_too(family: str) -> None:
    """leave_out counts across encoder (layers 0, 1) and decoder (2, 3); only decoder layers have cross_q/k/v; the
    counts from the configuration equal the modules built, and the weights' shapes check."""
    from adapter_cli.formats import check_weight_shapes
    from adapter_cli.formats.artifacts import AdapterArtifact

    model = tiny_model(family)
    model.add_adapter("a", "lora", {**ALL, "leave_out": [1, 3]})
    sites = {(matrix, layer) for matrix, layer, _ in model.adapters["a"].sites()}
    assert sites == {(m, layer) for m in ("q", "k", "v", "intermediate", "output") for layer in (0, 2)} \
        | {("cross_q", 2), ("cross_k", 2), ("cross_v", 2)}
    cross = model._linear_sites[("cross_v", 2)].linear
    assert cross is (model.base.decoder.layers[0].encoder_attn.v_proj if "bart" in family
                     else model.base.decoder.block[0].layer[1].EncDecAttention.v)
    config = model.adapters["a"].config
    counts = config.parameter_count(model.hidden_size, model.num_layers, model.intermediate_size,
                                    model.linear_shapes, model.encoder_layers)
    assert counts["parameters"] == sum(p.numel() for p in model.adapters["a"].parameters())
    weights = {k: v.detach() for k, v in model.adapters["a"].state_dict().items()}
    check_weight_shapes(AdapterArtifact("a", config, weights, model.base_info))


@pytest.mark.parametrize("family", ["bart", "t5"])
def test_parallel_members_answer_as_alone(family: str) -> None:
    """adapters 1.3.0 fails on parallel(...) of LoRA-family adapters in these models (the fixture generator
    records a TypeError); ours runs each member on its copy of the batch, as it would run alone."""
    model = _model(family, ("lo", "lora", ALL), ("ia", "ia3", {}), ("pf", "pfeiffer", {"cross_adapter": True}))
    ids, mask = _inputs()
    labels = torch.tensor([[11, 12, 3], [13, 3, -100], [14, 15, 3]])
    with torch.no_grad():
        both = model(input_ids=ids, attention_mask=mask, labels=labels, active="parallel(lo,ia,pf)")
        for branch, name in zip(both.branches, ("lo", "ia", "pf")):
            alone = model(input_ids=ids, attention_mask=mask, labels=labels, active=name)
            assert torch.allclose(branch.logits, alone.logits, atol=1e-5), name
            assert torch.allclose(branch.loss, alone.loss, atol=1e-6), name


def test_lora_and_bottleneck_at_one_module_agree_in_either_order() -> None:
    """BART's output adapter reads fc2's output, which an output LoRA changes: the LoRA's hook runs first
    whichever was attached first (the other order gave answers off by ~1 in the reference fixture)."""
    ids, mask = _inputs()
    outs = []
    for order in ((("lo", "lora", ALL), ("pf", "pfeiffer", {})), (("pf", "pfeiffer", {}), ("lo", "lora", ALL))):
        model = tiny_model("bart")
        for name, preset, overrides in order:
            model.add_adapter(name, preset, overrides)
        randomise(model.adapters["lo"], seed=8, scale=0.2)
        randomise(model.adapters["pf"], seed=9, scale=0.2)
        with torch.no_grad():
            outs.append(model(input_ids=ids, attention_mask=mask, active="stack(lo,pf)", head=None).last_hidden_state)
    assert torch.equal(outs[0], outs[1])


@pytest.mark.parametrize("family", ["bart", "t5"])
def test_merged_lora_answers_as_unmerged(family: str) -> None:
    model = _model(family, ("lo", "lora", ALL))
    ids, mask = _inputs()
    with torch.no_grad():
        want = model(input_ids=ids, attention_mask=mask, active="lo").logits
        model.merge_adapter("lo")
        got = model(input_ids=ids, attention_mask=mask, active="lo").logits
    assert torch.allclose(got, want, atol=1e-5)


def test_a_gated_t5_changes_the_linear_half_of_its_feed_forward(tmp_path) -> None:
    """AdapterHub's T5 LoRA changes wi, or wi_1 where the feed-forward is gated (T5 v1.1, Flan-T5; the
    t5gated fixture checks the numbers). Our files record the layout, AdapterHub's say it by their weight names,
    and an adapter on one layout's up-projection is refused by the other (the shapes are alike)."""
    from adapter_cli.errors import BaseModelMismatch
    from adapter_cli.formats import read_adapter

    gated = tiny_model("t5", feed_forward_proj="gated-gelu")
    gated.add_adapter("a", "ia3")
    assert gated._linear_sites[("intermediate", 0)].linear is gated.base.encoder.block[0].layer[1].DenseReluDense.wi_1
    assert gated.intermediate_size == gated.config.d_ff
    for fmt in ("adapt", "adapterhub"):
        saved = gated.save_adapter(tmp_path / fmt, "a", format=fmt, safetensors=True)
        assert read_adapter(saved, shapes_only=True).base.gated_feed_forward is True
        with pytest.raises(BaseModelMismatch, match="up-projection of a T5 with a gated feed-forward"):
            tiny_model("t5").load_adapter(saved)
        tiny_model("t5", feed_forward_proj="gated-gelu").load_adapter(saved)
    plain = tiny_model("t5")
    plain.add_adapter("q", "lora")  # no feed-forward matrix: loads into either layout
    saved = plain.save_adapter(tmp_path / "q", "q")
    assert read_adapter(saved).base.gated_feed_forward is False
    tiny_model("t5", feed_forward_proj="gated-gelu").load_adapter(saved)


def test_adapterhub_lora_files_are_inspected_without_a_model() -> None:
    """The fixture's lo leaves out layers 1 and 3 of 3 + 2: its decoder layer (AdapterHub's decoder.layers.1) is
    global layer 4, and the least encoder depth its weights allow is 3."""
    from adapter_cli.formats import check_weight_shapes, read_adapter

    artifact = read_adapter(FIXTURES / "seq2seq_bart" / "adapters" / "lo", shapes_only=True)
    assert artifact.base.encoder_layers == 3
    assert {k.split(".")[1] for k in artifact.weights if k.startswith("cross_")} == {"4"}
    check_weight_shapes(artifact)


def test_peft_format_is_refused_for_encoder_decoders(tmp_path) -> None:
    model = tiny_model("bart")
    model.add_adapter("a", "lora")
    with pytest.raises(UsageError, match="it changes a layer of BART, an encoder-decoder, which adapt does not "
                                         "write in PEFT's layout"):
        model.save_adapter(tmp_path / "a", "a", format="peft")
    assert not (tmp_path / "a").exists()


def test_our_format_round_trip_answers_the_same(tmp_path) -> None:
    from adapter_cli import AdapterModel

    model = _model("mt5", ("lo", "lora", {**ALL, "leave_out": [2]}))
    model.base.save_pretrained(tmp_path / "base")
    model.save_adapter(tmp_path / "lo", "lo")
    fresh = AdapterModel.from_pretrained(tmp_path / "base").eval()
    fresh.load_adapter(tmp_path / "lo")
    ids, mask = _inputs()
    with torch.no_grad():
        assert torch.equal(fresh(input_ids=ids, attention_mask=mask, active="lo").logits,
                           model(input_ids=ids, attention_mask=mask, active="lo").logits)


# ====================================================================== invertible adapters


@pytest.mark.parametrize("family", FAMILIES)
def test_an_invertible_adapter_runs_on_the_encoders_embeddings_only(family: str) -> None:
    """AdapterHub's place: BART's after layernorm_embedding, T5's after the embeddings' dropout (the first block's
    input; T5 calls that Dropout again on its output, which must stay untouched); never the decoder's. The
    fixtures (`inv`) check the numbers; this checks where it runs and that the decoder's input is untouched."""
    model = tiny_model(family)
    model.add_adapter("inv", "seq_bn_inv")
    randomise(model.adapters["inv"].invertible, seed=3, scale=0.2)
    seen: dict[str, list[torch.Tensor]] = {"encoder": [], "decoder": []}
    stacks = {"encoder": model.base.encoder, "decoder": model.base.decoder}
    first = {k: (v.layers[0] if "bart" in family else v.block[0]) for k, v in stacks.items()}
    for side, layer in first.items():
        layer.register_forward_pre_hook(lambda m, a, kw, side=side: seen[side].append(
            (a[0] if a else kw["hidden_states"]).detach().clone()), with_kwargs=True)
    ids, mask = _inputs()
    with torch.no_grad():
        model(input_ids=ids, attention_mask=mask, active=None, head=None)
        model(input_ids=ids, attention_mask=mask, active="inv", head=None)
    layer = model.adapters["inv"].invertible
    assert torch.allclose(seen["encoder"][1], layer(seen["encoder"][0]), atol=1e-6)
    assert not torch.allclose(seen["encoder"][1], seen["encoder"][0], atol=1e-3)
    assert torch.equal(seen["decoder"][1], seen["decoder"][0])


def test_gradient_checkpointing_keeps_t5s_invertible_gradients() -> None:
    """T5's invertible layer runs in a pre-hook of the first block, inside its checkpointed call."""
    grads = []
    for checkpointing in (False, True):
        model = tiny_model("t5")
        model.add_adapter("inv", "seq_bn_inv")
        model.add_head("inv", "seq2seq_lm", vocab_size=model.vocab_size)
        randomise(model.adapters, seed=3, scale=0.2)
        model.base.requires_grad_(False)
        model.train_adapters(["inv"])
        if checkpointing:
            model.gradient_checkpointing_enable()
        model.train()
        ids, mask = _inputs()
        labels = torch.tensor([[11, 12, 3], [13, 3, -100], [14, 15, 3]])
        model(input_ids=ids, attention_mask=mask, labels=labels, active="inv").loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.adapters["inv"].named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and any(k.startswith("invertible.") for k in grads[0])
    for name, grad in grads[0].items():
        assert torch.allclose(grads[1][name], grad, atol=1e-6), name


# ====================================================================== found in review


def test_vera_on_a_t5_with_attention_wider_than_its_hidden_size(tmp_path) -> None:
    """t5-3b's heads x d_kv is wider than d_model: VeRA's shared projections take the attention's shape, and the
    counts and the shape check without a model agree with the modules (the check refused its own files)."""
    from adapter_cli.formats import check_weight_shapes, read_adapter

    model = tiny_model("t5", d_kv=16)
    model.add_adapter("ve", "vera")
    assert model.linear_shapes["q"] == (model.hidden_size, 64) != (model.hidden_size, model.hidden_size)
    counts = model.adapters["ve"].config.parameter_count(model.hidden_size, model.num_layers, model.intermediate_size,
                                                         model.linear_shapes, model.encoder_layers)
    assert counts["parameters"] == sum(p.numel() for p in model.adapters["ve"].parameters())
    for fmt in ("adapt", "adapterhub"):
        saved = model.save_adapter(tmp_path / fmt, "ve", format=fmt, safetensors=True)
        check_weight_shapes(read_adapter(saved, shapes_only=True))


def test_a_union_of_lora_and_a_cross_attention_adapter_in_adapterhubs_format(tmp_path) -> None:
    """A union's decoder layers are renumbered under its parts' keys too (they stayed d<i> and were refused)."""
    from adapter_cli.formats import check_weight_shapes, read_adapter

    union = {"architecture": "union", "configs": [{"architecture": "lora", "r": 2, "leave_out": [0]},
                                                  {"architecture": "bottleneck", "reduction_factor": 4,
                                                   "cross_adapter": True, "mh_adapter": False,
                                                   "output_adapter": False}]}
    model = tiny_model("bart")
    model.add_adapter("u", union)
    randomise(model.adapters["u"], seed=6, scale=0.2)
    saved = model.save_adapter(tmp_path / "u", "u", format="adapterhub", with_head=False, safetensors=True)
    artifact = read_adapter(saved, shapes_only=True)
    assert artifact.base.encoder_layers == 2 and "parts.lora.cross_q.3.lora_A" in artifact.weights
    check_weight_shapes(artifact)
    fresh = tiny_model("bart")
    fresh.load_adapter(saved, with_head=False)
    ids, mask = _inputs()
    with torch.no_grad():
        want = model(input_ids=ids, attention_mask=mask, active="u", head=None).last_hidden_state
        got = fresh(input_ids=ids, attention_mask=mask, active="u", head=None).last_hidden_state
    assert torch.equal(got, want)


def test_a_peft_file_for_an_encoder_decoder_is_refused_by_name(tmp_path) -> None:
    import json

    from safetensors.torch import save_file

    from adapter_cli.errors import ArtifactError
    from adapter_cli.formats import read_adapter

    (tmp_path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 2, "lora_alpha": 4,
                                                              "target_modules": ["q_proj"]}))
    prefix = "base_model.model.model"
    save_file({f"{prefix}.{side}.layers.0.self_attn.q_proj.lora_{m}.weight": torch.zeros(2, 2)
               for side in ("encoder", "decoder") for m in "AB"}, str(tmp_path / "adapter_model.safetensors"))
    with pytest.raises(ArtifactError, match="changes model.decoder.layers.0.self_attn.q_proj, a layer of BART, an "
                                            "encoder-decoder, which adapt does not read from PEFT's files"):
        read_adapter(tmp_path)


@pytest.mark.parametrize("family", ["bart", "t5"])
def test_parallel_on_embedded_inputs(family: str) -> None:
    """inputs_embeds are replicated per member as input_ids are (it crashed with no input_ids)."""
    model = _model(family, ("a", "pfeiffer", {"cross_adapter": True}), ("b", "lora", ALL))
    ids, _ = _inputs()
    embedded = model.base.get_input_embeddings()(ids)
    with torch.no_grad():
        both = model(inputs_embeds=embedded, decoder_input_ids=ids, active="parallel(a,b)")
        for branch, name in zip(both.branches, ("a", "b")):
            alone = model(inputs_embeds=embedded, decoder_input_ids=ids, active=name)
            assert torch.allclose(branch.logits, alone.logits, atol=1e-5), name


def test_a_union_file_is_inspected_by_each_parts_leave_out(tmp_path) -> None:
    """Without a model the encoder depth is the least that no part's own decoder weights fall on that part's
    leave_out: here layer 3 (the decoder's second) is left out by the LoRA only, and the bottleneck has weights
    there (it was guessed as 4 against every part's leave_out, and the file refused)."""
    from adapter_cli.formats import check_weight_shapes, read_adapter

    union = {"architecture": "union", "configs": [{"architecture": "lora", "r": 2, "leave_out": [1, 3]},
                                                  {"architecture": "bottleneck", "reduction_factor": 4}]}
    model = tiny_model("t5")
    model.add_adapter("u", union)
    saved = model.save_adapter(tmp_path / "u", "u", format="adapterhub", with_head=False, safetensors=True)
    artifact = read_adapter(saved, shapes_only=True)
    assert artifact.base.encoder_layers == 2
    check_weight_shapes(artifact)


def test_our_files_without_the_layout_take_the_familys(tmp_path) -> None:
    """Files written before base_model.gated_feed_forward: a T5 one changed wi, an mT5 one wi_1."""
    import json

    from adapter_cli.errors import BaseModelMismatch

    model = tiny_model("t5")
    model.add_adapter("a", "ia3")
    saved = model.save_adapter(tmp_path / "a", "a")
    meta = json.loads((saved / "adapter_config.json").read_text())
    del meta["base_model"]["gated_feed_forward"]
    (saved / "adapter_config.json").write_text(json.dumps(meta))
    tiny_model("t5").load_adapter(saved)
    with pytest.raises(BaseModelMismatch, match="a plain feed-forward \\(wi\\), but this model has a gated"):
        tiny_model("t5", feed_forward_proj="gated-gelu").load_adapter(saved)


@pytest.mark.parametrize("family", ["bert", "gpt2"])
def test_parallel_with_position_ids(family: str) -> None:
    model = tiny_model(family)
    for name in ("a", "b"):
        model.add_adapter(name, "pfeiffer")
        model.add_head(name, "classification", num_labels=2)
    randomise(model.adapters, seed=2, scale=0.2)
    ids = torch.tensor([[21, 22, 23, 24], [31, 32, 33, 34], [41, 42, 43, 44]])
    positions = torch.arange(4).repeat(3, 1)
    with torch.no_grad():
        both = model(input_ids=ids, position_ids=positions, active="parallel(a,b)")
        for branch, name in zip(both.branches, ("a", "b")):
            alone = model(input_ids=ids, position_ids=positions, active=name)
            assert torch.allclose(branch.logits, alone.logits, atol=1e-6), name
