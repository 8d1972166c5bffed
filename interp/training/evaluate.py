"""Evaluation on the device, in large batches: loss, per-segment loss and accuracy, and greedy
exact match of task answers (batched decoding through `models.generation.generate`).

Every sum stays on the device until the end of the split: one host read per call.
"""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence, Union

import torch
import torch.nn.functional as F

from models import HookedTransformer

from .config import TrainConfigError, autocast_dtype, build_task, resolve_device
from .config import autocast as autocast_ctx
from .data import ExampleTensors, materialise

SEGMENT_NAMES = ("prompt", "step", "answer")
LOGIT_BUDGET = 1 << 26  # logits elements per eval chunk (256 MiB in fp32)


def pad_id_of(tokenizer: Any, model: Optional[HookedTransformer] = None) -> int:
    for source in (tokenizer, getattr(model, "cfg", None)):
        pad = getattr(source, "pad_token_id", None)
        if pad is not None:
            return int(pad)
    return 0


class EvalData:
    """Per-split tensors and answer spans, built once per task and device and reused by
    every evaluation of a run."""

    def __init__(self, task: Any, pad_id: int, device: torch.device):
        self.task, self.pad_id, self.device = task, pad_id, device
        self._tensors: dict[str, Any] = {}
        self._answers: dict[tuple[str, int], Optional[list]] = {}

    def tensors(self, split: str):
        if split not in self._tensors:
            self._tensors[split] = materialise(self.task, split, self.pad_id, self.device)
        return self._tensors[split]

    def answers(self, split: str, n: int) -> Optional[list[tuple[list[int], list[int]]]]:
        """(prompt, target) id lists of the first `n` examples, or None if the task has none."""
        key = (split, n)
        if key not in self._answers:
            examples = self.task.split(split)
            pairs: Optional[list] = []
            for i in range(min(n, len(examples))):
                try:
                    spans = self.task.answer_spans(examples[i])
                except NotImplementedError:
                    spans = None
                if spans is None:
                    pairs = None
                    break
                prompt, target = [int(t) for t in spans[0]], [int(t) for t in spans[1]]
                if prompt and target:
                    pairs.append((prompt, target))
            self._answers[key] = pairs
        return self._answers[key]


def _rows(tensors, start: int, stop: int, max_len: Optional[int]):
    """(input_ids, labels, attention_mask, segments) of rows [start, stop)."""
    if isinstance(tensors, ExampleTensors):
        cols = slice(None, max_len)
        return (tensors.input_ids[start:stop, cols], tensors.labels[start:stop, cols],
                tensors.attention_mask[start:stop, cols], tensors.segments[start:stop, cols])
    ids, labels = tensors.rows(torch.arange(start, stop, device=tensors.starts.device), max_len)[:2]
    mask = torch.ones_like(ids, dtype=torch.bool)
    segments = torch.full_like(ids, 2)  # text: every token is an "answer" token ...
    segments[:, 0] = 0  # ... after the prompt (<bos>, or the first token)
    return ids, labels, mask, segments


@torch.no_grad()
def evaluate(
    model: HookedTransformer,
    tokenizer: Any,
    task: Any,
    split: str = "val",
    *,
    batch_size: Optional[int] = None,
    max_batches: Optional[int] = None,
    n_generate: int = 64,
    max_len: Optional[int] = None,
    device: Union[None, str, torch.device] = None,
    autocast: Optional[torch.dtype] = None,
    data: Optional[EvalData] = None,
) -> dict:
    """Loss / perplexity / token accuracy on `split` (the task's labels), loss and token
    accuracy per segment (prompt / step / answer: every real next token of that segment,
    whatever the training mask), and greedy exact-match accuracy of the answers
    (`task.answer_spans` + batched greedy decoding) on the first `n_generate` examples.

    `max_batches` limits the examples to the first `batch_size * max_batches`; the forward
    passes themselves run in chunks as large as a logits budget allows (`batch_size` rows
    at least). Metrics a task cannot give (no answer spans, an absent segment) are None.
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    data = data if data is not None else EvalData(task, pad_id_of(tokenizer, model), device)
    tensors = data.tensors(split)
    n_all = len(tensors)
    n_examples = n_all if max_batches is None else min(n_all, (batch_size or 32) * max_batches)
    width = min(tensors.width, max_len or tensors.width)
    rows = max(batch_size or 1, LOGIT_BUDGET // max(1, width * model.cfg.d_vocab))
    was_training = model.training
    model.eval()
    S = len(SEGMENT_NAMES)
    sums = torch.zeros(4 + 3 * S, dtype=torch.float64, device=device)  # loss, n, correct, real, per segment x3
    try:
        for start in range(0, n_examples, rows):
            ids, labels, mask, segments = _rows(tensors, start, min(start + rows, n_examples), max_len)
            with autocast_ctx(device, autocast):
                logits = model(ids)  # right padding: no mask needed (a real query never sees a later pad)
            logits = logits[:, :-1].float()
            nxt = ids[:, 1:]
            token_loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), nxt.reshape(-1),
                                         reduction="none").view_as(nxt)
            hit = logits.argmax(-1) == nxt
            real = mask[:, 1:]
            tgt = (labels[:, 1:] != -100) & real
            seg = segments[:, 1:]
            parts = [(token_loss * tgt).sum(), tgt.sum(), (hit & tgt).sum(), real.sum() + mask[:, 0].sum()]
            for s in range(S):
                sel = (seg == s) & real
                parts += [(token_loss * sel).sum(), sel.sum(), (hit & sel).sum()]
            sums += torch.stack([p.double() for p in parts])
        v = sums.tolist()  # the one host read of the loss pass
        n = int(v[1])
        loss = v[0] / n if n else float("nan")
        metrics: dict[str, Any] = {
            "split": split,
            "loss": loss,
            "ppl": math.exp(min(loss, 50.0)) if n else float("nan"),
            "token_acc": v[2] / n if n else None,
            "n_examples": n_examples,
            "n_tokens": int(v[3]),
        }
        for s, name in enumerate(SEGMENT_NAMES):
            lo, k, c = v[4 + 3 * s : 7 + 3 * s]
            metrics[f"loss_{name}"] = lo / k if k else None
            metrics[f"token_acc_{name}"] = c / k if k else None
        pairs = data.answers(split, n_generate) if n_generate > 0 else None
        metrics.update(exact_match(model, pairs, device, autocast))
    finally:
        model.train(was_training)
    return metrics


@torch.no_grad()
def exact_match(model: HookedTransformer, pairs: Optional[Sequence[tuple[list[int], list[int]]]],
                device: torch.device, dtype: Optional[torch.dtype] = None, chunk: int = 4096) -> dict:
    """Greedy decoding from each prompt, all prompts of a chunk in one batch; an example is
    right when the first len(target) generated tokens equal the target exactly."""
    from models.generation import generate

    if not pairs:
        return {"exact_match": None, "n_generated": 0}
    learned = model.cfg.uses_learned_positions  # learned or learned+rope: bounded by n_ctx
    right = 0
    for start in range(0, len(pairs), chunk):
        group = pairs[start : start + chunk]
        max_new = max(len(t) for _, t in group)
        if learned and max(len(p) for p, _ in group) + max_new > model.cfg.n_ctx:
            groups = [[pair] for pair in group]  # keep each row within the learned positions
        else:
            groups = [group]
        for g in groups:
            with autocast_ctx(device, dtype):
                out = generate(model, [p for p, _ in g], max_new_tokens=max(len(t) for _, t in g), greedy=True,
                               stop_tokens=[], return_output=True)
            right += sum(new[: len(t)] == t for new, (_, t) in zip(out.new_tokens, g))
    return {"exact_match": right / len(pairs), "n_generated": len(pairs)}


def evaluate_checkpoint(path, split: str = "val", *, device: str = "auto", batch_size: int = 32,
                        max_batches: Optional[int] = None, n_generate: int = 64) -> dict:
    """Load a checkpoint, rebuild its task from config.json and evaluate it. A checkpoint of
    `train.trainer: coconut` is evaluated in the mode it was trained in (Coconut thoughts, pause
    tokens, CoT, No-CoT; `interp.training.coconut.evaluate_coconut_checkpoint`), and `mode` /
    `evaluated_as` say which."""
    from .. import checkpoint as ckpt_lib

    dev = resolve_device(device)
    model, tokenizer = ckpt_lib.load(path, device=dev)
    _, cfg = ckpt_lib.load_config(path)
    if not cfg.get("task"):
        raise TrainConfigError(f"{ckpt_lib.resolve(path)}: config.json has no 'task'; cannot evaluate without one")
    task = build_task(cfg["task"])
    if tokenizer is None:
        tokenizer = task.tokenizer
    from .coconut import coconut_run_options, evaluate_coconut_checkpoint

    if coconut_run_options(cfg) is not None:  # latent / pause / CoT runs answer the way they were trained
        metrics = evaluate_coconut_checkpoint(model, cfg, split, device=dev, batch_size=batch_size,
                                              max_batches=max_batches, n_generate=n_generate,
                                              amp=autocast_dtype("auto", dev))
    else:
        metrics = evaluate(model, tokenizer, task, split, batch_size=batch_size, max_batches=max_batches,
                           n_generate=n_generate, device=dev, autocast=autocast_dtype("auto", dev))
    metrics["checkpoint"] = str(ckpt_lib.resolve(path))
    metrics["step"] = (cfg.get("training") or {}).get("step")
    return metrics
