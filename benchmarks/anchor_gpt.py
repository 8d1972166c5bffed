"""An independent GPT-2 (124M) training yardstick, written the way nanoGPT trains it at its best.

Shares no code or choices with `models/` or `reference_gpt.py` beyond the GPT-2 architecture:

* vocabulary padded to a multiple of 64 (50,257 -> 50,304) so the unembedding matmul and the
  rows the loss reduces over are aligned; the padded rows are ordinary (never-target) tokens,
  exactly as nanoGPT does;
* the loss computed from fp32 logits;
* fused AdamW with weight decay on matrices only (`configure_optimizer`);
* meant to be run under `torch.compile` and bf16 autocast (see `bench_model.py`).

Pre-LayerNorm blocks with biases, exact GELU, `scaled_dot_product_attention(is_causal=True)`,
tied token embedding / unembedding, learned positions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class AnchorConfig:
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    block_size: int = 1024
    vocab_size: int = 50257
    pad_vocab_to: int = 64  # round the embedding table up to a multiple of this

    @property
    def padded_vocab(self) -> int:
        return -(-self.vocab_size // self.pad_vocab_to) * self.pad_vocab_to


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: AnchorConfig):
        super().__init__()
        self.n_head = cfg.n_head
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd)
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.c_proj.residual_scaled = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.size()
        qkv = self.c_attn(x).view(B, T, 3, self.n_head, C // self.n_head)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, nh, T, hs)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.c_proj(y.transpose(1, 2).reshape(B, T, C))


class FeedForward(nn.Module):
    def __init__(self, cfg: AnchorConfig):
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd)
        self.c_proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd)
        self.c_proj.residual_scaled = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(F.gelu(self.c_fc(x)))


class Block(nn.Module):
    def __init__(self, cfg: AnchorConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd)
        self.mlp = FeedForward(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class AnchorGPT(nn.Module):
    def __init__(self, cfg: AnchorConfig = AnchorConfig()):
        super().__init__()
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.padded_vocab, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.padded_vocab, bias=False)
        self.wte.weight = self.lm_head.weight  # weight tying
        self.apply(self._init)

    def _init(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            std = 0.02 / math.sqrt(2 * self.cfg.n_layer) if getattr(module, "residual_scaled", False) else 0.02
            nn.init.normal_(module.weight, 0.0, std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, 0.0, 0.02)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean next-token loss; `targets` are already shifted, -1 is ignored."""
        T = idx.size(1)
        x = self.wte(idx) + self.wpe(torch.arange(T, device=idx.device))
        for block in self.blocks:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))
        return F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)

    def configure_optimizer(self, lr: float = 6e-4, weight_decay: float = 0.1, fused: bool = True, **extra):
        """AdamW, decaying only 2-D weights (matrices and embeddings), fused on CUDA; `extra`
        goes to `torch.optim.AdamW` (e.g. capturable=True for a CUDA graph)."""
        params = [p for p in self.parameters() if p.requires_grad]
        groups = [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]
        return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95), fused=fused, **extra)

    def flops_per_token(self, vocab_size: int | None = None) -> float:
        """Training FLOPs per token, PaLM / nanoGPT accounting: 6N + 12 L d T, with N the
        parameters without the position table (the tied table counted once) at `vocab_size`."""
        c = self.cfg
        vocab = vocab_size or c.vocab_size
        n = sum(p.numel() for p in self.parameters()) - self.wpe.weight.numel()
        n -= (c.padded_vocab - vocab) * c.n_embd
        return 6 * n + 12 * c.n_layer * c.n_embd * c.block_size
