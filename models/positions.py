"""Positional schemes: learned table, rotary (half-split or GPT-J interleaved), ALiBi slopes."""

from __future__ import annotations

import math
from typing import Optional

import torch
from jaxtyping import Float, Int
from torch import nn

from .config import ModelConfig


def positions_from_mask(attention_mask: torch.Tensor, past: torch.Tensor | None = None) -> torch.Tensor:
    """Position ids (batch, pos) that count only attended tokens, so left padding does not
    shift positions. `past` (batch,) is the number of real tokens already in a KV cache."""
    pos = attention_mask.long().cumsum(-1) - 1
    if past is not None:
        pos = pos + past[:, None]
    return pos.clamp(min=0)


class LearnedPositions(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_ctx = cfg.n_ctx
        self.W_pos = nn.Parameter(torch.empty(cfg.n_ctx, cfg.d_model))

    def forward(
        self, position_ids: Int[torch.Tensor, "batch pos"], max_position: Optional[int] = None
    ) -> Float[torch.Tensor, "batch pos d_model"]:
        """`max_position`, when the caller knows it on the host, saves a device sync."""
        top = max_position if max_position is not None else (int(position_ids.max()) if position_ids.numel() else 0)
        if top >= self.n_ctx:
            raise ValueError(
                f"position {top} is past n_ctx={self.n_ctx}: this model uses learned positions, "
                "which cannot run past the context it was trained for (use rope, alibi or none "
                "to extrapolate)"
            )
        return self.W_pos[position_ids]


class Rotary(nn.Module):
    """Rotary embedding over the first `rotary_dim` channels of each head.

    `interleaved=False` rotates (x[:r/2], x[r/2:]) pairs (GPT-NeoX / Llama);
    `interleaved=True` rotates (x[0], x[1]), (x[2], x[3]), ... (GPT-J).
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.rotary_dim = cfg.rotary_dim
        self.interleaved = cfg.rope_interleaved
        inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, self.rotary_dim, 2, dtype=torch.float64) / self.rotary_dim))
        self.register_buffer("inv_freq", inv_freq.float(), persistent=False)

    def angles(self, position_ids: Int[torch.Tensor, "batch pos"]) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin of shape (batch, pos, 1, rotary_dim // 2), in fp32."""
        freqs = position_ids[:, :, None, None].float() * self.inv_freq
        return freqs.cos(), freqs.sin()

    def forward(
        self, x: Float[torch.Tensor, "batch pos head d_head"], cos: torch.Tensor, sin: torch.Tensor
    ) -> Float[torch.Tensor, "batch pos head d_head"]:
        r = self.rotary_dim
        _check_rope_shapes(x, cos, sin, r)
        x_rot, x_pass = x[..., :r].float(), x[..., r:]
        if self.interleaved:
            x1, x2 = x_rot[..., 0::2], x_rot[..., 1::2]
            out = torch.stack((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).flatten(-2)
        else:
            x1, x2 = x_rot[..., : r // 2], x_rot[..., r // 2 :]
            out = torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
        return torch.cat((out.to(x.dtype), x_pass), dim=-1)


def _check_rope_shapes(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, rotary_dim: int) -> None:
    """x (batch, pos, head, d_head) against cos/sin (batch or 1, pos, 1, rotary_dim // 2): a
    mismatch would otherwise broadcast silently or fail deep inside with unnamed shapes."""
    want = (rotary_dim // 2,)
    problem = None
    if x.ndim != 4:
        problem = f"x must be (batch, pos, head, d_head), got {tuple(x.shape)}"
    elif x.shape[-1] < rotary_dim:
        problem = f"x has d_head={x.shape[-1]} < rotary_dim={rotary_dim}"
    elif cos.shape != sin.shape:
        problem = f"cos {tuple(cos.shape)} and sin {tuple(sin.shape)} differ"
    elif cos.ndim != 4 or cos.shape[2] != 1 or cos.shape[3:] != want or cos.shape[1] != x.shape[1] \
            or cos.shape[0] not in (1, x.shape[0]):
        problem = (f"cos/sin {tuple(cos.shape)} do not fit x {tuple(x.shape)}: expected "
                   f"({x.shape[0]} or 1, {x.shape[1]}, 1, {want[0]}) = (batch, pos, 1, rotary_dim // 2)")
    if problem is not None:
        raise ValueError(f"RoPE shape mismatch: {problem}")


def alibi_slopes(n_heads: int) -> torch.Tensor:
    """The geometric slopes of Press et al. (2022), with their rule for non powers of two."""

    def power_of_two(n: int) -> list[float]:
        start = 2.0 ** (-(2.0 ** -(math.log2(n) - 3)))
        return [start * start**i for i in range(n)]

    if math.log2(n_heads).is_integer():
        slopes = power_of_two(n_heads)
    else:
        closest = 2 ** math.floor(math.log2(n_heads))
        slopes = power_of_two(closest) + power_of_two(2 * closest)[0::2][: n_heads - closest]
    return torch.tensor(slopes, dtype=torch.float32)


def alibi_bias(
    slopes: Float[torch.Tensor, "head"],
    q_pos: Int[torch.Tensor, "batch q"],
    k_pos: Int[torch.Tensor, "batch k"],
) -> Float[torch.Tensor, "batch head q k"]:
    """-slope * (q_pos - k_pos): zero on the diagonal, more negative further back."""
    dist = (q_pos[:, :, None] - k_pos[:, None, :]).float()
    return -slopes[None, :, None, None] * dist[:, None]
