"""Causal self-attention for every variant: MHA / GQA / MQA, learned / RoPE / ALiBi / no
positions, factored values (read from `xt`), and shaped attention (SAS-P).

Two paths compute the same function:

* the **fast path** (`F.scaled_dot_product_attention`, or FlexAttention for ALiBi on CUDA)
  never materialises the (q, k) score matrix;
* the **explicit path** builds scores and pattern so `hook_attn_scores` / `hook_pattern`
  can observe or edit them. A layer takes it only when one of those two hooks is attached.

A decode step against a preallocated `models.decoding.StaticKVCache` (`AttnContext.q_cols`
set) attends over the whole fixed-length cache with the mask built from the cached validity
and positions (ALiBi from the cached positions, GQA by grouping queries, no K/V copies), so
its shapes never change from step to step and it can run as one CUDA graph.

Hook shapes follow TransformerLens: `hook_q|k|v|z|rot_q|rot_k` are
(batch, pos, head, d_head); `hook_attn_scores|pattern` are (batch, head, q_pos, k_pos).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Optional

import torch
import torch.nn.functional as F
from einops import rearrange
from jaxtyping import Bool, Float, Int
from torch import nn

from .config import ModelConfig
from .hooks import HookPoint, observed, sync_hook_point, toggled_hook
from .positions import Rotary, alibi_bias, alibi_slopes


@dataclass
class LayerKV:
    """One layer's cached keys/values, (batch, n_kv_heads, pos, d_head), post-rotary."""

    k: Optional[torch.Tensor] = None
    v: Optional[torch.Tensor] = None

    @property
    def length(self) -> int:
        return 0 if self.k is None else self.k.shape[2]

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.k is not None:
            k = torch.cat([self.k, k], dim=2)
            v = torch.cat([self.v, v], dim=2)
        self.k, self.v = k, v
        return k, v


class KVCache:
    """Keys/values of every layer plus the bookkeeping positions need.

    `key_mask` (batch, past) is None while no padding has been seen; `n_real` (batch,) counts
    the real tokens so far, which is the next position id for learned/RoPE/ALiBi.
    """

    def __init__(self, n_layers: int):
        self.layers = [LayerKV() for _ in range(n_layers)]
        self.key_mask: Optional[torch.Tensor] = None
        self.positions: Optional[torch.Tensor] = None
        self.n_real: Optional[torch.Tensor] = None

    @property
    def length(self) -> int:
        return self.layers[0].length


@dataclass
class AttnContext:
    """What every layer of one forward shares: positions, padding, rotary angles."""

    q_pos: Int[torch.Tensor, "batch q"]  # absolute positions of the queries
    k_pos: Int[torch.Tensor, "batch k"]  # absolute positions of all keys (cache + new)
    key_mask: Optional[Bool[torch.Tensor, "batch k"]]  # True = real token; None = no padding
    past: int  # number of cached keys before this call
    rope: Optional[tuple[torch.Tensor, torch.Tensor]] = None  # cos, sin for the queries
    # Static-cache decoding: the key columns the queries occupy, as a device tensor (so the
    # step number is data, not a constant the compiled graph would specialise on). None:
    # the queries are the last q_len keys (columns past .. past + q_len - 1).
    q_cols: Optional[Int[torch.Tensor, "q"]] = None
    # An upper bound on the query positions known on the host (saves the learned-position
    # range check a device sync); None when unknown.
    max_position: Optional[int] = None

    @property
    def q_len(self) -> int:
        return self.q_pos.shape[1]

    @property
    def k_len(self) -> int:
        return self.k_pos.shape[1]

    def query_columns(self, device) -> Int[torch.Tensor, "q"]:
        if self.q_cols is not None:
            return self.q_cols
        return torch.arange(self.q_len, device=device) + self.past

    def bool_mask(self, device) -> Bool[torch.Tensor, "batch 1 q k"]:
        """Causal & key-padding mask; every query may always see its own position, so
        rows of padding queries are never empty (no NaN)."""
        q_idx = self.query_columns(device)[:, None]
        k_idx = torch.arange(self.k_len, device=device)[None, :]
        causal = k_idx <= q_idx
        mask = causal[None, None]
        if self.key_mask is not None:
            mask = mask & self.key_mask[:, None, None, :]
            mask = mask | (k_idx == q_idx)[None, None]
        return mask


_flex = None


def _flex_attention():
    """FlexAttention compiled once per process (it is only fast compiled)."""
    global _flex
    if _flex is None:
        from torch.nn.attention.flex_attention import flex_attention

        _flex = torch.compile(flex_attention, dynamic=False)
    return _flex


@torch.compiler.disable
@lru_cache(maxsize=32)
def _causal_block_mask(seq_len: int, device: str):
    """Causal FlexAttention block mask, built once per (length, device) and shared by all layers."""
    from torch.nn.attention.flex_attention import create_block_mask

    def causal(b, h, q_idx, kv_idx):
        return kv_idx <= q_idx

    return create_block_mask(causal, B=None, H=None, Q_LEN=seq_len, KV_LEN=seq_len, device=device)


def _alibi_score_mod(slopes: torch.Tensor):
    """FlexAttention score_mod adding -slope_h * (q - k): ALiBi without a (q, k) bias tensor."""

    def alibi(score, b, h, q_idx, kv_idx):
        return score - slopes[h] * (q_idx - kv_idx)

    return alibi


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.cfg = cfg
        self.layer = layer
        self.n_heads, self.n_kv_heads, self.d_head = cfg.n_heads, cfg.n_kv_heads, cfg.d_head
        self.kind = "shaped" if cfg.block == "shaped" else ("factored" if cfg.stream == "factored" else "standard")
        self.scale = 1.0 / math.sqrt(self.d_head)
        d_q, d_kv = self.n_heads * self.d_head, self.n_kv_heads * self.d_head

        if self.kind == "standard":
            self.qkv = nn.Linear(cfg.d_model, d_q + 2 * d_kv, bias=cfg.attn_bias)
            self.out = nn.Linear(d_q, cfg.d_model, bias=cfg.attn_bias)
        else:
            self.qkv = nn.Linear(cfg.d_model, 2 * d_q, bias=cfg.attn_bias)  # q and k only
            self.out = (
                nn.Linear(d_q, cfg.d_model, bias=cfg.attn_bias)
                if self.kind == "factored" and cfg.factored_out_proj
                else None
            )
        if self.kind == "factored" and cfg.factored_value == "channel_mix":
            self.W_mix = nn.Parameter(torch.empty(self.n_heads, self.d_head, self.d_head))
        if self.kind == "factored" and cfg.factored_value == "modulated":
            self.v_mod = nn.Linear(cfg.d_model, d_q, bias=cfg.attn_bias)
        if self.kind == "shaped":
            # A = alpha*I + beta*softmax(QK^T) - gamma*C  (C: uniform causal average)
            self.alpha = nn.Parameter(torch.ones(self.n_heads))
            self.beta = nn.Parameter(torch.ones(self.n_heads))
            self.gamma = nn.Parameter(torch.ones(self.n_heads))

        self.rotary = Rotary(cfg) if cfg.uses_rope else None
        if cfg.positional == "alibi":
            self.register_buffer("alibi_slopes", alibi_slopes(self.n_heads))
        self.dropout = cfg.dropout

        self.hook_q = HookPoint()
        self.hook_k = HookPoint()
        self.hook_v = HookPoint()
        if self.rotary is not None:
            self.hook_rot_q = HookPoint()
            self.hook_rot_k = HookPoint()
        self.hook_attn_scores = HookPoint()
        self.hook_pattern = HookPoint()
        self.hook_z = HookPoint()
        self.last_path: str = ""  # "sdpa" | "flex" | "explicit": which path the last call took

    # ------------------------------------------------------------------ projections
    def project(
        self, x: Float[torch.Tensor, "batch pos d_model"], xt: Optional[torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q (b, p, h, d), k and v (b, p, h_kv, d) before rotary."""
        B, T, _ = x.shape
        h, hkv, d = self.n_heads, self.n_kv_heads, self.d_head
        proj = self.qkv(x)
        q = proj[..., : h * d].view(B, T, h, d)
        k = proj[..., h * d : (h + hkv) * d].view(B, T, hkv, d)
        if self.kind == "standard":
            v = proj[..., (h + hkv) * d :].view(B, T, hkv, d)
        elif self.kind == "shaped":
            v = x.view(B, T, h, d)  # identity values
        else:
            v = xt.view(B, T, h, d)
            if self.cfg.factored_value == "channel_mix":
                v = torch.einsum("bphd,hde->bphe", v, self.W_mix)
            elif self.cfg.factored_value == "modulated":
                v = v * self.v_mod(x).view(B, T, h, d)
        return q, k, v

    def project_per_head(
        self,
        q_in: Float[torch.Tensor, "batch pos head d_model"],
        k_in: Float[torch.Tensor, "batch pos kv_head d_model"],
        v_in: Float[torch.Tensor, "batch pos kv_head d_model"],
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k, v from a separate (normalised) input per head, as TransformerLens computes them
        with `use_split_qkv_input` / `use_attn_in`: head h reads only its own copy."""
        q = torch.einsum("bphm,hmd->bphd", q_in, self.W_Q) + self.b_Q
        kv_bias = lambda lo: self._bias(lo * self.d_head, (lo + self.n_kv_heads) * self.d_head, self.n_kv_heads)
        k = torch.einsum("bphm,hmd->bphd", k_in, self._W_K) + kv_bias(self.n_heads)
        v = torch.einsum("bphm,hmd->bphd", v_in, self._W_V) + kv_bias(self.n_heads + self.n_kv_heads)
        return q, k, v

    def sync_hook_points(self) -> None:
        """`hook_result` exists while `cfg.use_attn_result` is on (`set_use_attn_result`)."""
        sync_hook_point(self, "hook_result", self.cfg.use_attn_result)

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        x: Optional[Float[torch.Tensor, "batch pos d_model"]],
        ctx: AttnContext,
        xt: Optional[Float[torch.Tensor, "batch pos d_model"]] = None,
        kv: Optional[LayerKV] = None,
        per_head: Optional[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = None,
    ) -> Float[torch.Tensor, "batch pos d_model"]:
        """`x` is ln1(resid); `per_head` = (q_in, k_in, v_in), each (batch, pos, head, d_model)
        and normalised, replaces it when the block's per-head input hooks are on."""
        if per_head is not None:
            B, T = per_head[0].shape[:2]
            q, k, v = self.project_per_head(*per_head)
        else:
            B, T, _ = x.shape
            q, k, v = self.project(x, xt)
        q, k, v = self.hook_q(q), self.hook_k(k), self.hook_v(v)
        if self.rotary is not None:
            cos, sin = ctx.rope
            q = self.hook_rot_q(self.rotary(q, cos, sin))
            k = self.hook_rot_k(self.rotary(k, cos, sin))
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (b, h, p, d)
        v_new = v  # the queries' own values (shaped attention's identity term)
        if kv is not None:
            k, v = kv.append(k, v)

        if observed(self.hook_attn_scores, self.hook_pattern):
            z = self._attend_explicit(q, k, v, ctx)
        elif ctx.q_cols is not None:
            z = self._attend_static(q, k, v, v_new, ctx)
        else:
            z = self._attend_fast(q, k, v, v_new, ctx)
        z = self.hook_z(z.transpose(1, 2))  # (b, p, h, d)
        if self.cfg.use_attn_result:
            # each head's write into the residual stream, (b, p, h, d_model); summed it is the output
            result = toggled_hook(self, "hook_result", "set_use_attn_result")(torch.einsum("bphd,hdm->bphm", z, self.W_O))
            return result.sum(2) + self.b_O
        z = z.reshape(B, T, self.n_heads * self.d_head)
        return self.out(z) if self.out is not None else z

    def _attend_explicit(self, q, k, v, ctx: AttnContext) -> torch.Tensor:
        self.last_path = "explicit"
        if self.n_kv_heads != self.n_heads:
            rep = self.n_heads // self.n_kv_heads
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        scores = (q @ k.transpose(-1, -2)) * self.scale
        if self.cfg.positional == "alibi":
            scores = scores + alibi_bias(self.alibi_slopes, ctx.q_pos, ctx.k_pos).to(scores.dtype)
        mask = ctx.bool_mask(q.device)
        scores = scores.masked_fill(~mask, float("-inf"))
        scores = self.hook_attn_scores(scores)
        pattern = torch.softmax(scores.float(), dim=-1).to(v.dtype)
        if self.kind == "shaped":
            pattern = self._shape_pattern(pattern, mask, ctx)
        pattern = self.hook_pattern(pattern)
        if self.training and self.dropout:
            pattern = F.dropout(pattern, self.dropout)
        return pattern @ v

    def _shape_pattern(self, softmax, mask, ctx: AttnContext):
        q_idx = ctx.query_columns(mask.device)[:, None]
        k_idx = torch.arange(ctx.k_len, device=mask.device)[None, :]
        eye = (k_idx == q_idx).to(softmax.dtype)[None, None]
        valid = mask.to(softmax.dtype)
        uniform = valid / valid.sum(-1, keepdim=True)
        a, b, g = (p.view(1, -1, 1, 1).to(softmax.dtype) for p in (self.alpha, self.beta, self.gamma))
        return a * eye + b * softmax - g * uniform

    def _attend_static(self, q, k, v, v_new, ctx: AttnContext) -> torch.Tensor:
        """Queries against a whole preallocated cache (k, v: (b, h_kv, max_len, d)).

        Scores for every column, masked by the cached validity and causality; ALiBi comes
        from the cached positions here, inside the step's graph, so no bias tensor is built
        outside it. GQA groups the query heads of one K/V head into one matmul instead of
        repeating K/V. Meant for a handful of queries (decoding): the score matrix is
        (b, h, q, max_len)."""
        self.last_path = "static"
        B, H, Q, D = q.shape
        groups = k.shape[1]
        scores = q.reshape(B, groups, (H // groups) * Q, D) @ k.transpose(-1, -2)
        scores = scores.view(B, H, Q, -1) * self.scale
        if self.cfg.positional == "alibi":
            scores = scores + alibi_bias(self.alibi_slopes, ctx.q_pos, ctx.k_pos)
        mask = ctx.bool_mask(q.device)
        scores = scores.masked_fill(~mask, float("-inf"))
        pattern = torch.softmax(scores.float(), dim=-1).to(v.dtype)
        z = (pattern.view(B, groups, -1, pattern.shape[-1]) @ v).view(B, H, Q, v.shape[-1])
        if self.kind == "shaped":
            z = self._shape_output(z, v, v_new, ctx, mask)
        return z

    def _attend_fast(self, q, k, v, v_new, ctx: AttnContext) -> torch.Tensor:
        gqa = self.n_kv_heads != self.n_heads
        dropout = self.dropout if self.training else 0.0
        self.last_path = "sdpa"
        if self.cfg.positional == "alibi":
            if q.is_cuda and ctx.key_mask is None and dropout == 0.0 and ctx.q_len == ctx.k_len:
                self.last_path = "flex"
                z = _flex_attention()(
                    q, k, v,
                    score_mod=_alibi_score_mod(self.alibi_slopes),
                    block_mask=_causal_block_mask(ctx.q_len, str(q.device)),
                    enable_gqa=gqa,
                )
            else:
                bias = alibi_bias(self.alibi_slopes, ctx.q_pos, ctx.k_pos).to(q.dtype)
                bias = bias.masked_fill(~ctx.bool_mask(q.device), float("-inf"))
                z = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout, enable_gqa=gqa)
        elif ctx.key_mask is None and ctx.q_len == ctx.k_len:
            z = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout, enable_gqa=gqa)
        elif ctx.key_mask is None and ctx.q_len == 1:
            z = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, enable_gqa=gqa)
        else:
            z = F.scaled_dot_product_attention(
                q, k, v, attn_mask=ctx.bool_mask(q.device), dropout_p=dropout, enable_gqa=gqa
            )
        if self.kind == "shaped":
            z = self._shape_output(z, v, v_new, ctx)
        return z

    def _shape_output(self, softmax_v, v, v_new, ctx: AttnContext, mask=None) -> torch.Tensor:
        """alpha*v_i + beta*softmax(.)v - gamma*mean_{j<=i, valid} v_j, without a (q, k) matrix
        (with `mask`, the static-cache step's (b, 1, q, k) mask, the mean is one matmul)."""
        a, b, g = (p.view(1, -1, 1, 1).to(v.dtype) for p in (self.alpha, self.beta, self.gamma))
        if mask is not None:
            seen = mask.to(v.dtype)
            mean = (seen @ v) / seen.sum(-1, keepdim=True)
            return a * v_new + b * softmax_v - g * mean
        if ctx.key_mask is not None:
            valid = ctx.key_mask[:, None, :, None].to(v.dtype)
        else:
            valid = torch.ones(1, 1, ctx.k_len, 1, device=v.device, dtype=v.dtype)
        running = torch.cumsum(v * valid, dim=2)[:, :, -ctx.q_len :]
        count = torch.cumsum(valid, dim=2)[:, :, -ctx.q_len :]
        if ctx.key_mask is not None:
            # padding queries see only themselves (see AttnContext.bool_mask)
            own = v[:, :, -ctx.q_len :]
            is_pad = ~ctx.key_mask[:, None, -ctx.q_len :, None]
            running = torch.where(is_pad, own + running, running)
            count = torch.where(is_pad, count + 1, count)
        mean = running / count
        return a * v_new + b * softmax_v - g * mean

    # ------------------------------------------------------------------ TL weight views
    def _heads(self, w: torch.Tensor, n: int) -> torch.Tensor:
        return rearrange(w, "(h d) m -> h m d", h=n)

    @property
    def W_Q(self) -> Float[torch.Tensor, "head d_model d_head"]:
        return self._heads(self.qkv.weight[: self.n_heads * self.d_head], self.n_heads)

    @property
    def _W_K(self) -> Float[torch.Tensor, "kv_head d_model d_head"]:
        h, hkv, d = self.n_heads, self.n_kv_heads, self.d_head
        return self._heads(self.qkv.weight[h * d : (h + hkv) * d], hkv)

    @property
    def W_K(self) -> Float[torch.Tensor, "head d_model d_head"]:
        return self._W_K.repeat_interleave(self.n_heads // self.n_kv_heads, dim=0)

    @property
    def _W_V(self) -> Float[torch.Tensor, "kv_head d_model d_head"]:
        if self.kind != "standard":
            raise NotImplementedError(
                f"layer {self.layer}: values are not a linear map of ln1(resid) in a "
                f"{'shaped (SAS-P)' if self.kind == 'shaped' else 'factored'} model "
                "(they are read from the "
                f"{'normalised input with identity weights' if self.kind == 'shaped' else 'xt stream'}), "
                "so W_V / OV-circuit algebra does not apply"
            )
        h, hkv, d = self.n_heads, self.n_kv_heads, self.d_head
        return self._heads(self.qkv.weight[(h + hkv) * d :], hkv)

    @property
    def W_V(self) -> Float[torch.Tensor, "head d_model d_head"]:
        return self._W_V.repeat_interleave(self.n_heads // self.n_kv_heads, dim=0)

    @property
    def W_O(self) -> Float[torch.Tensor, "head d_head d_model"]:
        if self.out is None:
            eye = torch.eye(self.cfg.d_model, device=self.qkv.weight.device, dtype=self.qkv.weight.dtype)
            return eye.view(self.n_heads, self.d_head, self.cfg.d_model)
        return rearrange(self.out.weight, "m (h d) -> h d m", h=self.n_heads)

    def _bias(self, lo: int, hi: int, n: int) -> torch.Tensor:
        if self.qkv.bias is None:
            return torch.zeros(n, self.d_head, device=self.qkv.weight.device, dtype=self.qkv.weight.dtype)
        return self.qkv.bias[lo:hi].view(n, self.d_head)

    @property
    def b_Q(self) -> Float[torch.Tensor, "head d_head"]:
        return self._bias(0, self.n_heads * self.d_head, self.n_heads)

    @property
    def b_K(self) -> Float[torch.Tensor, "head d_head"]:
        h, hkv, d = self.n_heads, self.n_kv_heads, self.d_head
        return self._bias(h * d, (h + hkv) * d, hkv).repeat_interleave(h // hkv, dim=0)

    @property
    def b_V(self) -> Float[torch.Tensor, "head d_head"]:
        self._W_V  # raises for non-standard values
        h, hkv, d = self.n_heads, self.n_kv_heads, self.d_head
        return self._bias((h + hkv) * d, (h + 2 * hkv) * d, hkv).repeat_interleave(h // hkv, dim=0)

    @property
    def b_O(self) -> Float[torch.Tensor, "d_model"]:
        if self.out is None or self.out.bias is None:
            return torch.zeros(self.cfg.d_model, device=self.qkv.weight.device, dtype=self.qkv.weight.dtype)
        return self.out.bias
