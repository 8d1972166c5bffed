"""Coconut on CUDA (skipped without a GPU): the trainer's captured step and the compiled
static-cache latent decoding compute what the eager paths compute.

    python -m pytest -q tests/test_thoughts_cuda.py      # on a CUDA machine
"""

from __future__ import annotations

import pytest
import torch

from models import presets
from models.thoughts import LatentReasoner, latent_layout

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

LATENT = 9
VOCAB = 24


def model_for(preset: str, positional: str):
    torch.manual_seed(0)
    return presets.make(preset, "tiny", d_vocab=VOCAB, positional=positional, pad_token_id=0, n_layers=2).cuda()


def stage_rows(n: int = 32) -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(10, VOCAB, (n, 24), generator=g)
    for b in range(n):
        first, slots = 3 + b % 7, 1 + b % 4
        ids[b, first : first + slots] = LATENT
        ids[b, 20 - b % 3 :] = 0
    return ids.cuda()


@pytest.mark.parametrize("preset,positional", [("math-compact", "rope"), ("vanilla", "learned"),
                                               ("factored-alibi", "alibi")])
def test_captured_coconut_step_equals_eager(preset, positional):
    """The trainer's StepRunner with the whole step as one CUDA graph (fixed layout) trains the
    same steps as the eager step planned batch by batch (fp32)."""
    from interp.training.loop import StepRunner

    rows = stage_rows()
    labels = rows.masked_fill(rows == LATENT, -100)
    batches = [(rows[i : i + 8], labels[i : i + 8]) for i in range(0, 32, 8)]
    losses = []
    for graphs in (False, True):
        model = model_for(preset, positional)
        layout = latent_layout(rows, LATENT) if graphs else None
        forward = LatentReasoner(model, LATENT, layout=layout)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True, capturable=graphs)
        runner = StepRunner(model, forward, opt, 1.0, torch.device("cuda"), None, graphs)
        losses.append([float(runner([b], 1e-3)[0]) for b in batches for _ in range(2)])
    assert losses[0] == pytest.approx(losses[1], abs=1e-4)


@pytest.mark.parametrize("preset,positional", [("llama-like", "rope"), ("vanilla", "learned"),
                                               ("factored-alibi", "alibi")])
def test_compiled_latent_generation_equals_pass_by_pass(preset, positional):
    model = model_for(preset, positional).eval()
    reasoner = LatentReasoner(model, LATENT)
    prompts = [[11, 12, 13, 1], [14, 15, 1], [16, 1]]
    ref = reasoner.generate(prompts, n_latents=3, max_new_tokens=12, eot_token_id=5, stop_tokens=[], fast=False)
    got = reasoner.generate(prompts, n_latents=3, max_new_tokens=12, eot_token_id=5, stop_tokens=[])  # CUDA: compiled
    assert got.new_tokens == ref.new_tokens
    assert torch.allclose(got.thoughts, ref.thoughts, atol=1e-3, rtol=1e-3)
