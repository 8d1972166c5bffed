"""`interp.thoughts`' tracked answer token, example ranking and donor search on the shipped
add3 Coconut checkpoint, each against a plain loop over the library's own primitives."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from interp import thoughts

ROOT = Path(__file__).resolve().parents[1] / "data" / "checkpoints"


@pytest.fixture(scope="module")
def add3():
    torch.set_grad_enabled(False)
    yield thoughts.load(ROOT / "coconut_add3_coconut", task_overrides={"n_train": 0})
    torch.set_grad_enabled(True)


def test_tracked_answer_token_offsets(add3):
    """answer_offset=j reads P(answer token j) at the position before it, teacher-forced."""
    reasoner, tok, staged = add3
    for off in range(3):
        batch = thoughts.latent_batch(staged, "test", 4, answer_offset=off)
        logits = reasoner(batch.input_ids).float()
        for b in range(4):
            answer = staged.parts("test")[b].answer[0]
            pos = int(batch.eot[b]) + off  # predicts answer[off]
            assert int(batch.answer[b]) == answer[off] and int(batch.answer_pos[b]) == pos + 1
            assert int(batch.input_ids[b, pos + 1]) == answer[off]
            want = logits[b, pos].softmax(-1)[answer[off]]
            got = thoughts.answer_prob_by_thoughts(reasoner, staged, "test", 1, start=b, answer_offset=off)[0, -1]
            assert float(got) == pytest.approx(float(want), rel=1e-5, abs=1e-7)
    with pytest.raises(ValueError, match="outside the answer"):
        thoughts.latent_batch(staged, "test", 1, answer_offset=9)


def test_deciding_offset_is_where_the_thoughts_raise_the_probability_most(add3):
    reasoner, _, staged = add3
    for i in range(3):
        n_answer = len(staged.parts("test")[i].answer[0]) - 1  # <eos> excluded
        gains = []
        for off in range(n_answer):
            curve = thoughts.answer_prob_by_thoughts(reasoner, staged, "test", 1, start=i, answer_offset=off)[0]
            gains.append(float(curve[-1] - curve[0]))
        got = thoughts.deciding_answer_offset(reasoner, staged, "test", i)
        assert gains[got] == pytest.approx(max(gains), abs=1e-5)
    # the first test problem, 876+141=1017: its leading carry is settled by the question alone
    tl = thoughts.timeline(reasoner, staged, "test", 0, 3)
    assert tl["answer_offset"] == thoughts.deciding_answer_offset(reasoner, staged, "test", 0) != 0
    assert tl["answer_prob"][-1] - tl["answer_prob"][0] > 0.5


def test_showcase_ranks_by_gain(add3):
    reasoner, _, staged = add3
    ranked = thoughts.showcase(reasoner, staged, "test", n=6)
    assert sorted(r["index"] for r in ranked) == list(range(6))
    assert [r["gain"] for r in ranked] == sorted((r["gain"] for r in ranked), reverse=True)
    for r in ranked[:2]:
        curve = thoughts.answer_prob_by_thoughts(reasoner, staged, "test", 1, start=r["index"],
                                                 answer_offset=r["answer_offset"])[0]
        assert r["p_none"] == pytest.approx(float(curve[0]), abs=1e-5)
        assert r["p_all"] == pytest.approx(float(curve[-1]), abs=1e-5)


def test_best_donor_is_the_largest_change_among_the_candidates(add3):
    reasoner, _, staged = add3
    index, slot, cands = 0, 2, [1, 2, 3, 4, 5]
    off = thoughts.deciding_answer_offset(reasoner, staged, "test", index)
    got = thoughts.best_donor(reasoner, staged, "test", index, slot, cands, answer_offset=off)
    batch = thoughts.latent_batch(staged, "test", 1, start=index, answer_offset=off)
    one = {}
    for c in cands:
        r = thoughts.patch_thought(reasoner, batch, thoughts.latent_batch(staged, "test", 1, start=c), slot)
        one[c] = (bool(r["top_patched"][0] != r["top"][0]), float(r["p_answer"][0] - r["p_answer_patched"][0]))
    best = max(cands, key=lambda c: one[c])
    assert got["donor"] == best and got["flipped"] == one[best][0]
    assert got["p_answer"] - got["p_answer_patched"] == pytest.approx(one[best][1], abs=1e-5)
    assert thoughts.best_donor(reasoner, staged, "test", index, 7, cands) is None  # no such slot
