"""Checkpoints, runs, prompts and cached analyses for the explorer.

No model math here: every number comes from `interp` / `models` public functions; this
module decides *what* to compute, caches it (`st.cache_resource` for models, keyed by path +
mtime; `st.cache_data` for forward passes, keyed by that and the token ids) and turns bad
input into `AppError`s with a message a person can act on.

Where checkpoints come from: every `ROOT/NAME/config.json` (a checkpoint) and every
`ROOT/NAME/` holding `step_*/config.json` directories (a training run, see
`interp.checkpoint.CheckpointManager`) under the roots in `$INTERP_CHECKPOINT_ROOT`
(`os.pathsep`-separated), by default `data/checkpoints` and `data/runs`.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import math
import os
import re
import sys
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import streamlit as st

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import torch  # noqa: E402

from interp.checkpoint import CheckpointError, load_config, read_metrics, resolve  # noqa: E402

# One intra-op thread: the explorer runs small models on one sequence at a time, where OpenMP
# threads cost more than they give (measured: generation of 32 x 37 tokens 0.13 s with 1
# thread vs 1.2-2.9 s with 2 on this 2-core machine under load), and the browser needs a core.
torch.set_num_threads(int(os.environ.get("INTERP_APP_THREADS", "1")))

ENV_ROOT = "INTERP_CHECKPOINT_ROOT"
DEFAULT_ROOTS = ("data/checkpoints", "data/runs")
PREFERRED = "shakespeare_factored_alibi"
STEP_MASKING_TRIO = ("add3_none", "add3_mask_steps", "add3_mask_answer")
SHAKESPEARE = "ROMEO:\nBut, soft! what light through yonder window breaks?\nIt is the east, and Juliet is the sun."
MAX_TOKENS = 512  # the app draws T x T maps; longer prompts are refused whatever the model
STEP_DIR = re.compile(r"^step_(\d+)$")


class AppError(Exception):
    """Bad input or an unusable checkpoint; the message is shown as is."""


# ------------------------------------------------------------------ discovery
def checkpoint_roots() -> list[Path]:
    env = os.environ.get(ENV_ROOT)
    if env:
        return [Path(p) for p in env.split(os.pathsep) if p]
    return [REPO_ROOT / r for r in DEFAULT_ROOTS]


def run_steps(run_dir: Path) -> dict[int, Path]:
    """step -> checkpoint dir for every `run_dir/step_NNNNNN/config.json`, by step."""
    if not run_dir.is_dir():
        return {}
    out = {}
    for p in run_dir.iterdir():
        m = STEP_DIR.match(p.name)
        if m and (p / "config.json").is_file():
            out[int(m.group(1))] = p
    return dict(sorted(out.items()))


def discover(roots: Optional[Sequence[Path]] = None) -> dict[str, Path]:
    """name -> directory for every checkpoint (`ROOT/NAME/config.json`) and every run
    (`ROOT/NAME/step_*/config.json`), sorted by name. A name found twice keeps the first."""
    found: dict[str, Path] = {}
    for root in checkpoint_roots() if roots is None else roots:
        if not root.is_dir():
            continue
        for p in sorted(root.iterdir()):
            if p.name.startswith(".") or not p.is_dir() or p.name in found:
                continue
            if (p / "config.json").is_file() or run_steps(p):
                found[p.name] = p
    return dict(sorted(found.items()))


def default_name(names: Sequence[str], cli: Optional[str] = None) -> Optional[str]:
    if cli:
        return cli
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
    """A user-typed checkpoint or run path -> a directory, or AppError saying what is wrong."""
    if not path_text.strip():
        raise AppError("The checkpoint path is empty.")
    p = Path(path_text.strip()).expanduser()
    if not p.is_absolute() and not p.exists() and (REPO_ROOT / p).exists():
        p = REPO_ROOT / p
    if not p.exists():
        raise AppError(f"No such checkpoint directory: `{p}`")
    if not p.is_dir():
        raise AppError(f"`{p}` is a file; give the checkpoint *directory* (with config.json, model.safetensors).")
    if not (p / "config.json").exists() and not (p / "last").is_file() and not run_steps(p):
        raise AppError(f"`{p}` holds no config.json and no step_* checkpoints: not a checkpoint or run directory.")
    return p


# ------------------------------------------------------------------ runs
@dataclass
class Run:
    """A training run: `dir/step_NNNNNN/` checkpoints, `last`/`best` pointers, `metrics.jsonl`."""

    dir: Path
    steps: dict[int, Path]
    last: Optional[int] = None
    best: Optional[int] = None

    @property
    def metrics_file(self) -> Optional[Path]:
        """The run's log: `dir/metrics.jsonl`, else the newest step's copy."""
        if (self.dir / "metrics.jsonl").is_file():
            return self.dir / "metrics.jsonl"
        for step in sorted(self.steps, reverse=True):
            f = self.steps[step] / "metrics.jsonl"
            if f.is_file() and f.stat().st_size:
                return f
        return None

    @property
    def has_training_view(self) -> bool:
        return len(self.steps) >= 2 and self.metrics_file is not None


def _pointer_step(run_dir: Path, name: str) -> Optional[int]:
    f = run_dir / name
    if not f.is_file():
        return None
    m = STEP_DIR.match(f.read_text().strip())
    return int(m.group(1)) if m else None


def run_of(path: Path) -> Optional[tuple[Run, Optional[int]]]:
    """(the run `path` belongs to, the step `path` is) when `path` is a run directory (step
    None) or a `step_*` checkpoint beside other `step_*` checkpoints; else None."""
    path = Path(path)
    m = STEP_DIR.match(path.name)
    if m and (path / "config.json").is_file():
        steps = run_steps(path.parent)
        if len(steps) >= 2:
            return _run(path.parent, steps), int(m.group(1))
        return None
    steps = run_steps(path)
    if steps:
        return _run(path, steps), None
    return None


def _run(run_dir: Path, steps: dict[int, Path]) -> Run:
    return Run(run_dir, steps, _pointer_step(run_dir, "last"), _pointer_step(run_dir, "best"))


def metric_series(file: Path) -> dict[str, tuple[list[int], list[float]]]:
    """Every numeric scalar series of a metrics.jsonl: "event/key" -> (steps, values).

    Nested dicts become "key/sub", lists of numbers "key[i]" (lists of lists "key[i][j]");
    rows without a step, strings and booleans are skipped."""
    try:
        rows = read_metrics(file)
    except CheckpointError as e:
        raise AppError(f"Cannot read the run's metrics: {e}") from None
    out: dict[str, tuple[list[int], list[float]]] = {}

    def add(name: str, step: int, v) -> None:
        if isinstance(v, bool) or v is None:
            return
        if isinstance(v, (int, float)):
            if math.isfinite(float(v)):
                s = out.setdefault(name, ([], []))
                s[0].append(step)
                s[1].append(float(v))
        elif isinstance(v, dict):
            for k, x in v.items():
                add(f"{name}/{k}", step, x)
        elif isinstance(v, (list, tuple)) and len(v) <= 256:
            for i, x in enumerate(v):
                add(f"{name}[{i}]", step, x)

    for row in rows:
        step = row.get("step")
        if not isinstance(step, (int, float)) or isinstance(step, bool):
            continue
        event = str(row.get("event") or "log")
        if "split" in row and isinstance(row["split"], str):
            event = f"{event}:{row['split']}"
        for k, v in row.items():
            if k not in ("step", "event", "split"):
                add(f"{event}/{k}", int(step), v)
    return out


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
    def name(self) -> str:
        p = Path(self.path)
        return f"{p.parent.name}/{p.name}" if STEP_DIR.match(p.name) else p.name

    @property
    def task(self) -> Optional[dict]:
        t = self.meta.get("task")
        return t if isinstance(t, dict) and t.get("name") else None

    @property
    def n_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


@st.cache_resource(max_entries=12, show_spinner="Loading checkpoint...")
def _load(path: str, mtime: float) -> Loaded:
    import interp

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
    try:
        path = resolve(path)
        return _load(str(path), stamp(path))
    except (CheckpointError, ValueError, OSError, KeyError, TypeError) as e:
        raise AppError(f"Cannot load checkpoint `{path}`: {e}") from None


def get(key: tuple[str, float]) -> Loaded:
    return _load(*key)


def tokenizer_digest(path: Path) -> Optional[str]:
    """Hash of a checkpoint's tokenizer.json (None without one): equal digests = same tokenizer."""
    try:
        f = resolve(path) / "tokenizer.json"
        return hashlib.sha1(f.read_bytes()).hexdigest() if f.is_file() else None
    except (OSError, CheckpointError):
        return None


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


@st.cache_resource(max_entries=8, show_spinner=False)
def _task(task_json: str):
    from interp.tasks import make_task

    return make_task(**json.loads(task_json))


# Tasks whose test and val examples are drawn before the training ones, so building them with
# n_train=0 gives the same test split, fast. (Not modular: its test split is what train leaves.)
TEST_FIRST = ("arithmetic", "induction", "graph", "rules")  # graph, rules: FactsTask draws test, val, train


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


# ------------------------------------------------------------------ cached analyses
@st.cache_data(max_entries=64, show_spinner=False)
def attention(key: tuple, ids: tuple[int, ...]) -> np.ndarray:
    """(layer, head, q, k) float32 patterns."""
    import torch
    from interp.cache import cached

    ck = get(key)
    cache = cached(ck.model, torch.tensor([ids]), names="pattern", batch=0)
    return torch.stack([cache[f"blocks.{l}.attn.hook_pattern"] for l in range(ck.cfg.n_layers)]).float().numpy()


def b64(a: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(a).tobytes()).decode("ascii")


THUMB = 48  # thumbnails are max-pooled to at most THUMB x THUMB cells


@st.cache_data(max_entries=32, show_spinner=False)
def thumbnails(key: tuple, ids: tuple[int, ...]) -> dict:
    """Every head's pattern max-pooled to <= THUMB x THUMB, uint8 scaled by each head's max,
    base64; plus those maxima (the component rebuilds shared or per-head colour scales)."""
    pats = attention(key, ids)
    L, H, T, _ = pats.shape
    t = min(T, THUMB)
    edges = np.linspace(0, T, t + 1).round().astype(int)
    pooled = np.maximum.reduceat(np.maximum.reduceat(pats, edges[:-1], axis=2), edges[:-1], axis=3)
    mx = pooled.reshape(L, H, -1).max(-1)
    q = np.round(255 * pooled / np.maximum(mx, 1e-12)[..., None, None]).astype(np.uint8)
    return {"t": t, "data": b64(q), "max": [round(float(x), 4) for x in mx.reshape(-1)]}


@st.cache_data(max_entries=64, show_spinner=False)
def layer_patterns(key: tuple, ids: tuple[int, ...], layer: int) -> str:
    """One layer's (head, q, k) patterns as float16, base64: what the browser switches heads on."""
    return b64(attention(key, ids)[layer].astype(np.float16))


@st.cache_data(max_entries=64, show_spinner=False)
def head_rows(key: tuple, ids: tuple[int, ...]) -> tuple[list[dict], str]:
    """Every head's scores on the prompt, and where induction was measured: on repeated random
    tokens, or (a context too short for them, e.g. n_ctx=4) on the prompt itself."""
    import torch
    from interp import heads

    ck = get(key)
    tokens = torch.tensor([ids])
    try:
        return heads.head_scores(ck.model, tokens).to_rows(), "induction on repeated random tokens"
    except ValueError:  # the repeated-token probe does not fit the model's context
        return heads.head_scores(ck.model, tokens, induction_tokens=False).to_rows(), \
            f"induction on the prompt itself (repeated random tokens do not fit n_ctx={ck.cfg.n_ctx})"


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
def lens(key: tuple, ids: tuple[int, ...], stream: str, k: int, target: Optional[int]):
    """Logit lens; `target` = a token id scored at every position (None: the next token)."""
    import torch
    from interp.lens import logit_lens

    tokens = torch.tensor([ids])
    targets = None if target is None else torch.full_like(tokens, int(target))
    return logit_lens(get(key).model, tokens, k=k, stream=stream, targets=targets)


@st.cache_data(max_entries=64, show_spinner=False)
def steps_trace(key: tuple, ids: tuple[int, ...], n_new: int, k: int, greedy: bool, temperature: float, seed: int,
                stop_at_eos: bool):
    import torch
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
    import torch
    import torch.nn.functional as F

    model = get(key).model
    with torch.no_grad():
        logits = model(torch.tensor([ids]))[0].float()
    return F.cross_entropy(logits[:-1], torch.tensor(ids[1:]), reduction="none").tolist()


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
    import torch
    from interp import steps

    return steps.answer_to_step_attention(get(key).model, torch.tensor([ids]), torch.tensor([segments])).numpy()


# ------------------------------------------------------------------ Attribution
class Unsupported(AppError):
    """The analysis does not apply to this model (the library says why); shown as a note."""


@st.cache_data(max_entries=64, show_spinner=False)
def top1(key: tuple, ids: tuple[int, ...]) -> tuple[int, ...]:
    """The model's top-1 next token at every position."""
    import torch

    with torch.no_grad():
        return tuple(get(key).model(torch.tensor([ids]))[0].argmax(-1).tolist())


@st.cache_data(max_entries=64, show_spinner=False)
def logit_attribution(key: tuple, ids: tuple[int, ...], target, wrong: Optional[int]):
    """`interp.attribution.direct_logit_attribution` of one prompt at every position. `target`:
    None (the next token), one id, or a tuple of one id per position; `wrong`: a contrast id."""
    import torch
    from interp.attribution import direct_logit_attribution

    tgt = torch.tensor([target]) if isinstance(target, tuple) else target
    try:
        return direct_logit_attribution(get(key).model, torch.tensor([ids]), target=tgt, wrong=wrong)
    except NotImplementedError as e:  # shaped attention: the library says why
        raise Unsupported(f"Direct logit attribution does not apply to this model. {e}") from None


# ------------------------------------------------------------------ Patching
PATCH_METRICS = ("logit_diff", "prob", "logprob", "loss")


def _specials(ck: Loaded) -> set[int]:
    """Ids of special tokens (<bos>, <eos>, <latent>, ...): never used as replacements."""
    out = {int(i) for i in ck.tokenizer.special_token_ids().values() if i is not None}
    vocab = decode_list(ck)
    return out | {i for i, s in enumerate(vocab) if len(s) > 2 and s.startswith("<") and s.endswith(">")}


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
    import torch

    ids = [int(i) for i in ids]
    specials = _specials(ck)
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


SEARCH_WINDOW = 32  # free text: the last positions a default one-token change is searched over


@st.cache_data(max_entries=32, show_spinner=False)
def _one_token_corruption(key: tuple, ids: tuple[int, ...]) -> Optional[tuple[list[int], str, Optional[int]]]:
    """One token replaced by one of the model's own alternatives there (its top-3 at the
    position before), found with one batched forward over the candidates: (ids, what changed,
    the position whose top-1 prediction the change alters, or None).

    Task prompts: the metric reads where the answer is predicted; the nearest change before it
    that alters the model's answer wins. Free text: any later position may read, and the change
    whose effect travels furthest (then: reaches latest) wins, so patching shows information
    moving between positions; when none travels, the last token is changed."""
    import torch

    ck = get(key)
    T = len(ids)
    task = is_task(ck)
    p = metric_positions(ck, ids, ids)[0]
    specials = _specials(ck)
    with torch.no_grad():
        logits = ck.model(torch.tensor([ids]))[0]
    base = logits.argmax(-1)
    qs = range(p - 1, max(0, p - 12), -1) if task else range(T - 2, max(0, T - 2 - SEARCH_WINDOW), -1)
    cands = []
    for q in list(qs) + [p]:
        if q < 1 or ids[q] in specials:
            continue
        alts = [int(t) for t in logits[q - 1].topk(min(6, ck.cfg.d_vocab)).indices
                if int(t) not in specials and int(t) != ids[q]][:3]
        cands += [(q, t) for t in alts]
    if not cands:
        return None
    batch = torch.tensor([ids] * len(cands))
    for i, (q, t) in enumerate(cands):
        batch[i, q] = t
    with torch.no_grad():
        flips = ck.model(batch).argmax(-1) != base  # (candidate, pos)
    best, at = None, None
    for i, (q, _) in enumerate(cands):
        if task:
            if bool(flips[i, p]):
                best, at = i, p
                break
            continue
        later = [r for r in range(q + 2, T) if bool(flips[i, r])]  # read at least two positions on
        if later and (best is None or (later[-1] - q, later[-1]) > (at - cands[best][0], at)):
            best, at = i, later[-1]
    if best is None:  # nothing travels: the change next to the metric position that moves it, if any
        last = [i for i, (q, _) in enumerate(cands) if q == p]
        best = next((i for i in last if bool(flips[i, p])), last[0] if last else 0)
        at = p if bool(flips[best, p]) else None
    q, t = cands[best]
    vocab = decode_list(ck)
    out = list(ids)
    out[q] = t
    how = f"token {q} {vocab[ids[q]]} → {vocab[t]}"
    how += f", which changes the prediction at position {at}" if at is not None else \
        " (no single change alters the model's prediction here)"
    return out, how, (None if task else at)


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


_PATCH_LOCK = threading.Lock()
PATCH_CACHE = 64


@st.cache_resource(show_spinner=False)
def _patch_results() -> "OrderedDict":
    """Finished sweeps, newest last. Not st.cache_data: the sweep reports progress to a bar
    drawn outside it, which Streamlit's cached-element replay forbids."""
    return OrderedDict()


def patch_metric(name: str, clean: Sequence[int], positions: Sequence[int], good: Sequence[int], bad: Sequence[int]):
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
    import torch
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


# ------------------------------------------------------------------ Latent thoughts (Coconut)
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
