"""The shipped reproductions, asserted from the shipped artifacts (data/runs/): grokking
(Nanda et al. 2023) and induction-head formation (Olsson et al. 2022), both trained on an
H100 with the configs in configs/reference/; and what the shipped ALiBi model does past its
training length (data/checkpoints/shakespeare_factored_alibi)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import interp
from interp.checkpoint import read_metrics
from interp.training.progress import embedding_spectrum

REPO = Path(__file__).resolve().parent.parent
GROKKING = REPO / "data/runs/grokking"
INDUCTION = REPO / "data/runs/induction_formation"
ALIBI = REPO / "data/checkpoints/shakespeare_factored_alibi"


def evals(run: Path) -> list[dict]:
    return [r for r in read_metrics(run / "metrics.jsonl") if r["event"] == "eval"]


def test_grokking_curves():
    rows = evals(GROKKING)
    steps = [r["step"] for r in rows]
    assert steps[-1] == 25_000 and steps[1] - steps[0] == 100
    early = [r for r in rows if r["step"] <= 2500]
    assert max(r["token_acc"] for r in early) < 0.5  # test accuracy near chance early on
    assert rows[-1]["token_acc"] > 0.99 and rows[-1]["train_token_acc"] > 0.99
    assert min(r["train_token_acc"] for r in rows if r["step"] >= 12_500) > 0.99  # memorised all along
    # it groks late: test accuracy stays under 50% long after train accuracy reached 100%
    first_train = next(r["step"] for r in rows if r["train_token_acc"] > 0.99)
    first_test = next(r["step"] for r in rows if r["token_acc"] > 0.5)
    assert first_test > 20 * first_train


def test_grokked_embedding_is_sparse_in_fourier_space():
    model, _ = interp.load(GROKKING)  # follows `last`: the final step
    spectrum = embedding_spectrum(model.W_E[:113].detach())
    # independent: an FFT over the 113 number rows; frequency k's energy is |X_k|^2 (cos + sin)
    energy = torch.fft.rfft(model.W_E[:113].detach().double(), dim=0).abs().pow(2).sum(-1)[1:]
    torch.testing.assert_close(spectrum / spectrum.sum(), energy / energy.sum(), rtol=1e-9, atol=1e-12)
    share = torch.sort(energy / energy.sum(), descending=True)
    # the README's figures: 4 frequencies hold 86.9% of the energy, 8 hold 94.7%
    assert sorted((share.indices[:4] + 1).tolist()) == [14, 26, 37, 43]
    assert float(share.values[:4].sum()) == pytest.approx(0.869, abs=5e-4)
    assert float(share.values[:8].sum()) == pytest.approx(0.947, abs=5e-4)
    progress = [r for r in read_metrics(GROKKING / "metrics.jsonl") if r["event"] == "progress"]
    assert progress[-1]["fourier/n_key"] <= 8 and progress[0]["fourier/n_key"] > 8


@pytest.fixture(scope="module")
def grokking_summary(tmp_path_factory):
    from analyses import grokking

    out = tmp_path_factory.mktemp("grokking")
    grokking.main(["--ckpt", str(GROKKING), "--out", str(out)])
    return json.loads((out / "summary.json").read_text())


def test_grokking_analysis(grokking_summary):
    s = grokking_summary
    assert 15_000 <= s["test_acc_first_above_0.99"] <= 25_000
    assert s["min_train_acc_later_half"] > 0.99 and s["final_test_acc"] > 0.99
    assert s["test_acc_first_above_0.5"] == 19_900 and s["test_acc_first_above_0.99"] == 21_200
    assert s["train_acc_first_above_0.99"] == 300 and s["test_acc_first_above_0.05"] == 12_800
    assert s["max_test_acc_until_15000"] < 0.061
    assert s["key_frequencies"] == [14, 26, 37, 43]  # the fewest holding 80%
    assert s["top_k_share"]["4"] == pytest.approx(0.869, abs=5e-4) and s["top8_share"] == s["top_k_share"]["8"]
    assert s["top_k_share"]["8"] == pytest.approx(0.947, abs=5e-4)
    assert {f["frequency"] for f in s["top_frequencies"][:4]} == {14, 26, 37, 43}
    assert s["constant_share"] < 0.01  # the shares leave out almost nothing
    series = {c["step"]: c for c in s["series"]}
    assert sorted(series)[-1] == 25_000 and len(series) >= 10
    # restricted loss (final key frequencies) falls before test accuracy rises: the progress
    # measure sees the circuit forming while accuracy is still near chance
    before = [c for c in s["series"] if c["test_acc"] < 0.3]
    assert min(c["restricted_loss"] for c in before) < 0.5 * before[0]["restricted_loss"]
    assert series[25_000]["excluded_loss"] > 10 * series[5_000]["excluded_loss"]
    # the README's numbers: 6.0 at step 1,000 -> 0.36 at step 18,000, test accuracy still < 12%
    assert series[1_000]["restricted_loss"] == pytest.approx(6.0, abs=0.01)
    assert series[18_000]["restricted_loss"] == pytest.approx(0.36, abs=0.01) and series[18_000]["test_acc"] < 0.12


def test_induction_heads_form_when_the_loss_drops(tmp_path):
    from analyses import induction_formation

    induction_formation.main(["--ckpt", str(INDUCTION), "--out", str(tmp_path)])
    s = json.loads((tmp_path / "summary.json").read_text())
    # what the shipped run shows (the README's sentence): no plateau and no bump, one fall whose
    # steepest eval-to-eval drop (320 -> 330) is where the best induction score rises fastest
    assert s["loss_shape"] == "single fall", s
    assert s["largest_rise_before_fall"] == 0.0 and s["evals_with_higher_loss_than_the_last_before_fall"] == 0
    flat = s["flattest_stretch_before_onset"]
    assert (flat["from_step"], flat["to_step"]) == (30, 130) and flat["fall"] == pytest.approx(0.39, abs=0.005)
    assert 0.08 < flat["share_of_total_fall"] < 0.12 and 0.09 < flat["rate_vs_steepest"] < 0.13
    assert s["onset_step"] == 240 and s["loss_at_first_eval"] == pytest.approx(4.05, abs=0.005)
    fall, rise = s["steepest_loss_fall"], s["steepest_induction_rise"]
    assert (fall["from_step"], fall["to_step"]) == (320, 330) and (rise["from_step"], rise["to_step"]) == (330, 340)
    assert (fall["from"], fall["to"]) == pytest.approx((1.866, 1.519), abs=0.001)
    assert s["phase_change_step_by_loss"] == s["phase_change_step_by_induction_score"] == 330
    assert s["final_loss"] < 0.05
    assert s["induction_max_before"] < 0.1 and s["induction_max_after"] > 0.5
    assert s["top_induction_head"] == "L1H0" and s["top_prev_token_head"] == "L0H2"
    assert s["final_induction_max"] == pytest.approx(0.92, abs=0.005)
    for c in s["checkpoints"]:  # logged progress measures agree with the saved weights
        assert c["induction_max"] == pytest.approx(c["logged_induction_max"], abs=2e-3)
    # independent of the analysis: the raw eval losses of metrics.jsonl never rise before the fall
    losses = [r["loss"] for r in evals(INDUCTION) if r["step"] <= 330]
    assert all(b < a for a, b in zip(losses, losses[1:]))


def test_alibi_gains_next_to_nothing_from_context_beyond_its_training_length():
    """The README's finding, on a subset: the first 8 windows of 4L = 1024 tokens of the test
    split (the README's full run covers the whole split at 8L). At positions 512-1022, seeing
    only the last 256-319 tokens (at least a training window) predicts within 0.005 nats of
    seeing the whole window, a small fraction of what the tokens beyond the last 12-15 buy,
    although one head per layer puts 15% or more of its attention that far back."""
    from interp import eval as ev
    from interp.checkpoint import load_config
    from interp.tasks import make_task

    model, tokenizer = interp.load(ALIBI)
    task = make_task(**load_config(ALIBI)[1]["task"])
    L, ids, bos = task.seq_len, ev.split_tokens(task, "test"), tokenizer.bos_token_id
    assert L == 256 and model.cfg.positional == "alibi"
    full, truncated = ev.truncated_context_losses(model, ids, 4 * L, [16, 320], bos=bos, stride={16: 4, 320: 64},
                                                  max_windows=8)
    (near,) = ev.far_context_gain(full, truncated[16], [(2 * L, 4 * L - 1)])
    (far,) = ev.far_context_gain(full, truncated[320], [(2 * L, 4 * L - 1)])
    assert near["gain"] > 3 * near["gain_se"] and near["gain"] > 0.01, near  # context 16+ tokens back is used
    assert abs(far["gain"]) < 0.005 and far["gain"] < 0.25 * near["gain"], (far, near)  # beyond ~L: next to nothing
    attention = ev.attention_beyond(model, ids, 4 * L, L, bos=bos, max_windows=2)["far"]
    slopes = model.blocks[0].attn.alibi_slopes
    flattest, steepest = int(slopes.argmin()), int(slopes.argmax())  # slopes 1/256 and 1/2
    assert (attention[:, flattest] > 0.15).all(), attention  # this head reads far back in every layer ...
    assert (attention[:, steepest] < 1e-6).all(), attention
