"""Progress measures: numbers about the model's *mechanism*, logged while it trains.

A measure is a function `(model, task) -> dict` of JSON-able values (numbers, or lists of
numbers), registered under a name and picked in the run config:

```yaml
train:
  metrics: [weight_norms, head_scores, fourier]
```

The trainer runs them (model in eval mode, no grad, fp32) at every eval and writes one
`{"event": "progress", "step": N, ...}` row to metrics.jsonl. Per-head values are flat keys
(`induction/L1H0`) so every one is a plottable series.

Shipped: `weight_norms`, `attention_entropy`, `head_scores` (previous-token and induction
score per head), and `fourier` for modular arithmetic (Nanda et al. 2023: the embedding's
Fourier spectrum, its key frequencies, restricted and excluded loss).
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
import torch.nn.functional as F
from jaxtyping import Float

Measure = Callable[[Any, Any], dict]
MEASURES: dict[str, Measure] = {}


def register(name: str) -> Callable[[Measure], Measure]:
    """Decorator: make `train.metrics: [name]` run this function at every eval."""

    def wrap(fn: Measure) -> Measure:
        MEASURES[name] = fn
        return fn

    return wrap


def run_measures(names, model, task) -> dict:
    out: dict = {}
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for name in names:
                out.update(MEASURES[name](model, task))
    finally:
        model.train(was_training)
    return out


def _head_keys(prefix: str, values: torch.Tensor) -> dict:
    return {f"{prefix}/L{l}H{h}": float(values[l, h]) for l in range(values.shape[0]) for h in range(values.shape[1])}


def _sample_tokens(task, model, n: int = 32):
    """Up to `n` validation examples (right-padded) and their mask, on the model's device."""
    from .data import ExampleTensors

    examples = task.split("val")
    if not len(examples):
        examples = task.split("train")
    rows = [examples[i] for i in range(min(n, len(examples)))]
    t = ExampleTensors.from_examples(rows, getattr(task.tokenizer, "pad_token_id", 0) or 0, model.cfg.device)
    return t.input_ids, t.attention_mask


# ============================================================================ generic
@register("weight_norms")
def weight_norms(model, task) -> dict:
    """L2 norm of all weights and of each part (embeddings, each block's attention and MLP,
    unembedding): weight decay's effect, and the 'cleanup' phase of grokking."""
    groups: dict[str, float] = {}
    total = 0.0
    for name, p in model.named_parameters():
        sq = float(p.detach().float().pow(2).sum())
        total += sq
        parts = name.split(".")
        key = ".".join(parts[:3]) if parts[0] == "blocks" else parts[0]
        groups[key] = groups.get(key, 0.0) + sq
    out = {"weight_norm": math.sqrt(total)}
    out.update({f"weight_norm/{k}": math.sqrt(v) for k, v in groups.items()})
    return out


@register("attention_entropy")
def attention_entropy(model, task) -> dict:
    """Mean attention entropy (nats) of every head on validation examples."""
    from ..heads import attention_entropy as entropy
    from ..cache import cached

    tokens, mask = _sample_tokens(task, model)
    pats = cached(model, tokens, names="pattern", attention_mask=mask)
    values = torch.stack([entropy(pats[f"blocks.{l}.attn.hook_pattern"], mask) for l in range(model.cfg.n_layers)])
    return _head_keys("attn_entropy", values.cpu())


@register("head_scores")
def head_scores(model, task) -> dict:
    """Previous-token score on validation examples and induction score on repeated random
    tokens, per head, plus the best head of each (Olsson et al.'s phase change shows as a
    jump in `induction_max`). For the induction task the repeated sequences are drawn like
    its own (its symbols, its block length, its <bos>), so the score is in distribution."""
    from ..heads import head_scores as scores
    from ..heads import make_induction_tokens

    tokens, mask = _sample_tokens(task, model)
    induction = None
    if getattr(task, "name", None) == "induction":
        bos = getattr(task.tokenizer, "bos_token_id", None)
        induction = make_induction_tokens(16, int(task.seq_len), int(task.n_symbols), seed=0, bos=bos)
    s = scores(model, tokens, attention_mask=mask, induction_tokens=induction)
    out = {**_head_keys("prev_token", s.prev_token), **_head_keys("induction", s.induction)}
    out["prev_token_max"] = float(torch.nan_to_num(s.prev_token, nan=0.0).max())
    out["induction_max"] = float(torch.nan_to_num(s.induction, nan=0.0).max())
    return out


# ============================================================================ modular arithmetic
def fourier_basis(p: int, device=None) -> tuple[Float[torch.Tensor, "p p"], list[str]]:
    """Orthonormal Fourier basis of functions on Z_p: rows 1, cos(wk x), sin(wk x) for
    k = 1 .. p // 2 (w_k = 2 pi k / p), each of unit norm; names like "cos 14"."""
    x = torch.arange(p, dtype=torch.float64, device=device)
    rows, names = [torch.ones(p, dtype=torch.float64, device=device)], ["const"]
    for k in range(1, p // 2 + 1):
        w = 2 * math.pi * k / p
        rows += [torch.cos(w * x), torch.sin(w * x)]
        names += [f"cos {k}", f"sin {k}"]
    basis = torch.stack(rows)[:p]
    return basis / basis.norm(dim=1, keepdim=True), names[:p]


def embedding_spectrum(W_E_numbers: Float[torch.Tensor, "p d_model"]) -> Float[torch.Tensor, "freq"]:
    """Squared norm of the number embeddings in each frequency k = 1 .. p // 2 (cos and sin
    together); the constant component is left out."""
    p = W_E_numbers.shape[0]
    basis, _ = fourier_basis(p, W_E_numbers.device)
    coef = basis @ W_E_numbers.double()  # (p, d_model)
    sq = coef.pow(2).sum(-1)
    k = p // 2
    return sq[1 : 1 + 2 * k].view(k, 2).sum(-1)


def key_frequencies(spectrum: torch.Tensor, mass: float = 0.8, cap: int = 16) -> list[int]:
    """Smallest set of frequencies (1-based) carrying `mass` of the spectrum, at most `cap`."""
    order = torch.argsort(spectrum, descending=True)
    share = torch.cumsum(spectrum[order], 0) / spectrum.sum()
    n = int((share < mass).sum()) + 1
    return sorted(int(i) + 1 for i in order[: min(n, cap)])


def modular_tables(task, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(answers (p, p), train-pair mask (p, p)) of a modular task, computed once per task."""
    cache = task.__dict__.setdefault("_progress_tables", {})
    key = str(device)
    if key not in cache:
        p = task.p
        answers = torch.tensor([[task.answer(a, b) for b in range(p)] for a in range(p)], device=device)
        train = torch.zeros(p, p, dtype=torch.bool)
        for ex in task.split("train"):
            train[ex.meta["a"], ex.meta["b"]] = True
        cache[key] = (answers, train.to(device))
    return cache[key]


def all_pair_logits(model, task) -> Float[torch.Tensor, "p p p"]:
    """Logits over the p number tokens for every pair (a, b): (a, b, c)."""
    p = task.p
    prompts = [task.answer_spans(task.example_for(a, b))[0] for a in range(p) for b in range(p)]
    tokens = torch.tensor(prompts, device=model.cfg.device)
    logits = model(tokens, last_position_only=True)[:, 0, :p].float()
    return logits.view(p, p, p)


def _sum_directions(p: int, freqs: list[int], device) -> list[torch.Tensor]:
    """Unit vectors cos(w(a+b)), sin(w(a+b)) over the (a, b) grid for each key frequency."""
    a = torch.arange(p, device=device, dtype=torch.float64)
    s = a[:, None] + a[None, :]
    out = []
    for k in freqs:
        w = 2 * math.pi * k / p
        for v in (torch.cos(w * s), torch.sin(w * s)):
            out.append((v / v.norm()).float())
    return out


def restricted_and_excluded(logits: Float[torch.Tensor, "p p p"], freqs: list[int], answers: torch.Tensor,
                            train_mask: torch.Tensor) -> tuple[float, float]:
    """Nanda et al.'s restricted loss (logits projected onto cos/sin(w_k(a+b)) of the key
    frequencies plus the per-output mean, on every pair) and excluded loss (those key
    directions removed from the logits, on the training pairs)."""
    p = logits.shape[0]
    dirs = _sum_directions(p, freqs, logits.device)
    mean = logits.mean(dim=(0, 1), keepdim=True)
    centred = logits - mean
    key_part = torch.zeros_like(logits)
    for u in dirs:
        coef = torch.einsum("abc,ab->c", centred, u)
        key_part += u[:, :, None] * coef[None, None, :]
    restricted = mean + key_part
    excluded = logits - key_part
    flat = lambda t: t.reshape(p * p, p)  # noqa: E731
    r = F.cross_entropy(flat(restricted), answers.reshape(-1))
    e = F.cross_entropy(flat(excluded)[train_mask.reshape(-1)], answers.reshape(-1)[train_mask.reshape(-1)])
    return float(r), float(e)


@register("fourier")
def fourier(model, task) -> dict:
    """Modular arithmetic (`task.p`): the number embeddings' Fourier spectrum, the key
    frequencies carrying 80% of it (at most 16), the share of the top 8, and restricted /
    excluded loss over those key frequencies (logits restricted to the p number tokens)."""
    if not hasattr(task, "p") or not hasattr(task, "example_for"):
        raise ValueError("progress measure 'fourier' needs a modular-arithmetic task (task.name: modular)")
    p = task.p
    spectrum = embedding_spectrum(model.W_E[:p].detach())
    freqs = key_frequencies(spectrum)
    top8 = float(torch.sort(spectrum, descending=True).values[:8].sum() / spectrum.sum())
    logits = all_pair_logits(model, task)
    answers, train = modular_tables(task, logits.device)
    r, e = restricted_and_excluded(logits, freqs, answers, train)
    return {
        "fourier/spectrum": [float(v) for v in (spectrum / spectrum.sum()).tolist()],
        "fourier/key_freqs": freqs,
        "fourier/n_key": len(freqs),
        "fourier/top8_share": top8,
        "restricted_loss": r,
        "excluded_loss": e,
    }
