"""The analysis scripts run on shipped checkpoints and their numbers match direct API calls."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import interp
from analyses import heads, logit_lens, step_masking
from interp.tasks import collate, make_task

CKPT = Path(__file__).resolve().parents[1] / "data" / "checkpoints"


def test_heads_script_finds_the_induction_circuit(tmp_path):
    summary = json.loads(heads.main(["--ckpt", str(CKPT / "induction_attn_only"), "--out", str(tmp_path), "--n", "8"]).read_text())
    assert summary["top"]["induction"]["head"].startswith("L1") and summary["top"]["induction"]["score"] > 0.9
    assert summary["top"]["prev_token"]["head"].startswith("L0")
    assert len(summary["heads"]) == 2 * 4
    assert (tmp_path / "head_induction.html").stat().st_size > 1000 and (tmp_path / "attention_grid.html").exists()


def test_logit_lens_script_last_layer_matches_model(tmp_path):
    path = CKPT / "shakespeare_vanilla"
    summary = json.loads(logit_lens.main(["--ckpt", str(path), "--out", str(tmp_path), "--n", "2"]).read_text())
    model, tok = interp.load(path)
    task = make_task(**json.loads((path / "config.json").read_text())["task"])
    batch = collate(task.split("test")[:2], tok.pad_token_id)
    with torch.no_grad():
        probs = model(batch.input_ids, attention_mask=batch.attention_mask).softmax(-1)
    nxt = batch.input_ids[:, 1:]
    keep = batch.attention_mask[:, 1:]
    direct = probs[:, :-1].gather(-1, nxt[..., None])[..., 0][keep].mean()
    layers = summary["layers"]["resid"]
    assert abs(layers[f"block {model.cfg.n_layers - 1}"]["p_correct"] - direct.item()) < 1e-4
    assert layers["embed"]["p_correct"] < layers[f"block {model.cfg.n_layers - 1}"]["p_correct"]


def test_step_masking_script_separates_the_three_modes(tmp_path):
    ckpts = [str(CKPT / n) for n in ("add3_none", "add3_mask_steps", "add3_mask_answer")]
    summary = json.loads(step_masking.main(["--ckpt", *ckpts, "--out", str(tmp_path), "--n", "8"]).read_text())
    rows = {r["name"]: r for r in summary["rows"]}
    assert rows["add3_none"]["exact_match"] == 1.0
    assert rows["add3_mask_steps"]["loss/step"] > 1 > rows["add3_mask_steps"]["loss/answer"]
    assert rows["add3_mask_answer"]["loss/answer"] > 1 > rows["add3_mask_answer"]["loss/step"]
    assert (tmp_path / "segments_loss.html").exists()


def test_loss_shape_tells_a_plateau_and_a_bump_from_a_single_fall():
    import numpy as np

    from analyses.induction_formation import loss_shape

    steps = list(range(10, 1010, 10))
    t = np.asarray(steps, dtype=float)
    score = (1 / (1 + np.exp(-(t - 500) / 20))).tolist()  # rises at step 500
    fall = 3.0 / (1 + np.exp((t - 510) / 15))  # the loss's drop, just after the score's rise
    plateau = (0.5 + fall).tolist()
    bump = (0.5 + fall + 0.2 * np.exp(-((t - 430) / 20) ** 2)).tolist()
    slope = (0.5 + fall + 8.0 * (1 - t / 1000)).tolist()  # falls 0.8 per 100 steps all along
    assert loss_shape(steps, plateau, score)["loss_shape"] == "plateau, then fall"
    assert loss_shape(steps, bump, score)["loss_shape"] == "plateau, bump, then fall"
    single = loss_shape(steps, slope, score)
    assert single["loss_shape"] == "single fall" and single["largest_rise_before_fall"] == 0.0
    assert single["flattest_stretch_before_onset"]["share_of_total_fall"] > 0.05


def tiny_alibi_and_ids(n=200):
    from models import presets

    torch.manual_seed(0)
    model = presets.make("vanilla", "tiny", positional="alibi", d_vocab=20, n_ctx=16).eval()
    return model, torch.randint(3, 20, (n,), generator=torch.Generator().manual_seed(1))


def naive_loss(model, context_ids, target):
    with torch.no_grad():
        logits = model(context_ids[None])[0, -1]
    return float(torch.nn.functional.cross_entropy(logits, torch.tensor(target)))


@pytest.mark.parametrize("bos", [None, 1])
def test_truncated_context_losses_against_a_loop(bos):
    from interp import eval as ev

    model, ids = tiny_alibi_and_ids()
    context, window = 48, 12
    full, truncs = ev.truncated_context_losses(model, ids, context, [window, 2 * window], bos=bos, stride=1)
    trunc = truncs[window]
    torch.testing.assert_close(full.mean(0), ev.loss_per_position(model, ids, context, bos=bos))
    body = context - (bos is not None)
    prefix = torch.tensor([bos]) if bos is not None else torch.tensor([], dtype=torch.long)
    for i in range(len(full)):
        row = ids[i * body : (i + 1) * body]
        for t in range(full.shape[1]):
            # the target and the tokens before it in the row (with bos, full column t predicts row[t])
            target, before = (row[t], row[:t]) if bos is not None else (row[t + 1], row[: t + 1])
            keep = window - 1 - (bos is not None)  # stride 1: exactly window - 1 tokens seen, bos included
            seen = torch.cat([prefix, before[max(0, len(before) - keep):]])
            assert trunc[i, t] == pytest.approx(naive_loss(model, seen, int(target)), rel=1e-4, abs=1e-5), (i, t)
            if len(before) <= keep:
                assert trunc[i, t] == pytest.approx(float(full[i, t]), rel=1e-5, abs=1e-6)
    # a longer stride: every token sees between window - stride and window - 1 tokens
    strided = ev.truncated_context_losses(model, ids, context, [window], bos=bos, stride=4)[1][window]
    assert not strided.isnan().any()
    row, t = ids[:body], 30
    target, before = (row[t], row[:t]) if bos is not None else (row[t + 1], row[: t + 1])
    options = [naive_loss(model, torch.cat([prefix, before[len(before) - k:]]), int(target))
               for k in range(window - 4 - (bos is not None), window - (bos is not None))]
    assert min(abs(o - float(strided[0, t])) for o in options) < 1e-4
    with pytest.raises(ValueError, match="window"):
        ev.truncated_context_losses(model, ids, context, [window, context + 1], bos=bos)


def test_far_context_gain_and_attention_beyond_against_loops():
    from interp import eval as ev

    model, ids = tiny_alibi_and_ids()
    full, trunc = torch.rand(5, 40), torch.rand(5, 40)
    (band,) = ev.far_context_gain(full, trunc, [(10, 30)])
    per_window = (trunc[:, 10:30] - full[:, 10:30]).mean(1)
    assert band["gain"] == pytest.approx(float(per_window.mean())) and band["truncated"] == pytest.approx(
        float(trunc[:, 10:30].mean()))
    assert band["gain_se"] == pytest.approx(float(per_window.std() / 5**0.5))

    context, distance = 40, 8
    out = ev.attention_beyond(model, ids, context, distance, bos=1, batch_size=2)
    rows = torch.cat([torch.ones(len(ids) // 39, 1, dtype=torch.long), ids[: len(ids) // 39 * 39].view(-1, 39)], 1)
    _, cache = model.run_with_cache(rows)
    for layer in range(model.cfg.n_layers):
        pattern = cache["pattern", layer]  # (b, head, q, k)
        far = torch.zeros(model.cfg.n_heads)
        for q in range(distance, context):
            far += pattern[:, :, q, 1 : q - distance + 1].sum(-1).mean(0)
        torch.testing.assert_close(out["far"][layer], far / (context - distance), rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(out["bos"][layer], pattern[:, :, distance:, 0].mean((0, 2)), rtol=1e-4, atol=1e-6)
