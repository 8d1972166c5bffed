"""The GPU-trained reference checkpoints in data/checkpoints load, evaluate and generate on CPU
and show the behaviour their cards claim."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import interp
from interp.heads import head_scores
from interp.tasks import collate, make_task
from models.generation import generate

ROOT = Path(__file__).resolve().parents[1] / "data" / "checkpoints"
NAMES = [
    "add3_none", "add3_mask_steps", "add3_mask_answer",
    "shakespeare_factored_alibi", "shakespeare_vanilla", "induction_attn_only",
]


def load(name):
    model, tok = interp.load(ROOT / name)
    task = make_task(**json.loads((ROOT / name / "config.json").read_text())["task"])
    return model, tok, task


@pytest.mark.parametrize("name", NAMES)
def test_shipped_checkpoint_is_small_and_complete(name):
    d = ROOT / name
    for f in ("config.json", "model.safetensors", "tokenizer.json", "card.md", "metrics.jsonl"):
        assert (d / f).is_file(), f"{name}: {f} missing"
    assert (d / "model.safetensors").stat().st_size <= 8 * 2**20
    card = (d / "card.md").read_text()
    assert f"interp train --config configs/reference/{name}.yaml" in card
    assert (Path(__file__).resolve().parents[1] / "configs" / "reference" / f"{name}.yaml").is_file()
    assert sum(p.stat().st_size for p in ROOT.rglob("*") if p.is_file()) <= 40 * 2**20


def test_add3_none_generates_correct_sums_on_cpu():
    model, tok, task = load("add3_none")
    examples = task.split("test")[:32]
    spans = [task.answer_spans(e) for e in examples]
    out = generate(model, [p for p, _ in spans], max_new_tokens=max(len(t) for _, t in spans), greedy=True,
                   return_output=True)
    correct = 0
    for (prompt, target), new in zip(spans, out.new_tokens):
        correct += new[: len(target)] == target
    assert correct / len(spans) >= 0.95  # the card reports exact match 1.0 on val
    text = tok.decode(out.tokens[0][out.attention_mask[0]].tolist())
    a, b = text.split("=")[0].replace("<bos>", "").split("+")
    assert text.split("<eot>")[1].split("<eos>")[0] == str(int(a) + int(b))


@pytest.mark.parametrize("name, answer_loss", [("add3_mask_steps", "low"), ("add3_mask_answer", "high")])
def test_step_masking_modes_learned_what_they_were_shown(name, answer_loss):
    from interp.steps import segment_metrics

    model, tok, task = load(name)
    relabelled = make_task(**{**task.config(), "step_masking_mode": "none"})
    batch = collate(relabelled.split("test")[:64], tok.pad_token_id)
    m = segment_metrics(model, batch)
    if answer_loss == "low":  # answer trained, steps masked
        assert m["answer"]["loss"] < 0.05 and m["step"]["loss"] > 1.0
    else:  # steps trained, answer masked
        assert m["step"]["loss"] < 0.05 and m["answer"]["loss"] > 1.0


@pytest.mark.parametrize("name", ["shakespeare_factored_alibi", "shakespeare_vanilla"])
def test_shakespeare_loss_far_below_chance(name):
    model, tok, task = load(name)
    batch = collate(task.split("val")[:8], tok.pad_token_id)
    with torch.no_grad():
        loss = model(batch.input_ids, labels=batch.labels, attention_mask=batch.attention_mask, return_type="loss")
    assert loss.item() < 1.7 < torch.log(torch.tensor(float(tok.vocab_size))).item()
    text = model.to_string(generate(model, "ROMEO:", max_new_tokens=40, greedy=True)[0])
    assert text.startswith("<bos>ROMEO:") and len(text) > 40


def test_factored_alibi_extrapolates_past_n_ctx():
    model, tok, task = load("shakespeare_factored_alibi")
    ids = torch.tensor([tok.encode(task.split("val")[0].text.replace("<bos>", "") * 3)])[:, : 2 * model.cfg.n_ctx]
    with torch.no_grad():
        loss = model(ids, return_type="loss")
    assert loss.item() < 2.0


def test_induction_checkpoint_has_an_induction_head():
    model, tok, task = load("induction_attn_only")
    batch = collate(task.split("test")[:64], tok.pad_token_id)
    with torch.no_grad():
        logits = model(batch.input_ids, attention_mask=batch.attention_mask)
    targets = batch.labels[:, 1:]
    keep = targets != -100
    acc = (logits[:, :-1].argmax(-1)[keep] == targets[keep]).float().mean()
    assert acc > 0.98
    scores = head_scores(model, batch.input_ids[:8], attention_mask=batch.attention_mask[:8], induction_tokens=False)
    assert scores.induction[1].max() > 0.9  # a layer-1 head attends to the token after the earlier copy
    assert scores.prev_token[0].max() > 0.6  # fed by a layer-0 previous-token head
    assert scores.induction[0].max() < 0.2  # and not a positional shortcut in layer 0
