"""Shared by the client tests (tests/clients/test_client_*.py). Each of those runs inside its
client's own virtualenv (`make test-clients`; scripts/make_client_venvs.sh builds them) and is
skipped wherever its client is not installed, the default venv included."""

from __future__ import annotations

from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
CHECKPOINTS = ROOT / "data" / "checkpoints"
TOL = dict(atol=1e-5, rtol=1e-5)  # fp32; the same computation through another library's plumbing


def load(name: str):
    """A shipped checkpoint, fp32 on the CPU, with its tokenizer attached."""
    from interp.checkpoint import load as load_checkpoint

    model, _ = load_checkpoint(CHECKPOINTS / name)
    return model


def induction_tokens(model, batch: int = 2, half: int = 8, seed: int = 0) -> torch.Tensor:
    """Random tokens repeated once: the shipped induction model's task (ids below its pad id)."""
    g = torch.Generator().manual_seed(seed)
    top = min(model.cfg.d_vocab, model.cfg.pad_token_id or model.cfg.d_vocab)
    first = torch.randint(0, top, (batch, half), generator=g)
    return torch.cat([first, first], dim=1)
