"""Masked language modelling for language adapters: BERT's masking (statistics, special tokens and padding
never masked, seeded), perplexity, the masked-LM head (AdapterHub's layout, decoder tied to the input word
embeddings, the invertible adapter's reverse pass before the decoder), its files in both formats, and the
task kind mlm."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from adapter_cli import AdapterModel
from adapter_cli.errors import UsageError
from adapter_cli.head_config import HeadConfig
from adapter_cli.training.data import Encoded
from adapter_cli.training.mlm import Masker, encode_text, evaluate_mlm, generator, masked_batch
from conftest import save_tiny_model, tiny_inputs, tiny_model

SPECIAL = (0, 2, 3, 4)  # [PAD], [CLS], [SEP], [MASK]
MASKER = Masker(mask_id=4, special_ids=SPECIAL, vocab_size=100, probability=0.15)


def _mlm_model(model_type: str = "bert", config: str = "seq_bn_inv") -> AdapterModel:
    model = tiny_model(model_type)
    model.add_adapter("lang", config, {"kind": "language"})
    model.add_head("lang", "masked_lm", vocab_size=model.vocab_size, embedding_size=model.embedding_size,
                   layers=2, activation_function="gelu", layer_norm=True)
    with torch.no_grad():  # not the zero/identity start, so that every part shows in the outputs
        for p in model.adapters["lang"].parameters():
            p.add_(0.1 * torch.randn_like(p))
        model.heads["lang"].get_submodule("3").bias.normal_(0, 0.5)
    return model.eval()


def test_masking_follows_bert_statistics_and_never_masks_special_tokens_or_padding() -> None:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 100, (64, 512), generator=g)
    ids[:, 0], ids[:, -1] = 2, 3
    attention = torch.ones_like(ids)
    attention[:32, 400:] = 0
    ids[:32, 400:] = 0
    masked, labels = MASKER.mask(ids, attention, generator(1, 0, 0))
    chosen = labels != -100
    eligible = (attention == 1) & ~torch.isin(ids, torch.tensor(SPECIAL))
    assert not (chosen & ~eligible).any()  # never a special token, never padding
    assert torch.equal(labels[chosen], ids[chosen])
    share = chosen.sum().item() / eligible.sum().item()
    assert abs(share - 0.15) < 0.005
    n = chosen.sum().item()
    as_mask = (masked[chosen] == 4).sum().item() / n
    unchanged = (masked[chosen] == ids[chosen]).sum().item() / n
    assert abs(as_mask - 0.8) < 0.015 and abs(unchanged - 0.1 - 0.001) < 0.012  # random ids rarely hit the same
    assert abs(1 - as_mask - unchanged - 0.1) < 0.012
    assert torch.equal(masked[~chosen], ids[~chosen])


def test_masking_is_seeded_by_its_key_alone() -> None:
    ids = torch.randint(5, 100, (8, 40), generator=torch.Generator().manual_seed(3))
    attention = torch.ones_like(ids)
    torch.manual_seed(0)
    first = MASKER.mask(ids, attention, generator(42, 1, 7))
    torch.manual_seed(1)  # the global random state plays no part
    again = MASKER.mask(ids, attention, generator(42, 1, 7))
    other = MASKER.mask(ids, attention, generator(42, 1, 8))
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not torch.equal(first[1], other[1])


def test_a_block_with_no_chosen_token_gets_one() -> None:
    ids = torch.tensor([[2, 7, 8, 3]])
    rare = Masker(4, SPECIAL, 100, probability=1e-9)
    _, labels = rare.mask(ids, torch.ones_like(ids), generator(0))
    assert (labels != -100).sum() == 1 and labels[0, 0] == -100 and labels[0, 3] == -100


def test_dev_masks_do_not_depend_on_the_batch_size() -> None:
    data = Encoded([{"input_ids": [2, *range(10, 10 + n), 3]} for n in (5, 9, 3, 12)], [0] * 4)
    whole = masked_batch(data, [0, 1, 2, 3], 0, MASKER, None)
    parts = [masked_batch(data, [i], 0, MASKER, None) for i in range(4)]
    for i, part in enumerate(parts):
        n = part["input_ids"].shape[1]
        assert torch.equal(whole["labels"][i, :n], part["labels"][0])
        assert (whole["labels"][i, n:] == -100).all()


def test_text_is_packed_into_blocks_with_special_tokens(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(save_tiny_model(tmp_path / "m"))
    data = encode_text(["the film was good", "it was bad", "the plot"], tokenizer, max_length=6)
    blocks = [f["input_ids"] for f in data.features]
    assert all(b[0] == 2 and b[-1] == 3 and len(b) <= 6 for b in blocks)
    words = tokenizer("the film was good it was bad the plot", add_special_tokens=False)["input_ids"]
    assert [t for b in blocks for t in b[1:-1]] == words
    with pytest.raises(UsageError, match="no room"):
        encode_text(["the film"], tokenizer, max_length=2)


def test_perplexity_is_exp_of_the_mean_loss_over_masked_tokens() -> None:
    model = _mlm_model()
    data = Encoded([{"input_ids": [2, *range(10 + i, 30 + i), 3]} for i in range(5)], [0] * 5)
    metrics = evaluate_mlm(model, data, MASKER, 2, "lang", torch.device("cpu"), None, 0)
    batch = masked_batch(data, list(range(5)), 0, MASKER, None)
    with torch.no_grad():
        hidden = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], active="lang",
                       head=None).last_hidden_state
        logits = model.heads["lang"].logits(hidden, lambda h: model.invert_embeddings(h, active="lang"))
    chosen = batch["labels"] != -100
    losses = torch.nn.functional.cross_entropy(logits[chosen], batch["labels"][chosen], reduction="none")
    assert metrics["perplexity"] == pytest.approx(math.exp(losses.mean().item()), rel=1e-5)
    assert metrics["masked_accuracy"] == pytest.approx(
        (logits[chosen].argmax(-1) == batch["labels"][chosen]).float().mean().item())


def test_the_head_is_adapterhubs_layout_with_the_decoder_tied_to_the_input_embeddings() -> None:
    model = _mlm_model()
    head = model.heads["lang"]
    assert set(head.state_dict()) == {"0.weight", "0.bias", "2.weight", "2.bias", "3.bias"}
    assert set(head.state_dict()) == set(head.config.weight_shapes(model.hidden_size))
    embeddings = model.base.get_input_embeddings()
    assert head.get_submodule("3").embeddings is embeddings
    assert not any(p is embeddings.weight for p in head.parameters())  # not trained, counted or saved as the head's
    hidden = torch.randn(2, 5, model.hidden_size)
    want = torch.nn.functional.linear(head.transform(hidden), embeddings.weight, head.get_submodule("3").bias)
    assert torch.equal(head.logits(hidden), want)
    with torch.no_grad():
        embeddings.weight[7] += 1.0  # the decoder follows the embeddings: they are one matrix
    assert not torch.equal(head.logits(hidden)[..., 7], want[..., 7])


@pytest.mark.parametrize("model_type", ["bert", "electra"])
def test_the_invertible_adapters_reverse_pass_runs_between_transform_and_decoder(model_type: str) -> None:
    model = _mlm_model(model_type)
    ids, mask = tiny_inputs()
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, active="lang")
        head = model.heads["lang"]
        inverse = model.adapters["lang"].invertible
        want = head.get_submodule("3")(inverse(head.transform(out.last_hidden_state), rev=True))
        plain = head.get_submodule("3")(head.transform(out.last_hidden_state))
    assert out.logits.shape == (*ids.shape, model.vocab_size)
    torch.testing.assert_close(out.logits, want, rtol=0, atol=1e-6)
    assert not torch.allclose(out.logits, plain, atol=1e-3)  # the inverse does something here


def test_with_labels_the_logits_are_those_of_the_labelled_tokens() -> None:
    model = _mlm_model()
    ids, mask = tiny_inputs()
    labels = torch.full_like(ids, -100)
    labels[0, 2], labels[2, 4] = 11, 12
    with torch.no_grad():
        whole = model(input_ids=ids, attention_mask=mask, active="lang").logits
        out = model(input_ids=ids, attention_mask=mask, active="lang", labels=labels)
    torch.testing.assert_close(out.logits, whole[labels != -100], rtol=0, atol=1e-6)
    assert out.loss.item() == pytest.approx(
        torch.nn.functional.cross_entropy(whole[labels != -100], torch.tensor([11, 12])).item(), rel=1e-5)


@pytest.mark.parametrize("fmt", ["adapt", "adapterhub"])
def test_head_saves_and_loads_in_both_formats(tmp_path: Path, fmt: str) -> None:
    model = _mlm_model()
    model.save_adapter(tmp_path / "lang", "lang", format=fmt)
    raw = json.loads((tmp_path / "lang" / "head_config.json").read_text())
    if fmt == "adapterhub":
        assert raw["config"] == {"head_type": "masked_lm", "vocab_size": 100, "embedding_size": 32, "layers": 2,
                                 "activation_function": "gelu", "layer_norm": True, "bias": True,
                                 "shift_labels": False, "label2id": None}
        weights = torch.load(tmp_path / "lang" / "pytorch_model_head.bin", weights_only=True)
        assert set(weights) == {f"heads.lang.{k}" for k in ("0.weight", "0.bias", "2.weight", "2.bias", "3.weight",
                                                            "3.bias")}
        assert torch.equal(weights["heads.lang.3.weight"], model.base.get_input_embeddings().weight)
    else:
        assert raw["config"]["head_type"] == "masked_lm" and raw["parameters"] == 32 * 32 + 3 * 32 + 100  # no embeddings
    other = tiny_model()
    other.base.load_state_dict(model.base.state_dict())
    other.load_adapter(tmp_path / "lang")
    ids, mask = tiny_inputs()
    with torch.no_grad():
        a = model(input_ids=ids, attention_mask=mask, active="lang").logits
        b = other.eval()(input_ids=ids, attention_mask=mask, active="lang").logits
    assert torch.equal(a, b)
    if fmt == "adapt":  # AdapterHub's adapter config has no place for it (its hub cards do: adapt pack)
        assert other.adapters["lang"].config.kind == "language"


def test_other_heads_keep_their_config_keys() -> None:
    assert "vocab_size" not in HeadConfig().to_dict() and "layer_norm" not in HeadConfig().to_dict()
    with pytest.raises(Exception, match="masked_lm"):
        HeadConfig(vocab_size=10)
    with pytest.raises(Exception, match="vocab_size"):
        HeadConfig(head_type="masked_lm")


def test_a_family_that_cannot_tie_its_decoder_is_refused(monkeypatch) -> None:
    import dataclasses

    model = tiny_model()
    monkeypatch.setattr(model, "arch", dataclasses.replace(model.arch, tied_lm_head=False))
    with pytest.raises(UsageError, match="cannot carry masked-LM head"):
        model.add_head("lang", "masked_lm", vocab_size=model.vocab_size)


def test_task_kind_mlm(tmp_path: Path) -> None:
    from adapter_cli.tasks import get_task

    builtin = get_task("mlm")
    assert builtin.kind == "mlm" and builtin.head_type == "masked_lm" and builtin.lower_is_better
    assert not get_task("sst2").lower_is_better
    (tmp_path / "t.yaml").write_text("name: wiki\nkind: mlm\nmetrics: [perplexity]\nlocal: {train: train.txt}\n")
    assert get_task(str(tmp_path / "t.yaml")).main_metric == "perplexity"
    (tmp_path / "bad.yaml").write_text("name: wiki\nkind: mlm\nmetrics: [accuracy]\nlocal: {train: train.txt}\n")
    with pytest.raises(UsageError, match="mlm task's metrics"):
        get_task(str(tmp_path / "bad.yaml"))


def test_dev_split_held_out_of_train_when_there_is_no_dev_file(tmp_path: Path) -> None:
    from adapter_cli.tasks import get_task
    from adapter_cli.tasks.text import held_out_dev, load_text

    (tmp_path / "train.txt").write_text("".join(f"line {i}\n\n" for i in range(50)))
    task = get_task("mlm")
    train, _ = load_text(task, "train", tmp_path)
    dev, where = load_text(task, "eval", tmp_path)
    assert len(dev) == 5 and len(train) == 45 and not set(dev) & set(train) and "held-out" in where
    assert held_out_dev(task, tmp_path) and dev == load_text(task, "eval", tmp_path)[0]
    (tmp_path / "dev.txt").write_text("a dev line\n")
    assert load_text(task, "eval", tmp_path)[0] == ["a dev line"] and len(load_text(task, "train", tmp_path)[0]) == 50
    (tmp_path / "train.txt").write_text("\n  \n")
    with pytest.raises(UsageError, match="holds no text"):
        load_text(task, "train", tmp_path)


def test_a_language_adapter_stays_one_in_adapterhubs_format(tmp_path: Path) -> None:
    """AdapterHub's config has no kind: the file says "type": "text_lang" (adapter-transformers' key), and a
    MAD-X adapter with an invertible layer may be stacked under whatever its file says."""
    from adapter_cli.formats import read_adapter
    from adapter_cli.training.setup import language_adapter_kind

    model = tiny_model()
    model.add_adapter("lang", "pfeiffer+inv", {"kind": "language"})
    model.add_adapter("task", "pfeiffer")
    model.save_adapter(tmp_path / "lang", "lang", format="adapterhub")
    model.save_adapter(tmp_path / "task", "task", format="adapterhub")
    assert json.loads((tmp_path / "lang" / "adapter_config.json").read_text())["type"] == "text_lang"
    assert "type" not in json.loads((tmp_path / "task" / "adapter_config.json").read_text())
    assert read_adapter(tmp_path / "lang").config.kind == "language"
    assert read_adapter(tmp_path / "task").config.kind == "task"
    language_adapter_kind(tmp_path / "lang", "lang")
    with pytest.raises(UsageError, match="that is a task adapter"):
        language_adapter_kind(tmp_path / "task", "task")
