"""Where the adapter sites are in each supported transformers architecture.

A site is a sub-layer with a residual connection: ``h`` its output (after its dropout) and ``x`` its
residual input. In a post-norm encoder (BERT) the site computes ``LN(h + x)``: forward hooks capture ``h``
and ``x`` and take over that LayerNorm call. In a pre-norm decoder (GPT-2, Llama) the layer itself adds
``x`` to the sub-layer's output, with no norm after it (``layer_norm`` is empty): a hook on the sub-layer's
output hands the layer what it must add ``x`` to. Either way no transformers modeling code is copied.
Supporting a new family means adding one entry here (and a test).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from .errors import UnsupportedModel

# The sane range of a base model's shape (the largest encoders have hidden 12288 and 100-odd layers): what
# `adapt add --hidden-size/--num-layers` and an artifact's recorded base model may say.
MAX_HIDDEN_SIZE = 65536
MAX_LAYERS = 1024


@dataclass(frozen=True)
class SiteSpec:
    location: str  # "mh_adapter" (after multi-head attention) or "output_adapter" (after feed-forward)
    output_of: str  # module (relative to a layer) whose output is h
    residual_module: str  # module whose call receives x ...
    residual_arg: int  # ... as this positional argument ...
    residual_kwarg: str  # ... or this keyword argument
    layer_norm: str  # the LayerNorm applied to h + x; "" in a pre-norm layer, which adds x itself
    adapterhub_path: str  # AdapterHub's module path for this site, for its weight names
    # The layer attribute holding the probability of a dropout the layer applies to h as a function, with no
    # module to hook (BART): the site takes it over (stitching.Site), so that adapters see h after it.
    functional_dropout: str = ""


@dataclass(frozen=True)
class Architecture:
    """Where adapters go in one transformers model family (the table is keyed by its model_type)."""

    name: str
    layers: str  # path of the layer list inside the base model
    sites: tuple[SiteSpec, ...]
    adapterhub_prefix: str  # transformers' base_model_prefix, which AdapterHub puts before its keys
    adapterhub_model_class: str
    hidden_size_attr: str = "hidden_size"
    heads_attr: str = "num_attention_heads"
    # Grouped-query attention (Llama, Mistral, Qwen2): the config attribute with the number of key/value heads,
    # fewer than the query heads, and a prefix has as many heads as the keys (as in AdapterHub). None: one key
    # head per query head.
    kv_heads_attr: str | None = None
    # The self-attention module (relative to a layer) that calls transformers' attention interface, where
    # prefix-tuning adapters add their keys and values.
    self_attention: str = "attention.self"
    num_layers_attr: str = "num_hidden_layers"
    attention_dropout_attr: str = "attention_probs_dropout_prob"
    hidden_dropout_attr: str = "hidden_dropout_prob"
    # The module (in the base model) whose output an invertible adapter transforms: the embeddings, as in
    # AdapterHub, which hooks the same module; for ELECTRA that is before embeddings_project (embedding_size).
    embeddings: str = "embeddings"
    # Whether the invertible adapter transforms that module's input (its first argument) instead: T5's embedded
    # input goes through a Dropout module the encoder calls again on its output, so the first block's input
    # stands for the dropout's first output, where AdapterHub runs it.
    embeddings_input: bool = False
    # Whether a masked-LM head (language adapters, `adapt train --task mlm`) can tie its decoder to the model's
    # input word embeddings (``get_input_embeddings()``): all five families can.
    tied_lm_head: bool = True
    # The linear layers LoRA-family adapters change (relative to a layer): q, k, v, intermediate, output.
    # AdapterHub names their weights by these same module paths.
    linears: tuple[tuple[str, str], ...] = (
        ("q", "attention.self.query"), ("k", "attention.self.key"), ("v", "attention.self.value"),
        ("intermediate", "intermediate.dense"), ("output", "output.dense"))
    # The adapter methods (config ``architecture`` values) adapt stitches into this family; None: all of them.
    # A family added before a method learned its layout lists what works, and the rest is refused in one line.
    methods: tuple[str, ...] | None = None
    # Whether the model takes token_type_ids (segment embeddings); decoders do not.
    segments: bool = True
    # A causal decoder: its classification heads read the last attended token (AdapterHub's pooling for
    # decoders: a causal model's first token has seen nothing else), and it can generate with a causal-LM head.
    causal: bool = False
    # The head types (head_config.HEAD_TYPES) a model of this family carries, as AdapterHub's flexible model.
    heads: tuple[str, ...] = ("classification", "multilabel_classification", "tagging", "question_answering",
                              "regression", "multiple_choice", "masked_lm")
    # What the model reads: "text" (input_ids) or "image" (pixel_values, a vision encoder).
    modality: str = "text"
    # Where AdapterHub's weight names differ from this transformers version's module paths (transformers 5
    # renamed ViT's modules; AdapterHub 1.3.0 names its weights after those of transformers 4): its layer list
    # and its path of each LoRA matrix. None: the same as ``layers`` and ``linears``.
    adapterhub_layers: str | None = None
    adapterhub_linears: tuple[tuple[str, str], ...] | None = None
    adapterhub_self_attention: str | None = None  # and of the self-attention holding prefixes
    # LoRA variants refused on this family (the reference cannot build them on its layers).
    refused_lora: tuple[str, ...] = ()
    # Whether PEFT's files for this family's LoRA-family adapters are read and written (not for Conv1D layers).
    peft: bool = True
    # An encoder-decoder: the decoder's layer list (its layers are numbered after the encoder's, as AdapterHub
    # numbers them, so ``leave_out`` and per-layer widths count on across both) and the config attribute with
    # its depth; ``layers`` and ``num_layers_attr`` are the encoder's. Classification heads read each row's
    # last end-of-sequence token in the decoder's states (AdapterHub's pooling for BART).
    decoder_layers: str | None = None
    decoder_layers_attr: str = "decoder_layers"
    # The decoder layers' sites where they are not the encoder's (T5: its feed-forward sub-layer comes third,
    # after cross-attention); None: ``sites`` (BART's are named alike in both, cross-attention only in the decoder).
    decoder_sites: tuple[SiteSpec, ...] | None = None
    # A seq2seq-LM head tied to the word embeddings reads the decoder's states scaled by d_model ** -0.5 (T5, as
    # its own LM head and AdapterHub's do); classification heads read them unscaled.
    scale_tied_lm_input: bool = False
    # mBART's decoder starts with each row's last token (its language code) where BART's and T5's start with
    # the config's decoder_start_token_id: how transformers and AdapterHub shift labels and inputs right.
    decoder_starts_with_last_token: bool = False
    # The config attribute saying whether the model's LM head is its word embeddings; "": never. transformers 5
    # sets T5's and mT5's tie_word_embeddings to true whatever their checkpoints say: T5 keeps the saved value
    # as scale_decoder_outputs (T5 v1.1 is untied), and mT5's checkpoints are all untied.
    tied_lm_attr: str = "tie_word_embeddings"
    # An encoder-decoder's decoder layers' linear layers where they are not ``linears``: T5's feed-forward
    # sub-layer comes third there, and every decoder layer adds its cross-attention's q, k and v ("cross_q" ...),
    # which AdapterHub's LoRA changes along with the self-attention's (it wraps every attention module alike).
    decoder_linears: tuple[tuple[str, str], ...] | None = None
    # The config attribute saying whether the feed-forward is gated (T5's ``is_gated_act``: T5 v1.1, Flan-T5,
    # mT5), whose up-projection LoRA's "intermediate" changes is then the linear half ``wi_1``, as AdapterHub
    # picks it; "": one layout for the family. ``for_gated`` gives the family with a config's layout.
    gated_attr: str = ""
    # An encoder-decoder's cross-attention module (relative to a decoder layer), where prefixes join too.
    cross_attention: str = ""

    def for_gated(self, gated: bool | None) -> Architecture:
        """This family with the linear layers of a gated (or plain) feed-forward; None: as it is."""
        if not self.gated_attr or gated is None:
            return self
        up = "wi_1" if gated else "wi"
        return replace(self, linears=_t5_linears(False, up), decoder_linears=_t5_linears(True, up))

    @property
    def gated(self) -> bool | None:
        """Whether this layout's up-projection is a gated feed-forward's linear half (``wi_1``); None for a
        family with one layout."""
        return self.linear("intermediate").endswith("wi_1") if self.gated_attr else None

    @property
    def encoder_decoder(self) -> bool:
        return self.decoder_layers is not None

    def in_decoder(self, layer: int, encoder_layers: int | None) -> bool:
        """Whether (global) ``layer`` is one of an encoder-decoder's decoder layers."""
        return self.decoder_layers is not None and encoder_layers is not None and layer >= encoder_layers

    def sites_for(self, decoder: bool) -> tuple[SiteSpec, ...]:
        return self.decoder_sites if decoder and self.decoder_sites is not None else self.sites

    def layer_path(self, layer: int, encoder_layers: int, hub: bool = False) -> str:
        """The module path of (global) ``layer``: in an encoder-decoder the decoder's layers come after the
        encoder's; ``hub``: as AdapterHub's weight names spell it."""
        if self.decoder_layers is not None and layer >= encoder_layers:
            return f"{self.decoder_layers}.{layer - encoder_layers}"
        return f"{self.hub_layers if hub else self.layers}.{layer}"

    def attention_paths(self, num_layers: int, encoder_layers: int | None) -> list[tuple[str, int, str, str]]:
        """Every attention module a prefix can join: (place, global layer, prefix location, module path). A
        model with one stack has self-attention only (location ""); an encoder-decoder the encoder's
        self-attention ("encoder"), and in each decoder layer its self-attention ("self") and cross-attention
        ("cross", place "cross_attention"), as AdapterHub's prefix locations."""
        if not self.encoder_decoder or encoder_layers is None:
            return [("attention", i, "", f"{self.layers}.{i}.{self.self_attention}") for i in range(num_layers)]
        out = []
        for i in range(num_layers):
            path = self.layer_path(i, encoder_layers)
            if i < encoder_layers:
                out.append(("attention", i, "encoder", f"{path}.{self.self_attention}"))
            else:
                out += [("attention", i, "self", f"{path}.{self.self_attention}"),
                        ("cross_attention", i, "cross", f"{path}.{self.cross_attention}")]
        return out

    def has_site(self, location: str) -> bool:
        return any(s.location == location for s in (*self.sites, *(self.decoder_sites or ())))

    def linears_for(self, decoder: bool) -> tuple[tuple[str, str], ...]:
        return self.decoder_linears if decoder and self.decoder_linears is not None else self.linears

    def linear(self, matrix: str, decoder: bool = False) -> str:
        return dict(self.linears_for(decoder))[matrix]

    @property
    def hub_layers(self) -> str:
        """The layer list's path in AdapterHub's weight names."""
        return self.adapterhub_layers or self.layers

    @property
    def hub_linears(self) -> tuple[tuple[str, str], ...]:
        """Each LoRA matrix's module path in AdapterHub's weight names."""
        return self.adapterhub_linears or self.linears

    def hub_linear(self, matrix: str, decoder: bool = False) -> str:
        return dict(self.linears_for(True) if decoder else self.hub_linears)[matrix]

    def fused(self, matrix: str) -> tuple[int, int] | None:
        """(part, parts) where ``matrix`` is one of several side by side in one module's outputs (GPT-2's q, k
        and v in ``c_attn``); None where it has a module of its own."""
        linears = self.linears_for(matrix not in dict(self.linears))  # cross_q ...: the decoder's
        path = dict(linears)[matrix]
        sharing = [m for m, p in linears if p == path]
        return (sharing.index(matrix), len(sharing)) if len(sharing) > 1 else None

    def check_lora_variant(self, config: Any, what: str = "adapter") -> None:
        """Refuse, in one line, a LoRA variant this family's layers do not take in the reference."""
        variant = "dora" if getattr(config, "use_dora", False) else "vera" if getattr(config, "is_vera", False) \
            else None
        if variant in self.refused_lora:
            raise UnsupportedModel(f"{what} is a {'DoRA' if variant == 'dora' else 'VeRA'} adapter, which "
                                   f"{self.name}'s fused Conv1D layers do not take (adapters 1.3.0 fails on them "
                                   "too); use lora or ia3")

    @property
    def hub_self_attention(self) -> str:
        """The self-attention module's path in AdapterHub's weight names (where prefix tunings sit)."""
        return self.adapterhub_self_attention or self.self_attention

    @property
    def hub_invertible(self) -> str:
        """Where AdapterHub's weight names put invertible adapters (an encoder-decoder's are its encoder's)."""
        return "encoder.invertible_adapters" if self.encoder_decoder else "invertible_adapters"

    @property
    def vision(self) -> bool:
        return self.modality == "image"

    def site(self, location: str, decoder: bool = False) -> SiteSpec:
        return next(s for s in self.sites_for(decoder) if s.location == location)

    def check_method(self, method: str, what: str = "adapter") -> None:
        """Refuse, in one line, a method adapt does not (yet) stitch into this family."""
        if self.methods is not None and method not in self.methods:
            names = [m.replace("_", " ") for m in self.methods]
            raise UnsupportedModel(f"{what} is a {method.replace('_', ' ')} adapter, and adapt stitches only "
                                   f"{_listed(names, 'and')} adapters into {self.name} models so far; "
                                   f"use a {_listed(names, 'or')} config")


def _listed(names: list[str], last: str) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} {last} {names[-1]}"


_BERT_SITES = (
    SiteSpec("mh_adapter", "attention.output.dropout", "attention.output", 1, "input_tensor",
             "attention.output.LayerNorm", "attention.output"),
    SiteSpec("output_adapter", "output.dropout", "output", 1, "input_tensor", "output.LayerNorm", "output"),
)


def _bert_like(name: str, prefix: str, model_class: str) -> Architecture:
    return Architecture(name, "encoder.layer", _BERT_SITES, prefix, model_class)


ARCHITECTURES: dict[str, Architecture] = {
    "bert": _bert_like("BERT", "bert", "BertAdapterModel"),
    "roberta": _bert_like("RoBERTa", "roberta", "RobertaAdapterModel"),
    "xlm-roberta": _bert_like("XLM-RoBERTa", "roberta", "XLMRobertaAdapterModel"),
    "electra": _bert_like("ELECTRA", "electra", "ElectraAdapterModel"),
    "distilbert": Architecture(
        "DistilBERT", "transformer.layer",
        (
            SiteSpec("mh_adapter", "attention.out_lin", "", 0, "hidden_states", "sa_layer_norm",
                     "attention_adapters"),
            SiteSpec("output_adapter", "ffn", "ffn", 0, "input", "output_layer_norm", "output_adapters"),
        ),
        "distilbert", "DistilBertAdapterModel",
        hidden_size_attr="dim", num_layers_attr="n_layers", heads_attr="n_heads", self_attention="attention", attention_dropout_attr="attention_dropout",
        hidden_dropout_attr="dropout",
        linears=(("q", "attention.q_lin"), ("k", "attention.k_lin"), ("v", "attention.v_lin"),
                 ("intermediate", "ffn.lin1"), ("output", "ffn.lin2")),
    ),
}


def _pre_norm(name: str, layers: str, attention: str, mlp: str, norms: tuple[str, str], norm_arg: str,
              prefix: str, model_class: str, **fields: object) -> Architecture:
    """A decoder whose layers compute ``x + attention(norm(x))`` then ``x + mlp(norm(x))``: the residual is
    the input of each norm, and AdapterHub's sites receive the sub-layer output and that residual (with no
    LayerNorm: it passes None)."""
    sites = (SiteSpec("mh_adapter", attention, norms[0], 0, norm_arg, "", "attention_adapters"),
             SiteSpec("output_adapter", mlp, norms[1], 0, norm_arg, "", "output_adapters"))
    fields.setdefault("methods", ("bottleneck",))
    heads = ("classification", "multilabel_classification", "tagging", "question_answering", "regression",
             "causal_lm")
    return Architecture(name, layers, sites, prefix, model_class, self_attention=attention,
                        segments=False, causal=True, heads=heads, **fields)  # type: ignore[arg-type]


# AdapterHub's Llama and Mistral put the LoRA it calls "intermediate" on mlp.down_proj and "output" on
# mlp.up_proj (the reverse of the names' sense in BERT); adapt follows it so that their files load key for key.
_LLAMA_LIKE = dict(attention_dropout_attr="attention_dropout", hidden_dropout_attr="hidden_dropout",
                   embeddings="embed_tokens", methods=("bottleneck", "lora", "prefix_tuning", "invertible", "reft"),
                   kv_heads_attr="num_key_value_heads",
                   linears=(("q", "self_attn.q_proj"), ("k", "self_attn.k_proj"), ("v", "self_attn.v_proj"),
                            ("intermediate", "mlp.down_proj"), ("output", "mlp.up_proj")))

ARCHITECTURES.update({
    # GPT-2's projections are Conv1D modules, q, k and v side by side in one (c_attn): linear_views.py.
    # GPT-2's invertible adapters run on the embeddings' dropout output (word + position embeddings), as
    # AdapterHub hooks ``drop``.
    "gpt2": _pre_norm("GPT-2", "h", "attn", "mlp", ("ln_1", "ln_2"), "input", "transformer", "GPT2AdapterModel",
                      attention_dropout_attr="attn_pdrop", hidden_dropout_attr="resid_pdrop", embeddings="drop",
                      methods=("bottleneck", "lora", "prefix_tuning", "invertible", "reft"),
                      refused_lora=("dora", "vera"),
                      peft=False,
                      linears=(("q", "attn.c_attn"), ("k", "attn.c_attn"), ("v", "attn.c_attn"),
                               ("intermediate", "mlp.c_fc"), ("output", "mlp.c_proj"))),
    "llama": _pre_norm("Llama", "layers", "self_attn", "mlp", ("input_layernorm", "post_attention_layernorm"),
                       "hidden_states", "model", "LlamaAdapterModel", **_LLAMA_LIKE),  # type: ignore[arg-type]
    "mistral": _pre_norm("Mistral", "layers", "self_attn", "mlp", ("input_layernorm", "post_attention_layernorm"),
                         "hidden_states", "model", "MistralAdapterModel", **_LLAMA_LIKE),  # type: ignore[arg-type]
    # Qwen2's layers are Llama's with biases on q, k and v. adapters 1.3.0 has no Qwen2 model: its files are
    # written with Llama's layout, which is Qwen2's module for module.
    "qwen2": _pre_norm("Qwen2", "layers", "self_attn", "mlp", ("input_layernorm", "post_attention_layernorm"),
                       "hidden_states", "model", "Qwen2AdapterModel", **_LLAMA_LIKE),  # type: ignore[arg-type]
})


# ViT is pre-norm too, but an encoder: ``x + dropout(attention(layernorm_before(x)))``, then ``x +
# dropout(mlp(layernorm_after(x)))``, where transformers 5 calls one Dropout module for both sub-layers. Both
# sites hook that module: each acts only on the call that follows its own norm (stitching.Site). AdapterHub
# applies the same dropout before its adapters, so training matches too.
ARCHITECTURES["vit"] = Architecture(
    "ViT", "layers",
    (SiteSpec("mh_adapter", "dropout", "layernorm_before", 0, "input", "", "attention_adapters"),
     SiteSpec("output_adapter", "dropout", "layernorm_after", 0, "input", "", "output.output_adapters")),
    "vit", "ViTAdapterModel", self_attention="attention", segments=False,
    heads=("classification", "multilabel_classification", "regression"), modality="image",
    methods=("bottleneck", "lora", "prefix_tuning", "prompt_tuning", "reft"), tied_lm_head=False,
    linears=(("q", "attention.q_proj"), ("k", "attention.k_proj"), ("v", "attention.v_proj"),
             ("intermediate", "mlp.fc1"), ("output", "mlp.fc2")),
    adapterhub_layers="encoder.layer", adapterhub_self_attention="attention.attention",
    adapterhub_linears=(("q", "attention.attention.query"), ("k", "attention.attention.key"),
                        ("v", "attention.attention.value"), ("intermediate", "intermediate.dense"),
                        ("output", "output.dense")))


# BART's layers are post-norm like BERT's, with functional dropout; mBART's are pre-norm. Decoder layers add a
# site after cross-attention, whose residual is the input of ``encoder_attn``. Invertible adapters run on the
# encoder's embeddings after their LayerNorm (AdapterHub hooks layernorm_embedding), never the decoder's.
def _bart_sites(pre_norm: bool) -> tuple[SiteSpec, ...]:
    def site(location: str, attention: str, norm: str, path: str) -> SiteSpec:
        if pre_norm:  # x + dropout(attention(norm(x))): x is the norm's input
            return SiteSpec(location, attention, norm, 0, "input", "", path, "dropout")
        return SiteSpec(location, attention, attention, 0, "hidden_states", norm, path, "dropout")

    return (site("mh_adapter", "self_attn", "self_attn_layer_norm", "attention_adapters"),
            site("cross_adapter", "encoder_attn", "encoder_attn_layer_norm", "cross_attention_adapters"),
            SiteSpec("output_adapter", "fc2", "final_layer_norm" if pre_norm else "fc1", 0, "input",
                     "" if pre_norm else "final_layer_norm", "output_adapters", "dropout"))


# AdapterHub's head types for BART and T5; a question-answering head reads the decoder's states of the inputs
# shifted right (transformers' BartForQuestionAnswering does the same), so its positions are the input's.
_ENCODER_DECODER_HEADS = ("classification", "multilabel_classification", "question_answering", "seq2seq_lm")


def _attention_linears(attention: str, names: tuple[str, str, str], prefix: str = "") -> tuple[tuple[str, str], ...]:
    return tuple((f"{prefix}{m}", f"{attention}.{n}") for m, n in zip(("q", "k", "v"), names))


_BART_QKV = ("q_proj", "k_proj", "v_proj")
_BART_LINEARS = (*_attention_linears("self_attn", _BART_QKV), ("intermediate", "fc1"), ("output", "fc2"))


def _bart_like(name: str, model_class: str, pre_norm: bool, **fields: Any) -> Architecture:
    return Architecture(name, "encoder.layers", _bart_sites(pre_norm), "model", model_class,
                        num_layers_attr="encoder_layers", decoder_layers="decoder.layers",
                        heads_attr="encoder_attention_heads", self_attention="self_attn",
                        cross_attention="encoder_attn",
                        attention_dropout_attr="attention_dropout", hidden_dropout_attr="dropout",
                        methods=("bottleneck", "lora", "prefix_tuning", "invertible"), segments=False, peft=False,
                        linears=_BART_LINEARS,
                        decoder_linears=(*_BART_LINEARS, *_attention_linears("encoder_attn", _BART_QKV, "cross_")),
                        heads=_ENCODER_DECODER_HEADS,
                        embeddings="encoder.layernorm_embedding", **fields)


ARCHITECTURES["bart"] = _bart_like("BART", "BartAdapterModel", pre_norm=False)
ARCHITECTURES["mbart"] = _bart_like("mBART", "MBartAdapterModel", pre_norm=True, decoder_starts_with_last_token=True)


# T5's sub-layers are modules of their own (``block.N.layer.i``), pre-norm: ``x + dropout(sublayer(layer_norm(x)))``
# with a Dropout module, which the site hooks. The decoder's feed-forward sub-layer is the third (after
# cross-attention), the encoder's the second; AdapterHub's weights are named by these same paths.
def _t5_sites(decoder: bool) -> tuple[SiteSpec, ...]:
    def site(location: str, index: int) -> SiteSpec:
        return SiteSpec(location, f"layer.{index}.dropout", f"layer.{index}.layer_norm", 0, "hidden_states", "",
                        f"layer.{index}")

    if decoder:
        return site("mh_adapter", 0), site("cross_adapter", 1), site("output_adapter", 2)
    return site("mh_adapter", 0), site("output_adapter", 1)


def _t5_linears(decoder: bool, up: str) -> tuple[tuple[str, str], ...]:
    """T5's linear layers; ``up``: the feed-forward up-projection AdapterHub changes (``wi``, or the linear half
    ``wi_1`` of a gated feed-forward: mT5's)."""
    ff = f"layer.{2 if decoder else 1}.DenseReluDense"
    out = (*_attention_linears("layer.0.SelfAttention", ("q", "k", "v")), ("intermediate", f"{ff}.{up}"),
           ("output", f"{ff}.wo"))
    return (*out, *_attention_linears("layer.1.EncDecAttention", ("q", "k", "v"), "cross_")) if decoder else out


def _t5_like(name: str, model_class: str, tied_lm_attr: str, up: str) -> Architecture:
    return Architecture(name, "encoder.block", _t5_sites(False), "transformer", model_class,
                        hidden_size_attr="d_model", heads_attr="num_heads", num_layers_attr="num_layers",
                        decoder_layers="decoder.block", decoder_layers_attr="num_decoder_layers",
                        decoder_sites=_t5_sites(True), self_attention="layer.0.SelfAttention",
                        cross_attention="layer.1.EncDecAttention",
                        attention_dropout_attr="dropout_rate", hidden_dropout_attr="dropout_rate",
                        methods=("bottleneck", "lora", "prefix_tuning", "invertible"), segments=False, peft=False,
                        linears=_t5_linears(False, up), decoder_linears=_t5_linears(True, up),
                        heads=_ENCODER_DECODER_HEADS,
                        embeddings="encoder.block.0", embeddings_input=True, scale_tied_lm_input=True,
                        tied_lm_attr=tied_lm_attr, gated_attr="is_gated_act")


# LoRA on the feed-forward up-projection goes where AdapterHub puts it, ``wi_1`` where the feed-forward is gated
# and ``wi`` elsewhere (``architecture_of`` reads the config). These are each family's defaults: T5's original
# ``wi``, mT5's gated ``wi_1``; our files record the layout (``base_model.gated_feed_forward``).
ARCHITECTURES["t5"] = _t5_like("T5", "T5AdapterModel", "scale_decoder_outputs", "wi")
ARCHITECTURES["mt5"] = _t5_like("mT5", "MT5AdapterModel", "", "wi_1")


def architecture_of(config: Any) -> Architecture:
    """The family of a transformers config, with the layout its config chooses (T5's gated feed-forward)."""
    arch = architecture_for(config.model_type)
    return arch.for_gated(bool(getattr(config, arch.gated_attr, False))) if arch.gated_attr else arch


def architecture_for(model_type: str) -> Architecture:
    if model_type in ARCHITECTURES:
        return ARCHITECTURES[model_type]
    supported = ", ".join(sorted(ARCHITECTURES))
    raise UnsupportedModel(f"model type {model_type!r} is not supported; supported model types: {supported}")
