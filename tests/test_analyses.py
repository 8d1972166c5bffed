"""The analysis scripts run on shipped checkpoints and their numbers match direct API calls."""

from __future__ import annotations

import json
from pathlib import Path

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
