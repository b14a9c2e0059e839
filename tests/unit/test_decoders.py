"""Pre-norm decoders (GPT-2, Llama, Mistral, Qwen2): bit-identity without adapters, the stitching against a reference
computed by hand, the methods and heads a decoder takes, last-token pooling, the causal-LM head (tied and
untied), the model's own LM head, generation and training."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from adapter_cli.errors import BaseModelMismatch, UnsupportedModel, UsageError
from conftest import (
    DECODER_TYPES, PAD_ID, randomise, save_tiny_decoder, tiny_decoder, tiny_decoder_config, tiny_model,
)

VOCAB = 70
FAMILY = {"gpt2": "GPT-2", "llama": "Llama", "mistral": "Mistral", "qwen2": "Qwen2"}
# Per family: the layer list, and per site the sub-layer whose output the adapter sees and the norm whose
# input is the residual (read from transformers' modeling code, not from adapter_cli's table).
LAYOUT = {
    "gpt2": ("h", {"mh": ("attn", "ln_1"), "out": ("mlp", "ln_2")}),
    "llama": ("layers", {"mh": ("self_attn", "input_layernorm"), "out": ("mlp", "post_attention_layernorm")}),
}
LAYOUT["mistral"] = LAYOUT["qwen2"] = LAYOUT["llama"]


def decoder_inputs(batch: int = 3, length: int = 7, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Random ids (never the specials 0-3) with row 1 right-padded by two."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, VOCAB, (batch, length), generator=g)
    mask = torch.ones_like(ids)
    mask[1, length - 2:] = 0
    ids[1, length - 2:] = PAD_ID
    return ids, mask


def plain_decoder(model_type: str, seed: int = 0, **overrides):
    from transformers import AutoModel

    torch.manual_seed(seed)
    return AutoModel.from_config(tiny_decoder_config(model_type, **overrides)).eval()


# ====================================================================== 1. bit identity


@pytest.mark.parametrize("model_type", DECODER_TYPES)
def test_no_active_adapter_is_bit_identical_to_transformers(model_type) -> None:
    plain = plain_decoder(model_type)
    model = tiny_decoder(model_type)
    ids, mask = decoder_inputs()
    with torch.no_grad():
        want = plain(input_ids=ids, attention_mask=mask).last_hidden_state
        fresh = model(input_ids=ids, attention_mask=mask).last_hidden_state
        model.add_adapter("a", "houlsby")
        model.add_adapter("b", "parallel")
        randomise(model.adapters["a"])
        randomise(model.adapters["b"], seed=4)
        inactive = model(input_ids=ids, attention_mask=mask).last_hidden_state
        other = model(input_ids=ids, attention_mask=mask, active="b").last_hidden_state  # a not in it
        model.add_adapter("c", "pfeiffer", {"leave_out": [0, 1]})  # no site at all: nothing runs
        nowhere = model(input_ids=ids, attention_mask=mask, active="c").last_hidden_state
        active = model(input_ids=ids, attention_mask=mask, active="a").last_hidden_state
    assert torch.equal(fresh, want)
    assert torch.equal(inactive, want)
    assert torch.equal(nowhere, want)
    assert (other - want).abs().max() > 1e-2
    assert (active - want).abs().max() > 1e-2  # the adapter really is in the forward pass


# ====================================================================== 2. stitching against a hand reference


def _bottleneck(adapter_weights: dict[str, torch.Tensor], a: torch.Tensor, act, scaling: float) -> torch.Tensor:
    down = F.linear(a, adapter_weights["down.weight"], adapter_weights["down.bias"])
    return F.linear(act(down), adapter_weights["up.weight"], adapter_weights["up.bias"]) * scaling


def _reference(model_type: str, weights: dict[str, dict[str, torch.Tensor]], layer: int, parallel: bool,
               scaling: float, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Plain transformers with hooks of this test's own: at each site of ``weights`` (``mh``/``out``) the
    sub-layer output x is replaced by what AdapterHub's pre-norm site hands on before the layer adds the
    residual r: ``up(x + r) + x`` (sequential) or ``up(r) * scaling + x`` (parallel); the layer then adds r."""
    plain = plain_decoder(model_type)
    layers_path, sites = LAYOUT[model_type]
    block = plain.get_submodule(layers_path)[layer]
    residual: dict[str, torch.Tensor] = {}
    for site, w in weights.items():
        sub, norm = sites[site]

        def keep(_m, args, site=site):
            residual[site] = args[0]

        def replace(_m, _args, output, site=site, w=w):
            x = output[0] if isinstance(output, tuple) else output
            r = residual.pop(site)
            new = (_bottleneck(w, r, F.relu, scaling) + x) if parallel else (_bottleneck(w, x + r, F.relu, 1.0) + x)
            return (new,) + tuple(output[1:]) if isinstance(output, tuple) else new

        block.get_submodule(norm).register_forward_pre_hook(keep)
        block.get_submodule(sub).register_forward_hook(replace)
    with torch.no_grad():
        return plain(input_ids=ids, attention_mask=mask).last_hidden_state


@pytest.mark.parametrize("model_type", DECODER_TYPES)
@pytest.mark.parametrize("preset, overrides, parallel", [
    ("pfeiffer", {"mh_adapter": True, "leave_out": [0]}, False),  # both sites of layer 1
    ("pfeiffer", {"leave_out": [1]}, False),  # after the MLP of layer 0
    ("parallel", {"leave_out": [0]}, True),  # beside the MLP of layer 1, scaling 4
], ids=["pfeiffer-mh-out", "pfeiffer-out", "par"])
def test_pre_norm_site_equals_adapterhub_formula(model_type, preset, overrides, parallel) -> None:
    model = tiny_decoder(model_type)
    model.add_adapter("a", preset, overrides)
    randomise(model.adapters["a"])
    ids, mask = decoder_inputs()
    layer = 1 if 0 in overrides["leave_out"] else 0
    state = model.adapters["a"].state_dict()
    weights = {}
    for site, location in (("mh", "mh_adapter"), ("out", "output_adapter")):
        prefix = f"{location}.{layer}."
        found = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if found:
            weights[site] = found
    assert set(weights) == ({"mh", "out"} if overrides.get("mh_adapter") else {"out"})
    assert not any(k.startswith(f"{loc}.{1 - layer}.") for k in state for loc in ("mh_adapter", "output_adapter"))
    scaling = 4.0 if parallel else 1.0
    assert model.adapters["a"].config.scaling == scaling
    want = _reference(model_type, weights, layer, parallel, scaling, ids, mask)
    with torch.no_grad():
        got = model(input_ids=ids, attention_mask=mask, active="a").last_hidden_state
        base = model(input_ids=ids, attention_mask=mask).last_hidden_state
    assert (want - base).abs().max() > 1e-2  # the reference really adapts
    assert torch.equal(got, want), (got - want).abs().max()


# ====================================================================== 3. methods


TAKES = dict.fromkeys(("gpt2", "llama", "mistral", "qwen2"), "bottleneck, lora, prefix tuning, invertible and reft")
REFUSED = [(model_type, preset, method) for model_type in DECODER_TYPES for preset, method in [
    ("lora", "lora"), ("ia3", "lora"), ("prefix_tuning", "prefix tuning"), ("prompt_tuning", "prompt tuning"),
    ("loreft", "reft"), ("mam", "prefix tuning"), ("seq_bn_inv", "invertible"), ("pfeiffer+inv", "invertible"),
] if method not in TAKES[model_type].replace(" and ", ", ").split(", ")]


@pytest.mark.parametrize("model_type, preset, method", REFUSED)
def test_methods_other_than_bottleneck_are_refused(model_type, preset, method) -> None:
    """The decoders take bottleneck adapters, the LoRA family and prefix tuning (tests/e2e/test_lora_fixtures.py
    and test_decoder_prefix_fixtures.py check those against AdapterHub)."""
    takes = TAKES[model_type]
    model = tiny_decoder(model_type)
    with pytest.raises(UnsupportedModel) as caught:
        model.add_adapter("x", preset)
    message = str(caught.value)
    assert "\n" not in message
    assert f"is a {method} adapter" in message
    assert f"{takes} adapters into {FAMILY[model_type]} models" in message
    assert "x" not in model.adapters and not model._sites and not model._linear_sites


def test_saved_prompt_adapter_is_refused_on_a_decoder(tmp_path) -> None:
    # A prompt-tuning adapter made on an encoder of the same shape, its recorded base relabelled as the decoder's.
    encoder = tiny_model("bert", hidden_size=32, num_hidden_layers=2)
    encoder.add_adapter("lo", "prompt_tuning")
    encoder.save_adapter(tmp_path / "lo", "lo")
    configs = [p for p in (tmp_path / "lo").iterdir() if p.suffix == ".json"]
    assert len(configs) == 1
    data = json.loads(configs[0].read_text())
    data["base_model"]["model_type"] = "gpt2"
    data["base_model"]["name_or_path"] = None
    configs[0].write_text(json.dumps(data))
    model = tiny_decoder("gpt2")
    with pytest.raises(UnsupportedModel, match=r"is a prompt tuning adapter, and adapt stitches only bottleneck, "
                                               r"lora, prefix tuning, invertible and reft adapters into GPT-2 models"):
        model.load_adapter(tmp_path / "lo")
    assert not model.adapters
    # and unrelabelled it is refused as made for another model type
    encoder.save_adapter(tmp_path / "lo2", "lo")
    with pytest.raises(BaseModelMismatch, match="made for a 'bert' model"):
        model.load_adapter(tmp_path / "lo2")


# ====================================================================== 4. heads a family carries


@pytest.mark.parametrize("model_type", DECODER_TYPES)
@pytest.mark.parametrize("head_type, kw", [("masked_lm", {"vocab_size": VOCAB}),
                                           ("multiple_choice", {"num_choices": 2})])
def test_encoder_heads_are_refused_on_decoders(model_type, head_type, kw) -> None:
    model = tiny_decoder(model_type)
    with pytest.raises(UnsupportedModel) as caught:
        model.add_head("h", head_type, **kw)
    assert str(caught.value) == (f"head 'h' is a {head_type} head, which {FAMILY[model_type]} models cannot carry; "
                                 "they take classification, multilabel_classification, tagging, question_answering, "
                                 "regression, causal_lm heads")
    assert "h" not in model.heads


def test_causal_lm_head_is_refused_on_bert() -> None:
    model = tiny_model("bert")
    with pytest.raises(UnsupportedModel) as caught:
        model.add_head("lm", "causal_lm", vocab_size=100)
    assert "\n" not in str(caught.value)
    assert "causal_lm head, which BERT models cannot carry" in str(caught.value)
    assert "lm" not in model.heads


# ====================================================================== 5. last-token pooling


def _by_hand(head, features: torch.Tensor) -> torch.Tensor:
    """The classification head [Dropout, Linear, tanh, Dropout, Linear] applied with its own weights."""
    first, last = head[1], head[4]
    return F.linear(torch.tanh(F.linear(features, first.weight, first.bias)), last.weight, last.bias)


@pytest.mark.parametrize("model_type", DECODER_TYPES)
def test_classification_reads_the_last_attended_token(model_type) -> None:
    model = tiny_decoder(model_type)
    model.add_adapter("a", "pfeiffer")
    model.add_head("a", num_labels=3)
    randomise(model.adapters["a"])
    randomise(model.heads["a"], seed=5)
    g = torch.Generator().manual_seed(7)
    ids = torch.randint(4, VOCAB, (4, 6), generator=g)
    cases = {
        # right padding (rows of length 6, 4, 1, 6 with a pad id inside a real row)
        "right": ([[1] * 6, [1] * 4 + [0] * 2, [1] + [0] * 5, [1] * 6], [5, 3, 0, 5]),
        # left padding
        "left": ([[1] * 6, [0] * 2 + [1] * 4, [0] * 5 + [1], [0, 1, 1, 1, 1, 1]], [5, 5, 5, 5]),
        # right padding, and a real token equal to the pad id in the middle of rows 0 and 1
        "pad id inside": ([[1] * 6, [1] * 5 + [0], [1] * 3 + [0] * 3, [1] * 2 + [0] * 4], [5, 4, 2, 1]),
    }
    for name, (mask_rows, positions) in cases.items():
        mask = torch.tensor(mask_rows)
        batch = torch.where(mask.bool(), ids, torch.full_like(ids, PAD_ID))
        if name == "pad id inside":
            batch[0, 2] = batch[1, 1] = PAD_ID
        with torch.no_grad():
            out = model(input_ids=batch, attention_mask=mask, active="a")
        assert out.head == "a"
        assert out.last_token.tolist() == positions, name
        rows = torch.arange(4)
        want = _by_hand(model.heads["a"], out.last_hidden_state[rows, torch.tensor(positions)])
        assert out.logits.shape == (4, 3)
        torch.testing.assert_close(out.logits, want, atol=0, rtol=0, msg=name)
    # no mask: the last position of every row
    with torch.no_grad():
        out = model(input_ids=ids, active="a")
    assert out.last_token.tolist() == [5] * 4
    torch.testing.assert_close(out.logits, _by_hand(model.heads["a"], out.last_hidden_state[:, -1]), atol=0, rtol=0)


@pytest.mark.parametrize("model_type", DECODER_TYPES)
def test_left_padded_classification_equals_the_text_alone(model_type) -> None:
    """Left padding moves no position: each row's positions count from its first token (GPT-2's absolute
    position embeddings would otherwise see the padded text elsewhere). Right padding keeps transformers'
    positions, as AdapterHub computes them."""
    model = tiny_decoder(model_type)
    model.add_adapter("a", "pfeiffer")
    model.add_head("a", num_labels=3)
    randomise(model.adapters["a"])
    randomise(model.heads["a"], seed=5)
    text = torch.tensor([[7, 8, 9, 10]])
    padded = torch.tensor([[PAD_ID, PAD_ID, 7, 8, 9, 10]])
    with torch.no_grad():
        alone = model(input_ids=text, active="a").logits
        left = model(input_ids=padded, attention_mask=torch.tensor([[0, 0, 1, 1, 1, 1]]), active="a").logits
        right = model(input_ids=torch.tensor([[7, 8, 9, 10, PAD_ID, PAD_ID]]),
                      attention_mask=torch.tensor([[1, 1, 1, 1, 0, 0]]), active="a").logits
    torch.testing.assert_close(left, alone, atol=1e-5, rtol=0)
    torch.testing.assert_close(right, alone, atol=1e-5, rtol=0)


# ====================================================================== 6. the causal-LM head


def _lm_model(model_type: str, **overrides):
    model = tiny_decoder(model_type, **overrides)
    model.add_adapter("a", "pfeiffer")
    model.add_head("lm", "causal_lm", vocab_size=VOCAB)
    randomise(model.adapters["a"])
    randomise(model.heads["lm"], seed=5, scale=0.1)
    return model


def test_causal_lm_head_is_tied_in_gpt2() -> None:
    model = _lm_model("gpt2")
    head = model.heads["lm"]
    index = head.config.decoder_index
    assert head.tied
    decoder = list(head.children())[-1]
    assert decoder.embeddings is model.base.get_input_embeddings()
    assert set(head.state_dict()) == {"0.weight", "0.bias", f"{index}.bias"}
    ids, mask = decoder_inputs()
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, active="a", head="lm")
        hidden = head.transform(out.last_hidden_state)
    want = F.linear(hidden, model.base.get_input_embeddings().weight, head.state_dict()[f"{index}.bias"])
    assert out.logits.shape == (3, 7, VOCAB)
    assert torch.equal(out.logits, want)


def test_causal_lm_head_is_untied_in_llama_without_tied_embeddings() -> None:
    model = _lm_model("llama", tie_word_embeddings=False)
    head = model.heads["lm"]
    index = head.config.decoder_index
    assert not head.tied
    assert set(head.state_dict()) == {"0.weight", "0.bias", f"{index}.weight", f"{index}.bias"}
    assert head.state_dict()[f"{index}.weight"].shape == (VOCAB, 32)
    assert not torch.equal(head.state_dict()[f"{index}.weight"], model.base.get_input_embeddings().weight)
    # the config's tie_word_embeddings decides (False by default for Llama, True for GPT-2)
    assert not tiny_decoder("llama").ties_lm_head(head.config)
    tied = tiny_decoder("llama", tie_word_embeddings=True)
    assert tied.ties_lm_head(head.config)
    tied.add_head("lm", "causal_lm", vocab_size=VOCAB)
    assert tied.heads["lm"].tied and f"{index}.weight" not in tied.heads["lm"].state_dict()


@pytest.mark.parametrize("model_type, overrides", [("gpt2", {}), ("llama", {"tie_word_embeddings": False}),
                                                   ("mistral", {})])
def test_causal_lm_loss_is_the_shifted_cross_entropy(model_type, overrides) -> None:
    model = _lm_model(model_type, **overrides)
    ids, mask = decoder_inputs()
    labels = ids.clone()
    labels[mask == 0] = -100
    labels[0, 3] = -100
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, active="a", labels=labels)
    logits = out.logits
    total, count = 0.0, 0
    for row in range(3):
        for t in range(6):  # the logits at t predict the token at t + 1
            target = int(labels[row, t + 1])
            if target == -100:
                continue
            total += float(-torch.log_softmax(logits[row, t].double(), -1)[target])
            count += 1
    assert count == 3 * 6 - 2 - 1
    assert out.loss.item() == pytest.approx(total / count, rel=1e-6)


@pytest.mark.parametrize("model_type, overrides", [("gpt2", {}), ("llama", {"tie_word_embeddings": False})])
@pytest.mark.parametrize("fmt, safetensors", [("adapt", False), ("adapterhub", False), ("adapterhub", True)])
def test_causal_lm_head_round_trip(tmp_path, model_type, overrides, fmt, safetensors) -> None:
    model = _lm_model(model_type, **overrides)
    model.save_head(tmp_path / "lm", "lm", format=fmt, safetensors=safetensors)
    again = tiny_decoder(model_type, **overrides)
    assert again.load_head(tmp_path / "lm") == "lm"
    assert again.heads["lm"].tied == model.heads["lm"].tied
    ids, mask = decoder_inputs()
    with torch.no_grad():
        want = model(input_ids=ids, attention_mask=mask, head="lm").logits
        got = again(input_ids=ids, attention_mask=mask, head="lm").logits
    assert torch.equal(got, want)


def test_tied_head_from_other_embeddings_is_refused(tmp_path) -> None:
    model = _lm_model("gpt2")
    model.save_head(tmp_path / "lm", "lm", format="adapterhub")
    path = tmp_path / "lm" / "pytorch_model_head.bin"
    weights = torch.load(path, weights_only=True)
    key = f"heads.lm.{model.heads['lm'].config.decoder_index}.weight"
    assert torch.equal(weights[key], model.base.get_input_embeddings().weight)  # AdapterHub stores the decoder
    tiny_decoder("gpt2").load_head(tmp_path / "lm", name="same")  # as saved: it loads
    weights[key] = weights[key].clone()
    weights[key][5, 3] += 0.25
    torch.save(weights, path)
    again = tiny_decoder("gpt2")
    with pytest.raises(BaseModelMismatch, match="was made on other word embeddings than this model's"):
        again.load_head(tmp_path / "lm")
    # a decoder made with another seed has other embeddings: refused as well, unedited
    model.save_head(tmp_path / "lm2", "lm", format="adapterhub")
    with pytest.raises(BaseModelMismatch, match="other word embeddings"):
        tiny_decoder("gpt2", seed=9).load_head(tmp_path / "lm2")


# ====================================================================== 7. the model's own LM head


@pytest.mark.parametrize("model_type, overrides", [("gpt2", {}), ("llama", {"tie_word_embeddings": False}),
                                                   ("mistral", {"tie_word_embeddings": True})])
def test_own_head_equals_transformers_causal_lm(tmp_path, model_type, overrides) -> None:
    from transformers import AutoModelForCausalLM

    from adapter_cli import AdapterModel
    from adapter_cli.lm_head import attach_own_head

    path = save_tiny_decoder(tmp_path / "m", model_type, seed=3, **overrides)
    reference = AutoModelForCausalLM.from_pretrained(path).eval()
    model = AdapterModel.from_pretrained(str(path)).eval()
    name = attach_own_head(model)
    assert name == "lm"
    assert model.heads[name].tied == (model_type != "llama")
    assert model.heads[name].config.layers == 1 and not model.heads[name].config.bias
    if model_type == "llama":  # not the embeddings: the checkpoint's own lm_head.weight
        assert not torch.equal(reference.lm_head.weight, reference.get_input_embeddings().weight)
    ids, mask = decoder_inputs()
    with torch.no_grad():
        want = reference(input_ids=ids, attention_mask=mask).logits
        got = model(input_ids=ids, attention_mask=mask, head=name).logits
    assert torch.equal(got, want)


def test_own_head_missing_from_a_bare_untied_checkpoint_is_one_line(tmp_path) -> None:
    from adapter_cli import AdapterModel
    from adapter_cli.lm_head import attach_own_head

    path = save_tiny_decoder(tmp_path / "bare", "llama", bare=True, tie_word_embeddings=False)
    model = AdapterModel.from_pretrained(str(path))
    with pytest.raises(UsageError) as caught:
        attach_own_head(model)
    message = str(caught.value)
    assert "\n" not in message
    assert "has no language-model head of its own" in message and "lm_head.weight" in message
    assert not model.heads
    # a model built from a config has no checkpoint to read it from: the same one line
    with pytest.raises(UsageError, match="has no language-model head of its own"):
        attach_own_head(tiny_decoder("llama", tie_word_embeddings=False))
    with pytest.raises(UsageError, match="encoders"):
        attach_own_head(tiny_model("bert"))


# ====================================================================== 8. generation


def _greedy_without_cache(model, ids: torch.Tensor, active, head: str, steps: int):
    """Greedy decoding recomputing the whole (unpadded) prefix at every step."""
    module = model.heads[head]
    sequence, tokens, scores = ids, [[] for _ in range(ids.shape[0])], []
    with torch.no_grad():
        for _ in range(steps):
            out = model(input_ids=sequence, attention_mask=torch.ones_like(sequence), active=active, head=None)
            logits = module.logits(out.last_hidden_state[:, -1:])[:, -1]
            chosen = logits.argmax(-1)
            scores.append(logits)
            for row, token in enumerate(chosen.tolist()):
                tokens[row].append(token)
            sequence = torch.cat([sequence, chosen[:, None]], dim=-1)
    return tokens, scores


def _gen_model(model_type: str = "gpt2", **overrides):
    """Adapters a (pfeiffer), b (houlsby), c (pfeiffer), the fusion a,c and the causal-LM head lm, all random."""
    model = _lm_model(model_type, **overrides)
    model.add_adapter("b", "houlsby")
    model.add_adapter("c", "pfeiffer", {"non_linearity": "swish"})
    model.add_fusion("a,c")
    randomise(model.adapters["b"], seed=11)
    randomise(model.adapters["c"], seed=13)
    randomise(model.fusions["a,c"], seed=14, scale=0.1)
    return model


def _prompts(batch: int = 3, length: int = 5, seed: int = 2) -> torch.Tensor:
    return torch.randint(4, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("model_type, overrides", [("gpt2", {}), ("llama", {"tie_word_embeddings": False}),
                                                   ("mistral", {})])
@pytest.mark.parametrize("active", [None, "a", "stack(b,a)", "fuse(a,c)", "batch_split(a,b,c,sizes=[1,1,1])"])
def test_cached_greedy_equals_full_recomputation(model_type, overrides, active) -> None:
    from adapter_cli.generation import Sampling, generate

    model = _gen_model(model_type, **overrides)
    ids = _prompts()
    got = generate(model, ids, torch.ones_like(ids), active, "lm", Sampling(max_new_tokens=8), eos_token_id=None,
                   pad_token_id=PAD_ID, keep_scores=True)
    tokens, scores = _greedy_without_cache(model, ids, active, "lm", 8)
    assert got.tokens == tokens
    assert got.finish == ["length"] * 3
    assert len(got.scores) == 8
    for ours, want in zip(got.scores, scores):
        torch.testing.assert_close(ours, want, atol=1e-5, rtol=1e-5)
    if active is not None:  # the adapters change the continuation
        plain, _ = _greedy_without_cache(model, ids, None, "lm", 8)
        assert plain != tokens


@pytest.mark.parametrize("model_type, overrides", [("gpt2", {}), ("llama", {"tie_word_embeddings": False}),
                                                   ("mistral", {})])
def test_left_padded_batch_equals_each_prompt_alone(model_type, overrides) -> None:
    from adapter_cli.generation import Sampling, generate

    model = _gen_model(model_type, **overrides)
    prompts = [_prompts(1, n, seed=n)[0] for n in (3, 6, 1, 4)]
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), PAD_ID)
    mask = torch.zeros_like(ids)
    for row, p in enumerate(prompts):
        ids[row, width - len(p):], mask[row, width - len(p):] = p, 1
    sampling = Sampling(max_new_tokens=6)
    batch = generate(model, ids, mask, "stack(b,a)", "lm", sampling, None, PAD_ID, keep_scores=True)
    for row, p in enumerate(prompts):
        alone = generate(model, p[None], torch.ones_like(p[None]), "stack(b,a)", "lm", sampling, None, PAD_ID,
                         keep_scores=True)
        assert batch.tokens[row] == alone.tokens[0], row
        for ours, want in zip(batch.scores, alone.scores):
            torch.testing.assert_close(ours[row], want[0], atol=1e-5, rtol=1e-5)


def test_parallel_equals_each_member_alone() -> None:
    from adapter_cli.generation import Sampling, generate

    model = _gen_model()
    model.add_head("lm2", "causal_lm", vocab_size=VOCAB)
    randomise(model.heads["lm2"], seed=12, scale=0.1)
    ids = _prompts()
    mask = torch.ones_like(ids)
    mask[0, :2] = 0  # a left-padded row too
    sampling = Sampling(max_new_tokens=6)
    both = generate(model, ids, mask, "parallel(a,b)", ["lm", "lm2"], sampling, None, PAD_ID, keep_scores=True)
    a = generate(model, ids, mask, "a", "lm", sampling, None, PAD_ID, keep_scores=True)
    b = generate(model, ids, mask, "b", "lm2", sampling, None, PAD_ID, keep_scores=True)
    assert both.tokens == a.tokens + b.tokens
    assert a.tokens != b.tokens
    assert both.finish == ["length"] * 6
    for ours, x, y in zip(both.scores, a.scores, b.scores):
        torch.testing.assert_close(ours, torch.cat([x, y]), atol=1e-5, rtol=1e-5)


def test_sampling_repeats_with_its_seed_and_top_p_tiny_is_greedy() -> None:
    from adapter_cli.generation import Sampling, generate

    model = _gen_model()
    ids = _prompts()
    mask = torch.ones_like(ids)

    def run(**kw):
        return generate(model, ids, mask, "a", "lm", Sampling(max_new_tokens=10, **kw), None, PAD_ID).tokens

    greedy = run()
    first, again, other = run(temperature=5.0, seed=1), run(temperature=5.0, seed=1), run(temperature=5.0, seed=2)
    assert first == again
    assert first != other
    assert first != greedy
    assert run(temperature=1.0, top_p=1e-6, seed=3) == greedy
    assert run(temperature=50.0, top_p=1e-6, seed=4) == greedy


def test_eos_ends_one_row_while_the_others_continue() -> None:
    from adapter_cli.generation import Sampling, generate

    model = _gen_model()
    ids = _prompts(batch=3)
    mask = torch.ones_like(ids)
    sampling = Sampling(max_new_tokens=8)
    free = generate(model, ids, mask, "a", "lm", sampling, None, PAD_ID)

    def first(row: list[int], token: int) -> int | None:
        return row.index(token) if token in row else None

    # an "end" token that some row produces before another row does (or never does)
    candidates = [t for t in sorted({t for row in free.tokens for t in row})
                  if len({first(row, t) for row in free.tokens}) > 1]
    if not candidates:
        pytest.fail(f"no token to use as eos in {free.tokens}")
    eos = candidates[0]
    ends = [first(row, eos) for row in free.tokens]
    got = generate(model, ids, mask, "a", "lm", sampling, eos, PAD_ID)
    assert got.finish == ["length" if e is None else "eos" for e in ends]
    assert got.tokens == [row if e is None else row[:e + 1] for row, e in zip(free.tokens, ends)]
    assert max(len(t) for t in got.tokens) > min(len(t) for t in got.tokens)  # the others went on after it
    # a row that ends at once, alone in its batch: one token
    alone = generate(model, ids[:1], mask[:1], "a", "lm", sampling, free.tokens[0][0], PAD_ID)
    assert alone.tokens == [free.tokens[0][:1]] and alone.finish == ["eos"]


def test_stopped_callback_ends_a_row_with_stop() -> None:
    from adapter_cli.generation import Sampling, generate

    model = _gen_model()
    ids = _prompts()
    mask = torch.ones_like(ids)
    sampling = Sampling(max_new_tokens=6)
    free = generate(model, ids, mask, "a", "lm", sampling, None, PAD_ID)
    seen = []

    def stopped(row: int, tokens: list[int]) -> bool:
        seen.append((row, len(tokens)))
        return row == 1 and len(tokens) == 2

    got = generate(model, ids, mask, "a", "lm", sampling, None, PAD_ID, stopped=stopped)
    assert got.finish == ["length", "stop", "length"]
    assert got.tokens == [free.tokens[0], free.tokens[1][:2], free.tokens[2]]
    assert (1, 3) not in seen  # a stopped row is not asked again


@pytest.mark.parametrize("kw, message", [
    ({"max_new_tokens": 0}, "max_new_tokens must be from 1"),
    ({"top_p": 0.0}, r"top_p must be in \(0, 1\]"),
    ({"top_p": 1.5}, r"top_p must be in \(0, 1\]"),
    ({"temperature": -0.5}, "temperature must be from 0"),
    ({"stop": ("x", "")}, "a stop string must not be empty"),
])
def test_sampling_validation(kw, message) -> None:
    from adapter_cli.generation import Sampling

    with pytest.raises(UsageError, match=message):
        Sampling(**kw)


def test_generation_needs_a_causal_lm_head() -> None:
    from adapter_cli.generation import choose_lm_head

    model = _gen_model()
    model.add_head("a", num_labels=2)  # the head named like the adapter is a classification head
    with pytest.raises(UsageError, match="head 'a' is a classification head; generation needs a causal_lm head"):
        choose_lm_head(model, None, model.resolve_composition("a"))
    assert choose_lm_head(model, "lm", model.resolve_composition("a")) == "lm"
    with pytest.raises(UsageError, match="generation needs a decoder"):
        choose_lm_head(tiny_model("bert"), None, None)


# ====================================================================== 9. training


@pytest.mark.parametrize("model_type, overrides", [("gpt2", {}), ("llama", {"tie_word_embeddings": False})])
def test_backward_reaches_the_adapter_and_head_not_the_base(model_type, overrides) -> None:
    model = _lm_model(model_type, **overrides)
    model.train_adapters(["a"], heads=["lm"])
    ids, mask = decoder_inputs()
    labels = ids.masked_fill(mask == 0, -100)
    out = model(input_ids=ids, attention_mask=mask, active="a", labels=labels)
    assert out.cache is None  # no key/value cache outside generation
    out.loss.backward()
    assert all(p.grad is None for p in model.base.parameters())
    assert model.base.get_input_embeddings().weight.grad is None  # the tied decoder's weight stays frozen
    for name, p in list(model.adapters["a"].named_parameters()) + list(model.heads["lm"].named_parameters()):
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    trainable = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"adapters", "heads"}


@pytest.mark.parametrize("model_type", ["gpt2", "llama"])
def test_gradient_checkpointing_gives_the_same_gradients(model_type) -> None:
    grads = []
    for checkpointing in (False, True):
        model = _lm_model(model_type)
        model.train_adapters(["a"], heads=["lm"])
        if checkpointing:
            model.gradient_checkpointing_enable()
        ids, mask = decoder_inputs()
        out = model(input_ids=ids, attention_mask=mask, active="a", labels=ids.masked_fill(mask == 0, -100))
        out.loss.backward()
        assert all(p.grad is None for p in model.base.parameters())
        grads.append([p.grad for p in model.adapters["a"].parameters()])
    for plain, recomputed in zip(*grads):
        torch.testing.assert_close(recomputed, plain, atol=1e-6, rtol=1e-5)


# ====================================================================== the LoRA family on Llama and Mistral


@pytest.mark.parametrize("model_type", ("llama", "mistral"))
def test_lora_family_on_grouped_query_layers(model_type) -> None:
    """LoRA, (IA)³ and DoRA change q/k/v (k and v narrower under grouped-query attention) and AdapterHub's
    "intermediate" (down_proj) and "output" (up_proj); tests/e2e/test_lora_fixtures.py checks the numbers against
    AdapterHub. What its order of operations cannot compute on narrower layers is refused in one line: a stack of
    LoRAs (one's output feeds the next) and VeRA over layers of different shapes (one shared projection pair)."""
    from adapter_cli.errors import CompositionError, ConfigError

    model = tiny_decoder(model_type)
    model.add_adapter("a", "lora", {"attn_matrices": ["q", "k", "v"], "intermediate_lora": True, "output_lora": True})
    assert model.linear_shapes == {"q": (32, 32), "k": (32, 16), "v": (32, 16), "intermediate": (64, 32),
                                   "output": (32, 64)}
    assert tuple(model.adapters["a"].v["0"].lora_B.shape) == (16, 8)
    model.add_adapter("b", "lora")
    ids, mask = decoder_inputs()
    with pytest.raises(CompositionError, match="stack\\(a,b\\).* v of layer 0 maps 32 to 16 features"):
        model(input_ids=ids, attention_mask=mask, active="stack(a,b)")
    with pytest.raises(ConfigError, match="VeRA shares one random projection pair"):
        model.add_adapter("c", "vera")
    model.add_adapter("c", "vera", {"attn_matrices": ["q"]})  # layers of one shape
    assert "c" in model.adapters


# ====================================================================== Qwen2 through Llama's table


def test_qwen2_computes_as_llama_with_the_same_weights() -> None:
    """adapters 1.3.0 has no Qwen2 model, so its numbers are checked through Llama's, which the reference
    fixtures check: a Qwen2 and a Llama holding the same weights (Llama with attention biases, o_proj's zero)
    give the same outputs bit for bit, with no adapter, a Pfeiffer adapter, a LoRA on every matrix, a stack
    and a fusion."""
    from adapter_cli import AdapterModel
    from transformers import AutoModel

    torch.manual_seed(0)
    qwen = AutoModel.from_config(tiny_decoder_config("qwen2")).eval()
    for layer in qwen.layers:  # Qwen2's q, k, v biases start at zero: make them count
        for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
            torch.nn.init.normal_(proj.bias, std=0.5)
    llama = AutoModel.from_config(tiny_decoder_config("llama", attention_bias=True)).eval()
    missing, unexpected = llama.load_state_dict(qwen.state_dict(), strict=False)
    assert not unexpected and all(k.endswith("o_proj.bias") for k in missing)
    for layer in llama.layers:
        torch.nn.init.zeros_(layer.self_attn.o_proj.bias)
    models = {"qwen2": AdapterModel(qwen), "llama": AdapterModel(llama)}
    for model in models.values():
        model.add_adapter("pf", "pfeiffer")
        model.add_adapter("pf2", "pfeiffer", {"non_linearity": "swish"})
        model.add_adapter("lo", "lora", {"attn_matrices": ["q", "k", "v"], "intermediate_lora": True,
                                         "output_lora": True})
        model.add_fusion(["pf", "pf2"])
        model.add_head("cls", "classification", num_labels=3)
        for seed, module in enumerate([*model.adapters.values(), *model.fusions.values(), model.heads["cls"]]):
            randomise(module, seed=seed + 5)
    ids, mask = decoder_inputs()
    for active in (None, "pf", "lo", "stack(lo,pf)", "fuse(pf,pf2)"):
        with torch.no_grad():
            got, want = (m(input_ids=ids, attention_mask=mask, active=active, head="cls") for m in models.values())
        assert torch.equal(got.last_hidden_state, want.last_hidden_state), active
        assert torch.equal(got.logits, want.logits), active
