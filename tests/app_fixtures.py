"""Tiny stand-ins for the shipped reference checkpoints, for the app tests and benchmarks.

`make_checkpoints(root)` writes, with the real tokenizers and `interp.save`:

    shakespeare_factored_alibi   factored-alibi, char-level on tinyshakespeare (ALiBi, xt/xe streams)
    shakespeare_vanilla          vanilla (learned positions, n_ctx=48: long prompts must be refused)
    add3_none / add3_mask_steps / add3_mask_answer
                                 math-compact, 3-digit scratchpad addition, one per step_masking_mode
    induction_attn_only          2-layer attention-only on repeated random tokens
    induction_sasp               (not in NAMES; `make_checkpoint` only) shaped attention, SAS-P
    broken                       a directory whose config.json is not JSON

`make_run(root, name)` writes a training run the way the trainer does
(`interp.checkpoint.CheckpointManager`: `step_*/` checkpoints, `last`/`best` pointers and a
run-level metrics.jsonl with train, eval and per-head progress-measure events).

Weights are random (perturbed init), plus `train_steps` optimiser steps on the first
arithmetic model so attention is not uniform; that is enough to exercise every page.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

import interp
from interp.tasks import make_task
from interp.tokenizers import char_tokenizer
from models import presets

REPO = Path(__file__).resolve().parents[1]
ADD3 = dict(name="arithmetic", digits=3, format="scratchpad", n_train=200, n_val=20, n_test=40)
TEXT = dict(name="text", path="data/tinyshakespeare.txt", tokenizer="char", seq_len=48)
INDUCTION = dict(name="induction", vocab=16, seq_len=8, n_train=200, n_val=20, n_test=20)
NAMES = ("shakespeare_factored_alibi", "shakespeare_vanilla", "add3_none", "add3_mask_steps",
         "add3_mask_answer", "induction_attn_only")


def _shakespeare_tokenizer():
    return char_tokenizer((REPO / "data" / "tinyshakespeare.txt").read_text())


def _perturb(model, seed: int, scale: float = 0.3):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return model.eval()


def _train(model, task, steps: int, lr: float = 3e-3):
    if steps <= 0:
        return model
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    it = task.batches("train", 32, shuffle=True, seed=0, epochs=None)
    for _ in range(steps):
        b = next(it)
        loss = model(b.input_ids, labels=b.labels, attention_mask=b.attention_mask, return_type="loss")
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def make_checkpoint(root: Path, name: str, train_steps: int = 0, size: str = "tiny") -> Path:
    torch.manual_seed(0)
    metrics = [{"step": 0, "train/loss": 4.0}, {"step": 10, "train/loss": 2.5, "eval/loss": 2.6}]
    if name.startswith("shakespeare"):
        tok = _shakespeare_tokenizer()
        preset = "factored-alibi" if "alibi" in name else "vanilla"
        extra = dict(n_ctx=48) if preset == "vanilla" else {}
        model = presets.make(preset, size, d_vocab=tok.vocab_size, **tok.special_token_ids(), **extra)
        model = _perturb(model, seed=1)
        task = dict(TEXT)
    elif name.startswith("add3"):
        mode = name[len("add3_"):]
        task = dict(ADD3, step_masking_mode=mode)
        t = make_task(**task)
        tok = t.tokenizer
        model = presets.make("math-compact", "tiny", d_vocab=tok.vocab_size, **tok.special_token_ids())
        model = _perturb(model, seed=2 + len(mode), scale=0.1)
        model = _train(model, t, train_steps)
    elif name == "induction_attn_only":
        task = dict(INDUCTION)
        t = make_task(**task)
        tok = t.tokenizer
        model = presets.make("vanilla", "tiny", attn_only=True, d_vocab=tok.vocab_size, **tok.special_token_ids())
        model = _perturb(model, seed=7)
    elif name == "induction_sasp":  # shaped attention: direct logit attribution refuses it
        task = dict(INDUCTION)
        t = make_task(**task)
        tok = t.tokenizer
        model = presets.make("sasp", "tiny", d_vocab=tok.vocab_size, **tok.special_token_ids())
        model = _perturb(model, seed=8, scale=0.05)
    else:
        raise ValueError(f"unknown fixture checkpoint {name!r}")
    return interp.save(model, root / name, tok, task=task, metrics=metrics,
                       training={"step": 10, "eval": {"loss": 2.6, "answer_accuracy": 0.125}})


def make_run(root: Path, name: str = "add3_run", steps=(100, 200, 300), train_steps_each: int = 2) -> Path:
    """A small add3 run: the same model saved after a few optimiser steps at each `steps`
    entry, with a metrics log whose loss falls and whose `progress` events carry a nested
    per-head list (what progress measures look like)."""
    from interp.checkpoint import CheckpointManager

    torch.manual_seed(0)
    task = dict(ADD3, step_masking_mode="none")
    t = make_task(**task)
    tok = t.tokenizer
    model = presets.make("math-compact", "tiny", d_vocab=tok.vocab_size, **tok.special_token_ids())
    model = _perturb(model, seed=11, scale=0.1)
    run = Path(root) / name
    manager = CheckpointManager(run, keep_last=len(steps))
    rows = []
    for i, step in enumerate(steps):
        model = _train(model, t, train_steps_each)
        loss = 3.0 / (i + 1)
        rows += [{"event": "train", "step": step, "loss": loss, "lr": 1e-3, "grad_norm": 1.0 + i},
                 {"event": "eval", "step": step, "split": "val", "loss": loss * 1.1, "token_acc": 0.3 * (i + 1)},
                 {"event": "progress", "step": step, "induction": [[0.1 * i, 0.2], [0.3, 0.05 * i]],
                  "restricted_loss": loss / 2, "note": "text is skipped", "ok": True}]
        (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        manager.save(model, step, tok, metric=loss * 1.1, task=task, metrics=list(rows),
                     training={"step": step, "eval": {"loss": loss * 1.1}})
    return run


def make_checkpoints(root, names=NAMES, train_steps: int = 0, broken: bool = True, size: str = "tiny") -> dict[str, Path]:
    """`size` applies to the Shakespeare models (`character` = the shipped 6x6, d_model 384 shape)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    out = {n: make_checkpoint(root, n, train_steps if n == "add3_none" else 0, size) for n in names}
    if broken:
        b = root / "broken"
        b.mkdir(exist_ok=True)
        (b / "config.json").write_text("{ not json")
        out["broken"] = b
    return out


if __name__ == "__main__":  # python tests/app_fixtures.py /tmp/ckpts
    import sys

    made = make_checkpoints(sys.argv[1] if len(sys.argv) > 1 else "/tmp/app_ckpts", train_steps=int(os.environ.get("STEPS", "0")))
    print(json.dumps({k: str(v) for k, v in made.items()}, indent=1))
