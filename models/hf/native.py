"""Every `HookedTransformer` as a `transformers` model: `InterpConfig` + `InterpForCausalLM`.

```python
import models                                   # registers model_type "interp" with the Auto classes
from models.hf import InterpForCausalLM
hf_model = InterpForCausalLM.from_hooked(model)       # wraps the very same module (hooks included)
hf_model.save_pretrained("out/hf")
from transformers import AutoModelForCausalLM, pipeline
hf_model = AutoModelForCausalLM.from_pretrained("out/hf")
hf_model.generate(input_ids, max_new_tokens=20, num_beams=3)
hf_model.model.run_with_cache(input_ids)              # the HookedTransformer inside
```

This covers the architectures `transformers` has no class for (factored streams, SAS-P shaped
attention, learned+RoPE, ...); where a native class exists, `models.hf.to_hf` gives it.

The wrapper adds no math: `forward` is `HookedTransformer.forward` under HF's argument names
and output type. Caching uses our own `KVCache` (it tracks padding and per-row positions,
which learned, RoPE and ALiBi positions all need), exposed to `generate()` through the small
part of HF's `Cache` protocol generation uses: `get_seq_length`, `reorder_cache` (beam
search), `crop` (assisted decoding), `batch_repeat_interleave` / `batch_select_indices`.
`generate()` starts one per call; HF's `DynamicCache` is never created, and an empty one
passed in is replaced by ours.
"""

from __future__ import annotations

import inspect
from typing import Any, Optional, Union

import torch
from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, GenerationMixin, PreTrainedConfig, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from ..config import ModelConfig
from ..positions import Rotary
from ..transformer import HookedTransformer, KVCache

__all__ = ["InterpConfig", "InterpForCausalLM", "HookedCache", "MODEL_TYPE", "CACHE_KWARG"]

MODEL_TYPE = "interp"

# transformers 5.24 renamed the cache argument of forward / generate and the output field from
# `past_key_values` to `cache` (the old name still works there, with a deprecation warning).
# We speak whichever name the installed version's generation loop uses, and accept both.
CACHE_KWARG = (
    "cache" if "cache" in inspect.signature(GenerationMixin.prepare_inputs_for_generation).parameters
    else "past_key_values"
)


@strict
class InterpConfig(PreTrainedConfig):
    """A `ModelConfig` (under `interp`, as its `to_dict()`) in a `transformers` config. The
    usual HF names (`vocab_size`, `hidden_size`, ...) are derived from it, read-only in spirit:
    change the model by changing `interp`."""

    model_type = MODEL_TYPE
    keys_to_ignore_at_inference = ["past_key_values", "cache"]

    interp: dict | None = None
    vocab_size: int | None = None
    hidden_size: int | None = None
    num_hidden_layers: int | None = None
    num_attention_heads: int | None = None
    num_key_value_heads: int | None = None
    max_position_embeddings: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None
    # our model ties internally (the embedding *is* the unembedding); HF must not tie again
    tie_word_embeddings: bool = False
    use_cache: bool = True

    def __post_init__(self, **kwargs):
        cfg = self.model_config()
        self.interp = cfg.to_dict()
        self.vocab_size, self.hidden_size = cfg.d_vocab, cfg.d_model
        self.num_hidden_layers, self.num_attention_heads = cfg.n_layers, cfg.n_heads
        self.num_key_value_heads, self.max_position_embeddings = cfg.n_kv_heads, cfg.n_ctx
        for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
            if getattr(self, key) is None:
                setattr(self, key, getattr(cfg, key))
        self.tie_word_embeddings = False
        super().__post_init__(**kwargs)

    def model_config(self) -> ModelConfig:
        return ModelConfig.from_dict(dict(self.interp)) if self.interp is not None else ModelConfig()

    @classmethod
    def from_model_config(cls, cfg: ModelConfig, **kwargs) -> "InterpConfig":
        return cls(interp=cfg.to_dict(), **kwargs)


class HookedCache(KVCache):
    """Our `KVCache` (keys/values per layer, key padding mask, positions, real-token counts)
    with the methods `transformers`' generation loop calls on a cache."""

    is_compileable = False
    is_croppable = True

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.layers[layer_idx].length

    def __len__(self) -> int:
        return len(self.layers)

    def _map_rows(self, fn) -> None:
        """Apply `fn` (a batch-dim reindexing) to every per-row tensor."""
        for layer in self.layers:
            if layer.k is not None:
                layer.k, layer.v = fn(layer.k), fn(layer.v)
        if self.key_mask is not None:
            self.key_mask = fn(self.key_mask)
        if self.positions is not None and self.positions.shape[0] > 1:  # (1, past) broadcasts: keep
            self.positions = fn(self.positions)
        if self.n_real is not None:
            self.n_real = fn(self.n_real)

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        """Beam search: row `i` becomes old row `beam_idx[i]`."""
        self._map_rows(lambda t: t.index_select(0, beam_idx.to(t.device)))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._map_rows(lambda t: t[indices.to(t.device)])

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._map_rows(lambda t: t.repeat_interleave(repeats, dim=0))

    def activate_past_recording(self, recurrent_states_to_keep: int = 0) -> None:
        """HF asks for this before it may `crop` (5.25 adds how many recurrent states to keep);
        every past state is kept anyway."""

    def crop(self, tokens_to_remove: int) -> None:
        """Drop the last `-tokens_to_remove` cached positions (a count <= 0: HF's convention since
        5.15); a positive value is the older convention, the length to keep."""
        if self.get_seq_length() == 0 or tokens_to_remove == 0:
            return
        if tokens_to_remove > 0:  # transformers < 5.15: crop(max_length)
            tokens_to_remove = min(tokens_to_remove, self.get_seq_length()) - self.get_seq_length()
            if tokens_to_remove == 0:
                return
        max_length = self.get_seq_length() + tokens_to_remove
        for layer in self.layers:
            layer.k, layer.v = layer.k[:, :, :max_length], layer.v[:, :, :max_length]
        if self.positions is not None:
            self.positions = self.positions[:, :max_length]
        if self.key_mask is not None:
            self.key_mask = self.key_mask[:, :max_length]
            self.n_real = self.key_mask.long().sum(-1)
        elif self.n_real is not None:
            self.n_real = torch.full_like(self.n_real, max_length)


class InterpForCausalLM(PreTrainedModel, GenerationMixin):
    """`transformers` causal LM around a `HookedTransformer` (`self.model`)."""

    config_class = InterpConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    _no_split_modules = ["Block"]
    supports_gradient_checkpointing = True
    _supports_sdpa = True

    def __init__(self, config: InterpConfig, model: Optional[HookedTransformer] = None):
        super().__init__(config)
        self.model = model if model is not None else HookedTransformer(config.model_config())
        self.post_init()

    @classmethod
    def from_hooked(cls, model: HookedTransformer) -> "InterpForCausalLM":
        """Wrap `model` itself (no copy): hooks added to it act on the wrapper's forward too."""
        hf_model = cls(InterpConfig.from_model_config(model.cfg), model=model)
        return hf_model.to(dtype=model.cfg.dtype) if model.cfg.dtype is not None else hf_model

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        hf_model = super().from_pretrained(*args, **kwargs)
        hf_model.model._sync_cfg()  # weights were swapped in from the meta device: re-read device/dtype
        return hf_model

    def _init_weights(self, module: nn.Module) -> None:
        """Parameters are initialised by `HookedTransformer` itself (or loaded); only derived,
        non-persistent buffers need rebuilding after `from_pretrained` built on the meta device."""
        if isinstance(module, Rotary):
            fresh = Rotary(self.model.cfg)
            module.inv_freq = fresh.inv_freq.to(self.device if self.device.type != "meta" else "cpu")

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # we bring our own cache (HookedCache), made in _prepare_cache_for_generation

    def _prepare_cache_for_generation(self, generation_config, model_kwargs, *args, **kwargs) -> None:
        if model_kwargs.get(CACHE_KWARG) is None and generation_config.use_cache is not False:
            if generation_config.cache_implementation not in (None, "dynamic", "dynamic_full"):
                raise ValueError(f"cache_implementation={generation_config.cache_implementation!r}: "
                                 "this model uses its own dynamic cache (HookedCache); leave it unset")
            model_kwargs[CACHE_KWARG] = HookedCache(self.model.cfg.n_layers)
            generation_config.cache_implementation = None  # "dynamic_full" (older assisted decoding): ours is one
        return super()._prepare_cache_for_generation(generation_config, model_kwargs, *args, **kwargs)

    # ------------------------------------------------------------------ embeddings
    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        if not isinstance(value, nn.Embedding) or value.embedding_dim != self.model.cfg.d_model:
            raise ValueError(f"set_input_embeddings needs an nn.Embedding(n, {self.model.cfg.d_model}), got {value!r}")
        if value.num_embeddings != self.model.cfg.d_vocab and self.model.unembed is not None:
            raise ValueError(
                f"new embedding has {value.num_embeddings} rows but the untied unembedding has "
                f"{self.model.cfg.d_vocab}; resize both (set_output_embeddings) or keep the vocabulary size")
        self.model.embed = value
        self.model.cfg.d_vocab = value.num_embeddings
        self.config.interp["d_vocab"] = self.config.vocab_size = value.num_embeddings
        self.model.setup()  # HookedRootModule's module index holds the old embedding

    def get_output_embeddings(self) -> Optional[nn.Linear]:
        return self.model.unembed  # None when tied: the embedding is the unembedding

    def set_output_embeddings(self, value: nn.Linear) -> None:
        if self.model.unembed is None:
            raise ValueError("this model ties its unembedding to the input embedding; use set_input_embeddings")
        self.model.unembed = value
        self.model.setup()

    # ------------------------------------------------------------------ gradient checkpointing
    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: Optional[dict] = None) -> None:
        self.model.set_gradient_checkpointing(True)

    def gradient_checkpointing_disable(self) -> None:
        self.model.set_gradient_checkpointing(False)

    @property
    def is_gradient_checkpointing(self) -> bool:
        return bool(self.model.cfg.gradient_checkpointing)

    # ------------------------------------------------------------------ generation
    def prepare_inputs_for_generation(self, input_ids, next_sequence_length=None, past_key_values=None,
                                      attention_mask=None, inputs_embeds=None, is_first_iteration=False,
                                      cache=None, **kwargs):
        """HF's own preparation, plus the older convention of handing over the whole
        sequence with a filled cache: only the tokens the cache has not seen are fed."""
        cache = _one_cache(cache, past_key_values)
        if next_sequence_length is None and cache is not None and input_ids is not None \
                and not (inputs_embeds is not None and is_first_iteration):
            seen = cache.get_seq_length()
            if 0 < seen < input_ids.shape[1]:
                next_sequence_length = input_ids.shape[1] - seen
        return super().prepare_inputs_for_generation(
            input_ids, next_sequence_length=next_sequence_length, **{CACHE_KWARG: cache},
            attention_mask=attention_mask, inputs_embeds=inputs_embeds, is_first_iteration=is_first_iteration,
            **kwargs)

    def _cache(self, past_key_values: Any, use_cache: bool) -> Optional[HookedCache]:
        if past_key_values is None:
            return HookedCache(self.model.cfg.n_layers) if use_cache else None
        if isinstance(past_key_values, HookedCache):
            return past_key_values
        if hasattr(past_key_values, "get_seq_length") and past_key_values.get_seq_length() == 0:
            return HookedCache(self.model.cfg.n_layers)  # an empty HF cache: start ours instead
        raise TypeError(
            f"past_key_values must be the HookedCache this model returned, got a filled "
            f"{type(past_key_values).__name__}; our caches track padding and positions per row")

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        input_ids: Optional[torch.LongTensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        position_ids: Optional[torch.LongTensor] = None,
        past_key_values: Optional[HookedCache] = None,
        inputs_embeds: Optional[torch.FloatTensor] = None,
        cache: Optional[HookedCache] = None,
        labels: Optional[torch.LongTensor] = None,
        use_cache: Optional[bool] = None,
        output_attentions: Optional[bool] = None,
        output_hidden_states: Optional[bool] = None,
        return_dict: Optional[bool] = None,
        logits_to_keep: Union[int, torch.Tensor] = 0,
        **kwargs,
    ) -> Union[CausalLMOutputWithPast, tuple]:
        """HF-style causal LM forward. `attention_mask` may cover the cached positions too
        (as `generate()` passes it) or only the new ones; `labels` are unshifted (shifted
        inside), -100 ignored. `logits_to_keep=k` keeps the last k positions (0: all).
        `cache=` is `past_key_values=` under its transformers >= 5.24 name."""
        past_key_values = _one_cache(cache, past_key_values)
        use_cache = self.config.use_cache if use_cache is None else use_cache
        return_dict = self.config.return_dict if return_dict is None else return_dict
        output_attentions = bool(output_attentions if output_attentions is not None else self.config.output_attentions)
        output_hidden_states = bool(output_hidden_states if output_hidden_states is not None
                                    else self.config.output_hidden_states)
        cache = self._cache(past_key_values, use_cache and labels is None)
        new = (input_ids if input_ids is not None else inputs_embeds).shape[1]
        mask = None
        if attention_mask is not None:
            if attention_mask.ndim != 2 or attention_mask.shape[1] not in (new, new + (cache.length if cache else 0)):
                raise ValueError(f"attention_mask {tuple(attention_mask.shape)} fits neither the {new} new tokens "
                                 f"nor them plus the {cache.length if cache else 0} cached ones")
            mask = attention_mask[:, -new:].bool()
            if (cache is None or cache.key_mask is None) and bool(mask.all()):
                mask = None  # no padding: keep the unmasked fused attention path
        if position_ids is not None:
            position_ids = position_ids[..., -new:]

        hidden: list[torch.Tensor] = []
        patterns: list[torch.Tensor] = []
        hooks = []
        L = self.model.cfg.n_layers
        if output_hidden_states:
            hooks += [(f"blocks.{i}.hook_resid_pre", lambda x, hook: hidden.append(x)) for i in range(L)]
            hooks.append((f"blocks.{L - 1}.hook_resid_post", lambda x, hook: hidden.append(x)))
        if output_attentions:
            hooks += [(f"blocks.{i}.attn.hook_pattern", lambda x, hook: patterns.append(x)) for i in range(L)]
        keep_last = isinstance(logits_to_keep, int) and logits_to_keep == 1 and labels is None
        with self.model.hooks(fwd_hooks=hooks):
            out = self.model(
                input_ids, return_type="both" if labels is not None else "logits", inputs_embeds=inputs_embeds,
                labels=labels, attention_mask=mask, position_ids=position_ids, past_kv_cache=cache,
                last_position_only=keep_last,
            )
        logits, loss = (out.logits, out.loss) if labels is not None else (out, None)
        if not keep_last and isinstance(logits_to_keep, int) and logits_to_keep > 0:
            logits = logits[:, -logits_to_keep:]
        elif isinstance(logits_to_keep, torch.Tensor):
            logits = logits[:, logits_to_keep]
        if output_hidden_states:
            hidden[-1] = self.model.ln_final(hidden[-1])  # HF: the last hidden state is normalised
        result = CausalLMOutputWithPast(
            loss=loss, logits=logits, **{CACHE_KWARG: cache if use_cache else None},
            hidden_states=tuple(hidden) if output_hidden_states else None,
            attentions=tuple(patterns) if output_attentions else None,
        )
        return result if return_dict else result.to_tuple()


def _one_cache(cache: Any, past_key_values: Any) -> Any:
    """The cache passed under either name (`cache`, transformers >= 5.24; `past_key_values`)."""
    if cache is not None and past_key_values is not None and cache is not past_key_values:
        raise ValueError("pass the cache once: as cache= or as past_key_values=, not both")
    return cache if cache is not None else past_key_values


AutoConfig.register(MODEL_TYPE, InterpConfig, exist_ok=True)
AutoModelForCausalLM.register(InterpConfig, InterpForCausalLM, exist_ok=True)
