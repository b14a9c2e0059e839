"""Prompt tuning: configuration, where the prompt goes and the mask that goes with it, compositions, training,
saving and loading (parity with AdapterHub is in tests/e2e/test_prompt_fixtures.py, the CLI in
tests/cli/test_prompt_cli.py)."""

from __future__ import annotations

import copy

import pytest
import torch

from adapter_cli.errors import CompositionError, ConfigError, UsageError
from adapter_cli.presets import resolve_adapter_config
from conftest import randomise, save_tiny_model, tiny_inputs, tiny_model

IDS, MASK = tiny_inputs(batch=3, length=7)  # row 1 has 2 padding tokens at the end


def _hidden(model, active, mask=MASK, ids=IDS):
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask, active=active, head=None).last_hidden_state


# --------------------------------------------------------------------------------------- configuration

def test_preset_is_adapterhubs():
    config = resolve_adapter_config("prompt_tuning")
    assert config.architecture == "prompt_tuning"
    assert (config.prompt_length, config.prompt_init, config.prompt_init_text, config.random_uniform_scale,
            config.combine, config.init_weights_seed) == (10, "random_uniform", None, 0.5, "prefix", None)
    assert config.parameter_count(768, 12)["parameters"] == 7680
    assert config.parameter_count(256, 12, embedding_size=128)["parameters"] == 1280  # ELECTRA: embedding width
    assert resolve_adapter_config(config.to_dict()) == config


@pytest.mark.parametrize("override, message", [
    ({"prompt_length": 0}, "prompt_length must be a whole number of at least 1, got 0"),
    ({"prompt_length": -2}, "prompt_length must be a whole number of at least 1, got -2"),
    ({"prompt_length": True}, "prompt_length must be a whole number"),
    ({"prompt_length": 2.5}, "prompt_length must be a whole number"),
    ({"combine": "suffix"}, "combine must be one of prefix, prefix_after_bos"),
    ({"prompt_init": "zeros"}, "prompt_init must be one of random_uniform, from_string"),
    ({"prompt_init": "from_string"}, "from_string needs prompt_init_text"),
    ({"prompt_init": "from_string", "prompt_init_text": "  "}, "from_string needs prompt_init_text"),
    ({"prompt_init_text": 3}, "prompt_init_text must be a string or null"),
    ({"random_uniform_scale": 0}, "random_uniform_scale must be a positive number"),
    ({"init_weights_seed": -1}, "init_weights_seed must be an integer"),
    ({"kind": "other"}, "kind must be one of"),
    ({"reduction_factor": 4}, "reduction_factor"),
])
def test_bad_configs_are_one_line(override, message):
    with pytest.raises(ConfigError) as err:
        resolve_adapter_config("prompt_tuning", override)
    assert message in str(err.value) and "\n" not in str(err.value)


# --------------------------------------------------------------------------------------- the forward pass

@pytest.mark.parametrize("model_type", ["bert", "roberta", "distilbert", "electra"])
def test_the_sequence_grows_by_the_prompt_and_an_inactive_prompt_changes_nothing(model_type):
    from transformers import AutoModel

    from conftest import tiny_config

    model = tiny_model(model_type)
    torch.manual_seed(0)
    plain = AutoModel.from_config(tiny_config(model_type)).eval()
    model.add_adapter("p", "prompt_tuning[prompt_length=4]")
    model.add_adapter("seq", "pfeiffer")
    randomise(model.adapters["seq"])
    width = model.embedding_size
    assert model.adapters["p"].prompt_embedding.weight.shape == (4, width)
    with torch.no_grad():
        reference = plain(input_ids=IDS, attention_mask=MASK).last_hidden_state
    assert torch.equal(_hidden(model, None), reference)  # bit-identical: the hooks leave everything alone
    assert _hidden(model, "p").shape == (3, 4 + IDS.shape[1], model.hidden_size)
    fresh = tiny_model(model_type)
    fresh.load_state_dict(model.state_dict(), strict=False)
    fresh.add_adapter("seq", "pfeiffer")
    fresh.adapters["seq"].load_state_dict(model.adapters["seq"].state_dict())
    assert torch.equal(_hidden(model, "seq"), _hidden(fresh, "seq"))  # another adapter first: the prompt sleeps


def test_the_prompt_goes_first_or_after_the_first_token():
    model = tiny_model()
    model.add_adapter("p", "prompt_tuning[prompt_length=3]")
    model.add_adapter("b", "prompt_tuning[prompt_length=3,combine=prefix_after_bos]")
    model.adapters["b"].load_state_dict(model.adapters["p"].state_dict())
    seen = {}
    handle = model.base.encoder.register_forward_pre_hook(lambda m, a: seen.__setitem__("x", a[0]))
    try:
        for name in ("p", "b"):
            _hidden(model, name)
            seen[name] = seen.pop("x")
        _hidden(model, None)
    finally:
        handle.remove()
    prompt = model.adapters["p"].prompt_embedding.weight
    embedded = seen["x"]
    assert torch.equal(seen["p"][:, :3], prompt.expand(3, -1, -1)) and torch.equal(seen["p"][:, 3:], embedded)
    assert torch.equal(seen["b"][:, 1:4], prompt.expand(3, -1, -1))
    assert torch.equal(seen["b"][:, :1], embedded[:, :1]) and torch.equal(seen["b"][:, 4:], embedded[:, 1:])


def test_no_mask_and_an_all_ones_mask_compute_the_same():
    model = tiny_model()
    model.add_adapter("p", "prompt_tuning[prompt_length=2]")
    ones = torch.ones_like(IDS)
    assert torch.allclose(_hidden(model, "p", mask=None), _hidden(model, "p", mask=ones), atol=1e-6)


def _left_padded(ids, mask, pad_id=0):
    """The same rows with their padding moved to the front."""
    left_ids, left_mask = ids.clone(), mask.clone()
    for r in range(ids.shape[0]):
        n = int(mask[r].sum())
        left_mask[r] = 0
        left_mask[r, ids.shape[1] - n:] = 1
        left_ids[r] = pad_id
        left_ids[r, ids.shape[1] - n:] = ids[r, :n]
    return left_ids, left_mask


def _prompt_and_tokens(states, mask_row, length, combine):
    """The prompt's states and the real tokens' states (in order) of one row of the longer sequence."""
    mask_row = mask_row.bool()
    inside = torch.zeros(length, dtype=torch.bool)
    where = torch.cat([~inside, mask_row]) if combine == "prefix" else torch.cat([mask_row[:1], ~inside, mask_row[1:]])
    prompt = torch.arange(length) + (0 if combine == "prefix" else 1)
    return states[prompt], states[where & ~torch.isin(torch.arange(where.numel()), prompt)]


@pytest.mark.parametrize("combine", ["prefix", "prefix_after_bos"])
@pytest.mark.parametrize("model_type", ["bert", "roberta", "distilbert", "electra"])
def test_a_rows_answer_does_not_depend_on_its_batch(model_type, combine):
    """Every row of a padded batch, right- or left-padded, computes what it computes alone without padding: the
    prompt attends to every real token and is attended by every one, nothing attends to padding, no score gets a
    bias (AdapterHub's padded batches do not: docs/numerics.md, "Prompt tuning"). Alone, a row's tokens keep the
    positions they had in the batch (BERT, DistilBERT and ELECTRA count positions from the first column, padding
    included; RoBERTa's skip padding)."""
    model = tiny_model(model_type)
    model.add_adapter("p", f"prompt_tuning[prompt_length=3,combine={combine}]")
    model.add_head("cls", num_labels=3)
    randomise(model.heads["cls"])
    pad = model.config.pad_token_id or 0
    ids, mask = tiny_inputs(batch=3, length=7)
    mask[2, 3:] = 0
    ids = ids.masked_fill(mask == 0, pad)
    batches = [(ids, mask), _left_padded(ids, mask, pad)]
    with torch.no_grad():
        outs = [model(input_ids=i, attention_mask=m, active="p", head="cls") for i, m in batches]
        model.base.get_input_embeddings().weight[pad] += 1.0  # what padding holds changes nothing
        noisy = [model(input_ids=i, attention_mask=m, active="p", head="cls") for i, m in batches]
        model.base.get_input_embeddings().weight[pad] -= 1.0
    for (ids_, mask_), batch, other in zip(batches, outs, noisy):
        for r in range(ids_.shape[0]):
            real = mask_[r].bool()
            kwargs = {} if model_type == "roberta" else {"position_ids": real.nonzero().flatten()[None]}
            with torch.no_grad():
                alone = model(input_ids=ids_[r:r + 1, real], active="p", head="cls", **kwargs)
            ours = _prompt_and_tokens(batch.last_hidden_state[r], mask_[r], 3, combine)
            theirs = _prompt_and_tokens(alone.last_hidden_state[0], torch.ones(int(real.sum())), 3, combine)
            perturbed = _prompt_and_tokens(other.last_hidden_state[r], mask_[r], 3, combine)
            for mine, right, moved in zip(ours, theirs, perturbed):
                assert torch.allclose(mine, right, atol=1e-5) and torch.allclose(mine, moved, atol=1e-6)
            if combine == "prefix" or bool(mask_[r, 0]):  # else the head reads position 0, which is padding
                assert torch.allclose(batch.logits[r], alone.logits[0], atol=1e-5)


@pytest.mark.parametrize("combine", ["prefix", "prefix_after_bos"])
def test_masked_lm_labels_stay_on_their_tokens(combine):
    """The prompt's positions get ignored labels where the prompt sits: in front for prefix, after the first token
    for prefix_after_bos (AdapterHub pads in front for both, moving the first token's label onto a prompt
    vector)."""
    model = tiny_model()
    model.add_adapter("p", f"prompt_tuning[prompt_length=3,combine={combine}]")
    model.add_head("lm", "masked_lm", vocab_size=100)
    labels = torch.full_like(IDS, -100)
    labels[:, 0], labels[:, 2] = IDS[:, 0], IDS[:, 2]
    with torch.no_grad():
        out = model(input_ids=IDS, attention_mask=MASK, active="p", head="lm", labels=labels)
        logits = model(input_ids=IDS, attention_mask=MASK, active="p", head="lm").logits
    assert logits.shape == (3, 3 + IDS.shape[1], 100)
    first = 0 if combine == "prefix_after_bos" else 3  # where token 0 sits; token t > 0 sits at 3 + t
    expected = torch.nn.functional.cross_entropy(torch.cat([logits[:, first], logits[:, 3 + 2]]),
                                                 torch.cat([IDS[:, 0], IDS[:, 2]]))
    assert torch.allclose(out.loss, expected, atol=1e-6)


def test_from_string_reads_the_base_models_tokenizer(tmp_path):
    from adapter_cli import AdapterModel

    model = AdapterModel.from_pretrained(save_tiny_model(tmp_path / "tiny"))
    model.add_adapter("s", "prompt_tuning[prompt_length=5,prompt_init=from_string,prompt_init_text='good film']")
    from transformers import AutoTokenizer

    ids = AutoTokenizer.from_pretrained(tmp_path / "tiny")("good film")["input_ids"]  # [CLS] good film [SEP]
    ids = (ids * 2)[:5]
    expected = model.base.get_input_embeddings().weight[ids]
    assert torch.equal(model.adapters["s"].prompt_embedding.weight, expected)
    with pytest.raises(UsageError, match="from_string needs the base model's tokenizer") as err:
        tiny_model().add_adapter("s", "prompt_tuning[prompt_init=from_string,prompt_init_text=hi]")
    assert "\n" not in str(err.value)


def test_seeded_prompts_repeat_and_leave_the_callers_generator_alone():
    model = tiny_model()
    torch.manual_seed(11)
    state = torch.random.get_rng_state()
    model.add_adapter("a", "prompt_tuning[init_weights_seed=5]")
    assert torch.equal(torch.random.get_rng_state(), state)
    model.add_adapter("b", "prompt_tuning[init_weights_seed=5]")
    assert torch.equal(model.adapters["a"].prompt_embedding.weight, model.adapters["b"].prompt_embedding.weight)
    assert model.adapters["a"].prompt_embedding.weight.abs().max() <= 0.5


# --------------------------------------------------------------------------------------- compositions

def test_compositions_that_would_ignore_or_misplace_a_prompt_are_refused():
    model = tiny_model()
    for name, spec in (("p", "prompt_tuning"), ("q", "prompt_tuning[prompt_length=2]"), ("seq", "pfeiffer"),
                       ("lora", "lora"), ("inv", "seq_bn_inv"), ("reft", "loreft"),
                       ("seq2", "pfeiffer[reduction_factor=8]")):
        model.add_adapter(name, spec)
    for spec in ("p", "stack(p,seq)", "stack(p,lora)", "stack(p,seq,lora)"):
        model.resolve_composition(spec)
    model.add_fusion(["seq", "seq2"])
    model.resolve_composition("stack(p,fuse(seq,seq2))")
    assert _hidden(model, "stack(p,fuse(seq,seq2))").shape == (3, 10 + IDS.shape[1], 32)
    refused = {"stack(seq,p)": "runs alone or first in a stack", "average(p,seq)": "runs alone or first",
               "parallel(p,seq)": "runs alone or first", "batch_split(p,seq,sizes=[1,2])": "runs alone or first",
               "stack(p,seq,p)": "runs alone or first", "stack(p,q)": "holds 2 prompt-tuning adapters",
               "stack(inv,p)": "runs alone or first", "stack(p,inv)": "invertible adapter",
               "stack(p,reft)": "ReFT adapter 'reft' runs alone or first", "stack(reft,p)": "runs alone or first",
               "stack(p,batch_split(seq,lora,sizes=[1,2]))": "batch_split(...) after prompt-tuning adapter 'p'"}
    for spec, message in refused.items():
        with pytest.raises(CompositionError, match=message.replace("(", r"\(").replace(")", r"\)")) as err:
            model.resolve_composition(spec)
        assert "\n" not in str(err.value)
    with pytest.raises(CompositionError, match="fuse works over bottleneck adapters only"):
        model.add_fusion(["p", "seq"])


def test_a_prefix_adapter_beside_a_prompt_is_refused():
    model = tiny_model()
    model.add_adapter("p", "prompt_tuning")
    try:
        model.add_adapter("pre", "prefix_tuning")
    except ConfigError:
        pytest.skip("no prefix-tuning preset")
    with pytest.raises(CompositionError, match="with prefix-tuning adapter 'pre' is not supported"):
        model.resolve_composition("stack(p,pre)")


def test_deleting_a_prompt_adapter_leaves_the_model_as_it_was():
    model = tiny_model()
    before = _hidden(model, None)
    model.add_adapter("p", "prompt_tuning")
    model.set_active("p")
    model.delete_adapter("p")
    assert model.active is None and torch.equal(_hidden(model, None), before)
    with pytest.raises(CompositionError, match="not loaded"):
        model.resolve_composition("p")


# --------------------------------------------------------------------------------------- training

def test_gradients_reach_only_the_prompt():
    model = tiny_model()
    model.add_adapter("p", "prompt_tuning[prompt_length=3]")
    model.add_adapter("seq", "pfeiffer")
    model.add_head("cls", num_labels=2)
    model.train_adapters(["p"], heads=["cls"])
    model.train()
    out = model(input_ids=IDS, attention_mask=MASK, active="stack(p,seq)", head="cls", labels=torch.tensor([0, 1, 1]))
    out.loss.backward()
    grads = {k for k, p in model.named_parameters() if p.grad is not None}
    head = {f"heads.cls.{k}" for k, _ in model.heads["cls"].named_parameters()}
    assert grads == {"adapters.p.prompt_embedding.weight"} | head  # not the base, not seq
    assert model.adapters["p"].prompt_embedding.weight.grad.abs().sum() > 0
    assert model.trainable_parameters() == 3 * 32 + sum(p.numel() for p in model.heads["cls"].parameters())


def test_gradient_checkpointing_gives_the_same_gradients():
    grads = []
    for checkpointing in (False, True):
        model = tiny_model()
        model.add_adapter("p", "prompt_tuning[prompt_length=3,init_weights_seed=1]")
        model.add_head("cls", num_labels=2)
        model.train_adapters(["p"], heads=["cls"])
        if checkpointing:
            model.gradient_checkpointing_enable()
        model.train()
        model.base.config.hidden_dropout_prob = 0.0
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
        out = model(input_ids=IDS, attention_mask=MASK, active="p", head="cls", labels=torch.tensor([0, 1, 1]))
        out.loss.backward()
        grads.append(model.adapters["p"].prompt_embedding.weight.grad.clone())
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


def test_a_copy_runs_its_own_prompt():
    model = tiny_model()
    model.add_adapter("p", "prompt_tuning[prompt_length=2]")
    twin = copy.deepcopy(model)
    with torch.no_grad():
        twin.adapters["p"].prompt_embedding.weight.add_(1.0)
    assert not torch.allclose(_hidden(model, "p"), _hidden(twin, "p"))
    assert torch.equal(_hidden(model, "p"), _hidden(copy.deepcopy(model), "p"))


# --------------------------------------------------------------------------------------- saving and loading

@pytest.mark.parametrize("fmt, safetensors", [("adapt", True), ("adapterhub", False), ("adapterhub", True)])
@pytest.mark.parametrize("model_type", ["bert", "electra"])
def test_save_and_load_round_trip(tmp_path, fmt, safetensors, model_type):
    from adapter_cli.formats import describe

    model = tiny_model(model_type)
    model.add_adapter("p", "prompt_tuning[prompt_length=3,combine=prefix_after_bos,random_uniform_scale=0.2]")
    model.save_adapter(tmp_path / "p", "p", format=fmt, safetensors=safetensors)
    fresh = tiny_model(model_type)
    name = fresh.load_adapter(tmp_path / "p")
    assert torch.equal(_hidden(model, "p"), _hidden(fresh, name))
    config = fresh.adapter_config(name)
    assert (config.prompt_length, config.combine) == (3, "prefix_after_bos")
    # AdapterHub's files cannot record the scale (it only matters when a prompt is drawn)
    assert config.random_uniform_scale == (0.2 if fmt == "adapt" else 0.5)
    if safetensors:
        assert describe(tmp_path / "p")["method"] == "prompt_tuning"


def test_a_file_of_the_wrong_width_is_refused(tmp_path):
    from adapter_cli.errors import BaseModelMismatch

    model = tiny_model("electra")
    model.add_adapter("p", "prompt_tuning[prompt_length=3]")
    model.save_adapter(tmp_path / "p", "p", format="adapterhub")
    bert = tiny_model("bert", vocab_size=100)
    with pytest.raises((BaseModelMismatch, UsageError)):
        bert.load_adapter(tmp_path / "p")
