"""The Patching page's data: a default corrupted twin of the prompt (arithmetic: one operand
digit with the same carries; induction: another repeated block; otherwise the one-token change
`interp.explore.one_token_corruption` finds), where the metric reads and which answers it
compares, and the sweeps themselves (`interp.patching.activation_patching`), cached per
checkpoint, tokens and options."""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from typing import Optional, Sequence

import streamlit as st
import torch

from .errors import AppError
from .analyses import top1
from .loading import Loaded, get
from .prompts import answer_start, decode_list, encode, is_task, special_ids, task_for

PATCH_METRICS = ("logit_diff", "prob", "logprob", "loss")
SEARCH_WINDOW = 32  # free text: the last positions a default one-token change is searched over
PATCH_CACHE = 64


def metric_positions(ck: Loaded, clean: Sequence[int], corrupt: Sequence[int]) -> list[int]:
    """Default positions a patching metric reads: the one predicting the first answer token
    where the two prompts differ (induction: every repeated token that differs, averaged); else
    the one predicting the first answer token; else the last position."""
    T = len(clean)
    start = answer_start(ck, clean)
    differ = [i for i in range(max(start, 1), T) if clean[i] != corrupt[i]]
    if differ:
        return [i - 1 for i in differ] if (ck.task or {}).get("name") == "induction" else [differ[0] - 1]
    return [min(start, T) - 1]


def answers(key: tuple, clean: tuple[int, ...], corrupt: tuple[int, ...], positions: Sequence[int]
            ) -> tuple[tuple[int, ...], tuple[int, ...], str]:
    """(clean answers, corrupted answers, where they come from) at each metric position: the
    prompts' own next tokens where those differ, else each run's top-1 prediction."""
    T = len(clean)
    if all(p + 1 < T and clean[p + 1] != corrupt[p + 1] for p in positions):
        return tuple(clean[p + 1] for p in positions), tuple(corrupt[p + 1] for p in positions), "the prompts' next tokens"
    a, b = top1(key, clean), top1(key, corrupt)
    return tuple(a[p] for p in positions), tuple(b[p] for p in positions), "each run's top-1 prediction"


# ------------------------------------------------------------------ default corruptions
def _carries(a: int, b: int) -> list[int]:
    out, c = [], 0
    for i in range(max(len(str(a)), len(str(b)))):
        c = (a // 10**i % 10 + b // 10**i % 10 + c) // 10
        out.append(c)
    return out


def _arithmetic_corruption(ck: Loaded, ids: Sequence[int]) -> Optional[tuple[list[int], str]]:
    """The problem with the first operand's units digit changed, keeping every carry and the
    answer's length (so the two examples line up token for token); the steps and answer are
    the corrupted problem's own where the prompt is a prefix of the task's example."""
    text = ck.tokenizer.decode(list(ids))
    m = re.search(r"(\d+)([+\-*])(\d+)=", text)
    if m is None:
        return None
    a, op, b = int(m[1]), m[2], int(m[3])
    task = task_for(ck)
    if not hasattr(task, "example_for"):
        return None
    try:
        full = encode(ck, task.tokenizer.decode(task.example_for(op, [a, b]).input_ids))
    except (ValueError, AppError):
        return None
    u = a % 10
    for d in sorted(range(10), key=lambda d: (abs(d - u), d)):
        a2 = a - u + d
        if d == u or (op == "+" and _carries(a2, b) != _carries(a, b)):
            continue
        try:
            other = encode(ck, task.tokenizer.decode(task.example_for(op, [a2, b]).input_ids))
        except (ValueError, AppError):
            continue
        if len(other) != len(full):
            continue
        if list(ids) == full[: len(ids)]:
            return other[: len(ids)], f"{a}{op}{b} → {a2}{op}{b} (the first operand's last digit; the same carries)"
        swapped = text[: m.start(1)] + str(a2).zfill(len(m[1])) + text[m.end(1):]
        try:
            out = encode(ck, swapped)
        except AppError:
            return None
        return (out, f"{a} → {a2} in the problem") if len(out) == len(ids) else None
    return None


def _induction_corruption(ck: Loaded, ids: Sequence[int]) -> Optional[tuple[list[int], str]]:
    """`<bos> A A <eos>` -> `<bos> B B <eos>`: B a block of other symbols (analyses/circuits.py's pairs)."""
    ids = [int(i) for i in ids]
    specials = special_ids(ck)
    head = 1 if ids and ids[0] in specials else 0
    tail = 1 if len(ids) > head and ids[-1] in specials else 0
    body = ids[head: len(ids) - tail]
    n = len(body) // 2
    if n < 2 or len(body) % 2 or body[:n] != body[n:]:
        return None
    others = [i for i in range(ck.cfg.d_vocab) if i not in specials and i not in body]
    if len(others) >= n:
        order = torch.randperm(len(others), generator=torch.Generator().manual_seed(0))[:n].tolist()
        block = [others[i] for i in order]
        how = "the repeated block replaced by other symbols"
    else:
        block = body[1:n] + body[:1]
        how = "the repeated block rotated by one"
    return ids[:head] + block + block + ids[len(ids) - tail:], how


@st.cache_data(max_entries=32, show_spinner=False)
def _one_token_corruption(key: tuple, ids: tuple[int, ...]) -> Optional[tuple[list[int], str, Optional[int]]]:
    """`interp.explore.one_token_corruption` with the page's choices: (ids, what changed, the
    position whose top-1 prediction the change alters, or None).

    Task prompts: the metric reads where the answer is predicted; the nearest change before it
    that alters the model's answer wins. Free text: any later position may read, and the change
    whose effect travels furthest wins, so patching shows information moving between positions;
    when none travels, the last token is changed."""
    from interp import explore

    ck = get(key)
    T = len(ids)
    task = is_task(ck)
    p = metric_positions(ck, ids, ids)[0]
    search = range(p - 1, max(0, p - 12), -1) if task else range(T - 2, max(0, T - 2 - SEARCH_WINDOW), -1)
    change = explore.one_token_corruption(ck.model, torch.tensor(ids), read_at=p, positions=list(search) + [p],
                                          protected=special_ids(ck), travel=not task)
    if change is None:
        return None
    vocab = decode_list(ck)
    out = list(ids)
    out[change.position] = change.token
    how = f"token {change.position} {vocab[ids[change.position]]} → {vocab[change.token]}"
    how += f", which changes the prediction at position {change.changes_at}" if change.changes_at is not None else \
        " (no single change alters the model's prediction here)"
    return out, how, (None if task else change.changes_at)


def default_corruption(ck: Loaded, ids: Sequence[int]) -> tuple[Optional[list[int]], str, Optional[list[int]]]:
    """A corrupted prompt of the same length as `ids`, what was changed, and the positions a
    metric should read when they do not follow from the prompts (`metric_positions`): arithmetic,
    two problems differing in one digit; induction, another repeated block; otherwise one token."""
    name = (ck.task or {}).get("name")
    made = None
    if name == "arithmetic":
        made = _arithmetic_corruption(ck, ids)
    elif name == "induction":
        made = _induction_corruption(ck, ids)
    if made is not None:
        return made[0], made[1], None
    made = _one_token_corruption(ck.key, tuple(int(i) for i in ids))
    if made is None:
        return None, "", None
    return made[0], made[1], None if made[2] is None else [made[2]]


# ------------------------------------------------------------------ sweeps
_PATCH_LOCK = threading.Lock()


@st.cache_resource(show_spinner=False)
def _patch_results() -> "OrderedDict":
    """Finished sweeps, newest last. Not st.cache_data: the sweep reports progress to a bar
    drawn outside it, which Streamlit's cached-element replay forbids."""
    return OrderedDict()


def patch_metric(name: str, clean: Sequence[int], positions: Sequence[int], good: Sequence[int], bad: Sequence[int]):
    """The `interp.patching` metric `name` reading `positions` (answers `good` vs `bad`)."""
    from interp import patching

    if name not in PATCH_METRICS:
        raise AppError(f"Unknown metric {name!r}; choose from {', '.join(PATCH_METRICS)}.")
    pos, a, w = torch.tensor([list(positions)]), torch.tensor([list(good)]), torch.tensor([list(bad)])
    if name == "logit_diff":
        return patching.logit_diff(a, w, pos)
    if name == "prob":
        return patching.prob(a, pos)
    if name == "logprob":
        return patching.logprob(a, pos)
    return patching.loss(torch.tensor([list(clean)]))


def patch_sweep(key: tuple, clean: tuple[int, ...], corrupt: tuple[int, ...], act: str, metric: str,
                positions: tuple[int, ...], good: tuple[int, ...], bad: tuple[int, ...], direction: str,
                labels: tuple[str, ...], progress=None):
    """`interp.patching.activation_patching` of one activation kind (stream acts by position,
    up to the last position the metric reads; heads by head), cached by checkpoint, token ids
    and options; `progress(done, total)` is called while it runs."""
    from interp import patching

    k = (key, clean, corrupt, act, metric, positions, good, bad, direction, labels)
    store = _patch_results()
    with _PATCH_LOCK:
        if k in store:
            store.move_to_end(k)
            return store[k]
    ck = get(key)
    m = patch_metric(metric, clean, positions, good, bad)
    last = len(clean) - 1 if metric == "loss" else max(positions)
    grid = dict(positions=list(range(last + 1))) if act in patching.STREAM_ACTS else {}
    try:
        res = patching.activation_patching(ck.model, torch.tensor([clean]), torch.tensor([corrupt]), m, act,
                                           direction=direction, pos_labels=list(labels), progress=progress, **grid)
    except ValueError as e:
        raise AppError(f"Patching {act}: {e}") from None
    with _PATCH_LOCK:
        store[k] = res
        while len(store) > PATCH_CACHE:
            store.popitem(last=False)
    return res
