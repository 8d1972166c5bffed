"""Prompts: text -> token ids for a checkpoint (its `<bos>`, its context), how tokens are
shown, the checkpoint's task (rebuilt from its config) and the default prompt drawn from it,
and where a task prompt ends and its answer starts."""

from __future__ import annotations

import json
from typing import Optional, Sequence

import streamlit as st

from .errors import AppError
from .loading import Loaded, get

SHAKESPEARE = "ROMEO:\nBut, soft! what light through yonder window breaks?\nIt is the east, and Juliet is the sun."
MAX_TOKENS = 512  # the app draws T x T maps; longer prompts are refused whatever the model
# Tasks whose test and val examples are drawn before the training ones, so building them with
# n_train=0 gives the same test split, fast. (Not modular: its test split is what train leaves.)
TEST_FIRST = ("arithmetic", "induction", "graph", "rules")  # graph, rules: FactsTask draws test, val, train


def show_token(s: str) -> str:
    """A token string made visible on an axis: newline, tab and space get glyphs."""
    return s.replace("\n", "⏎").replace("\t", "⇥").replace(" ", "␣") or "∅"


# ------------------------------------------------------------------ the checkpoint's task
@st.cache_resource(max_entries=8, show_spinner=False)
def _task(task_json: str):
    from interp.tasks import make_task

    return make_task(**json.loads(task_json))


def task_for(ck: Loaded, **overrides):
    """The checkpoint's task (`make_task(**config["task"])`; n_train=0 where that leaves the
    test split unchanged, so it builds fast), or None."""
    if ck.task is None:
        return None
    t = dict(ck.task, **overrides)
    if t.get("name") in TEST_FIRST and "n_train" not in overrides:
        t["n_train"] = 0
    name = t.pop("name")
    return _task(json.dumps(dict(name=name, **t), sort_keys=True))


def is_task(ck: Loaded) -> bool:
    """A synthetic-task checkpoint (prompt -> answer), not free text."""
    return ck.task is not None and ck.task.get("name") != "text"


def _default_example(ck: Loaded):
    """The first test example of a synthetic task checkpoint, or None."""
    if ck.task is None or ck.task.get("name") == "text":
        return None
    try:
        return task_for(ck).split("test")[0]
    except Exception:  # a task this code cannot rebuild: fall back to text
        return None


# ------------------------------------------------------------------ text <-> ids
def uses_bos(ck: Loaded) -> bool:
    """Whether the model saw `<bos>` first in training: its task's examples start with it
    (text tasks: their `bos` option); without a task, whenever the config names one."""
    bos = ck.cfg.bos_token_id
    if bos is None:
        return False
    if ck.task is None:
        return True
    if ck.task.get("name") == "text":
        return bool(ck.task.get("bos", True))
    ex = _default_example(ck)
    return ex is None or (len(ex.input_ids) > 0 and int(ex.input_ids[0]) == bos)


def encode(ck: Loaded, text: str) -> list[int]:
    """Prompt text -> ids (with the model's `<bos>` in front when it was trained with one),
    or AppError."""
    if not text or not text.strip():
        raise AppError("The prompt is empty: type some text to run the model on.")
    try:
        ids = list(ck.tokenizer.encode(text))
    except ValueError as e:  # UnknownTokenError and friends
        raise AppError(f"The tokenizer cannot read this prompt: {e}") from None
    bos = ck.cfg.bos_token_id
    if uses_bos(ck) and (not ids or ids[0] != bos):
        ids = [bos] + ids
    if ck.cfg.uses_learned_positions and len(ids) > ck.cfg.n_ctx:
        raise AppError(
            f"The prompt is {len(ids)} tokens but this model has learned positions for only "
            f"n_ctx={ck.cfg.n_ctx}; shorten it by {len(ids) - ck.cfg.n_ctx} tokens."
        )
    if len(ids) > MAX_TOKENS:
        raise AppError(f"The prompt is {len(ids)} tokens; the explorer draws at most {MAX_TOKENS}. "
                       f"Shorten it by {len(ids) - MAX_TOKENS} tokens.")
    return ids


def fits(ck: Loaded, text: str) -> bool:
    try:
        encode(ck, text)
        return True
    except AppError:
        return False


def labels(ck: Loaded, ids: Sequence[int]) -> list[str]:
    """Visible label per token (axes): whitespace shown as glyphs."""
    return [show_token(ck.tokenizer.decode([int(i)])) for i in ids]


def pieces(ck: Loaded, ids: Sequence[int]) -> list[str]:
    """The text each token contributes (token view): real spaces and newlines."""
    sep = " " if getattr(ck.tokenizer, "kind", "") == "word" else ""
    return [ck.tokenizer.decode([int(i)]) + sep for i in ids]


@st.cache_data(max_entries=16, show_spinner=False)
def _vocab(key: tuple) -> list[str]:
    ck = get(key)
    out = []
    for i in range(ck.cfg.d_vocab):
        try:
            out.append(show_token(ck.tokenizer.decode([i])))
        except (ValueError, IndexError):
            out.append(f"<{i}>")
    return out


def decode_list(ck: Loaded) -> list[str]:
    """id -> visible token string for the whole vocabulary (hover texts)."""
    return _vocab(ck.key)


def special_ids(ck: Loaded) -> set[int]:
    """Ids of special tokens (<bos>, <eos>, <latent>, ...)."""
    out = {int(i) for i in ck.tokenizer.special_token_ids().values() if i is not None}
    vocab = decode_list(ck)
    return out | {i for i, s in enumerate(vocab) if len(s) > 2 and s.startswith("<") and s.endswith(">")}


# ------------------------------------------------------------------ defaults and answers
def default_prompt(ck: Loaded) -> str:
    """A sensible first prompt: a whole test example of the checkpoint's task (prompt, steps
    and answer), or a Shakespeare line for text models."""
    tok, bos = ck.tokenizer, ck.cfg.bos_token_id
    ex = _default_example(ck)
    if ex is not None:
        ids = list(ex.input_ids)
        if bos is not None and ids and ids[0] == bos:
            ids = ids[1:]
        text = tok.decode(ids)
        if fits(ck, text):
            return text
    text = SHAKESPEARE
    while text and not fits(ck, text):
        text = text[: len(text) * 3 // 4]
    if text:
        return text
    ids = [i for i in range(ck.cfg.d_vocab) if i != bos][:8]
    return tok.decode(ids)


def prompt_end(ck: Loaded, ids: Sequence[int]) -> int:
    """Where generation starts on `ids` (a number of tokens): for task checkpoints, after the
    task's prompt (the first `=` of `123+456=`; the first block of an induction example),
    so the rest of the text is the target to compare with; otherwise after all of `ids`."""
    ex = _default_example(ck)
    ids = [int(i) for i in ids]
    if ex is None:
        return len(ids)
    n_prompt = next((i for i, s in enumerate(ex.segments) if s != 0), len(ex.segments))
    if ids == [int(i) for i in ex.input_ids]:
        return n_prompt
    cue = int(ex.input_ids[n_prompt - 1])
    if list(ex.input_ids).count(cue) == 1 and cue in ids:  # a marker such as "=" that ends every prompt
        return ids.index(cue) + 1
    return len(ids)


def answer_start(ck: Loaded, ids: Sequence[int]) -> int:
    """Index of the first token a patching metric should read as an answer: the one after
    `<eot>` when the prompt holds one; else the task's prompt end (induction: one later, the
    first repeated token a previous copy predicts); len(ids) for free text."""
    ids = [int(i) for i in ids]
    eot = ck.cfg.eot_token_id
    if eot is not None and eot in ids:
        return ids.index(eot) + 1
    end = prompt_end(ck, ids)
    if (ck.task or {}).get("name") == "induction" and end < len(ids):
        end += 1
    return end
