"""The Latent thoughts page's data (Coconut checkpoints): the reasoner, each example's
timeline, answer, logit lens, attention into the thoughts, the search frontier's share and
patching one thought, each one cached call into `interp.thoughts`."""

from __future__ import annotations

from typing import Optional

import streamlit as st

from interp.checkpoint import CheckpointError

from .errors import AppError
from .loading import Loaded

def coconut_mode(ck: Loaded) -> Optional[str]:
    """The Coconut mode a checkpoint was trained in (coconut | pause | cot | no_cot), or None
    when it was not trained with `train.trainer: coconut`."""
    train = ((ck.meta.get("training") or {}).get("run_config") or {}).get("train") or {}
    if train.get("trainer") != "coconut":
        return None
    from interp.training.coconut import coconut_options

    try:
        return coconut_options(train.get("coconut"))["mode"]
    except ValueError:
        return None


@st.cache_resource(max_entries=4, show_spinner="Loading the Coconut reasoner…")
def _reasoner(path: str, mtime: float):
    from interp import thoughts

    return thoughts.load(path, task_overrides={"n_train": 0})


def reasoner(key: tuple):
    """(LatentReasoner, tokenizer, StagedTask) of a Coconut checkpoint (test/val splits only)."""
    try:
        return _reasoner(*key)
    except (ValueError, KeyError, CheckpointError) as e:
        raise AppError(f"Cannot read this checkpoint's Coconut setup: {e}") from None


def thought_split_size(key: tuple, split: str) -> int:
    return len(reasoner(key)[2].parts(split))


@st.cache_data(max_entries=64, show_spinner=False)
def thought_timeline(key: tuple, split: str, index: int, k: int) -> dict:
    from interp import thoughts

    r, _, staged = reasoner(key)
    view = thoughts.timeline(r, staged, split, index, k)
    view.pop("example")  # the page reads the example from the task; keeps the cached value small
    return view


@st.cache_data(max_entries=64, show_spinner=False)
def thought_answer(key: tuple, split: str, index: int) -> dict:
    """The model's greedy answer to one example, the Coconut way: {"correct", "generated", "answer"}."""
    from interp.training.coconut import evaluate_coconut

    r, tok, staged = reasoner(key)
    row = evaluate_coconut(r.model, staged, split, n=1, start=index, return_rows=True)["rows"][0]
    answer = list(staged.parts(split)[index].answer[0])
    eos = tok.eos_token_id

    def cut(ids: list[int]) -> list[int]:  # <eos> ends both
        return ids[: ids.index(eos)] if eos in ids else ids

    return {"correct": row["correct"], "generated": tok.decode(cut(list(row["generated"]))),
            "answer": tok.decode(cut(answer))}


def thought_batch(key: tuple, split: str, start: int, n: int = 1):
    from interp import thoughts

    try:
        return thoughts.latent_batch(reasoner(key)[2], split, n, start=start)
    except ValueError as e:
        raise AppError(f"Latent thoughts: {e}") from None


@st.cache_data(max_entries=64, show_spinner=False)
def thought_lens(key: tuple, split: str, start: int, n: int, k: int):
    from interp import thoughts

    return thoughts.thought_lens(reasoner(key)[0], thought_batch(key, split, start, n).input_ids, k)


@st.cache_data(max_entries=64, show_spinner=False)
def thought_attention(key: tuple, split: str, index: int):
    """(layer, head, slot) attention from the answer position into each thought."""
    from interp import thoughts

    return thoughts.answer_attention(reasoner(key)[0], thought_batch(key, split, index))[0]


@st.cache_data(max_entries=32, show_spinner=False)
def thought_frontier(key: tuple, split: str, n: int) -> dict:
    """`interp.thoughts.frontier_mass` over the first `n` examples (graph task)."""
    from interp import thoughts

    tok = reasoner(key)[1]
    batch = thought_batch(key, split, 0, n)
    lens = thought_lens(key, split, 0, n, 5)
    try:
        return thoughts.frontier_mass(lens.probs[:, :, -1], batch.examples, tok)
    except ValueError as e:
        raise AppError(f"Frontier mass: {e}") from None


@st.cache_data(max_entries=64, show_spinner=False)
def thought_patch(key: tuple, split: str, index: int, donor: int, slot: int) -> dict:
    """`interp.thoughts.patch_thought`: example `index` with thought `slot` from example `donor`."""
    from interp import thoughts

    batch, source = thought_batch(key, split, index), thought_batch(key, split, donor)
    try:
        out = thoughts.patch_thought(reasoner(key)[0], batch, source, slot)
    except ValueError as e:
        raise AppError(f"Patching a thought: {e}") from None
    return {k: float(v[0]) for k, v in out.items()}
