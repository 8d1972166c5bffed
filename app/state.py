"""Checkpoint discovery, cached loading, prompt validation and cached analyses for the explorer.

No model math here: every number comes from `interp` / `models` public functions; this
module only decides *what* to compute, caches it (`st.cache_resource` for models, keyed by
path + mtime; `st.cache_data` for forward passes, keyed by that and the token ids) and turns
bad input into `AppError`s with a message a person can act on.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import streamlit as st

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import interp  # noqa: E402
from interp.checkpoint import CheckpointError, load_config, read_metrics  # noqa: E402

ENV_ROOT = "INTERP_CHECKPOINT_ROOT"
PREFERRED = "shakespeare_factored_alibi"
COMPARE_NAMES = ("add3_none", "add3_mask_steps", "add3_mask_answer")
SHAKESPEARE = "ROMEO:\nBut, soft! what light through yonder window breaks?\nIt is the east, and Juliet is the sun."
MAX_TOKENS = 512  # the app draws T x T maps; longer prompts are refused whatever the model


class AppError(Exception):
    """Bad input or an unusable checkpoint; the message is shown as is."""


# ------------------------------------------------------------------ discovery
def checkpoint_root() -> Path:
    return Path(os.environ.get(ENV_ROOT) or REPO_ROOT / "data" / "checkpoints")


def discover(root: Optional[Path] = None) -> dict[str, Path]:
    """name -> dir for every `root/*/config.json`, sorted by name."""
    root = checkpoint_root() if root is None else root
    if not root.is_dir():
        return {}
    return {p.parent.name: p.parent for p in sorted(root.glob("*/config.json"))}


def default_name(names: Sequence[str]) -> Optional[str]:
    if PREFERRED in names:
        return PREFERRED
    return names[0] if names else None


def cli_ckpt(argv: Optional[Sequence[str]] = None) -> Optional[str]:
    """`--ckpt DIR_OR_NAME` from the arguments after `streamlit run app/explorer.py --`."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--ckpt", default=None)
    args, _ = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    return args.ckpt


def stamp(path: Path) -> float:
    """Newest mtime of the files that define a checkpoint (cache key)."""
    files = [path / n for n in ("config.json", "model.safetensors", "tokenizer.json")]
    return max((f.stat().st_mtime for f in files if f.exists()), default=0.0)


def check_dir(path_text: str) -> Path:
    """A user-typed checkpoint path -> a directory, or AppError saying what is wrong."""
    if not path_text.strip():
        raise AppError("The checkpoint path is empty.")
    p = Path(path_text.strip()).expanduser()
    if not p.is_absolute() and not p.exists() and (REPO_ROOT / p).exists():
        p = REPO_ROOT / p
    if not p.exists():
        raise AppError(f"No such checkpoint directory: `{p}`")
    if not p.is_dir():
        raise AppError(f"`{p}` is a file; give the checkpoint *directory* (with config.json, model.safetensors).")
    if not (p / "config.json").exists() and not (p / "last").is_file():
        raise AppError(f"`{p}` holds no config.json: not a checkpoint directory.")
    return p


# ------------------------------------------------------------------ loading
@dataclass
class Loaded:
    path: str
    model: object
    tokenizer: object
    meta: dict
    metrics: list = field(default_factory=list)
    card: str = ""

    @property
    def cfg(self):
        return self.model.cfg

    @property
    def key(self) -> tuple[str, float]:
        return (self.path, stamp(Path(self.path)))

    @property
    def task(self) -> Optional[dict]:
        t = self.meta.get("task")
        return t if isinstance(t, dict) and t.get("name") else None

    @property
    def n_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


@st.cache_resource(max_entries=8, show_spinner="Loading checkpoint...")
def _load(path: str, mtime: float) -> Loaded:
    model, tok = interp.load(path, device="cpu")
    if tok is None:
        raise CheckpointError(f"{path}: no tokenizer.json; the explorer needs one to read prompts")
    _, meta = load_config(path)
    try:
        metrics = read_metrics(path)
    except CheckpointError:
        metrics = []
    card_file = Path(path) / "card.md"
    card = card_file.read_text() if card_file.exists() else ""
    return Loaded(path, model, tok, meta, metrics, card)


def load(path: Path) -> Loaded:
    """The (cached) checkpoint at `path`; AppError with the loader's message when unusable."""
    path = interp.checkpoint.resolve(path)
    try:
        return _load(str(path), stamp(path))
    except (CheckpointError, ValueError, OSError, KeyError, TypeError) as e:
        raise AppError(f"Cannot load checkpoint `{path}`: {e}") from None


def get(key: tuple[str, float]) -> Loaded:
    return _load(*key)


def summary(ck: Loaded) -> dict:
    """Model-card facts for the sidebar."""
    cfg = ck.cfg
    final = {}
    for row in ck.metrics:
        final.update({k: v for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
    ev = (ck.meta.get("training") or {}).get("eval") or {}
    final.update({f"eval/{k}" if "/" not in k else k: v for k, v in ev.items() if isinstance(v, (int, float))})
    return dict(
        preset=cfg.name,
        shape=f"{cfg.n_layers} layers x {cfg.n_heads} heads, d_model {cfg.d_model}, n_ctx {cfg.n_ctx}",
        parts=f"{cfg.positional} positions, {cfg.norm}, {cfg.ffn}, {cfg.block} block, {cfg.stream} stream"
        + (", attention-only" if cfg.attn_only else ""),
        params=ck.n_params,
        vocab=cfg.d_vocab,
        task=ck.task,
        metrics=final,
    )


# ------------------------------------------------------------------ prompts
def show_token(s: str) -> str:
    """A token string made visible on an axis: newline, tab and space get glyphs."""
    return s.replace("\n", "⏎").replace("\t", "⇥").replace(" ", "␣") or "∅"


def encode(ck: Loaded, text: str) -> list[int]:
    """Prompt text -> ids (with the model's `<bos>` in front when it has one), or AppError."""
    if not text or not text.strip():
        raise AppError("The prompt is empty: type some text to run the model on.")
    try:
        ids = list(ck.tokenizer.encode(text))
    except ValueError as e:  # UnknownTokenError and friends
        raise AppError(f"The tokenizer cannot read this prompt: {e}") from None
    bos = ck.cfg.bos_token_id
    if bos is not None and (not ids or ids[0] != bos):
        ids = [bos] + ids
    if ck.cfg.positional == "learned" and len(ids) > ck.cfg.n_ctx:
        raise AppError(
            f"The prompt is {len(ids)} tokens but this model has learned positions for only "
            f"n_ctx={ck.cfg.n_ctx}; shorten it by {len(ids) - ck.cfg.n_ctx} tokens."
        )
    if len(ids) > MAX_TOKENS:
        raise AppError(f"The prompt is {len(ids)} tokens; the explorer draws at most {MAX_TOKENS}.")
    return ids


def labels(ck: Loaded, ids: Sequence[int]) -> list[str]:
    return [show_token(ck.tokenizer.decode([int(i)])) for i in ids]


def decode_list(ck: Loaded) -> list[str]:
    """id -> visible token string for the whole vocabulary (hover texts)."""
    n = ck.cfg.d_vocab
    out = []
    for i in range(n):
        try:
            out.append(show_token(ck.tokenizer.decode([i])))
        except (ValueError, IndexError):
            out.append(f"<{i}>")
    return out


@st.cache_resource(max_entries=8, show_spinner=False)
def _task(task_json: str):
    from interp.tasks import make_task

    return make_task(**json.loads(task_json))


def task_for(ck: Loaded, **overrides):
    """The checkpoint's task (`make_task(**config["task"])`, n_train=0 so it builds fast:
    test/val do not depend on n_train), or None."""
    if ck.task is None:
        return None
    t = dict(ck.task, **overrides)
    if t.get("name") in ("arithmetic", "modular", "induction") and "n_train" not in overrides:
        t["n_train"] = 0
    name = t.pop("name")
    return _task(json.dumps(dict(name=name, **t), sort_keys=True))


def _fits(ck: Loaded, text: str) -> bool:
    try:
        encode(ck, text)
        return True
    except AppError:
        return False


def default_prompt(ck: Loaded, part: str = "full") -> str:
    """A sensible first prompt: a test example of the checkpoint's task (`part="prompt"`: only
    its prompt segment), or a Shakespeare line for text models."""
    tok, bos = ck.tokenizer, ck.cfg.bos_token_id
    if ck.task is not None and ck.task.get("name") != "text":
        try:
            ex = task_for(ck).split("test")[0]
            ids = list(ex.input_ids)
            if part == "prompt":
                ids = ids[: ex.segments.index(1) if 1 in ex.segments else ex.segments.index(2)]
            if bos is not None and ids and ids[0] == bos:
                ids = ids[1:]
            text = tok.decode(ids)
            if _fits(ck, text):
                return text
        except Exception:  # a task this code does not know: fall through to text
            pass
    text = SHAKESPEARE
    if part == "prompt":
        text = text.split("\n")[0] + "\n"
    while text and not _fits(ck, text):
        text = text[: len(text) * 3 // 4]
    if text:
        return text
    ids = [i for i in range(ck.cfg.d_vocab) if i != bos][:8]
    return tok.decode(ids)


# ------------------------------------------------------------------ cached analyses
@st.cache_data(max_entries=64, show_spinner=False)
def attention(key: tuple, ids: tuple[int, ...]):
    """(layer, head, q, k) float32 patterns."""
    import torch
    from interp.cache import cached

    ck = get(key)
    cache = cached(ck.model, torch.tensor([ids]), names="pattern", batch=0)
    return torch.stack([cache[f"blocks.{l}.attn.hook_pattern"] for l in range(ck.cfg.n_layers)]).float().numpy()


@st.cache_resource(max_entries=16, show_spinner=False)
def attention_grid_figure(key: tuple, ids: tuple[int, ...]):
    """The all-heads thumbnail grid (built once per prompt: for 6x6 heads it is the slow
    part of a re-render). Shared object: callers must not modify it."""
    from interp import plots

    return plots.attention_grid(attention(key, ids), labels(get(key), ids),
                                title="All heads (rows = layers, columns = heads)")


@st.cache_data(max_entries=64, show_spinner=False)
def head_rows(key: tuple, ids: tuple[int, ...]) -> list[dict]:
    import torch
    from interp import heads

    ck = get(key)
    return heads.head_scores(ck.model, torch.tensor([ids])).to_rows()


@st.cache_data(max_entries=64, show_spinner=False)
def norms(key: tuple, ids: tuple[int, ...]):
    import torch
    from interp import explore

    return explore.stream_norms(get(key).model, torch.tensor(ids))


@st.cache_data(max_entries=128, show_spinner=False)
def neurons(key: tuple, ids: tuple[int, ...], layer: int, pos: int, k: int):
    import torch
    from interp import explore

    idx, val = explore.top_neurons(get(key).model, torch.tensor(ids), layer, pos, k)
    return idx.tolist(), val.tolist()


@st.cache_data(max_entries=64, show_spinner=False)
def lens(key: tuple, ids: tuple[int, ...], stream: str, k: int):
    import torch
    from interp.lens import logit_lens

    return logit_lens(get(key).model, torch.tensor([ids]), k=k, stream=stream)


@st.cache_data(max_entries=64, show_spinner=False)
def steps_trace(key: tuple, ids: tuple[int, ...], n_steps: int, k: int, greedy: bool, temperature: float, seed: int):
    import torch
    from interp import explore

    return explore.generate_steps(get(key).model, torch.tensor(ids), n_steps=n_steps, k=k, greedy=greedy,
                                  temperature=temperature, seed=seed)


@st.cache_data(max_entries=16, show_spinner="Comparing checkpoints...")
def compare(keys: tuple, names: tuple, n_examples: int, generate: bool) -> list[dict]:
    from interp import steps

    models = {n: get(k).model for n, k in zip(names, keys)}
    examples = compare_examples(keys[0])[:n_examples]
    return steps.compare_checkpoints(models, examples, generate=generate)


def compare_examples(key: tuple):
    """The first checkpoint's test split with every post-prompt segment labelled
    (step_masking_mode="none"), so each model's loss is measured on prompt, steps and answer."""
    return task_for(get(key), step_masking_mode="none").split("test")


@st.cache_data(max_entries=64, show_spinner=False)
def answer_step_attention(key: tuple, ids: tuple[int, ...], segments: tuple[int, ...]):
    import torch
    from interp import steps

    return steps.answer_to_step_attention(get(key).model, torch.tensor([ids]), torch.tensor([segments])).numpy()


@st.cache_data(max_entries=64, show_spinner=False)
def greedy_completion(key: tuple, prompt: tuple[int, ...], n_new: int) -> list[int]:
    from interp import steps

    return steps.greedy_exact_match(get(key).model, [list(prompt)], [[0] * n_new])[0]
