import math

import pytest
import torch
import torch.nn.functional as F

from tolerance import approx_tol, close

from interp import steps
from models import presets

pytestmark = pytest.mark.equivalence  # run again on other CPU kernels (Makefile `test`)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return presets.make("math-compact", "tiny", init_range=0.3).eval()


def make_examples(n=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        p, s, a = 3 + i % 2, 2 + i % 3, 2
        ids = torch.randint(1, 128, (p + s + a,), generator=g)
        seg = torch.tensor([0] * p + [1] * s + [2] * a)
        out.append(dict(input_ids=ids, segments=seg))
    return out


def test_segment_metrics_vs_direct(model):
    batch = steps._pad_examples(make_examples(), pad_id=0)
    m = steps.segment_metrics(model, batch)
    with torch.no_grad():
        logits = model(batch["input_ids"], attention_mask=batch["attention_mask"])
    for name, j in steps.SEGMENTS.items():
        losses, hits = [], []
        for b in range(len(batch["input_ids"])):
            for t in range(1, batch["input_ids"].shape[1]):
                if batch["attention_mask"][b, t] and batch["segments"][b, t] == j:
                    lg = logits[b, t - 1]
                    tgt = batch["input_ids"][b, t]
                    losses.append(float(F.cross_entropy(lg[None], tgt[None])))
                    hits.append(float(lg.argmax() == tgt))
        assert m[name]["n_tokens"] == len(losses)
        want = sum(losses) / len(losses)
        assert m[name]["loss"] == pytest.approx(want, **approx_tol(want))
        assert m[name]["accuracy"] == pytest.approx(sum(hits) / len(hits), **approx_tol(sum(hits) / len(hits)))
    assert m["all"]["n_tokens"] == sum(m[s]["n_tokens"] for s in steps.SEGMENTS)
    # -100 labels are skipped; a list of batches pools token-weighted
    batch2 = dict(batch, labels=batch["input_ids"].masked_fill(batch["segments"] != 2, -100))
    m2 = steps.segment_metrics(model, [batch2])
    assert m2["prompt"]["n_tokens"] == 0 and math.isnan(m2["prompt"]["loss"])
    assert m2["answer"]["loss"] == pytest.approx(m["answer"]["loss"], **approx_tol(m["answer"]["loss"]))


def test_answer_to_step_attention_vs_direct(model):
    batch = steps._pad_examples(make_examples(), pad_id=0)
    got = steps.answer_to_step_attention(model, batch["input_ids"], batch["segments"], batch["attention_mask"])
    _, c = model.run_with_cache(batch["input_ids"], attention_mask=batch["attention_mask"])
    assert got.shape == (model.cfg.n_layers, model.cfg.n_heads)
    for layer in range(model.cfg.n_layers):
        p = c[f"blocks.{layer}.attn.hook_pattern"]
        vals = []
        for b in range(p.shape[0]):
            seg = batch["segments"][b]
            for q in (seg == 2).nonzero().flatten():
                vals.append(p[b, :, q][:, seg == 1].sum(-1))
        close(got[layer], torch.stack(vals).mean(0))
    none = steps.answer_to_step_attention(model, batch["input_ids"], torch.zeros_like(batch["segments"]))
    assert torch.isnan(none).all()


def test_split_example():
    prompt, comp, seg = steps.split_example([5, 6, 7, 8, 9, 0], [0, 0, 1, 2, 2, -1])
    assert prompt == [5, 6] and comp == [7, 8, 9] and seg == [1, 2, 2]


def test_compare_checkpoints(model):
    examples = make_examples(4)
    # an example whose completion is exactly what the model greedily produces -> exact match
    prompt = examples[0]["input_ids"][:3]
    with torch.no_grad():
        gen = model.generate(prompt[None], max_new_tokens=4, greedy=True, stop_tokens=[])[0].tolist()
    examples.append(dict(input_ids=torch.tensor(gen), segments=torch.tensor([0, 0, 0, 1, 1, 2, 2])))
    other = presets.make("math-compact", "tiny").eval()
    rows = steps.compare_checkpoints({"a": (model, None), "b": other}, examples, batch_size=3)
    assert [r["name"] for r in rows] == ["a", "b"]
    direct = steps.segment_metrics(model, steps._pad_examples(examples, 0))
    assert rows[0]["loss/answer"] == pytest.approx(direct["answer"]["loss"], **approx_tol(direct["answer"]["loss"]))
    assert rows[0]["exact_match"] >= 1 / 5 and rows[0]["answer_match"] >= rows[0]["exact_match"]
    assert rows[0]["answer_to_step_attn/argmax"].startswith("L") and rows[0]["n_examples"] == 5
    always = steps.compare_checkpoints({"a": model}, examples, is_correct=lambda e, g: True)
    assert always[0]["answer_match"] == 1.0
