"""Step-supervised arithmetic: metrics per segment, answer->step attention, checkpoint comparison.

Segments label every token: 0 = prompt, 1 = step (intermediate work), 2 = answer, -1 = pad.
A prediction logits[:, t] -> labels[:, t + 1] belongs to the segment of its *target* token
segments[:, t + 1].

```python
from interp import steps
steps.segment_metrics(model, batch)        # {"prompt": {"loss", "accuracy", "n_tokens"}, ..., "all": {...}}
steps.answer_to_step_attention(model, batch.input_ids, batch.segments)   # (layer, head)
rows = steps.compare_checkpoints({"a": (model_a, tok), "b": model_b}, examples)
```

Batches and examples are duck-typed (nothing here imports `interp.tasks`): a batch is a dict
or object with `input_ids`, `segments` and optional `labels` / `attention_mask`; an example
has `input_ids` and `segments` (lists or 1-D tensors).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Optional, Sequence

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int

SEGMENTS = {"prompt": 0, "step": 1, "answer": 2}
PAD_SEGMENT = -1


def _get(batch: Any, name: str, default=None):
    if isinstance(batch, Mapping):
        return batch.get(name, default)
    return getattr(batch, name, default)


def _as_batch_tensors(batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    ids = _get(batch, "input_ids")
    segments = _get(batch, "segments")
    if ids is None or segments is None:
        raise ValueError("a batch needs 'input_ids' and 'segments' (dict keys or attributes)")
    ids, segments = torch.as_tensor(ids), torch.as_tensor(segments)
    if ids.ndim == 1:
        ids, segments = ids[None], segments[None]
    labels = _get(batch, "labels")
    labels = ids if labels is None else torch.as_tensor(labels).view_as(ids)
    mask = _get(batch, "attention_mask")
    mask = None if mask is None else torch.as_tensor(mask).view_as(ids).bool()
    if segments.shape != ids.shape:
        raise ValueError(f"segments shape {tuple(segments.shape)} != input_ids shape {tuple(ids.shape)}")
    return ids, labels, segments, mask


@torch.no_grad()
def segment_sums(model, batch) -> dict[str, torch.Tensor]:
    """Per-segment sums over one batch: {"loss": (3,), "correct": (3,), "n": (3,)} for
    segments (prompt, step, answer). Targets with label -100, a padded position or segment
    -1 are not counted."""
    ids, labels, segments, mask = _as_batch_tensors(batch)
    device = model.cfg.device
    ids, labels, segments = ids.to(device), labels.to(device), segments.to(device)
    mask = None if mask is None else mask.to(device)
    logits = model(ids, attention_mask=mask).float()
    pred, tgt, seg = logits[:, :-1], labels[:, 1:], segments[:, 1:]
    valid = tgt != -100
    if mask is not None:
        valid &= mask[:, 1:] & mask[:, :-1]
    loss = F.cross_entropy(pred.reshape(-1, pred.shape[-1]), tgt.clamp(min=0).reshape(-1), reduction="none").view_as(tgt)
    correct = (pred.argmax(-1) == tgt).float()
    out = {k: torch.zeros(3, dtype=torch.float64) for k in ("loss", "correct", "n")}
    for j in range(3):
        m = valid & (seg == j)
        out["loss"][j] = loss[m].double().sum().cpu()
        out["correct"][j] = correct[m].double().sum().cpu()
        out["n"][j] = m.sum().double().cpu()
    return out


def _metrics_from_sums(s: dict[str, torch.Tensor]) -> dict[str, dict[str, float]]:
    out = {}
    for name, j in list(SEGMENTS.items()) + [("all", None)]:
        loss, correct, n = (float(s[k].sum() if j is None else s[k][j]) for k in ("loss", "correct", "n"))
        out[name] = dict(
            loss=loss / n if n else math.nan, accuracy=correct / n if n else math.nan, n_tokens=int(n)
        )
    return out


def segment_metrics(model, batch) -> dict[str, dict[str, float]]:
    """Teacher-forced loss (mean cross-entropy, nats) and next-token argmax accuracy per
    segment of the target token.

    `batch`: one batch (dict/object with input_ids, segments, optional labels and
    attention_mask), or an iterable of batches (pooled token-weighted).
    Returns {"prompt"|"step"|"answer"|"all": {"loss", "accuracy", "n_tokens"}}; NaN where a
    segment has no scored tokens.
    """
    batches = [batch] if _get(batch, "input_ids") is not None else list(batch)
    total = None
    for b in batches:
        s = segment_sums(model, b)
        total = s if total is None else {k: total[k] + s[k] for k in s}
    if total is None:
        raise ValueError("segment_metrics got no batches")
    return _metrics_from_sums(total)


@torch.no_grad()
def answer_to_step_attention(
    model,
    tokens: Int[torch.Tensor, "batch pos"],
    segments: Int[torch.Tensor, "batch pos"],
    attention_mask: Optional[torch.Tensor] = None,
) -> Float[torch.Tensor, "layer head"]:
    """Mean over answer-token queries (segment 2) of the attention mass they put on step-token
    keys (segment 1), per (layer, head). NaN when no example has both answer and step tokens."""
    from .cache import cached

    tokens, segments = torch.as_tensor(tokens), torch.as_tensor(segments)
    if tokens.ndim == 1:
        tokens, segments = tokens[None], segments[None]
    device = model.cfg.device
    segments = segments.to(device)
    mask = None if attention_mask is None else torch.as_tensor(attention_mask).to(device).bool()
    pats = cached(model, tokens.to(device), names="pattern", attention_mask=mask)
    q_ok = segments == SEGMENTS["answer"]
    k_ok = segments == SEGMENTS["step"]
    if mask is not None:
        q_ok, k_ok = q_ok & mask, k_ok & mask
    has_step = k_ok.any(-1, keepdim=True)
    q_ok = q_ok & has_step  # examples without steps do not count
    out = []
    for layer in range(model.cfg.n_layers):
        p = pats[f"blocks.{layer}.attn.hook_pattern"].float()  # (B, H, q, k)
        mass = (p * k_ok[:, None, None, :].float()).sum(-1)  # (B, H, q)
        w = q_ok[:, None, :].float()
        n = w.sum((0, 2))
        val = (mass * w).sum((0, 2)) / n.clamp(min=1)
        out.append(torch.where(n > 0, val, torch.full_like(val, float("nan"))))
    return torch.stack(out).cpu()


@torch.no_grad()
def greedy_exact_match(
    model,
    prompts: Sequence[Sequence[int]],
    targets: Sequence[Sequence[int]],
    batch_size: int = 64,
) -> list[list[int]]:
    """Greedy-decode len(target) tokens after each prompt (no early stop). Returns the
    generated ids per example; compare with the targets yourself or via `compare_checkpoints`."""
    from models.generation import generate

    if len(prompts) != len(targets):
        raise ValueError(f"{len(prompts)} prompts but {len(targets)} targets")
    out: list[list[int]] = []
    for i in range(0, len(prompts), batch_size):
        ps, ts = prompts[i : i + batch_size], targets[i : i + batch_size]
        n_new = max((len(t) for t in ts), default=0)
        if n_new == 0:
            out += [[] for _ in ps]
            continue
        gen = generate(model, [list(p) for p in ps], max_new_tokens=n_new, greedy=True, stop_tokens=[], return_output=True)
        out += [g[: len(t)] for g, t in zip(gen.new_tokens, ts)]
    return out


def split_example(input_ids: Sequence[int], segments: Sequence[int]) -> tuple[list[int], list[int], list[int]]:
    """(prompt ids, completion ids, completion segments): the prompt is the leading run of
    segment-0 tokens; the completion runs from there to the last step/answer token."""
    ids = [int(x) for x in torch.as_tensor(input_ids).tolist()]
    seg = [int(x) for x in torch.as_tensor(segments).tolist()]
    n_prompt = 0
    while n_prompt < len(seg) and seg[n_prompt] == 0:
        n_prompt += 1
    last = max((i for i, s in enumerate(seg) if s in (1, 2)), default=n_prompt - 1)
    return ids[:n_prompt], ids[n_prompt : last + 1], seg[n_prompt : last + 1]


def _pad_examples(examples: Sequence[Any], pad_id: int) -> dict[str, torch.Tensor]:
    rows = [(torch.as_tensor(_get(e, "input_ids")), torch.as_tensor(_get(e, "segments")), _get(e, "labels")) for e in examples]
    T = max(len(r[0]) for r in rows)
    B = len(rows)
    ids = torch.full((B, T), pad_id, dtype=torch.long)
    seg = torch.full((B, T), PAD_SEGMENT, dtype=torch.long)
    labels = torch.full((B, T), -100, dtype=torch.long)
    mask = torch.zeros(B, T, dtype=torch.bool)
    for i, (x, s, lab) in enumerate(rows):
        n = len(x)
        ids[i, :n], seg[i, :n], mask[i, :n] = x, s, True
        labels[i, :n] = x if lab is None else torch.as_tensor(lab)
    return dict(input_ids=ids, segments=seg, labels=labels, attention_mask=mask)


def compare_checkpoints(
    models: Mapping[str, Any],
    examples: Sequence[Any],
    *,
    batch_size: int = 64,
    is_correct: Optional[Callable[[Any, list[int]], bool]] = None,
    generate: bool = True,
) -> list[dict]:
    """One flat row per checkpoint, ready for a dataframe or `plots.segment_bars`.

    Args:
        models: name -> model or (model, tokenizer).
        examples: objects/dicts with `input_ids` and `segments` (optional `labels`).
        is_correct: optional `(example, generated_ids) -> bool` deciding answer correctness
            (e.g. parse the number); by default the answer tokens must match at their
            positions (see below).
        generate: set False to skip greedy decoding (the slow part).

    Row keys: "name"; "loss/<seg>", "accuracy/<seg>", "n_tokens/<seg>" for seg in prompt,
    step, answer, all; "answer_to_step_attn/mean|max" and "answer_to_step_attn/argmax" (e.g.
    "L1H2"); and with `generate`: "exact_match" (fraction whose greedy completion after the
    prompt equals the whole target completion, steps and answer) and "answer_match"
    (fraction whose generated tokens at the answer positions equal the answer, or
    `is_correct`'s verdict).
    """
    if not examples:
        raise ValueError("compare_checkpoints needs at least one example")
    rows = []
    for name, entry in models.items():
        model = entry[0] if isinstance(entry, (tuple, list)) else entry
        was_training = model.training
        model.eval()
        try:
            pad = model.cfg.pad_token_id if model.cfg.pad_token_id is not None else 0
            sums, attn_parts = None, []
            for i in range(0, len(examples), batch_size):
                batch = _pad_examples(examples[i : i + batch_size], pad)
                s = segment_sums(model, batch)
                sums = s if sums is None else {k: sums[k] + s[k] for k in s}
                a = answer_to_step_attention(model, batch["input_ids"], batch["segments"], batch["attention_mask"])
                n_q = int(((batch["segments"] == 2) & (batch["segments"] == 1).any(-1, keepdim=True)).sum())
                attn_parts.append((a, n_q))
            row: dict[str, Any] = {"name": name}
            for seg, vals in _metrics_from_sums(sums).items():
                for k, v in vals.items():
                    row[f"{k}/{seg}"] = v
            total_q = sum(n for _, n in attn_parts)
            if total_q:
                attn = sum(a.nan_to_num() * n for a, n in attn_parts) / total_q
                flat = int(attn.flatten().argmax())
                H = attn.shape[1]
                row.update({"answer_to_step_attn/mean": float(attn.mean()), "answer_to_step_attn/max": float(attn.max()),
                            "answer_to_step_attn/argmax": f"L{flat // H}H{flat % H}"})
            else:
                row.update({"answer_to_step_attn/mean": math.nan, "answer_to_step_attn/max": math.nan,
                            "answer_to_step_attn/argmax": ""})
            if generate:
                splits = [split_example(_get(e, "input_ids"), _get(e, "segments")) for e in examples]
                gens = greedy_exact_match(model, [p for p, _, _ in splits], [c for _, c, _ in splits], batch_size)
                exact, answer = 0, 0
                for e, (_, comp, seg), g in zip(examples, splits, gens):
                    exact += g == comp
                    if is_correct is not None:
                        answer += bool(is_correct(e, g))
                    else:
                        pos = [j for j, s in enumerate(seg) if s == 2]
                        answer += bool(pos) and all(j < len(g) and g[j] == comp[j] for j in pos)
                row["exact_match"] = exact / len(examples)
                row["answer_match"] = answer / len(examples)
            row["n_examples"] = len(examples)
            rows.append(row)
        finally:
            model.train(was_training)
    return rows
