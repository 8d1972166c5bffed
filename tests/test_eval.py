"""interp.eval (loss at a context length, per position, ICL score) against plain loops, and
analyses/length_extrapolation.py on the shipped text checkpoints (a short slice)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tolerance import approx_tol, close

from interp import eval as ev
from models import presets

pytestmark = pytest.mark.equivalence  # run again on other CPU kernels (Makefile `test`)

REPO = Path(__file__).resolve().parent.parent


def model_and_ids(positional="alibi", n=300):
    torch.manual_seed(0)
    model = presets.make("vanilla", "tiny", positional=positional, d_vocab=20, n_ctx=32).eval()
    ids = torch.randint(3, 20, (n,), generator=torch.Generator().manual_seed(1))
    return model, ids


def naive_window_losses(model, ids, context, stride, bos):
    body = context - (bos is not None)
    out = []
    for start in range(0, len(ids) - body + 1, stride):
        x = ids[start : start + body]
        if bos is not None:
            x = torch.cat([torch.tensor([bos]), x])
        with torch.no_grad():
            logits = model(x[None])[0]
        out.append(F.cross_entropy(logits[:-1], x[1:], reduction="none"))
    return out


@pytest.mark.parametrize("bos", [None, 1])
def test_loss_at_context_equals_naive_windows(bos):
    model, ids = model_and_ids()
    for context in (16, 64):  # 64 > n_ctx: ALiBi extrapolates
        wins = naive_window_losses(model, ids, context, context - (bos is not None), bos)
        expected = torch.cat(wins).mean()
        assert ev.loss_at_context(model, ids, context, bos=bos) == pytest.approx(float(expected), **approx_tol(expected))
        step = context // 2
        wins = naive_window_losses(model, ids, context, step, bos)
        scored = torch.cat([wins[0]] + [w[-step:] for w in wins[1:]])
        want = scored.mean()
        assert ev.loss_at_context(model, ids, context, mode="sliding", stride=step, bos=bos) == pytest.approx(
            float(want), **approx_tol(want))


def test_per_position_and_icl_score():
    model, ids = model_and_ids()
    pp = ev.loss_per_position(model, ids, 40, bos=1)
    wins = naive_window_losses(model, ids, 40, 39, 1)
    close(pp, torch.stack(wins).mean(0))
    assert ev.icl_score(pp, late=30, early=5, band=0) == pytest.approx(float(pp[30] - pp[5]))
    assert ev.icl_score(pp, late=30, early=5, band=2) == pytest.approx(float(pp[28:33].mean() - pp[3:8].mean()))
    with pytest.raises(ValueError, match="early"):
        ev.icl_score(pp[:10])


def test_learned_positions_refuse_past_n_ctx():
    model, ids = model_and_ids("learned")
    assert ev.loss_at_context(model, ids, 32) > 0
    with pytest.raises(ev.ContextTooLong, match="n_ctx=32"):
        ev.loss_at_context(model, ids, 64)


def test_length_extrapolation_script(tmp_path):
    from analyses import length_extrapolation

    ckpts = [REPO / "data/checkpoints/shakespeare_factored_alibi", REPO / "data/checkpoints/shakespeare_vanilla"]
    length_extrapolation.main(["--ckpt", *map(str, ckpts), "--out", str(tmp_path), "--max-tokens", "1100",
                               "--multiples", "1,2"])
    summary = json.loads((tmp_path / "summary.json").read_text())["models"]
    alibi, vanilla = summary["shakespeare_factored_alibi"], summary["shakespeare_vanilla"]
    assert [r["context"] for r in alibi["contexts"]] == [256, 512]
    assert all("nonoverlapping" in r and "sliding" in r for r in alibi["contexts"])
    assert "refused" in vanilla["contexts"][1] and "nonoverlapping" in vanilla["contexts"][0]
    assert (tmp_path / "loss_vs_context.html").exists()
