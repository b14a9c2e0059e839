"""Shared test helpers: tiny random models built from configs, the location of ../shared, and the benchmark
script loaded as a module."""

from __future__ import annotations

import importlib.util
import os
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("ADAPT_SHARED", ROOT.parent / "shared"))
FIXTURES = ROOT / "tests" / "fixtures"


def tiny_config(model_type: str = "bert", **overrides):
    """A small random encoder of the given type (hidden 32, 2 layers)."""
    from transformers import AutoConfig

    common = dict(vocab_size=100, max_position_embeddings=64)
    if model_type == "distilbert":
        kw = dict(dim=32, n_layers=2, n_heads=4, hidden_dim=64, **common)
    elif model_type in ("bart", "mbart"):  # 2 encoder + 2 decoder layers; ids as save_tiny_model's tokenizer's
        kw = dict(d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                  decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, pad_token_id=0, bos_token_id=2,
                  eos_token_id=3, decoder_start_token_id=3, forced_eos_token_id=None, **common)
    elif model_type in ("t5", "mt5"):  # relative positions: no max_position_embeddings
        kw = dict(d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=4,
                  relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=3, decoder_start_token_id=0,
                  vocab_size=100)
    else:
        kw = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                  type_vocab_size=2, **common)
        if model_type == "electra":
            kw["embedding_size"] = 16
    kw.update(overrides)
    return AutoConfig.for_model(model_type, **kw)


def tiny_model(model_type: str = "bert", seed: int = 0, **overrides):
    from adapter_cli import AdapterModel

    torch.manual_seed(seed)
    return AdapterModel.from_config(tiny_config(model_type, **overrides)).eval()


def tiny_inputs(batch: int = 3, length: int = 7, vocab: int = 100, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab, (batch, length), generator=g)
    mask = torch.ones_like(ids)
    mask[1, length - 2:] = 0
    return ids, mask


def randomise(module: torch.nn.Module, seed: int = 3, scale: float = 0.3) -> None:
    """Redraw every parameter of ``module`` (adapters, fusions, heads) as ``scale`` * N(0, 1), seeded, so that
    wrong numerics show (fresh adapters are near-identities)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale)


def pytest_collection_modifyitems(config, items) -> None:
    """Tests marked ``gpu`` run only where CUDA is usable; CPU CI skips them with the reason."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (none on this machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def load_bench(name: str = "adapt_bench_run"):
    """``bench/run.py`` (a script, not a package) loaded as a fresh module called ``name``."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / "run.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def no_compiler():
    """As on a machine without a C++ compiler: inductor's compiler search finds nothing."""
    import torch._inductor.config as inductor_config

    with inductor_config.patch({"cpp.cxx": ("/nonexistent/c++",)}):
        yield


@contextmanager
def sandbox(tmp_path_factory, name: str):
    """A module-wide working directory with its own adapter cache (for fixtures that train once and share)."""
    root = tmp_path_factory.mktemp(name)
    mp = pytest.MonkeyPatch()
    mp.setenv("ADAPT_CACHE", str(root / "cache"))
    mp.chdir(root)
    try:
        yield root
    finally:
        mp.undo()


@pytest.fixture
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} is absent (CI has it; user machines do not)")
    return SHARED


WORDS_POS = ["good", "great", "fine", "nice", "happy", "love", "best", "fun"]
WORDS_NEG = ["bad", "awful", "poor", "sad", "hate", "worst", "dull", "boring"]
FILLER = ["the", "film", "was", "a", "it", "and", "plot", "very", "so", "movie"]


def save_tiny_model(path: Path, model_type: str = "bert", seed: int = 0) -> Path:
    """A tiny random encoder with a WordPiece tokenizer, saved like a real model directory."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordPiece
    from transformers import PreTrainedTokenizerFast

    path.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS_POS + WORDS_NEG + FILLER
    tok = Tokenizer(WordPiece({w: i for i, w in enumerate(vocab)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                            sep_token="[SEP]", mask_token="[MASK]").save_pretrained(path)
    model = tiny_model(model_type, seed=seed, vocab_size=len(vocab), pad_token_id=0)
    model.base.save_pretrained(path)
    return path


def write_sentiment_task(root: Path, n_train: int = 96, n_eval: int = 48, seed: int = 0, fmt: str = "csv") -> Path:
    """A user task (YAML + files) that a tiny model can learn: the label is the sentiment word."""
    import csv
    import random

    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)

    def rows(n: int) -> list[dict]:
        out = []
        for _ in range(n):
            label = rng.randint(0, 1)
            words = rng.sample(FILLER, 4) + [rng.choice(WORDS_POS if label else WORDS_NEG)]
            rng.shuffle(words)
            out.append({"text": " ".join(words), "label": ["neg", "pos"][label]})
        return out

    for split, n in (("train", n_train), ("dev", n_eval)):
        with open(root / f"{split}.{fmt}", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["text", "label"], delimiter="\t" if fmt == "tsv" else ",")
            writer.writeheader()
            writer.writerows(rows(n))
    (root / "task.yaml").write_text(
        "name: toy_sentiment\nkind: single\nlabels: [neg, pos]\nmetrics: [accuracy, f1]\n"
        f"columns: {{text: text, label: label}}\nlocal: {{train: train.{fmt}, eval: dev.{fmt}}}\n")
    return root / "task.yaml"


def assert_resume_after_sigkill_is_exact(runner, app, args: list[str], tmp_path: Path, step: int = 5,
                                         command: str = "train") -> None:
    """Train ``args`` (options of ``adapt COMMAND``, no --run-dir) whole, and once more killed by SIGKILL at
    ``step`` then resumed by ``adapt train --resume``: the best metrics and every trainable tensor must be equal."""
    import json
    import subprocess
    import sys

    killer = [sys.executable, str(ROOT / "tests" / "kill_at_step.py"), str(step), command]
    killed = subprocess.Popen(killer + args + ["--run-dir", str(tmp_path / "killed")], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    whole = runner.invoke(app, [command, *args, "--run-dir", str(tmp_path / "whole")])
    assert whole.exit_code == 0, whole.stderr
    assert killed.wait() == -9
    resumed = runner.invoke(app, ["train", "--resume", "--run-dir", str(tmp_path / "killed"), "--quiet"])
    assert resumed.exit_code == 0, resumed.stderr
    runs = [(json.loads((tmp_path / n / "final_metrics.json").read_text())["best"],
             torch.load(tmp_path / n / "checkpoint.pt", weights_only=True)["trainable"]) for n in ("whole", "killed")]
    assert runs[0][0] == runs[1][0]
    assert all(torch.equal(runs[0][1][k], runs[1][1][k]) for k in runs[0][1])


def one_line_error(result, code: int = 2) -> str:
    """A CLI result that failed with exactly one 'error: ...' line on stderr and nothing on stdout."""
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert result.stdout == ""
    return lines[0]


def fixture_inputs(tensors: dict, batch: str) -> dict:
    """A recorded batch of the reference fixtures (cases.safetensors): "default", "nomask" (the default ids
    without a mask) or a named one ("leftpad", "short", ...)."""
    if batch == "default":
        return {"input_ids": tensors["input_ids"], "attention_mask": tensors["attention_mask"]}
    if batch == "nomask":
        return {"input_ids": tensors["input_ids"]}
    return {"input_ids": tensors[f"{batch}.input_ids"], "attention_mask": tensors[f"{batch}.attention_mask"]}


# ---------------------------------------------------------------------- tiny decoders (GPT-2, Llama, Mistral, Qwen2)

DECODER_TYPES = ("gpt2", "llama", "mistral", "qwen2")
# A character-level vocabulary of exactly 70 entries: the specials, then one token per character.
DECODER_SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]
DECODER_CHARS = list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,!")
DECODER_VOCAB = DECODER_SPECIALS + DECODER_CHARS
PAD_ID, BOS_ID, EOS_ID = 0, 1, 2


def tiny_decoder_config(model_type: str = "gpt2", **overrides):
    """A small random decoder (vocab 70, hidden 32, 2 layers, 4 heads, 64 positions; pad 0, bos 1, eos 2);
    Llama and Mistral with grouped-query attention (2 key/value heads)."""
    from transformers import AutoConfig

    ids = dict(pad_token_id=PAD_ID, bos_token_id=BOS_ID, eos_token_id=EOS_ID)
    if model_type == "gpt2":
        kw = dict(vocab_size=len(DECODER_VOCAB), n_embd=32, n_layer=2, n_head=4, n_inner=64, n_positions=64, **ids)
    else:
        kw = dict(vocab_size=len(DECODER_VOCAB), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, intermediate_size=64, max_position_embeddings=64, **ids)
        if model_type in ("mistral", "qwen2"):
            kw["sliding_window"] = None
    kw.update(overrides)
    return AutoConfig.for_model(model_type, **kw)


def tiny_decoder(model_type: str = "gpt2", seed: int = 0, **overrides):
    """An AdapterModel over a tiny random decoder (see ``tiny_decoder_config``), in eval mode."""
    from adapter_cli import AdapterModel

    torch.manual_seed(seed)
    return AdapterModel.from_config(tiny_decoder_config(model_type, **overrides)).eval()


def char_tokenizer():
    """A character-level fast tokenizer over ``DECODER_VOCAB`` (no bos/eos added; decode joins characters)."""
    from tokenizers import Regex, Tokenizer, decoders, pre_tokenizers
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(WordLevel({t: i for i, t in enumerate(DECODER_VOCAB)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), "isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>")


def save_tiny_decoder(path: Path, model_type: str = "gpt2", seed: int = 0, bare: bool = False,
                      **overrides) -> Path:
    """A tiny random causal LM (``AutoModelForCausalLM``, with its ``lm_head``; ``bare``: the base ``AutoModel``
    only) and its character tokenizer, saved like a real model directory."""
    from transformers import AutoModel, AutoModelForCausalLM

    path.mkdir(parents=True, exist_ok=True)
    char_tokenizer().save_pretrained(path)
    torch.manual_seed(seed)
    cls = AutoModel if bare else AutoModelForCausalLM
    cls.from_config(tiny_decoder_config(model_type, **overrides)).save_pretrained(path)
    return path


# ---------------------------------------------------------------------- tiny vision encoder (ViT) and images

VIT_IMAGE = 32  # pixels a side; patches of 8: 16 patches and [CLS]


def tiny_vit_config(**overrides):
    from transformers import AutoConfig

    kw = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
              image_size=VIT_IMAGE, patch_size=8, num_channels=3)
    kw.update(overrides)
    return AutoConfig.for_model("vit", **kw)


def tiny_vit(seed: int = 0, **overrides):
    from adapter_cli import AdapterModel

    torch.manual_seed(seed)
    return AdapterModel.from_config(tiny_vit_config(**overrides)).eval()


def tiny_pixels(batch: int = 3, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, VIT_IMAGE, VIT_IMAGE, generator=torch.Generator().manual_seed(seed))


def save_tiny_vit(path: Path, seed: int = 0, processor: bool = True) -> Path:
    """A tiny random ViT saved like a real checkpoint: the model and (``processor``) its image processor."""
    from transformers import AutoModel, ViTImageProcessorPil

    path.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    AutoModel.from_config(tiny_vit_config()).save_pretrained(path)
    if processor:
        ViTImageProcessorPil(size={"height": VIT_IMAGE, "width": VIT_IMAGE}).save_pretrained(path)
    return path


COLOURS = ("red", "green", "blue")


def write_image_task(root: Path, n_train: int = 12, n_eval: int = 4, seed: int = 0) -> Path:
    """A toy image task: noisy pictures whose strongest channel is the label (PNG and JPEG, of varying sizes),
    a folder per label in train/ and val/, and its task YAML."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, count in (("train", n_train), ("val", n_eval)):
        for channel, label in enumerate(COLOURS):
            folder = root / split / label
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                pixels = rng.integers(0, 120, (24 + 4 * (i % 3), 40, 3)).astype("uint8")
                pixels[..., channel] += 110
                Image.fromarray(pixels).save(folder / f"{i}.{'png' if i % 2 else 'jpg'}")
    (root / "task.yaml").write_text("name: colours\nkind: image\nlabels: [red, green, blue]\n"
                                    "metrics: [accuracy, macro_f1]\nlocal: {train: train, eval: val}\n")
    return root / "task.yaml"
