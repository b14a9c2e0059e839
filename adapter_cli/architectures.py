"""Where the adapter sites are in each supported transformers architecture.

A site is a sub-layer that computes ``LN(h + x)``: ``h`` its output (after its dropout) and ``x`` its
residual input. Adapters are stitched in with forward hooks that capture ``h`` and ``x`` and take over
that LayerNorm call, so no transformers modeling code is copied. Supporting a new encoder means adding
one entry here (and a test).
"""

from __future__ import annotations

from dataclasses import dataclass

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
    layer_norm: str  # the LayerNorm applied to h + x
    adapterhub_path: str  # AdapterHub's module path for this site, for its weight names


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
    # The self-attention module (relative to a layer) that calls transformers' attention interface, where
    # prefix-tuning adapters add their keys and values.
    self_attention: str = "attention.self"
    num_layers_attr: str = "num_hidden_layers"
    attention_dropout_attr: str = "attention_probs_dropout_prob"
    hidden_dropout_attr: str = "hidden_dropout_prob"
    # The module (in the base model) whose output an invertible adapter transforms: the embeddings, as in
    # AdapterHub, which hooks the same module; for ELECTRA that is before embeddings_project (embedding_size).
    embeddings: str = "embeddings"
    # Whether a masked-LM head (language adapters, `adapt train --task mlm`) can tie its decoder to the model's
    # input word embeddings (``get_input_embeddings()``): all five families can.
    tied_lm_head: bool = True
    # The linear layers LoRA-family adapters change (relative to a layer): q, k, v, intermediate, output.
    # AdapterHub names their weights by these same module paths.
    linears: tuple[tuple[str, str], ...] = (
        ("q", "attention.self.query"), ("k", "attention.self.key"), ("v", "attention.self.value"),
        ("intermediate", "intermediate.dense"), ("output", "output.dense"))

    def linear(self, matrix: str) -> str:
        return dict(self.linears)[matrix]

    def site(self, location: str) -> SiteSpec:
        return next(s for s in self.sites if s.location == location)


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


def architecture_for(model_type: str) -> Architecture:
    if model_type in ARCHITECTURES:
        return ARCHITECTURES[model_type]
    supported = ", ".join(sorted(ARCHITECTURES))
    raise UnsupportedModel(f"model type {model_type!r} is not supported; supported model types: {supported}")
