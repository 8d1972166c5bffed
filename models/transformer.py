"""`HookedTransformer`: the one model class, a `transformer_lens.HookedRootModule`.

```python
from models import presets
model = presets.make("vanilla", "tiny")
logits = model(tokens)                                   # (batch, pos, d_vocab)
loss = model(tokens, return_type="loss")                 # next-token loss
logits, cache = model.run_with_cache(tokens)             # a TransformerLens ActivationCache
```
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformer_lens.HookedRootModule import HookedRootModule

from .attention import AttnContext, KVCache
from .block import Block
from .config import ModelConfig
from .generation import generate as _generate
from .hooks import HookPoint
from .loss import IGNORE_INDEX, unembed_cross_entropy
from .norm import make_norm
from .positions import LearnedPositions, positions_from_mask

TokensLike = Union[str, Sequence[str], torch.Tensor]


class Output(NamedTuple):
    logits: torch.Tensor
    loss: torch.Tensor


def forward_arguments(input, input_ids, return_type: Optional[str], labels) -> tuple[Any, Optional[str]]:
    """The argument rules every forward with `HookedTransformer.forward`'s signature shares:
    `input_ids=` is the tokens under their HF name, and a left-out `return_type` ("default")
    is "both" when `labels` are given, else "logits"."""
    if return_type == "default":
        return_type = "both" if labels is not None else "logits"
    if return_type not in ("logits", "loss", "both", None):
        raise ValueError(f"return_type must be 'logits', 'loss', 'both' or None, got {return_type!r}")
    if input_ids is not None:
        if input is not None:
            raise ValueError("pass the tokens once: either positionally or as input_ids=, not both")
        input = input_ids
    return input, return_type


class HookedTransformer(HookedRootModule):
    def __init__(self, cfg: ModelConfig, tokenizer: Any = None):
        super().__init__()
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.embed = nn.Embedding(cfg.d_vocab, cfg.d_model)
        self.hook_embed = HookPoint()
        if cfg.uses_learned_positions:
            self.pos_embed = LearnedPositions(cfg)
            self.hook_pos_embed = HookPoint()
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layers))
        self.ln_final = make_norm(cfg)
        self.unembed = None if cfg.tie_embeddings else nn.Linear(cfg.d_model, cfg.d_vocab, bias=False)
        self.b_U = nn.Parameter(torch.zeros(cfg.d_vocab)) if cfg.unembed_bias else None
        self.init_weights()
        self.setup()
        self._sync_cfg()

    # ------------------------------------------------------------------ init
    def init_weights(self) -> None:
        """nanoGPT init: N(0, init_range), residual-writing projections scaled by 1/sqrt(2L)."""
        std = self.cfg.init_range
        for name, p in self.named_parameters():
            if name.endswith(("alpha", "beta", "gamma")) or ".ln" in name or name.startswith("ln_final"):
                continue  # norms start at w=1, b=0; shaped-attention gains at 1
            if name.endswith(".bias") or name == "b_U":
                nn.init.zeros_(p)
            elif name.endswith(("attn.out.weight", "mlp.fc_out.weight")):
                nn.init.normal_(p, 0.0, std / math.sqrt(2 * self.cfg.n_layers))
            elif name.endswith("W_mix"):
                with torch.no_grad():
                    p.copy_(torch.eye(p.shape[-1]).expand_as(p) + torch.randn_like(p) * std)
            else:
                nn.init.normal_(p, 0.0, std)
        if self.cfg.block == "shaped":
            # W_Q = 0 makes softmax uniform (= C), so with beta = gamma each layer starts as alpha*I.
            with torch.no_grad():
                for block in self.blocks:
                    block.attn.qkv.weight[: self.cfg.n_heads * self.cfg.d_head].zero_()

    def _sync_cfg(self) -> None:
        p = next(self.parameters())
        self.cfg.device, self.cfg.dtype = p.device, p.dtype

    def _apply(self, fn, recurse=True):
        out = super()._apply(fn, recurse)
        self._sync_cfg()
        return out

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        input: Optional[TokensLike] = None,
        return_type: Optional[str] = "default",
        *,
        input_ids: Optional[Int[torch.Tensor, "batch pos"]] = None,
        inputs_embeds: Optional[Float[torch.Tensor, "batch pos d_model"]] = None,
        labels: Optional[Int[torch.Tensor, "batch pos"]] = None,
        attention_mask: Optional[torch.Tensor] = None,
        position_ids: Optional[Int[torch.Tensor, "batch pos"]] = None,
        past_kv_cache: Optional[KVCache] = None,
        loss_per_token: bool = False,
        prepend_bos: Optional[bool] = None,
        last_position_only: bool = False,
        stop_at_layer: Optional[int] = None,
        start_at_layer: Optional[int] = None,
        tokens: Optional[Int[torch.Tensor, "batch pos"]] = None,
    ):
        """Run the model.

        Args:
            input: token ids (batch, pos), or text when a tokenizer is attached.
                `input_ids=` is the same thing under its Hugging Face name.
            return_type: "logits" (batch, pos, d_vocab), "loss", "both" (`Output`) or None.
                Left out, it is "logits", or "both" when `labels` are given (so
                `model(input_ids=x, labels=y).loss` reads as in `transformers`).
            inputs_embeds: (batch, pos, d_model) vectors used instead of the token embedding
                (positions are still added; `hook_embed` sees them). The loss then needs `labels`.
            labels: targets aligned with `input` (shifted inside, HF style); -100 is ignored.
                Without labels the loss predicts `input` itself.
            attention_mask: (batch, pos), True/1 = real token. Left and right padding both
                work: positions count only real tokens, padded keys are never attended and
                padded targets never scored.
            past_kv_cache: a `KVCache`, extended in place (see `models.generation`), or a
                preallocated `models.decoding.StaticKVCache` (written in place; it supplies
                positions and masks itself, so no `position_ids`).
            loss_per_token: return the unreduced (batch, pos - 1) loss.
            last_position_only: unembed only the last position: logits (batch, 1, d_vocab).
                For inference (with left padding the last position is every row's newest token).
            stop_at_layer: as in TransformerLens: run only blocks [0, stop_at_layer) (negative
                counts from the end; 0 runs the embeddings alone) and return the residual stream
                (batch, pos, d_model) they leave (xt + xe on factored models). Hooks of the
                blocks that ran fire; nothing after them is computed.
            start_at_layer: as in TransformerLens: `input` is the residual stream entering block
                `start_at_layer` (batch, pos, d_model), e.g. `cache["resid_pre", n]`, and only
                blocks [start_at_layer, stop_at_layer) run (negative counts from the end; the
                embeddings and their hooks are skipped). A factored-stream model needs both
                streams: pass the tuple `(xt, xe)` (`cache["blocks.n.hook_xt_pre"]`,
                `cache["blocks.n.hook_xe_pre"]`); their sum alone cannot be split back.
                `attention_mask` / `position_ids` still apply; no KV cache.
            tokens: TransformerLens's name for the targets of a loss computed from a residual
                (`start_at_layer`); the same as `labels=`.
        """
        input, return_type = forward_arguments(input, input_ids, return_type, labels)
        if tokens is not None:
            if labels is not None:
                raise ValueError("tokens= is TransformerLens's name for labels=; pass one of them")
            labels = tokens
        n_blocks = self._layer_index("stop_at_layer", stop_at_layer)
        if n_blocks is not None and (return_type in ("loss", "both") or last_position_only):
            raise ValueError("stop_at_layer returns the residual stream; it gives no loss or last-position logits")
        start = self._layer_index("start_at_layer", start_at_layer)
        if start is not None:
            return self._forward_from_layer(
                input, start, n_blocks, return_type, labels, attention_mask, position_ids, past_kv_cache,
                inputs_embeds, loss_per_token, last_position_only,
            )
        if (input is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of tokens (input / input_ids=) and inputs_embeds=")
        if inputs_embeds is not None:
            if inputs_embeds.ndim != 3 or inputs_embeds.shape[-1] != self.cfg.d_model:
                raise ValueError(f"inputs_embeds must be (batch, pos, d_model={self.cfg.d_model}), "
                                 f"got {tuple(inputs_embeds.shape)}")
            if return_type in ("loss", "both") and labels is None:
                raise ValueError("a loss from inputs_embeds needs labels= (there are no tokens to predict)")
            tokens = None
            embeds = inputs_embeds.to(self.embed.weight.device)
            shape, device = embeds.shape[:2], embeds.device
        else:
            if not isinstance(input, torch.Tensor):
                input = self.to_tokens(input, prepend_bos=prepend_bos)
            tokens = input.to(self.embed.weight.device)
            if tokens.ndim == 1:
                tokens = tokens[None]
            embeds = self.embed(tokens)
            shape, device = tokens.shape, tokens.device
        if last_position_only and return_type in ("loss", "both"):
            raise ValueError("last_position_only=True gives logits for one position; it cannot give a loss")
        if attention_mask is not None:
            attention_mask = attention_mask.to(device).bool()
            if attention_mask.shape != shape:
                raise ValueError(f"attention_mask shape {tuple(attention_mask.shape)} != input {tuple(shape)}")
        ctx = self.attn_context(shape, device, attention_mask, position_ids, past_kv_cache)

        x = self.hook_embed(embeds)
        if self.cfg.uses_learned_positions:
            # Unpadded positions are known on the host; padded ones are checked on the device.
            pos = self.pos_embed(ctx.q_pos, max_position=ctx.max_position)
            x = x + self.hook_pos_embed(pos.expand(shape[0], -1, -1))
        x = self.drop(x)
        stream = (x, torch.zeros_like(x)) if self.cfg.stream == "factored" else (x, None)
        stream = self._run_blocks(stream, ctx, past_kv_cache, 0, n_blocks)
        resid = stream[0] if stream[1] is None else stream[0] + stream[1]
        return self._head(resid, n_blocks, return_type, tokens if labels is None else labels, attention_mask,
                          loss_per_token, last_position_only)

    def _run_blocks(self, stream, ctx: AttnContext, cache, start: int, stop: Optional[int]):
        """Blocks [start, stop) (stop None: to the end) over `stream` = (resid or xt, xe or None)."""
        stop = self.cfg.n_layers if stop is None else stop
        for i in range(start, stop):
            block = self.blocks[i]
            kv = cache.layers[i] if cache is not None else None
            if self.cfg.checkpointed(i) and self.training and torch.is_grad_enabled():
                stream = checkpoint(block, stream, ctx, kv, use_reentrant=False)
            else:
                stream = block(stream, ctx, kv)
        return stream

    def _head(self, resid, n_blocks, return_type, targets, attention_mask, loss_per_token, last_position_only):
        """What `forward` returns from the residual the blocks left: itself (`stop_at_layer`),
        logits, loss or both."""
        if n_blocks is not None:
            return resid
        if targets is None and return_type in ("loss", "both"):
            raise ValueError("a loss from a residual (start_at_layer) needs tokens= or labels=")
        tokens = targets
        if last_position_only:
            resid = resid[:, -1:]
        if return_type == "loss":  # nobody sees the logits: the fused loss path
            return self.loss_from_resid(resid, tokens, attention_mask, loss_per_token)
        logits = self.unembed_resid(self.ln_final(resid))
        if return_type == "logits":
            return logits
        if return_type is None:
            return None
        loss = self.loss_fn(logits, tokens, attention_mask, per_token=loss_per_token)
        return loss if return_type == "loss" else Output(logits, loss)

    def _forward_from_layer(self, resid, start, n_blocks, return_type, labels, attention_mask, position_ids,
                            past_kv_cache, inputs_embeds, loss_per_token, last_position_only):
        """`forward(resid, start_at_layer=start)`: blocks [start, stop) on a given residual."""
        if inputs_embeds is not None or past_kv_cache is not None:
            raise ValueError("start_at_layer takes the residual stream as input; it combines with neither "
                             "inputs_embeds= nor past_kv_cache=")
        streams = resid if isinstance(resid, (tuple, list)) else (resid,)
        want = 2 if self.cfg.stream == "factored" else 1
        if len(streams) != want or not all(isinstance(t, torch.Tensor) for t in streams):
            if want == 2:
                raise ValueError(
                    f"start_at_layer on a factored-stream model needs the tuple (xt, xe) entering block {start} "
                    f"(cache['blocks.{start}.hook_xt_pre'], cache['blocks.{start}.hook_xe_pre']): the residual "
                    f"xt + xe alone cannot be split back into the two streams")
            raise ValueError(f"start_at_layer needs the residual stream entering block {start} as one "
                             f"(batch, pos, d_model) tensor, got {type(resid).__name__}")
        device = self.embed.weight.device
        streams = tuple(t.to(device) for t in streams)
        shape = streams[0].shape
        for t in streams:
            if t.ndim != 3 or t.shape != shape or t.shape[-1] != self.cfg.d_model:
                raise ValueError(f"start_at_layer input must be (batch, pos, d_model={self.cfg.d_model}) "
                                 f"per stream, got {[tuple(x.shape) for x in streams]}")
        if last_position_only and return_type in ("loss", "both"):
            raise ValueError("last_position_only=True gives logits for one position; it cannot give a loss")
        if attention_mask is not None:
            attention_mask = attention_mask.to(device).bool()
            if attention_mask.shape != shape[:2]:
                raise ValueError(f"attention_mask shape {tuple(attention_mask.shape)} != input {tuple(shape[:2])}")
        ctx = self.attn_context(shape[:2], device, attention_mask, position_ids, None)
        stream = (streams[0], streams[1] if want == 2 else None)
        stream = self._run_blocks(stream, ctx, None, start, n_blocks if n_blocks is None or n_blocks > start else start)
        resid = stream[0] if stream[1] is None else stream[0] + stream[1]
        return self._head(resid, n_blocks, return_type, labels, attention_mask, loss_per_token, last_position_only)

    def _layer_index(self, name: str, layer: Optional[int]) -> Optional[int]:
        """`stop_at_layer` / `start_at_layer` as a block index in [0, n_layers] (negative counts
        from the end, as a Python slice bound does); None stays None."""
        if layer is None:
            return None
        L = self.cfg.n_layers
        if isinstance(layer, bool) or not isinstance(layer, int) or not -L <= layer <= L:
            raise ValueError(f"{name} must be an int in [-{L}, {L}] for this {L}-layer model, got {layer!r}")
        return layer % L if layer < 0 else layer

    def unembed_resid(self, x: Float[torch.Tensor, "... d_model"]) -> Float[torch.Tensor, "... d_vocab"]:
        logits = F.linear(x, self.embed.weight) if self.unembed is None else self.unembed(x)
        return logits if self.b_U is None else logits + self.b_U

    def loss_from_resid(
        self,
        resid: Float[torch.Tensor, "batch pos d_model"],
        labels: Int[torch.Tensor, "batch pos"],
        attention_mask: Optional[torch.Tensor] = None,
        per_token: bool = False,
    ) -> torch.Tensor:
        """`loss_fn(unembed_resid(ln_final(resid)), ...)` without handing out the logits, through
        `models.loss.unembed_cross_entropy` (loss and logit gradient in one pass; the vocabulary
        padded to an aligned width for the matmul). Same loss and gradients, less time."""
        targets = self.next_token_targets(labels.to(resid.device), attention_mask)
        W_U = self.embed.weight if self.unembed is None else self.unembed.weight
        x = self.ln_final(resid)
        flat = unembed_cross_entropy(x.reshape(-1, x.shape[-1]), W_U, self.b_U, targets.reshape(-1))
        return self._reduce_loss(flat.view_as(targets), targets, per_token)

    @staticmethod
    def loss_fn(
        logits: Float[torch.Tensor, "batch pos d_vocab"],
        labels: Int[torch.Tensor, "batch pos"],
        attention_mask: Optional[torch.Tensor] = None,
        per_token: bool = False,
    ) -> torch.Tensor:
        """Mean next-token cross-entropy: logits[:, t] predicts labels[:, t + 1]."""
        targets = HookedTransformer.next_token_targets(labels.to(logits.device), attention_mask)
        flat = F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE_INDEX, reduction="none"
        )
        return HookedTransformer._reduce_loss(flat.view_as(targets), targets, per_token)

    @staticmethod
    def next_token_targets(
        labels: Int[torch.Tensor, "batch pos"], attention_mask: Optional[torch.Tensor] = None
    ) -> Int[torch.Tensor, "batch pos"]:
        """What each position predicts: labels[:, t + 1], -100 (ignored) at the last position
        and wherever the mask is False (a padded target, or a padded position predicting)."""
        if attention_mask is not None:
            mask = attention_mask.to(labels.device).bool()
            labels = labels.masked_fill(~mask, IGNORE_INDEX)
        # Shift the targets, not the (batch, pos, vocab) logits: no copy of the largest tensor.
        targets = torch.cat([labels[:, 1:], labels.new_full((labels.shape[0], 1), IGNORE_INDEX)], dim=1)
        if attention_mask is not None:
            # a padded position predicts nothing (left padding: the first real token has no real predecessor)
            targets = targets.masked_fill(~mask, IGNORE_INDEX)
        return targets

    @staticmethod
    def _reduce_loss(per_position: torch.Tensor, targets: torch.Tensor, per_token: bool) -> torch.Tensor:
        if per_token:
            return per_position[:, :-1]
        return per_position.sum() / (targets != IGNORE_INDEX).sum().clamp(min=1)

    def attn_context(self, shape, device, attention_mask, position_ids, cache) -> AttnContext:
        """The `AttnContext` of a forward over `shape` on top of `cache` (a `KVCache`, a cache
        that keeps its own positions such as `models.decoding.StaticKVCache`, or None)."""
        if cache is None or isinstance(cache, KVCache):
            return self._context(shape, device, attention_mask, position_ids, cache)
        if position_ids is not None:
            raise ValueError(f"{type(cache).__name__} computes positions itself; pass no position_ids")
        return cache.context(self, shape, device, attention_mask)

    def _context(self, shape, device, attention_mask, position_ids, cache: Optional[KVCache]) -> AttnContext:
        B, T = shape
        past = cache.length if cache is not None else 0
        padded = attention_mask is not None or (cache is not None and cache.key_mask is not None)
        new_mask = attention_mask if attention_mask is not None else torch.ones(B, T, dtype=torch.bool, device=device)
        n_real = cache.n_real if cache is not None and cache.n_real is not None else torch.zeros(B, dtype=torch.long, device=device)
        if position_ids is not None:
            q_pos = position_ids.to(device).expand(B, T)
        elif not padded:
            q_pos = (torch.arange(T, device=device) + past)[None]  # (1, pos): broadcasts over batch
        else:
            q_pos = positions_from_mask(new_mask, past=n_real)
        key_mask = None
        if padded:
            old = cache.key_mask if cache is not None and cache.key_mask is not None else torch.ones(B, past, dtype=torch.bool, device=device)
            key_mask = torch.cat([old, new_mask], dim=1)
        if cache is not None and cache.positions is not None:
            k_pos = torch.cat([cache.positions.expand(B, -1), q_pos.expand(B, -1)], dim=1)
        else:
            k_pos = q_pos
        if cache is not None:
            cache.key_mask = key_mask
            cache.positions = k_pos
            cache.n_real = n_real + new_mask.long().sum(-1)
        rope = None
        if self.cfg.uses_rope:
            rope = self.blocks[0].attn.rotary.angles(q_pos)
        # Unpadded, default positions are known on the host; otherwise they are checked on the device.
        bound = past + T - 1 if position_ids is None and not padded else None
        return AttnContext(q_pos=q_pos, k_pos=k_pos, key_mask=key_mask, past=past, rope=rope, max_position=bound)

    # ------------------------------------------------------------------ TransformerLens API
    def run_with_cache(self, *model_args, return_cache_object: bool = True, remove_batch_dim: bool = False, **kwargs):
        """Like TL's: returns (output, ActivationCache). Only the layers whose pattern or
        scores are cached leave the fused attention path."""
        from .cache import ActivationCache

        out, cache_dict = super().run_with_cache(*model_args, remove_batch_dim=remove_batch_dim, **kwargs)
        if not return_cache_object:
            return out, cache_dict
        return out, ActivationCache(cache_dict, self, has_batch_dim=not remove_batch_dim)

    @property
    def device(self) -> torch.device:
        """Where the parameters live (= `cfg.device`; pyvene and nnsight read `model.device`)."""
        return self.cfg.device

    @property
    def config(self) -> ModelConfig:
        """`cfg` under the name Hugging Face-style tools read (pyvene needs `model.config`)."""
        return self.cfg

    # TransformerLens's optional hooks. Each toggle adds its hook points (and removes them when
    # switched off); off, the forward is exactly the default one, fused paths included.
    def set_use_attn_result(self, use_attn_result: bool) -> None:
        """`blocks.{i}.attn.hook_result` (batch, pos, head, d_model): each head's output
        z_h @ W_O[h]; attn_out is their sum plus b_O."""
        self._set_toggle("use_attn_result", use_attn_result)

    def set_use_split_qkv_input(self, use_split_qkv_input: bool) -> None:
        """`blocks.{i}.hook_q_input` (batch, pos, head, d_model) and `hook_k_input` /
        `hook_v_input` (batch, pos, kv_head, d_model): a copy of resid_pre per head, so an
        edit reaches one head's query, key or value only."""
        if use_split_qkv_input:
            self._refuse_per_head_inputs("set_use_split_qkv_input")
        self._set_toggle("use_split_qkv_input", use_split_qkv_input)

    def set_use_attn_in(self, use_attn_in: bool) -> None:
        """`blocks.{i}.hook_attn_in` (batch, pos, head, d_model): a copy of resid_pre per head
        that its query, key and value all read (with split qkv inputs on as well, those win)."""
        if use_attn_in:
            self._refuse_per_head_inputs("set_use_attn_in")
            if self.cfg.n_kv_heads != self.cfg.n_heads:
                raise ValueError(f"set_use_attn_in: this model groups {self.cfg.n_heads} query heads onto "
                                 f"{self.cfg.n_kv_heads} key/value heads, so one input per query head does not "
                                 "define the keys and values; use set_use_split_qkv_input (as TransformerLens)")
        self._set_toggle("use_attn_in", use_attn_in)

    def set_use_hook_mlp_in(self, use_hook_mlp_in: bool) -> None:
        """`blocks.{i}.hook_mlp_in` (batch, pos, d_model): the residual the MLP reads, before its
        norm, as a copy, so an edit there changes the MLP's input only."""
        if use_hook_mlp_in and self.cfg.attn_only:
            raise ValueError("set_use_hook_mlp_in: this attention-only model has no MLPs")
        self._set_toggle("use_hook_mlp_in", use_hook_mlp_in)

    def _refuse_per_head_inputs(self, name: str) -> None:
        kind = self.blocks[0].attn.kind if len(self.blocks) else "standard"
        if kind != "standard":
            why = "are read from the xt stream" if kind == "factored" else "are ln1(resid) itself (identity weights)"
            raise NotImplementedError(f"{name}: in this {kind} model the values {why}, not a per-head linear map "
                                      "of ln1(resid), so per-head attention inputs are not defined")

    def _set_toggle(self, flag: str, on: bool) -> None:
        setattr(self.cfg, flag, bool(on))
        for block in self.blocks:
            block.sync_hook_points()
        self.setup()

    def set_tokenizer(self, tokenizer: Any) -> None:
        """Attach a tokenizer with `encode(str) -> list[int]` and `decode(list[int]) -> str`
        (ours from `interp.tokenizers`, or any HF tokenizer)."""
        self.tokenizer = tokenizer

    def _need_tokenizer(self):
        if self.tokenizer is None:
            raise ValueError("no tokenizer attached: call model.set_tokenizer(...) or pass token ids")
        return self.tokenizer

    def to_tokens(
        self, input: Union[str, Sequence[str]], prepend_bos: Optional[bool] = None, padding_side: str = "right"
    ) -> Int[torch.Tensor, "batch pos"]:
        tok = self._need_tokenizer()
        texts = [input] if isinstance(input, str) else list(input)
        if prepend_bos is None:
            prepend_bos = self.cfg.default_prepend_bos and self.cfg.bos_token_id is not None
        if prepend_bos and self.cfg.bos_token_id is None:
            raise ValueError("prepend_bos=True but the config has no bos_token_id")
        seqs = [([self.cfg.bos_token_id] if prepend_bos else []) + list(_encode(tok, t)) for t in texts]
        width = max(len(s) for s in seqs)
        pad = self.cfg.pad_token_id if self.cfg.pad_token_id is not None else 0
        rows = [s + [pad] * (width - len(s)) if padding_side == "right" else [pad] * (width - len(s)) + s for s in seqs]
        return torch.tensor(rows, dtype=torch.long, device=self.cfg.device)

    def to_string(self, tokens: Union[torch.Tensor, Sequence[int]]) -> Union[str, list[str]]:
        tok = self._need_tokenizer()
        if isinstance(tokens, torch.Tensor) and tokens.ndim == 2:
            return [tok.decode(row.tolist()) for row in tokens]
        ids = tokens.tolist() if isinstance(tokens, torch.Tensor) else list(tokens)
        return tok.decode(ids)

    def to_str_tokens(
        self, input: Union[str, torch.Tensor, Sequence], prepend_bos: Optional[bool] = None
    ) -> Union[list[str], list[list[str]]]:
        """Each token as its string, TransformerLens style: a text (tokenized first), a 1-d token
        tensor or list of ids, or a (1, pos) tensor; a list of texts gives a list of lists."""
        tok = self._need_tokenizer()
        if isinstance(input, (list, tuple)) and input and not isinstance(input[0], (int, torch.Tensor)):
            return [self.to_str_tokens(x, prepend_bos=prepend_bos) for x in input]
        if isinstance(input, str):
            ids = self.to_tokens(input, prepend_bos=prepend_bos)[0].tolist()
        else:
            t = torch.as_tensor(input)
            if t.ndim == 2 and t.shape[0] == 1:
                t = t[0]
            if t.ndim > 1:
                raise ValueError(f"to_str_tokens takes one sequence; got a tensor of shape {tuple(t.shape)} "
                                 "(pass its rows one at a time)")
            ids = t.reshape(-1).tolist()
        return [tok.decode([int(i)]) for i in ids]

    def to_single_token(self, string: str) -> int:
        ids = _encode(self._need_tokenizer(), string)
        if len(ids) != 1:
            raise ValueError(f"{string!r} is {len(ids)} tokens, not one")
        return int(ids[0])

    def tokens_to_residual_directions(
        self, tokens: Union[str, int, torch.Tensor]
    ) -> Float[torch.Tensor, "... d_model"]:
        """Unembedding directions in the space `ActivationCache.apply_ln_to_stack` returns.

        TL's `apply_ln_to_stack` centres and divides by the cached scale but does not apply
        the final norm's weight, so (as with TL's `fold_ln`) the weight is folded in here:
        direction = W_U[:, token] * ln_final.w. The final norm's bias and `b_U` are constant
        per token and not part of any component's attribution.
        """
        if isinstance(tokens, str):
            tokens = self.to_single_token(tokens)
        W_U = self.W_U
        if isinstance(self.ln_final, nn.Module) and hasattr(self.ln_final, "w"):
            W_U = W_U * self.ln_final.w[:, None]
        if isinstance(tokens, int):
            return W_U[:, tokens]
        return W_U[:, tokens.to(W_U.device)].movedim(0, -1)

    def accumulated_bias(self, layer: int, mlp_input: bool = False, include_mlp_biases: bool = True) -> Float[torch.Tensor, "d_model"]:
        """Sum of the attention output biases (and MLP output biases) written before `layer`."""
        total = torch.zeros(self.cfg.d_model, device=self.cfg.device, dtype=self.cfg.dtype)
        for i in range(layer):
            total = total + self.blocks[i].attn.b_O
            if include_mlp_biases and self.blocks[i].mlp is not None:
                total = total + self.blocks[i].mlp.b_out
        if mlp_input:
            total = total + self.blocks[layer].attn.b_O
        return total

    # ------------------------------------------------------------------ TL-shaped weights
    @property
    def W_E(self) -> Float[torch.Tensor, "d_vocab d_model"]:
        return self.embed.weight

    @property
    def W_pos(self) -> Float[torch.Tensor, "n_ctx d_model"]:
        if not self.cfg.uses_learned_positions:
            raise AttributeError(f"positional={self.cfg.positional!r} has no W_pos")
        return self.pos_embed.W_pos

    @property
    def W_U(self) -> Float[torch.Tensor, "d_model d_vocab"]:
        return self.embed.weight.T if self.unembed is None else self.unembed.weight.T

    def _stack(self, fn) -> torch.Tensor:
        return torch.stack([fn(b) for b in self.blocks], dim=0)

    W_Q = property(lambda self: self._stack(lambda b: b.attn.W_Q))
    W_K = property(lambda self: self._stack(lambda b: b.attn.W_K))
    W_V = property(lambda self: self._stack(lambda b: b.attn.W_V))
    W_O = property(lambda self: self._stack(lambda b: b.attn.W_O))
    b_Q = property(lambda self: self._stack(lambda b: b.attn.b_Q))
    b_K = property(lambda self: self._stack(lambda b: b.attn.b_K))
    b_V = property(lambda self: self._stack(lambda b: b.attn.b_V))
    b_O = property(lambda self: self._stack(lambda b: b.attn.b_O))
    W_in = property(lambda self: self._stack(lambda b: b.mlp.W_in))
    W_gate = property(lambda self: self._stack(lambda b: b.mlp.W_gate))
    b_in = property(lambda self: self._stack(lambda b: b.mlp.b_in))
    W_out = property(lambda self: self._stack(lambda b: b.mlp.W_out))
    b_out = property(lambda self: self._stack(lambda b: b.mlp.b_out))

    # ------------------------------------------------------------------ conveniences
    def get_num_params(self, non_embedding: bool = True) -> int:
        """Parameter count; `non_embedding` leaves out token, position and unembedding tables."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.embed.weight.numel()
            if self.cfg.uses_learned_positions:
                n -= self.pos_embed.W_pos.numel()
            if self.unembed is not None:
                n -= self.unembed.weight.numel()
        return n

    def set_gradient_checkpointing(self, enabled: bool | int = True) -> None:
        """True: every block recomputes its activations in backward; N: every Nth block."""
        self.cfg.gradient_checkpointing = enabled

    @torch.no_grad()
    def generate(self, input: TokensLike, **kwargs):
        """See `models.generation.generate`."""
        return _generate(self, input, **kwargs)


def _encode(tok: Any, text: str) -> list[int]:
    try:
        return list(tok.encode(text, add_special_tokens=False))
    except TypeError:
        return list(tok.encode(text))
