"""Cached analyses behind the Attention, Streams, Logit lens, Step-by-step, Compare and
Attribution pages. Each is one call into `interp` / `models` (no model math here), cached by
`st.cache_data` on the checkpoint key (path + mtime) and the token ids, and returns what the
page draws; the attention patterns also travel to the browser as base64 (the attention
component switches heads there)."""

from __future__ import annotations

import base64
from typing import Optional

import numpy as np
import streamlit as st
import torch

from .errors import Unsupported
from .loading import get
from .prompts import task_for


# ------------------------------------------------------------------ Attention
@st.cache_data(max_entries=64, show_spinner=False)
def attention(key: tuple, ids: tuple[int, ...]) -> np.ndarray:
    """(layer, head, q, k) float32 patterns."""
    from interp.cache import cached

    ck = get(key)
    cache = cached(ck.model, torch.tensor([ids]), names="pattern", batch=0)
    return torch.stack([cache[f"blocks.{l}.attn.hook_pattern"] for l in range(ck.cfg.n_layers)]).float().numpy()


def b64(a: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(a).tobytes()).decode("ascii")


THUMB = 48  # thumbnails are max-pooled to at most THUMB x THUMB cells


@st.cache_data(max_entries=32, show_spinner=False)
def thumbnails(key: tuple, ids: tuple[int, ...]) -> dict:
    """Every head's pattern max-pooled to <= THUMB x THUMB for display, uint8 scaled by each
    head's max, base64; plus those maxima (`max`) and each head's max off the first token's
    row and column (`auto`, the component's "each panel's max" colour scale, see
    `auto_scale`)."""
    pats = attention(key, ids)
    L, H, T, _ = pats.shape
    t = min(T, THUMB)
    edges = np.linspace(0, T, t + 1).round().astype(int)
    pooled = np.maximum.reduceat(np.maximum.reduceat(pats, edges[:-1], axis=2), edges[:-1], axis=3)
    mx = pooled.reshape(L, H, -1).max(-1)
    q = np.round(255 * pooled / np.maximum(mx, 1e-12)[..., None, None]).astype(np.uint8)
    auto = auto_scale(pats).reshape(-1)
    return {"t": t, "data": b64(q), "max": [round(float(x), 4) for x in mx.reshape(-1)],
            "auto": [round(float(x), 4) for x in auto]}


def auto_scale(pats: np.ndarray) -> np.ndarray:
    """(..., q, k) patterns -> (...) colour-scale tops: the max over queries and keys >= 1.
    Query 0 can only attend to itself (always 1) and many heads park attention on the first
    token, so a plain max is ~1 for every head; this one shows the rest of the pattern (the
    first token's column saturates). The plain max where nothing else is left (one token).
    Mirrors `zmax` in components/attention.js."""
    inner = pats[..., 1:, 1:].max(axis=(-1, -2)) if pats.shape[-1] > 1 else np.zeros(pats.shape[:-2])
    whole = pats.max(axis=(-1, -2))
    top = np.where(inner > 1e-9, inner, whole)
    return np.where(top > 1e-9, top, 1.0)


@st.cache_data(max_entries=64, show_spinner=False)
def layer_patterns(key: tuple, ids: tuple[int, ...], layer: int) -> str:
    """One layer's (head, q, k) patterns as float16, base64: what the browser switches heads on."""
    return b64(attention(key, ids)[layer].astype(np.float16))


@st.cache_data(max_entries=64, show_spinner=False)
def head_rows(key: tuple, ids: tuple[int, ...]) -> tuple[list[dict], str]:
    """Every head's scores on the prompt, and where induction was measured: on repeated random
    tokens, or (a context too short for them, e.g. n_ctx=4) on the prompt itself."""
    from interp import heads

    ck = get(key)
    tokens = torch.tensor([ids])
    try:
        return heads.head_scores(ck.model, tokens).to_rows(), "induction on repeated random tokens"
    except ValueError:  # the repeated-token probe does not fit the model's context
        return heads.head_scores(ck.model, tokens, induction_tokens=False).to_rows(), \
            f"induction on the prompt itself (repeated random tokens do not fit n_ctx={ck.cfg.n_ctx})"


# ------------------------------------------------------------------ Streams, Logit lens
@st.cache_data(max_entries=64, show_spinner=False)
def norms(key: tuple, ids: tuple[int, ...]):
    from interp import explore

    return explore.stream_norms(get(key).model, torch.tensor(ids))


@st.cache_data(max_entries=128, show_spinner=False)
def neurons(key: tuple, ids: tuple[int, ...], layer: int, pos: int, k: int):
    from interp import explore

    idx, val = explore.top_neurons(get(key).model, torch.tensor(ids), layer, pos, k)
    return idx.tolist(), val.tolist()


@st.cache_data(max_entries=64, show_spinner=False)
def lens(key: tuple, ids: tuple[int, ...], stream: str, k: int, target: Optional[int]):
    """Logit lens; `target` = a token id scored at every position (None: the next token)."""
    from interp.lens import logit_lens

    tokens = torch.tensor([ids])
    targets = None if target is None else torch.full_like(tokens, int(target))
    return logit_lens(get(key).model, tokens, k=k, stream=stream, targets=targets)


# ------------------------------------------------------------------ Step-by-step, Compare
@st.cache_data(max_entries=64, show_spinner=False)
def steps_trace(key: tuple, ids: tuple[int, ...], n_new: int, k: int, greedy: bool, temperature: float, seed: int,
                stop_at_eos: bool):
    from interp import explore

    model = get(key).model
    stop = None if stop_at_eos else []
    return explore.generate_steps(model, torch.tensor(ids), n_steps=n_new, k=k, greedy=greedy,
                                  temperature=temperature, seed=seed, stop_tokens=stop)


@st.cache_data(max_entries=64, show_spinner=False)
def completion(key: tuple, prompt: tuple[int, ...], max_new: int, stop_at_eos: bool) -> list[int]:
    """Greedy continuation of `prompt` (`models.generation.generate`), eos included."""
    from models.generation import generate

    gen = generate(get(key).model, [list(prompt)], max_new_tokens=max_new, greedy=True,
                   stop_tokens=None if stop_at_eos else [], return_output=True)
    return list(gen.new_tokens[0])


@st.cache_data(max_entries=64, show_spinner=False)
def token_losses(key: tuple, ids: tuple[int, ...]) -> list[float]:
    """Teacher-forced next-token loss at each position (T - 1 values)."""
    from interp import explore

    return explore.token_losses(get(key).model, torch.tensor(ids)).tolist()


def compare_examples(key: tuple):
    """The checkpoint's test split with every post-prompt segment labelled
    (step_masking_mode="none" where the task has that option), so each model's loss is
    measured on prompt, steps and answer alike."""
    ck = get(key)
    over = {"step_masking_mode": "none"} if "step_masking_mode" in (ck.task or {}) else {}
    return task_for(ck, **over).split("test")


@st.cache_data(max_entries=32, show_spinner=False)
def compare_one(key: tuple, examples_key: tuple, n_examples: int, generate: bool) -> dict:
    """`interp.steps.compare_checkpoints` for one checkpoint on the first `n_examples` test
    examples of `examples_key`'s task (one model per call: the page shows progress per model)."""
    from interp import steps

    ck = get(key)
    examples = compare_examples(examples_key)[:n_examples]
    return steps.compare_checkpoints({ck.name: ck.model}, examples, generate=generate)[0]


@st.cache_data(max_entries=64, show_spinner=False)
def answer_step_attention(key: tuple, ids: tuple[int, ...], segments: tuple[int, ...]) -> np.ndarray:
    from interp import steps

    return steps.answer_to_step_attention(get(key).model, torch.tensor([ids]), torch.tensor([segments])).numpy()


# ------------------------------------------------------------------ Attribution
@st.cache_data(max_entries=64, show_spinner=False)
def top1(key: tuple, ids: tuple[int, ...]) -> tuple[int, ...]:
    """The model's top-1 next token at every position."""
    from interp import explore

    return tuple(explore.top1(get(key).model, torch.tensor(ids)).tolist())


@st.cache_data(max_entries=64, show_spinner=False)
def logit_attribution(key: tuple, ids: tuple[int, ...], target, wrong: Optional[int]):
    """`interp.attribution.direct_logit_attribution` of one prompt at every position. `target`:
    None (the next token), one id, or a tuple of one id per position; `wrong`: a contrast id."""
    from interp.attribution import direct_logit_attribution

    tgt = torch.tensor([target]) if isinstance(target, tuple) else target
    try:
        return direct_logit_attribution(get(key).model, torch.tensor([ids]), target=tgt, wrong=wrong)
    except NotImplementedError as e:  # shaped attention: the library says why
        raise Unsupported(f"Direct logit attribution does not apply to this model. {e}") from None
