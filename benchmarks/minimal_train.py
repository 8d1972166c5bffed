"""The practical limit for training a small model: a minimal hand-written PyTorch loop.

The data is already on the GPU as (n, pos) tensors; each step indexes a batch with a
permutation drawn on the device, runs the model, a plain cross-entropy on the next token,
backward and a fused AdamW step. No logging, no evaluation, no checkpoints, no host syncs.
`compile` wraps the model in `torch.compile` (`True`: default mode; `"reduce-overhead"`: with
CUDA graphs for forward and backward). Nothing here imports `interp`.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F


def minimal_loop(model: torch.nn.Module, input_ids: torch.Tensor, labels: torch.Tensor, *, batch_size: int,
                 steps: int, warmup: int = 20, lr: float = 1e-3, betas=(0.9, 0.98), weight_decay: float = 0.1,
                 amp: bool = True, compile=False) -> dict:
    """Train `steps` steps after `warmup` untimed ones; returns steps/s and the time."""
    device = input_ids.device
    if compile == "reduce-overhead":
        fwd = torch.compile(model, mode="reduce-overhead")
    else:
        fwd = torch.compile(model) if compile else model
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=betas, weight_decay=weight_decay,
                            fused=device.type == "cuda")
    n = input_ids.shape[0]
    full = batch_size >= n

    def step():
        if compile == "reduce-overhead":
            torch.compiler.cudagraph_mark_step_begin()
        if full:
            x, y = input_ids, labels
        else:
            idx = torch.randint(0, n, (batch_size,), device=device)
            x, y = input_ids[idx], labels[idx]
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp and device.type == "cuda"):
            logits = fwd(x)
        loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), y[:, 1:].reshape(-1),
                               ignore_index=-100)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    return {"steps": steps, "seconds": dt, "steps_per_s": steps / dt}
