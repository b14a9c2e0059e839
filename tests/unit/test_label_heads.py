"""Multi-label classification, tagging and question-answering heads: equal to AdapterHub's (fixtures made with
adapters 1.3.0), saved and read in both formats, and the metrics and word alignment they are scored with."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from adapter_cli import AdapterModel
from adapter_cli.errors import AdaptError
from adapter_cli.head_config import HeadConfig
from adapter_cli.tagging import first_tokens, token_labels, word_predictions
from adapter_cli.tasks.metrics import compute, entity_spans
from tests.conftest import FIXTURES, char_tokenizer, save_tiny_model, tiny_inputs, tiny_model

HEADS = {"ml": "multilabel_classification", "ml1": "multilabel_classification", "tag": "tagging",
         "tag2": "tagging", "qa": "question_answering", "qa2": "question_answering"}
LABELS = {"ml": "ml_labels", "ta": "tag_labels", "qa": "qa_labels"}


@pytest.mark.parametrize("family", ["bert", "gpt2"])
@pytest.mark.parametrize("head", sorted(HEADS))
def test_heads_equal_adapterhub(family: str, head: str) -> None:
    from safetensors.torch import load_file

    root = FIXTURES / f"heads_{family}"
    cases = load_file(str(root / "cases.safetensors"))
    model = AdapterModel.from_pretrained(str(root / "base")).eval()
    model.load_adapter(root / "adapters" / "a", with_head=False)
    name = model.load_head(root / "heads" / head)
    assert model.heads[name].config.head_type == HEADS[head]
    labels = cases[LABELS[head[:2]]]
    with torch.no_grad():
        out = model(input_ids=cases["input_ids"], attention_mask=cases["attention_mask"], labels=labels,
                    active="a", head=name)
    assert out.logits.shape == cases[f"{head}.logits"].shape
    assert (out.logits - cases[f"{head}.logits"]).abs().max() <= 1e-5
    assert abs(float(out.loss) - float(cases[f"{head}.loss"])) <= 1e-5


@pytest.mark.parametrize("fmt", ["adapt", "adapterhub"])
def test_heads_survive_a_save_and_load(tmp_path: Path, fmt: str) -> None:
    model = tiny_model()
    model.add_head("ml", "multilabel_classification", num_labels=3, label2id={"x": 0, "y": 1, "z": 2})
    model.add_head("tag", "tagging", num_labels=4, layers=1)
    ids, mask = tiny_inputs()
    for name in ("ml", "tag"):
        with torch.no_grad():
            torch.nn.init.normal_(model.heads[name][-1].weight)
        model.save_head(tmp_path / name, name, format=fmt)
        other = tiny_model()
        other.load_head(tmp_path / name)
        assert other.heads[name].config == model.heads[name].config
        with torch.no_grad():
            assert torch.equal(other(input_ids=ids, attention_mask=mask, head=name).logits,
                               model(input_ids=ids, attention_mask=mask, head=name).logits)
    if fmt == "adapterhub":
        assert json.loads((tmp_path / "tag" / "head_config.json").read_text())["config"]["head_type"] == "tagging"


def test_an_older_multilabel_classification_file_is_a_multilabel_head(tmp_path: Path) -> None:
    """Earlier AdapterHub versions marked a multi-label head as a classification head with multilabel: true."""
    import shutil

    shutil.copytree(FIXTURES / "heads_bert" / "heads" / "ml", tmp_path / "ml")
    path = tmp_path / "ml" / "head_config.json"
    data = json.loads(path.read_text())
    data["config"].update(head_type="classification", multilabel=True)
    path.write_text(json.dumps(data))
    model = AdapterModel.from_pretrained(str(FIXTURES / "heads_bert" / "base"))
    assert model.heads[model.load_head(tmp_path / "ml")].config.head_type == "multilabel_classification"


def test_tagging_logits_are_per_input_token_with_a_prompt() -> None:
    """A prompt adds positions inside the model; the tagging head still answers once per token given."""
    model = tiny_model()
    model.add_adapter("p", "prompt_tuning[prompt_length=3]")
    model.add_head("p", "tagging", num_labels=3)
    ids, mask = tiny_inputs()
    labels = torch.randint(0, 3, ids.shape)
    out = model(input_ids=ids, attention_mask=mask, labels=labels, active="p")
    assert out.logits.shape == (*ids.shape, 3) and out.loss is not None


def test_head_configs_refuse_too_few_labels() -> None:
    with pytest.raises(AdaptError, match="tagging head needs at least 2 labels"):
        HeadConfig(head_type="tagging", num_labels=1)
    assert HeadConfig(head_type="multilabel_classification", num_labels=1).outputs == 1
    with pytest.raises(AdaptError, match="at least 1 label"):
        HeadConfig(head_type="multilabel_classification", num_labels=0)


def test_the_multilabel_loss_is_binary_cross_entropy_per_label() -> None:
    model = tiny_model()
    model.add_head("ml", "multilabel_classification", num_labels=3)
    ids, mask = tiny_inputs()
    labels = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 0.0], [1.0, 1.0, 0.0]])
    out = model(input_ids=ids, attention_mask=mask, labels=labels, head="ml")
    expected = torch.nn.functional.binary_cross_entropy_with_logits(out.logits, labels)
    assert torch.allclose(out.loss, expected)


@pytest.mark.parametrize("tags, spans", [
    (["B-PER", "I-PER", "O", "B-LOC"], {("PER", 0, 2), ("LOC", 3, 4)}),
    (["I-PER", "I-PER", "B-PER", "O"], {("PER", 0, 2), ("PER", 2, 3)}),  # IOB1: B- only between two spans
    (["I-PER", "I-LOC", "O"], {("PER", 0, 1), ("LOC", 1, 2)}),  # a type change starts a new span
    (["S-PER", "B-LOC", "E-LOC", "S-LOC"], {("PER", 0, 1), ("LOC", 1, 3), ("LOC", 3, 4)}),  # IOBES
    (["PER", "PER", "O", "LOC"], {("PER", 0, 2), ("LOC", 3, 4)}),  # no prefix: inside
    (["O", "O"], set()),
])
def test_entity_spans_follow_conlleval(tags: list[str], spans: set) -> None:
    assert entity_spans(tags) == spans


def test_entity_f1_and_word_accuracy() -> None:
    names = ["O", "B-PER", "I-PER", "B-LOC"]
    gold = [[1, 2, 0, 3], [0, 3]]
    pred = [[1, 0, 0, 3], [0, 3]]  # one PER span cut short: 2 of 3 spans right, 2 of 3 guessed right
    out = compute(["entity_f1", "accuracy"], pred, gold, "tagging", names)
    assert out["entity_f1"] == pytest.approx(2 / 3)
    assert out["accuracy"] == pytest.approx(5 / 6)


def test_multilabel_metrics() -> None:
    gold = [[1, 0, 1], [0, 1, 0], [0, 0, 0]]
    pred = [[1, 0, 1], [1, 1, 0], [0, 0, 0]]
    out = compute(["accuracy", "micro_f1", "macro_f1"], pred, gold, "multilabel")
    assert out["accuracy"] == pytest.approx(2 / 3)  # the whole set right
    assert out["micro_f1"] == pytest.approx(2 * 3 / (2 * 3 + 1))
    assert out["macro_f1"] == pytest.approx((2 / 3 + 1 + 1) / 3)
    # a label nobody has nor predicts says nothing: perfect answers score 1, as single-label macro F1 does
    perfect = compute(["macro_f1"], [[1, 0, 0], [0, 1, 0]], [[1, 0, 0], [0, 1, 0]], "multilabel")
    assert perfect["macro_f1"] == 1.0


def test_words_find_their_first_wordpiece(tmp_path: Path) -> None:
    from adapter_cli.tagging import align
    from adapter_cli.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(str(save_tiny_model(tmp_path / "m")), None, "tiny")
    aligned = align(tokenizer, [["the", "film", "zzz", "was"], ["good"]], max_length=64)
    ids = aligned.encoding["input_ids"][0]
    tokens = tokenizer.convert_ids_to_tokens(ids)
    assert [tokens[i] for i in aligned.first_tokens[0]] == ["the", "film", "[UNK]", "was"]
    assert aligned.first_tokens[1] == [1]
    cut = align(tokenizer, [["the", "film", "was", "good", "fun"]], max_length=4)
    assert cut.first_tokens[0] == [1, 2, None, None, None]  # [CLS] the film [SEP]: three words were cut
    labels = token_labels([3, 1, 2, 0, 0], cut.first_tokens[0], 4)
    assert labels == [-100, 3, 1, -100]
    logits = torch.zeros(4, 5)
    logits[1, 4] = logits[2, 2] = 1.0
    assert word_predictions(logits, cut.first_tokens[0], fill=0) == [4, 2, 0, 0, 0]


def test_a_word_the_tokenizer_removes_hides_only_itself(tmp_path: Path) -> None:
    """A zero-width space or a replacement character makes no token; the words after it keep theirs."""
    from adapter_cli.tagging import align
    from adapter_cli.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(str(save_tiny_model(tmp_path / "m")), None, "tiny")
    aligned = align(tokenizer, [["the", "\u200b", "film", "\ufffd", "was"]], max_length=64)
    tokens = tokenizer.convert_ids_to_tokens(aligned.encoding["input_ids"][0])
    first = aligned.first_tokens[0]
    assert first[1] is None and first[3] is None
    assert [tokens[first[i]] for i in (0, 2, 4)] == ["the", "film", "was"]


def test_words_of_several_pieces_and_a_character_tokenizer() -> None:
    tokenizer = char_tokenizer()
    enc = tokenizer(["ab c"], return_offsets_mapping=True, return_special_tokens_mask=True)
    assert first_tokens(["ab", "c"], enc["offset_mapping"][0], enc["special_tokens_mask"][0]) == [0, 3]


@pytest.mark.parametrize("trim", [True, False])
def test_words_under_a_byte_level_bpe(trim: bool) -> None:
    """GPT-2 and RoBERTa tokenizers put the space in front of a word ('Ġplot'), or alone ('Ġ') before a piece
    they do not know; either way the word starts at its first piece that holds a character of it."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    from adapter_cli.tagging import align

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.post_processor = processors.ByteLevel(trim_offsets=trim)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(["the film was wonderful and the plot was great"] * 20,
                            trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                show_progress=False))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>")
    aligned = align(fast, [["the", "wonderfully", "plot", "zq"]], 64)
    tokens = fast.convert_ids_to_tokens(aligned.encoding["input_ids"][0])
    assert [tokens[i] for i in aligned.first_tokens[0]] == ["the", "Ġwonderful", "Ġplot", "z"]


@pytest.mark.parametrize("head_type", ["tagging", "question_answering"])
def test_batched_answers_equal_single_ones_under_a_left_padding_tokenizer(head_type: str) -> None:
    """Word and context positions count from each row's first token: a tokenizer that pads on the left (as
    many Llama tokenizers do) must not shift them in a batch of different lengths."""
    from adapter_cli.inference import Row, predict
    from tests.conftest import randomise, tiny_decoder

    model = tiny_decoder("gpt2")
    kw = {"num_labels": 2, "layers": 1} if head_type == "question_answering" else {"num_labels": 3}
    model.add_head("h", head_type, **kw)
    randomise(model.heads["h"], scale=1.0)
    tokenizer = char_tokenizer()
    tokenizer.padding_side = "left"
    if head_type == "tagging":
        rows = [Row("ab c d"), Row("a bb cc dd a b")]
    else:
        rows = [Row("q", "ab cd"), Row("qq a", "ab cd ef ab cd ab c")]
    together = list(predict(model, tokenizer, rows, head="h", max_length=48))
    alone = [next(predict(model, tokenizer, [row], head="h", max_length=48)) for row in rows]
    for a, b in zip(together, alone):  # the same answers; numbers from a wider padded batch may round otherwise
        for key in ("probability", "scores", "score", "no_answer"):
            assert a.pop(key, 0) == pytest.approx(b.pop(key, 0), abs=1e-5)
        assert a == b
