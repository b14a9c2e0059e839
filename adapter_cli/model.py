"""``AdapterModel``: a frozen transformers encoder with adapters, fusions and heads stitched in.

    from adapter_cli import AdapterModel
    m = AdapterModel.from_pretrained("bert-base-uncased")
    name = m.load_adapter("path/to/adapter")          # ours or AdapterHub's
    m.load_fusion("path/to/fusion"); m.load_head("path/to/head")
    m.eval()
    out = m(input_ids=ids, attention_mask=mask, active="fuse(pf,pf2,lnb)")
    out.last_hidden_state, out.logits
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers.utils import ModelOutput

from .architectures import Architecture, architecture_for, architecture_of
from .composition import BatchSplit, Block, Fuse, Parallel, Stack, check_name, fuse_blocks, parse_composition
from .errors import ArtifactError, BaseModelMismatch, CompositionError, UnsupportedModel, UsageError
from .formats import AdapterArtifact, BaseModelInfo, FusionArtifact, HeadArtifact
from .fusion import FusionSet, common_locations
from .fusion_config import resolve_fusion_config
from .head_config import HeadConfig
from .heads import PredictionHead
from .embedding_sites import EmbeddingSite
from .encoder_decoders import forced_first_token, last_eos, shift_right
from .methods.bottleneck import location_layers
from .methods.bottleneck_layers import BottleneckAdapterSet
from .linear_sites import LinearSite
from .presets import resolve_adapter_config
from .prefix_sites import PrefixSites
from .prefix_sites import check_composition as check_prefix_composition
from .prompt_sites import PromptSites
from .reft_sites import ReftSites, check_composition
from .stitching import ForwardContext, Site

_UNSET: Any = object()


@dataclass
class AdapterModelOutput(ModelOutput):
    last_hidden_state: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    loss: torch.Tensor | None = None
    pooler_output: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None
    # parallel(...): one output per member; batch_split(...) whose parts answer with different heads: one
    # output per part, in row order.
    branches: tuple[AdapterModelOutput, ...] | None = None
    head: str | None = None  # the head that produced ``logits``
    # Per row, the position of its last attended token: what a decoder's classification head reads.
    last_token: torch.Tensor | None = None
    cache: Any = None  # a decoder's key/value cache, when called with use_cache=True (generation.py)
    # An encoder-decoder's encoder output (``last_hidden_state`` is the decoder's), for generation to reuse.
    encoder_last_hidden_state: torch.Tensor | None = None


@lru_cache(maxsize=256)
def _parse(spec: str) -> Block | None:
    return parse_composition(spec)


class AdapterModel(nn.Module):
    def __init__(self, base: nn.Module, name_or_path: str | None = None, revision: str | None = None) -> None:
        super().__init__()
        base = getattr(base, "base_model", base)
        self.arch: Architecture = architecture_of(base.config)
        self.base = base
        self.name_or_path = name_or_path or getattr(base.config, "_name_or_path", None) or None
        self.revision = revision or getattr(base.config, "_commit_hash", None)
        self.source: str | None = None  # where from_pretrained read the weights (a directory or a Hub id)
        for p in self.base.parameters():
            p.requires_grad_(False)
        self.adapters = nn.ModuleDict()
        self.fusions = nn.ModuleDict()
        self.heads = nn.ModuleDict()
        self.active: Block | None = None
        self.active_head: str | None = None
        self.fusion_heads: dict[str, str] = {}  # fusion name -> the head trained with it
        # adapter name -> what our format records beside its config: the language of a language adapter, the
        # language adapter a task adapter was trained under (formats.native.ADAPTER_METADATA)
        self.adapter_meta: dict[str, dict[str, Any]] = {}
        self._context = ForwardContext()
        self._sites: dict[tuple[str, int], Site] = {}
        self._linear_sites: dict[tuple[str, int], LinearSite] = {}
        self._embedding_site: EmbeddingSite | None = None  # invertible adapters; the hook is made on first use
        self._reft_sites = ReftSites(self.base, self.arch.layers, self._context)  # hooks made on first use
        self._prefix_sites = PrefixSites(
            self.base, lambda: self.arch.attention_paths(self.num_layers, self.encoder_layers), self._context)
        self._prompt_sites = PromptSites(self.base, self.arch.embeddings, self._context)  # hooks made on first use
        self.merged: str | None = None  # a LoRA-family adapter folded into the base weights (merge_adapter)
        self.train(base.training)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, revision: str | None = None,
                        dtype: torch.dtype | str | None = None, **kwargs: Any) -> AdapterModel:
        """Load a supported encoder from a local directory or the Hugging Face Hub (honours HF_HUB_OFFLINE)."""
        from transformers import AutoConfig, AutoModel

        from .defaults import resolve_model

        name = resolve_model(str(name_or_path))  # "minilm" and its full names: the embedded copy
        if name.startswith((".", "/", "~")) and not Path(name).expanduser().is_dir():
            raise UsageError(f"no model directory at {name}")
        try:
            config = AutoConfig.from_pretrained(name, revision=revision)
        except (OSError, ValueError) as exc:
            from .defaults import hub_offline

            hint = " (offline: HF_HUB_OFFLINE is set, so only local directories and cached models work)" \
                if hub_offline() \
                else " (a local model directory or a Hugging Face Hub model id is expected)"
            raise UsageError(f"cannot load base model {name!r}: {str(exc).splitlines()[0][:160]}{hint}") from None
        architecture_for(config.model_type)  # unsupported architectures fail before weights are read
        base = AutoModel.from_pretrained(name, config=config, revision=revision, dtype=dtype or "auto", **kwargs)
        from .defaults import model_id

        model = cls(base, name_or_path=model_id(name), revision=revision or getattr(config, "_commit_hash", None))
        model.source = name
        return model

    @classmethod
    def from_config(cls, config: Any) -> AdapterModel:
        """A randomly initialised encoder from a transformers config (tests, shape experiments)."""
        from transformers import AutoModel

        architecture_for(config.model_type)
        return cls(AutoModel.from_config(config))

    def gradient_checkpointing_enable(self) -> None:
        """Recompute activations in backward to save memory, with adapters still active in the recompute."""
        import functools

        import torch.utils.checkpoint

        enable = getattr(self.base, "activation_checkpointing_enable", None)  # transformers >= 5.x name
        if enable is not None:
            enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            self.base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        # transformers also makes the embedding output require grad, which only reentrant checkpointing
        # needs; with the non-reentrant kind it only adds a backward below the lowest trainable module.
        self._drop_input_grad_hook()
        checkpoint = functools.partial(torch.utils.checkpoint.checkpoint, use_reentrant=False)
        for module in self.base.modules():
            if getattr(module, "gradient_checkpointing", False) and hasattr(module, "_gradient_checkpointing_func"):
                module._gradient_checkpointing_func = self._prefix_sites.wrap_checkpoint(
                    self._reft_sites.wrap_checkpoint(self._context.wrap_checkpoint(checkpoint)))

    def gradient_checkpointing_disable(self) -> None:
        disable = getattr(self.base, "activation_checkpointing_disable", None) or \
            self.base.gradient_checkpointing_disable
        disable()
        self._drop_input_grad_hook()

    def _drop_input_grad_hook(self) -> None:
        if getattr(self.base, "_require_grads_hook", None) is not None:
            self.base.disable_input_require_grads()

    # ------------------------------------------------------------------ shape
    @property
    def config(self) -> Any:
        return self.base.config

    @property
    def hidden_size(self) -> int:
        return int(getattr(self.config, self.arch.hidden_size_attr))

    @property
    def num_heads(self) -> int:
        return int(getattr(self.config, self.arch.heads_attr))

    @property
    def num_kv_heads(self) -> int:
        """Key/value heads: fewer than ``num_heads`` under grouped-query attention."""
        attr = self.arch.kv_heads_attr
        return int((getattr(self.config, attr, None) if attr else None) or self.num_heads)

    @property
    def head_dim(self) -> int:
        """The width of one attention head: the config's ``head_dim`` (T5's ``d_kv``) where it has one (it need
        not be hidden size / heads, e.g. Mistral-Nemo's), else hidden size / heads."""
        return int(getattr(self.config, "head_dim", None) or getattr(self.config, "d_kv", None)
                   or self.hidden_size // self.num_heads)

    @property
    def kv_size(self) -> int:
        """The width of a layer's keys (and values): the hidden size, or less under grouped-query attention."""
        return self.num_kv_heads * self.head_dim

    @property
    def num_layers(self) -> int:
        """Layers with adapter sites: an encoder-decoder's encoder and decoder layers together."""
        layers = int(getattr(self.config, self.arch.num_layers_attr))
        if self.arch.encoder_decoder:
            layers += int(getattr(self.config, self.arch.decoder_layers_attr))
        return layers

    @property
    def forced_bos_token_id(self) -> int | None:
        """The token an encoder-decoder's generation puts first (``encoder_decoders.forced_first_token``)."""
        return forced_first_token(self.config, self.source)

    @property
    def encoder_layers(self) -> int | None:
        """An encoder-decoder's encoder depth: its decoder's layers are numbered from here; None otherwise."""
        return int(getattr(self.config, self.arch.num_layers_attr)) if self.arch.encoder_decoder else None

    def _layer_module(self, layer: int) -> nn.Module:
        return self.base.get_submodule(self.arch.layer_path(layer, self.encoder_layers or 0))

    @property
    def max_positions(self) -> int | None:
        """The longest input (in tokens) the position embeddings cover; RoBERTa-style models count positions
        from ``pad_token_id + 1``, so they lose that many. None when the config does not say."""
        limit = getattr(self.config, "max_position_embeddings", None)
        if not isinstance(limit, int):
            return None
        if self.config.model_type in ("roberta", "xlm-roberta"):
            limit -= int(getattr(self.config, "pad_token_id", None) or 0) + 1
        return limit

    def fit_max_length(self, max_length: int, what: str = "max_length") -> int:
        """The tokens per row to cut inputs at. A ``max_length`` beyond the position embeddings (a long row
        would index out of range mid-run) is one line, before any work; only the default (128) is cut to a
        smaller model's limit instead, so that the defaults fit every model."""
        from .defaults import DEFAULT_MAX_LENGTH

        limit = self.max_positions
        if limit is None or max_length <= limit:
            return max_length
        if max_length == DEFAULT_MAX_LENGTH:
            return limit
        raise UsageError(f"{what} {max_length} is longer than {self.name_or_path or 'this model'} takes "
                         f"({limit} positions); use at most {limit}")

    @property
    def embedding_size(self) -> int:
        """The width of the embeddings' output, where invertible adapters run (ELECTRA's is narrower)."""
        return int(getattr(self.config, "embedding_size", None) or self.hidden_size)

    @property
    def intermediate_size(self) -> int:
        """The feed-forward width: the output width of the first layer's up-projection."""
        return int(self._linear("intermediate", 0).out_features)

    @property
    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(in_features, out_features) of each linear layer a LoRA-family adapter can change, in the first
        layer (a decoder's grouped-query keys and values are narrower than its hidden size), and of an
        encoder-decoder's cross-attention in its first decoder layer."""
        out = {}
        firsts = [(self.arch.linears, 0)]
        if self.encoder_layers is not None:
            firsts.append((self.arch.linears_for(True), self.encoder_layers))
        for linears, layer in firsts:
            for matrix, _ in linears:
                linear = self._linear(matrix, layer)
                if hasattr(linear, "in_features"):
                    out.setdefault(matrix, (int(linear.in_features), int(linear.out_features)))
        return out

    @property
    def vocab_size(self) -> int:
        return int(self.base.get_input_embeddings().num_embeddings)

    @property
    def base_info(self) -> BaseModelInfo:
        return BaseModelInfo(model_type=self.config.model_type, hidden_size=self.hidden_size,
                             name_or_path=self.name_or_path, revision=self.revision, num_layers=self.num_layers,
                             fingerprint=getattr(self.config, "adapt_base_fingerprint", None),
                             encoder_layers=self.encoder_layers,
                             gated_feed_forward=self.arch.gated)

    def _dtype(self) -> torch.dtype:
        # The embeddings, not the linear layers: those may be stored in bf16 (cast_frozen_linears) while
        # new adapters must still be created in the model's working precision.
        if self.arch.vision:  # the input embeddings are a patch projection (a Conv2d)
            return self.base.get_input_embeddings().projection.weight.dtype
        return self.base.get_input_embeddings().weight.dtype

    def cast_frozen_linears(self, dtype: torch.dtype) -> int:
        """Store the frozen linear layers of the base model in ``dtype``; returns how many layers were cast.

        Under autocast to ``dtype`` every linear layer casts its weight to ``dtype`` on each call anyway, so
        outputs and gradients stay the same bit for bit, while the weights take half the memory and no
        per-step cast copies are made (autograd would keep them for the backward). Embeddings and layer norms
        keep their precision: autocast does not cast them, so storing them lower would change the numbers.
        Only for use under autocast to ``dtype``: without it the layers would see inputs of another dtype.
        """
        from .devices import cast_frozen_linears

        return cast_frozen_linears(self.base, dtype)

    def _device(self) -> torch.device:
        return next(self.base.parameters()).device

    def _site(self, location: str, layer: int) -> Site:
        key = (location, layer)
        if key not in self._sites:
            layer_module = self._layer_module(layer)
            decoder = self.arch.in_decoder(layer, self.encoder_layers)
            spec = self.arch.site(location, decoder)
            # A layer's functional dropout (BART) is taken over by all its sites at once, or a sub-layer
            # without a site would lose it.
            specs = [s for s in self.arch.sites_for(decoder)
                     if layer in location_layers(s.location, self.num_layers, self.encoder_layers)] \
                if spec.functional_dropout else [spec]
            for other in specs:
                self._sites[(other.location, layer)] = Site(layer_module, layer, other, self._context)
        return self._sites[key]

    def _linear(self, matrix: str, layer: int) -> Any:
        """The linear layer ``matrix`` of ``layer``: an ``nn.Linear``, or a ``LinearView`` of a Conv1D or of one
        part of a fused projection (GPT-2)."""
        from .linear_views import LinearView, is_conv1d

        path = self.arch.linear(matrix, self.arch.in_decoder(layer, self.encoder_layers))
        try:
            module = self._layer_module(layer).get_submodule(path)
        except AttributeError:  # a layer of another kind than the family's (architectures.py)
            raise UnsupportedModel(f"this {self.arch.name} model has no {path} in its layers, where adapt places a "
                                   f"LoRA-family adapter's {matrix} matrix; set {matrix}_lora to false") from None
        fused = self.arch.fused(matrix)
        if fused is None and not is_conv1d(module):
            return module
        return LinearView(module, *(fused or (0, 1)))

    def _linear_site(self, matrix: str, layer: int) -> LinearSite:
        key = (matrix, layer)
        if key not in self._linear_sites:
            self._linear_sites[key] = LinearSite(self._linear(matrix, layer), layer, matrix, self._context)
        return self._linear_sites[key]

    def _new_adapter_set(self, config: Any, fresh: bool = False, what: str = "the adapter") -> nn.Module:
        """The modules of one adapter, for its method: bottleneck layers, or changes to linear layers."""
        for part in getattr(config, "configs", None) or (config,):  # each part of a union
            self.arch.check_method(part.architecture, what)
            if getattr(part, "inv_adapter", None):
                self.arch.check_method("invertible", what)
        if config.architecture == "lora":
            from .methods.lora_layers import LoRAAdapterSet

            self.arch.check_lora_variant(config, what)
            config.check_rank(self.hidden_size)
            return LoRAAdapterSet(config, self.num_layers, self._linear, self.encoder_layers)
        if config.architecture == "reft":
            from .methods.reft_layers import ReftAdapterSet

            return ReftAdapterSet(config, self.hidden_size, self.num_layers)
        if config.architecture == "prefix_tuning":
            from .methods.prefix_layers import PrefixAdapterSet

            decoder_heads = getattr(self.config, "decoder_attention_heads", None) or self.num_heads
            if decoder_heads != self.num_heads:  # AdapterHub makes every location's prefix with the encoder's
                raise UnsupportedModel(f"{what} has a prefix (prefix tuning, mam, unipelt), and this model's decoder "
                                       f"has {decoder_heads} attention heads where its encoder has {self.num_heads}: "
                                       "AdapterHub's prefixes (and adapt's) need the same number in both")
            return PrefixAdapterSet(config, self.hidden_size, self.num_layers, self.num_heads, self.num_kv_heads,
                                    self.head_dim, self.encoder_layers)
        if config.architecture == "union":  # each part as its own method, under the union's name
            from .methods.union_layers import UnionAdapterSet

            return UnionAdapterSet(config, {c.architecture: self._new_adapter_set(c, fresh, what)
                                            for c in config.configs})
        if config.architecture == "prompt_tuning":  # fresh: a from_string prompt reads the tokenizer
            from .methods.prompt_layers import PromptAdapterSet
            from .prompt_sites import string_words

            words = string_words(getattr(self.config, "_name_or_path", None), self.base.get_input_embeddings())
            return PromptAdapterSet(config, self.embedding_size, words if fresh else None)
        if getattr(config, "cross_adapter", False) and not self.arch.has_site("cross_adapter"):
            raise UnsupportedModel(f"{what} has cross_adapter: true, but {self.arch.name} models have no "
                                   "cross-attention (only encoder-decoders do); set cross_adapter to false")
        return BottleneckAdapterSet(config, self.hidden_size, self.num_layers, self.embedding_size,
                                    self.encoder_layers)

    # ------------------------------------------------------------------ adapters
    def add_adapter(self, name: str, config: Any = "pfeiffer", overrides: dict[str, Any] | None = None,
                    overwrite: bool = False) -> str:
        """Introduce a new, freshly initialised adapter; returns its name."""
        check_name(name)
        if name in self.adapters and not overwrite:
            raise UsageError(f"adapter {name!r} is already loaded; pick another name or pass overwrite=True")
        config = resolve_adapter_config(config, overrides)
        self._attach(name, self._new_adapter_set(config, fresh=True, what=f"adapter {name!r}"))
        return name

    def _attach(self, name: str, adapter_set: nn.Module) -> None:
        if name in self.adapters:
            self.delete_adapter(name)
        dtype = None if getattr(adapter_set.config, "dtype", None) else self._dtype()  # LoRA's own dtype wins
        adapter_set.to(device=self._device(), dtype=dtype).train(self.training)
        self.adapters[name] = adapter_set
        for part in getattr(adapter_set, "parts", {"": adapter_set}).values():  # a config union: each part
            self._attach_sites(name, part)

    def _attach_sites(self, name: str, adapter_set: nn.Module) -> None:
        """Stitch one method's modules in at the sites where that method works."""
        method = adapter_set.config.architecture
        for place, layer, module in adapter_set.sites():
            if method == "reft":  # edits the layer's output: one site per layer
                self._reft_sites.add(name, layer, module)
            elif method == "prefix_tuning":  # keys and values of each self-attention
                self._prefix_sites.add(name, place, layer, module)
            elif method == "lora":
                self._linear_site(place, layer).loras[name] = module
            else:
                self._site(place, layer).adapters[name] = module
        if method == "prompt_tuning":  # before the embedded input
            self._prompt_sites.add(name, adapter_set)
        if getattr(adapter_set, "invertible", None) is not None:  # MAD-X: on the embeddings' output
            if self._embedding_site is None:
                self._embedding_site = EmbeddingSite(self.base.get_submodule(self.arch.embeddings), self._context,
                                                     self.arch.embeddings_input)
            self._embedding_site.adapters[name] = adapter_set.invertible

    def delete_adapter(self, name: str) -> None:
        """Remove an adapter, the fusions built on it, and the active composition if it used it."""
        if name not in self.adapters:
            raise UsageError(f"no adapter {name!r} is loaded")
        for fusion in [f for f, module in self.fusions.items() if name in module.adapters]:
            self.delete_fusion(fusion)
        if self.merged == name:
            self.unmerge_adapter()
        for site in self._sites.values():
            site.adapters.pop(name, None)
        for linear_site in self._linear_sites.values():
            linear_site.loras.pop(name, None)
        if self._embedding_site is not None:
            self._embedding_site.adapters.pop(name, None)
        self._reft_sites.remove(name)
        self._prefix_sites.remove(name)
        self._prompt_sites.remove(name)
        self.adapter_meta.pop(name, None)
        del self.adapters[name]
        if self.active is not None and name in self.active.leaves():
            self.active = None

    def adapter_config(self, name: str) -> Any:
        return self.adapters[name].config

    def check_compatible(self, base: BaseModelInfo, what: str) -> None:
        """Refuse artifacts made for another base model; warn when only the model name differs. An artifact
        trained with a base adapt fine-tuned (MT-A) records that base's fingerprint and loads only into it:
        its shapes fit the original base, its weights do not."""
        mine = self.base_info
        from .defaults import DERIVED_MARK

        named = base.name_or_path or ""
        if base.fingerprint is None and DERIVED_MARK in named and named != mine.name_or_path:
            raise BaseModelMismatch(f"{what} names the fine-tuned base model {named} (an MT-A base), but this model "
                                    f"is {mine.name_or_path}; load it into {named}")
        if base.fingerprint is not None and base.fingerprint != mine.fingerprint:
            raise BaseModelMismatch(f"{what} was trained with the fine-tuned base model {base.name_or_path} "
                                    f"(fingerprint {base.fingerprint[:12]}), but this model is {mine.name_or_path}; "
                                    f"load it into {base.name_or_path}")
        if base.model_type is not None and base.model_type != mine.model_type:
            raise BaseModelMismatch(f"{what} was made for a {base.model_type!r} model, but this model is "
                                    f"{mine.model_type!r}; load it into a {base.model_type} base model")
        if base.hidden_size != mine.hidden_size:
            raise BaseModelMismatch(f"{what} was made for hidden size {base.hidden_size} "
                                    f"({base.name_or_path or 'unknown model'}), but this model has {mine.hidden_size}")
        if base.num_layers is not None and base.num_layers != mine.num_layers:
            raise BaseModelMismatch(f"{what} was made for {base.num_layers} layers, but this model has {mine.num_layers}")
        if base.encoder_layers is not None and base.encoder_layers != mine.encoder_layers:
            raise BaseModelMismatch(f"{what} was made for an encoder of {base.encoder_layers} layers, but this "
                                    f"model's has {mine.encoder_layers}")

    def _check_feed_forward(self, artifact: Any, what: str) -> None:
        """A LoRA on T5's feed-forward up-projection loads only into the layout it was made for (wi or a gated
        pair's wi_1): the shapes are alike, the layers are not."""
        theirs, mine = artifact.base.gated_feed_forward, self.base_info.gated_feed_forward
        changes_up = any(k.removeprefix("parts.lora.").startswith("intermediate.") for k in artifact.weights)
        if theirs is None:  # unrecorded (our files before the field): the family's layout
            theirs = architecture_for(self.config.model_type).gated
        if theirs is not None and mine is not None and theirs != mine and changes_up:
            kinds = {True: "a gated feed-forward (wi_0, wi_1)", False: "a plain feed-forward (wi)"}
            raise BaseModelMismatch(f"{what} changes the feed-forward up-projection of a {self.arch.name} with "
                                    f"{kinds[theirs]}, but this model has {kinds[mine]}; load it into a model of "
                                    "that kind")

    def load_adapter(self, path: str | os.PathLike, name: str | None = None, with_head: bool = True,
                     overwrite: bool = False) -> str:
        """Load an adapter directory (ours or AdapterHub's); returns the name it is loaded under."""
        from .formats import has_head, read_adapter

        artifact = read_adapter(_local_dir(path, "adapter"), encoder_layers=self.encoder_layers)
        name = check_name(name or artifact.name)
        if name in self.adapters and not overwrite:
            raise UsageError(f"adapter {name!r} is already loaded; pass name= to load it under another name")
        self.check_compatible(artifact.base, f"adapter {str(path)!r}")
        self._check_feed_forward(artifact, f"adapter {str(path)!r}")
        config = artifact.config
        if config.architecture == "lora" and artifact.base.num_layers is None:
            config = _top_layers_left_out(config, artifact.weights, self.num_layers)
        adapter_set = self._new_adapter_set(config, what=f"adapter {str(path)!r}")
        _load_weights(adapter_set, artifact.weights, artifact.path)
        self._attach(name, adapter_set)
        from .formats.native import ADAPTER_METADATA

        self.adapter_meta[name] = {k: artifact.meta[k] for k in ADAPTER_METADATA if artifact.meta.get(k) is not None}
        if with_head and has_head(artifact.path):
            self.load_head(artifact.path, name=name, overwrite=True)
        return name

    def save_adapter(self, directory: str | os.PathLike, name: str, format: str = "adapt",
                     dtype: torch.dtype | None = None, with_head: bool = True, safetensors: bool = False) -> Path:
        """Write adapter ``name`` (and its head, if one of that name exists) atomically. ``format``: adapt,
        adapterhub or peft; PEFT's format has no head file, so with peft only the adapter is written."""
        from .formats import adapterhub, native, peft
        from .fsutil import atomic_directory

        if name not in self.adapters:
            raise UsageError(f"no adapter {name!r} is loaded")
        _check_format(format, ("adapt", "adapterhub", "peft"))
        artifact = AdapterArtifact(name=name, config=self.adapters[name].config,
                                   weights=self.adapters[name].state_dict(), base=self.base_info,
                                   meta=dict(self.adapter_meta.get(name) or {}))
        with atomic_directory(directory) as tmp:
            if format == "adapt":
                native.write_adapter(tmp, artifact, dtype)
            elif format == "peft":
                peft.write_adapter(tmp, artifact, dtype)
            else:
                adapterhub.write_adapter(tmp, artifact, self.num_layers, safetensors, dtype)
            if with_head and name in self.heads and format != "peft":
                self._write_head(tmp, name, format, dtype, safetensors)
        return Path(directory)

    # ------------------------------------------------------------------ fusions
    def add_fusion(self, adapters: Any, config: Any = "dynamic", name: str | None = None,
                   overwrite: bool = False) -> str:
        """Add a fusion layer over loaded adapters (``"a,b,c"``, a list, or ``fuse(a,b,c)``)."""
        members = _fusion_members(adapters)
        missing = [a for a in members if a not in self.adapters]
        if missing:
            raise UsageError(f"cannot fuse: adapter(s) {', '.join(missing)} not loaded; load them first")
        if len(set(members)) != len(members) or len(members) < 2:
            raise CompositionError(f"a fusion needs at least two different adapters, got {members}")
        name = name or ",".join(members)
        if "." in name or "/" in name:
            raise CompositionError(f"invalid fusion name {name!r}: no '.' or '/'")
        if name in self.fusions and not overwrite:
            raise UsageError(f"fusion {name!r} is already loaded")
        self._check_fusable(members, "cannot fuse")
        locations = common_locations({a: self.adapters[a].config for a in members})
        fusion = FusionSet(resolve_fusion_config(config), members, locations, self.hidden_size, self.num_layers,
                           float(getattr(self.config, self.arch.attention_dropout_attr, 0.0) or 0.0),
                           float(getattr(self.config, "initializer_range", 0.02)), self.encoder_layers)
        self._attach_fusion(name, fusion)
        return name

    def _attach_fusion(self, name: str, fusion: FusionSet) -> None:
        if name in self.fusions:
            self.delete_fusion(name)
        fusion.to(device=self._device(), dtype=self._dtype()).train(self.training)
        self.fusions[name] = fusion
        for location, layer, module in fusion.sites():
            self._site(location, layer).fusions[name] = module

    def _check_fusable(self, members: Any, what: str) -> None:
        """AdapterFusion attends over bottleneck outputs; LoRA-family adapters have none (AdapterHub's rule)."""
        for member in members:
            config = self.adapters[member].config
            if config.architecture != "bottleneck":
                hint = f"run it first in a stack, stack({member},...)" if config.architecture == "reft" else \
                    "use stack or parallel with it" if member in self._prefix_sites.names else \
                    "use stack, average or parallel with it"
                raise CompositionError(f"{what}: fuse works over bottleneck adapters only, and {member!r} is a "
                                       f"{getattr(config, 'variant', config.architecture)} adapter; {hint}")

    def delete_fusion(self, name: str) -> None:
        if name not in self.fusions:
            raise UsageError(f"no fusion {name!r} is loaded")
        for site in self._sites.values():
            site.fusions.pop(name, None)
        del self.fusions[name]
        self.fusion_heads.pop(name, None)

    def load_fusion(self, path: str | os.PathLike, name: str | None = None, overwrite: bool = False,
                    with_head: bool = True) -> str:
        """Load a fusion directory; its member adapters must be loaded (under their saved names) first."""
        from .formats import read_fusion

        artifact = read_fusion(_local_dir(path, "fusion"), encoder_layers=self.encoder_layers)
        self.check_compatible(artifact.base, f"fusion {str(path)!r}")
        missing = [a for a in artifact.adapters if a not in self.adapters]
        if missing:
            raise UsageError(f"fusion {artifact.name!r} needs its member adapters loaded first; missing: "
                             f"{', '.join(missing)} (load them with load_adapter, `adapter`)")
        name = self.add_fusion(artifact.adapters, artifact.config, name=name or artifact.name, overwrite=overwrite)
        _load_weights(self.fusions[name], artifact.weights, artifact.path)
        from .formats import has_head

        if with_head and has_head(artifact.path):
            self.fusion_heads[name] = self.load_head(artifact.path, name=self._free_head_name(artifact.path))
        return name

    def _free_head_name(self, directory: Path) -> str:
        """A fusion's head is usually named like its target task, and so like the target's own adapter
        head: it gets a name of its own rather than replace that one (e.g. rte-fusion next to rte)."""
        from .formats import read_head

        wanted = read_head(directory, shapes_only=True).name
        candidates = [wanted, f"{wanted}-fusion"] + [f"{wanted}-fusion{i}" for i in range(2, 100)]
        return next(c for c in candidates if c not in self.heads)

    def set_fusion_head(self, fusion: str, head: str) -> None:
        """Make ``head`` the one that answers for ``fuse(...)`` over fusion ``fusion``."""
        if fusion not in self.fusions or head not in self.heads:
            raise UsageError(f"no fusion {fusion!r} or no head {head!r} is loaded")
        self.fusion_heads[fusion] = head

    def save_fusion(self, directory: str | os.PathLike, name: str, format: str = "adapt",
                    dtype: torch.dtype | None = None, safetensors: bool = False, head: str | None = None) -> Path:
        """Write fusion ``name`` (and, when given, a head beside it) atomically."""
        from .formats import adapterhub, native
        from .fsutil import atomic_directory

        if name not in self.fusions:
            raise UsageError(f"no fusion {name!r} is loaded")
        _check_format(format)
        fusion = self.fusions[name]
        artifact = FusionArtifact(name=name, adapters=fusion.adapters, config=fusion.config,
                                  weights=fusion.state_dict(), base=self.base_info)
        with atomic_directory(directory) as tmp:
            if format == "adapt":
                native.write_fusion(tmp, artifact, dtype)
            else:
                adapterhub.write_fusion(tmp, artifact, safetensors, dtype)
            if head is not None:
                self._write_head(tmp, head, format, dtype, safetensors)
        return Path(directory)

    def fusion_regularization(self, names: list[str] | None = None) -> torch.Tensor:
        """sum over fusion layers of ||I - W_v||^2 for trainable value matrices (Pfeiffer et al. 2021).

        Added to the training loss (weight 0.01 in the reference), so it is scaled with the loss under mixed
        precision, logged with it, and usable in any training loop.
        """
        total = torch.zeros((), device=self._device())
        for name, fusion in self.fusions.items():
            if names is not None and name not in names:
                continue
            for _, _, layer in fusion.sites():
                value = layer.value
                if value is not None and value.weight.requires_grad:
                    eye = torch.eye(value.weight.shape[0], device=value.weight.device, dtype=value.weight.dtype)
                    total = total + ((eye - value.weight) ** 2).sum()
        return total

    # ------------------------------------------------------------------ heads
    def add_head(self, name: str, head_type: str = "classification", num_labels: int = 2,
                 overwrite: bool = False, **kwargs: Any) -> str:
        check_name(name, "head")
        if name in self.heads and not overwrite:
            raise UsageError(f"head {name!r} is already loaded")
        config = HeadConfig.from_dict({"head_type": head_type, "num_labels": num_labels, **kwargs},
                                      source=f"head {name!r}")
        self._attach_head(name, config)
        return name

    def _attach_head(self, name: str, config: HeadConfig) -> nn.Module:
        if config.head_type not in self.arch.heads:
            raise UnsupportedModel(f"head {name!r} is a {config.head_type} head, which {self.arch.name} models cannot "
                                   f"carry; they take {', '.join(self.arch.heads)} heads")
        if config.is_lm:
            return self._attach_lm_head(name, config)
        if config.use_pooler and getattr(self.base, "pooler", None) is None:
            raise UsageError(f"head {name!r} reads the pooler output, which this {self.config.model_type} model "
                             "does not have")
        dropout = getattr(self.config, "classifier_dropout", None)
        if dropout is None:
            dropout = getattr(self.config, self.arch.hidden_dropout_attr, 0.0) or 0.0
        head = PredictionHead(config, self.hidden_size, float(dropout),
                              float(getattr(self.config, "initializer_range", 0.02)))
        self.heads[name] = head.to(device=self._device(), dtype=self._dtype()).train(self.training)
        self.active_head = name
        return head

    def ties_lm_head(self, config: HeadConfig) -> bool:
        """Whether a language-model head's decoder is the input word embeddings: always for a masked-LM head
        (AdapterHub ties them), for a causal-LM or seq2seq-LM head where the model ties its own."""
        return config.head_type == "masked_lm" or self.ties_word_embeddings

    @property
    def ties_word_embeddings(self) -> bool:
        """Whether the model's own LM head is its input word embeddings (``Architecture.tied_lm_attr``)."""
        attr = self.arch.tied_lm_attr
        return bool(attr) and bool(getattr(self.config, attr, getattr(self.config, "tie_word_embeddings", True)))

    def _attach_lm_head(self, name: str, config: HeadConfig) -> nn.Module:
        """A language-model head whose decoder is tied to the input word embeddings, or (a causal-LM head
        of a model that does not tie them) has its own weight (heads.LanguageModelHead)."""
        from .heads import LanguageModelHead

        width = config.embedding_size or self.hidden_size
        embeddings = None
        if self.ties_lm_head(config):
            embeddings = self.base.get_input_embeddings() if self.arch.tied_lm_head else None
            if not isinstance(embeddings, nn.Embedding) or tuple(embeddings.weight.shape) != (config.vocab_size, width):
                kind = {"masked_lm": "masked-LM", "causal_lm": "causal-LM", "seq2seq_lm": "seq2seq-LM"}[config.head_type]
                raise UsageError(f"a {self.config.model_type} model cannot carry {kind} head {name!r}: its "
                                 f"decoder is tied to the input word embeddings, which this model does not expose "
                                 f"as a {config.vocab_size} x {width} matrix")
        # AdapterHub reads layer_norm_eps only: 1e-12 for GPT-2 (layer_norm_epsilon) and Llama (rms_norm_eps) too
        eps = float(getattr(self.config, "layer_norm_eps", 1e-12))
        head = LanguageModelHead(config, self.hidden_size, embeddings, eps,
                                 float(getattr(self.config, "initializer_range", 0.02)))
        self.heads[name] = head.to(device=self._device(), dtype=self._dtype()).train(self.training)
        self.active_head = name
        return head

    def load_head(self, path: str | os.PathLike, name: str | None = None, overwrite: bool = False) -> str:
        from .formats import read_head

        artifact = read_head(_local_dir(path, "head"))
        name = check_name(name or artifact.name, "head")
        if name in self.heads and not overwrite:
            raise UsageError(f"head {name!r} is already loaded; pass name= to load it under another name")
        self.check_compatible(artifact.base, f"head {str(path)!r}")
        head = self._attach_head(name, artifact.config)
        weights = artifact.weights
        if getattr(head, "tied", False):  # AdapterHub stores the tied decoder too: it must be these embeddings
            decoder = weights.get(f"{artifact.config.decoder_index}.weight")
            if decoder is not None and not torch.equal(decoder.to(self._dtype()),
                                                       self.base.get_input_embeddings().weight.detach().cpu()
                                                       .to(self._dtype())):
                raise BaseModelMismatch(f"head {str(path)!r} was made on other word embeddings than this model's "
                                        f"(its decoder, tied to them, differs); load it on the base it was made for")
            weights = {k: v for k, v in weights.items() if k != f"{artifact.config.decoder_index}.weight"}
        _load_weights(head, weights, artifact.path)
        return name

    def save_head(self, directory: str | os.PathLike, name: str, format: str = "adapt",
                  dtype: torch.dtype | None = None, safetensors: bool = False) -> Path:
        from .fsutil import atomic_directory

        if name not in self.heads:
            raise UsageError(f"no head {name!r} is loaded")
        _check_format(format)
        with atomic_directory(directory) as tmp:
            self._write_head(tmp, name, format, dtype, safetensors)
        return Path(directory)

    def _write_head(self, directory: Path, name: str, format: str, dtype: torch.dtype | None,
                    safetensors: bool) -> None:
        from .formats import adapterhub, native

        head = self.heads[name]
        weights = head.state_dict()
        if getattr(head, "tied", False) and format != "adapt":  # AdapterHub stores the tied decoder too
            weights[f"{head.config.decoder_index}.weight"] = self.base.get_input_embeddings().weight
        artifact = HeadArtifact(name=name, config=head.config, weights=weights, base=self.base_info)
        if format == "adapt":
            native.write_head(directory, artifact, dtype)
        else:
            adapterhub.write_head(directory, artifact, safetensors, dtype)

    # ------------------------------------------------------------------ activation and training
    def set_active(self, composition: Any) -> Block | None:
        """Set the composition used when ``forward`` gets no ``active=``; validated against what is loaded."""
        self.active = self.resolve_composition(composition)
        return self.active

    def caches_exactly(self, block: Block | None) -> bool:
        """Whether decoding against the key/value cache answers as recomputing the whole sequence would under
        ``block``: most methods act on each position by itself, but a gate (of a prefix, a bottleneck adapter or
        a LoRA: UniPELT's, or ``use_gating: true``) averages over the whole sequence, and a ReFT adapter edits
        positions counted from each row's ends, which move as the sequence grows."""
        if block is None:
            return True

        def reads_the_whole_sequence(config: Any) -> bool:
            return any(part.architecture == "reft" or getattr(part, "use_gating", False)
                       for part in getattr(config, "configs", None) or (config,))

        return not any(reads_the_whole_sequence(self.adapters[n].config) for n in block.leaves()
                       if n in self.adapters)

    def running_reft(self, block: Block | None) -> tuple[str, Any] | None:
        """The ReFT adapter that runs under ``block`` (its first adapter, if a ReFT one) and its config; None
        where none runs. ReFT edits positions counted from each row's ends, so long inputs are checked against
        it (``reft_suffix``, generation's prompt check)."""
        first = block.leaves()[0] if block is not None else None
        adapter = self.adapters[first] if first is not None and first in self.adapters else None
        return (first, adapter.config) if adapter is not None and adapter.config.architecture == "reft" else None

    def reft_suffix(self, block: Block | None) -> tuple[str, int] | None:
        """The running ReFT adapter and how many of each row's last tokens it edits; None where none runs or it
        edits no suffix."""
        running = self.running_reft(block)
        return (running[0], running[1].suffix_positions) if running and running[1].suffix_positions else None

    def resolve_composition(self, composition: Any) -> Block | None:
        block = _parse(composition) if isinstance(composition, str) else parse_composition(composition)
        if block is None:
            return None
        missing = [n for n in dict.fromkeys(block.leaves()) if n not in self.adapters]
        if missing:
            loaded = ", ".join(self.adapters) or "none"
            raise CompositionError(f"composition {block} uses adapter(s) not loaded: {', '.join(missing)} "
                                   f"(loaded: {loaded})")
        check_composition(block, [n for n in block.leaves() if self.adapters[n].config.architecture == "reft"])
        check_prefix_composition(block, self._prefix_sites.names)
        self._prompt_sites.check(block, self._prefix_sites.names)
        if self._embedding_site is not None:  # invertible adapters: only at the bottom (embedding_sites)
            self._embedding_site.check(block)
        for fuse in fuse_blocks(block):
            self._check_fusable(fuse.leaves(), f"composition {block}")
            if fuse.fusion_name not in self.fusions:
                raise CompositionError(f"composition {block} needs a fusion layer {fuse.fusion_name!r}; "
                                       "load one with load_fusion or add one with add_fusion")
        return block

    def train_adapters(self, names: list[str] | None = None, fusions: list[str] | None = None,
                       heads: list[str] | None = None) -> None:
        """Make exactly these adapters, fusions and heads trainable; everything else stays frozen."""
        for group, chosen in ((self.adapters, names), (self.fusions, fusions), (self.heads, heads)):
            for key, module in group.items():
                module.requires_grad_(chosen is not None and key in chosen)

    def merge_adapter(self, name: str) -> None:
        """Fold LoRA-family adapter ``name`` into the base weights (no inference cost; ``unmerge_adapter``
        restores them). While merged, the model computes with it whatever the active composition."""
        from .merging import check_mergeable, merge

        if name not in self.adapters:
            raise UsageError(f"no adapter {name!r} is loaded")
        check_mergeable(name, self.adapters[name].config)
        if self.merged == name:
            return
        if self.merged is not None:
            raise UsageError(f"adapter {self.merged!r} is already merged; unmerge it first")
        self._merged_originals = merge(self._linear_sites, name)
        self.merged = name

    def unmerge_adapter(self) -> None:
        """Restore the base weights saved by ``merge_adapter`` (bit for bit)."""
        from .merging import unmerge

        if self.merged is not None:
            unmerge(self._linear_sites, self._merged_originals)
            self.merged, self._merged_originals = None, {}

    def head_inverse(self, setup: Block | None) -> Any:
        """What an LM head runs before its output embeddings under ``setup``: the reverse pass of the invertible
        adapter that runs there, or None."""
        site = self._embedding_site
        return None if site is None or site.active(setup) is None else (lambda h: site.inverse(h, setup))

    def invert_embeddings(self, hidden: torch.Tensor, active: Any = _UNSET) -> torch.Tensor:
        """The reverse pass (AdapterHub's ``rev=True``) of the invertible adapter that runs under a composition
        (default: the active one), as an LM head applies it before its output embeddings; ``hidden`` itself
        when no invertible adapter runs there."""
        setup = self.active if active is _UNSET else self.resolve_composition(active)
        return hidden if self._embedding_site is None else self._embedding_site.inverse(hidden, setup)

    def eject_prefix(self, name: str) -> None:
        """Make the prefix of adapter ``name`` (a prefix-tuning adapter, or a union with a prefix part) flat: its
        keys and values stored, the MLP that made them dropped (AdapterHub's ``eject_prefix_tuning``); the
        outputs stay the same and the file gets 10-20x smaller."""
        adapter = self.adapters[name] if name in self.adapters else None
        parts = getattr(adapter, "parts", None)
        target = parts["prefix_tuning"] if parts is not None and "prefix_tuning" in parts else adapter
        if target is None or target.config.architecture != "prefix_tuning":
            raise UsageError(f"{name!r} is not a loaded adapter with a prefix (prefix tuning, mam, unipelt)")
        target.eject()
        if parts is not None:  # the union's config names its parts' configs
            adapter.config = adapter.config.with_part(target.config)

    def trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    # ------------------------------------------------------------------ forward
    def head_for(self, composition: Any, required: bool = False) -> str | None:
        """The head that answers for a composition, by AdapterHub's rule: the head named like the adapter;
        for ``stack`` its last member's, for ``fuse`` the fusion's own head (or one named like the fusion),
        for ``average`` its last member's. With no composition, or when no loaded head fits: the active head
        (the last one added or loaded, as in AdapterHub), or with ``required`` an error saying that no head
        fits (what ``adapt infer`` uses: it never answers with another task's head). ``parallel`` and
        ``batch_split`` have one head per member: see ``heads_for``."""
        block = self.resolve_composition(composition) if not isinstance(composition, Block) else composition
        if block is None:
            if required and self.active_head is None:
                raise UsageError("no prediction head is loaded: load an adapter saved with its head, or choose a "
                                 "head explicitly (`head`)")
            return self.active_head
        node: Any = block
        while isinstance(node, Stack):
            node = node.children[-1]
        if isinstance(node, (Parallel, BatchSplit)):
            raise CompositionError(f"{node} answers with one head per member; use heads_for")
        if isinstance(node, Fuse):
            wanted = self.fusion_heads.get(node.fusion_name, node.fusion_name)
        else:
            wanted = node if isinstance(node, str) else node.last()
        if wanted in self.heads:
            return wanted
        if not required:
            return self.active_head
        if not self.heads:
            raise UsageError("no prediction head is loaded: load an adapter saved with its head, or choose a head "
                             "explicitly (`head`)")
        raise UsageError(f"no head fits {_short(block)}: none is named {wanted!r} (loaded heads: "
                         f"{', '.join(self.heads)}); load the adapter with its head, or choose a head explicitly "
                         "(`head`)")

    def heads_for(self, composition: Any, required: bool = False) -> list[str | None]:
        """One head per member for ``parallel``/``batch_split`` (also when last in a stack), else one."""
        block = self.resolve_composition(composition) if not isinstance(composition, Block) else composition
        split = _final_split(block)
        if split is None:
            return [self.head_for(block, required)]
        return [self.head_for(child if isinstance(child, Block) else Stack((child,)), required)
                for child in split.children]

    # ------------------------------------------------------------------ forward
    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                active: Any = _UNSET, head: Any = _UNSET, **kwargs: Any) -> AdapterModelOutput:
        """Run the base model with a composition (default: the active one) and a head (default: the one
        that fits the composition, see ``head_for``; ``head=None`` for hidden states only). A vision model
        (ViT) takes ``pixel_values`` [B, channels, height, width] instead of ``input_ids``."""
        setup = self.active if active is _UNSET else self.resolve_composition(active)
        if self.arch.vision != (input_ids is None and "pixel_values" in kwargs):
            raise UsageError(f"{self.arch.name} models read " + ("images (pixel_values), not token ids"
                             if self.arch.vision else "token ids (input_ids), not images"))
        if isinstance(setup, Parallel):
            return self._parallel(setup, input_ids, attention_mask, token_type_ids, labels, head, kwargs)
        split = _final_split(setup)
        part_heads = self.heads_for(setup) if head is _UNSET and split is not None else []
        if len(set(part_heads)) > 1:  # the parts of a batch split answer with different heads
            whole = self.forward(input_ids, attention_mask, token_type_ids, active=setup, head=None, **kwargs)
            whole.branches = tuple(self._apply_head(name, _rows(whole, start, start + size), None, None, setup)
                                   for name, start, size in zip(part_heads, _offsets(split.sizes), split.sizes))
            return whole
        head_name = (part_heads[0] if part_heads else self.head_for(setup)) if head is _UNSET else head
        if head_name is not None and head_name not in self.heads:
            raise UsageError(f"no head {head_name!r} is loaded")
        head_module = self.heads[head_name] if head_name is not None else None
        num_choices = None
        if head_module is not None and head_module.config.head_type == "multiple_choice" and input_ids is not None \
                and input_ids.dim() == 3:
            num_choices = input_ids.shape[1]
            input_ids, attention_mask, token_type_ids = (
                t.reshape(-1, t.shape[-1]) if t is not None else None
                for t in (input_ids, attention_mask, token_type_ids))
        if labels is not None and head_module is not None and head_module.config.head_type == "tagging" \
                and attention_mask is not None and attention_mask.shape == labels.shape:
            labels = labels.masked_fill(attention_mask == 0, -100)  # padding has no loss, whatever its label says
        if token_type_ids is not None and (not self.arch.segments or self.config.model_type == "distilbert"):
            token_type_ids = None  # no segment embeddings (DistilBERT, decoders)
        if token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
        if self.arch.encoder_decoder:
            kwargs = self._decoder_inputs(input_ids, kwargs, labels, head_module)
            kwargs.setdefault("use_cache", False)  # a cache only where asked for (generation)
        if self.arch.causal:
            _causal_inputs(kwargs, attention_mask)
        previous = self._context.set(setup)
        try:
            if self.arch.vision:
                out = self.base(return_dict=True, **kwargs)
            else:
                out = self.base(input_ids=input_ids, attention_mask=attention_mask, return_dict=True, **kwargs)
        finally:
            self._context.restore(previous)
        result = AdapterModelOutput(last_hidden_state=out.last_hidden_state,
                                    pooler_output=getattr(out, "pooler_output", None),
                                    hidden_states=getattr(out, "hidden_states", None),
                                    attentions=getattr(out, "attentions", None),
                                    last_token=_last_tokens(out.last_hidden_state, attention_mask)
                                    if self.arch.causal else None,
                                    cache=getattr(out, "cache", None),
                                    encoder_last_hidden_state=getattr(out, "encoder_last_hidden_state", None))
        if self.arch.encoder_decoder and input_ids is not None \
                and out.last_hidden_state.shape[1] == input_ids.shape[1]:  # else no eos position is the decoder's
            result.last_token = last_eos(input_ids, self.config.eos_token_id)
        if head_name is None:
            return result
        branch = self._apply_head(head_name, result, labels, num_choices, setup)
        result.logits, result.loss, result.head = branch.logits, branch.loss, branch.head
        return result

    def _apply_head(self, name: str | None, hidden: AdapterModelOutput, labels: torch.Tensor | None,
                    num_choices: int | None = None, setup: Block | None = None) -> AdapterModelOutput:
        """Head ``name`` over the first token's final state (or the pooler output, as its config says); a
        masked-LM head over every token, with the reverse pass of the invertible adapter that runs under
        ``setup`` between its transform and its tied decoder, as AdapterHub's LM heads do."""
        out = AdapterModelOutput(last_hidden_state=hidden.last_hidden_state, pooler_output=hidden.pooler_output)
        if name is None:
            return out
        module = self.heads[name]
        if module.config.head_type in ("causal_lm", "seq2seq_lm"):  # every position, through an invertible
            # adapter's reverse pass
            states = self.lm_input(hidden.last_hidden_state) if module.config.head_type == "seq2seq_lm" \
                else hidden.last_hidden_state
            out.logits, out.head = module.logits(states, self.head_inverse(setup)), name
            if labels is not None:
                out.loss = module.loss(out.logits, labels)
            return out
        if module.config.head_type == "masked_lm":  # with labels: [N, vocab] for the N labelled tokens only
            inverse = self.head_inverse(setup)
            states = hidden.last_hidden_state
            labels = self._prompt_sites.pad_labels(labels, setup)  # a prompt's positions have no label
            if labels is not None:  # the decoder over [B, T, vocab] would take GBs for nothing the loss reads
                states, labels = states[labels != -100], labels[labels != -100]
            out.logits, out.head = module.logits(states, inverse), name
            if labels is not None:
                out.loss = module.loss(out.logits, labels)
            return out
        if module.config.head_type in ("tagging", "question_answering"):  # every input token, no prompt positions
            states = self._prompt_sites.strip(hidden.last_hidden_state, setup)
            out.logits, out.head = module(self.lm_input(states)), name  # T5's QA head reads them scaled too
            if labels is not None:
                out.loss = module.loss(out.logits, labels)
            return out
        if module.config.use_pooler and hidden.pooler_output is None:
            raise UsageError(f"head {name!r} uses the pooler, which this model does not have")
        out.logits, out.head = module.logits(self.head_features(module, hidden), num_choices), name
        if labels is not None:
            out.loss = module.loss(out.logits, labels)
        return out

    def head_features(self, head: nn.Module, out: AdapterModelOutput) -> torch.Tensor:
        """What a classification-style head reads: the pooler output (``use_pooler``), else the first token's
        final state, or in a decoder the last attended token's (AdapterHub's pooling for decoders), or in an
        encoder-decoder the decoder's state at each row's last end-of-sequence token (AdapterHub's for BART)."""
        if head.config.use_pooler:
            return out.pooler_output
        states = out.last_hidden_state
        if self.arch.encoder_decoder and out.last_token is None:  # the eos positions are the input's
            raise UsageError(f"{self.arch.name}'s classification heads read the decoder's state at each row's last "
                             "end-of-sequence token of input_ids, so they need input_ids and a decoder reading as "
                             "many tokens; give no decoder_input_ids (the decoder then reads the inputs shifted)")
        if self.arch.encoder_decoder and bool((out.last_token < 0).any()):
            row = 1 + int((out.last_token < 0).nonzero()[0])
            raise UsageError(f"row {row} has no end-of-sequence token (id {self.config.eos_token_id}), where "
                             f"{self.arch.name}'s classification heads read; encode texts with the model's "
                             "tokenizer, which ends each with one")
        if out.last_token is None:
            return states[:, 0]
        return states[torch.arange(states.shape[0], device=states.device), out.last_token]

    def _decoder_inputs(self, input_ids: Any, kwargs: dict[str, Any], labels: Any,
                        head: nn.Module | None) -> dict[str, Any]:
        """An encoder-decoder's decoder reads ``decoder_input_ids``: given, or for a seq2seq-LM head with labels
        the labels shifted right after the decoder's start token (what it was trained to read), else the inputs
        shifted so (what classification heads read, as BART shifts them itself and AdapterHub's T5 does)."""
        if kwargs.get("decoder_input_ids") is not None or "encoder_outputs" in kwargs:
            return kwargs
        if labels is not None and head is not None and head.config.head_type == "seq2seq_lm":
            return {**kwargs, "decoder_input_ids": self._shift_right(labels)}
        if input_ids is not None:
            return {**kwargs, "decoder_input_ids": self._shift_right(input_ids)}
        return kwargs

    def _shift_right(self, ids: torch.Tensor) -> torch.Tensor:
        return shift_right(ids, self.config, self.arch.decoder_starts_with_last_token)

    def lm_input(self, states: torch.Tensor) -> torch.Tensor:
        """What a seq2seq-LM head reads of the decoder's states: T5's scaled by d_model ** -0.5 where the head is
        tied to the word embeddings (its pretrained LM head was trained so, and AdapterHub's head reads the
        same); unchanged elsewhere. AdapterHub's T5 model hands its question-answering heads the same scaled
        states (only classification heads read them unscaled), and so does adapt."""
        if self.arch.scale_tied_lm_input and self.ties_word_embeddings:
            return states * (self.hidden_size ** -0.5)
        return states

    def _parallel(self, block: Any, input_ids: Any, attention_mask: Any, token_type_ids: Any, labels: Any,
                  head: Any, kwargs: dict[str, Any]) -> AdapterModelOutput:
        """parallel(a,b,...): the batch is replicated once per member and each copy goes through one member
        (a batch split), so all members run in one forward pass. Each branch answers with the head that fits
        its member (``head_for``), or with ``head`` when one is given."""
        n = len(block.children)
        repeat = (lambda t: None if t is None else t.repeat(n, *([1] * (t.dim() - 1))))  # noqa: E731
        given = input_ids if input_ids is not None else kwargs.get("pixel_values", kwargs.get("inputs_embeds"))
        if given is None:
            raise UsageError("parallel(...) needs input_ids, inputs_embeds or pixel_values to replicate")
        rows = given.shape[0]
        split = BatchSplit(block.children, sizes=(rows,) * n)
        names = self.heads_for(split) if head is _UNSET else [head] * n
        if self.arch.encoder_decoder:  # the decoder reads the labels where the members' heads are seq2seq heads
            seq2seq = [m for m in names if m is not None and self.heads[m].config.head_type == "seq2seq_lm"]
            kwargs = self._decoder_inputs(input_ids, kwargs, labels, self.heads[seq2seq[0]] if seq2seq else None)
        kwargs = {k: repeat(v) if k in _PER_ROW else v for k, v in kwargs.items()}
        whole = self.forward(input_ids=repeat(input_ids), attention_mask=repeat(attention_mask),
                             token_type_ids=repeat(token_type_ids), active=split, head=None, **kwargs)
        branches = tuple(self._apply_head(name, _rows(whole, i * rows, (i + 1) * rows), labels, None, block)
                         for i, name in enumerate(names))
        return AdapterModelOutput(last_hidden_state=whole.last_hidden_state, branches=branches,
                                  encoder_last_hidden_state=whole.encoder_last_hidden_state)

    # ------------------------------------------------------------------ summaries
    def summary(self) -> dict[str, Any]:
        base_params = sum(p.numel() for p in self.base.parameters())
        rows = []
        for name, module in self.adapters.items():
            n = sum(p.numel() for p in module.parameters())
            rows.append({"name": name, "type": "adapter", "parameters": n,
                         "percent_of_base": 100.0 * n / base_params})
        for name, module in self.fusions.items():
            n = sum(p.numel() for p in module.parameters())
            rows.append({"name": name, "type": "fusion", "parameters": n, "percent_of_base": 100.0 * n / base_params})
        for name, module in self.heads.items():
            n = sum(p.numel() for p in module.parameters())
            rows.append({"name": name, "type": "head", "parameters": n, "percent_of_base": 100.0 * n / base_params})
        return {"base_model": self.base_info.to_dict(), "base_parameters": base_params, "modules": rows}


# ====================================================================== helpers


def _final_split(block: Block | None) -> BatchSplit | Parallel | None:
    """The block whose members answer each with their own head (a batch split: its part of the rows;
    parallel: all rows): the block itself or the last member of a stack."""
    node: Any = block
    while isinstance(node, Stack):
        node = node.children[-1]
    return node if isinstance(node, (BatchSplit, Parallel)) else None


def _offsets(sizes: tuple[int, ...]) -> list[int]:
    return [sum(sizes[:i]) for i in range(len(sizes))]


def _rows(out: AdapterModelOutput, start: int, stop: int) -> AdapterModelOutput:
    pooled = out.pooler_output[start:stop] if out.pooler_output is not None else None
    last = out.last_token[start:stop] if out.last_token is not None else None
    return AdapterModelOutput(last_hidden_state=out.last_hidden_state[start:stop], pooler_output=pooled,
                              last_token=last)


def _causal_inputs(kwargs: dict[str, Any], attention_mask: torch.Tensor | None) -> None:
    """A decoder's: a cache only where asked for (generation), not in training; under left padding, positions
    counted from each row's first token (GPT-2's absolute positions would otherwise move with the padding).
    Right padding keeps transformers' own, as AdapterHub does."""
    kwargs.setdefault("use_cache", False)
    if "position_ids" not in kwargs and attention_mask is not None and attention_mask.dim() == 2 \
            and bool((attention_mask[:, 0] == 0).any()):
        kwargs["position_ids"] = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


# Inputs besides input_ids with one row per example, which parallel(...) replicates with the batch.
_PER_ROW = ("pixel_values", "inputs_embeds", "position_ids", "decoder_input_ids", "decoder_attention_mask",
            "decoder_inputs_embeds")


def _last_tokens(states: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """Per row, the position of the last token the mask lets through (the last position without a mask).
    AdapterHub counts the tokens that are not the pad id instead; with right padding and a pad id used only
    for padding the two agree, and the mask stays right where a real token shares the pad id (GPT-2's
    common pad = eos) or the padding is on the left."""
    rows, length = states.shape[0], states.shape[1]
    if attention_mask is None:
        return torch.full((rows,), length - 1, dtype=torch.long, device=states.device)
    # With a cache the mask covers the earlier tokens too: positions count from the first of this call's.
    positions = torch.arange(attention_mask.shape[-1], device=attention_mask.device) - (attention_mask.shape[-1] - length)
    return (attention_mask.to(torch.long) * positions).amax(-1).clamp(min=0).to(states.device)


def _short(block: Block) -> str:
    """A single adapter prints as its name, not as stack(name)."""
    from .composition import shown

    return str(shown(block))


def _check_format(format: str, formats: tuple[str, ...] = ("adapt", "adapterhub")) -> None:
    """PEFT's format holds adapters only: fusions and heads are written as adapt's or AdapterHub's."""
    if format not in formats:
        raise UsageError(f"unknown format {format!r}; use {', '.join(map(repr, formats[:-1]))} or {formats[-1]!r}")


def _fusion_members(adapters: Any) -> list[str]:
    from .composition import Fuse

    if isinstance(adapters, str):
        block = parse_composition(adapters) if "(" in adapters or "[" in adapters else None
        if block is not None:
            adapters = block
        else:
            return [a.strip() for a in adapters.split(",") if a.strip()]
    if isinstance(adapters, Fuse):
        return [c if isinstance(c, str) else c.last() for c in adapters.children]
    if isinstance(adapters, Block):
        fuses = fuse_blocks(adapters)
        if len(fuses) == 1:
            return _fusion_members(fuses[0])
        raise CompositionError(f"{adapters} is not a single fuse(...)")
    return [str(a) for a in adapters]


def _top_layers_left_out(config: Any, weights: dict[str, Any], num_layers: int) -> Any:
    """A PEFT adapter records neither the model's layer count nor the layers it skips above the last one it
    changes (``layers_to_transform=[0, 1]`` in a 3-layer model): those layers are left out."""
    named = [int(k.split(".")[1]) for k in weights if k.count(".") >= 2 and k.split(".")[1].isdigit()]
    extra = [i for i in range(max(named, default=num_layers - 1) + 1, num_layers) if i not in config.leave_out]
    return config.replace(leave_out=sorted({*config.leave_out, *extra})) if extra else config


def _local_dir(path: str | os.PathLike, kind: str) -> Path:
    """A local directory, or a Hub repository id downloaded with huggingface_hub (online only)."""
    p = Path(path)
    if p.exists():
        if not p.is_dir():
            raise ArtifactError(f"{p} is a file; an {kind} is a directory" if kind[0] in "aeiou"
                                else f"{p} is a file; a {kind} is a directory")
        return p
    text = str(path)
    if text.count("/") == 1 and not text.startswith((".", "/")):
        from huggingface_hub import snapshot_download

        try:
            return Path(snapshot_download(text, library_name="adapt"))
        except Exception as exc:
            raise ArtifactError(f"no {kind} directory {text!r} here, and the Hub download failed: "
                                f"{str(exc).splitlines()[0][:200]}") from None
    raise ArtifactError(f"no {kind} directory at {text}")


def _load_weights(module: nn.Module, weights: dict[str, torch.Tensor], source: Path | None) -> None:
    expected = module.state_dict()
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    if missing or unexpected:
        detail = (f"missing {missing[0]!r}" + (f" and {len(missing) - 1} more" if len(missing) > 1 else "")) if missing \
            else f"unexpected {unexpected[0]!r}" + (f" and {len(unexpected) - 1} more" if len(unexpected) > 1 else "")
        raise ArtifactError(f"weights in {source} do not match their config: {detail}")
    for key, tensor in weights.items():
        if tuple(tensor.shape) != tuple(expected[key].shape):
            raise BaseModelMismatch(f"weights in {source} do not fit this model: {key} has shape "
                                    f"{tuple(tensor.shape)}, expected {tuple(expected[key].shape)}")
    module.load_state_dict({k: v.to(expected[k].dtype) for k, v in weights.items()})
