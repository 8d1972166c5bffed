"""analyses/circuits.py on the shipped checkpoints: the induction circuit (L0H0 -> layer-1 keys)
and where 3-digit addition reads its answer digits and carries; numbers checked against direct
model calls."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import interp
from tolerance import OTHER_CODE, approx_tol

from analyses import circuits
from analyses.common import load_with_task

CKPT = Path(__file__).resolve().parents[1] / "data" / "checkpoints"


def test_induction_circuit(tmp_path):
    summary = json.loads(circuits.main(["--ckpt", str(CKPT / "induction_attn_only"), "--out", str(tmp_path),
                                        "--n", "6"]).read_text())
    assert summary["confirms_induction_circuit"] is True
    assert summary["k_composition_sender"] == "L0H0"
    effect = summary["k_composition_sender_effect"]
    assert effect["k"] > 0.3 and abs(effect["q"]) < 0.02 and abs(effect["v"]) < 0.02
    needed = {c["head"] for c in summary["heads_needed"]}
    assert {"L0H0", "L1H0", "L1H1"} <= needed and not needed & {"L0H1", "L0H2", "L0H3"}
    # the metric of the unpatched runs, recomputed from the model directly
    model, _ = interp.load(CKPT / "induction_attn_only")
    clean, corrupted, metric = circuits.induction_prompts(model, 6)
    with torch.no_grad():  # logit differences, computed through patching's base run: their logits are the scale
        for key, prompts in (("metric_clean", clean), ("metric_corrupted", corrupted)):
            logits = model(prompts)
            want = float(metric(logits).mean())
            assert summary[key] == pytest.approx(want, **approx_tol(want, ulps=OTHER_CODE, scale=float(logits.abs().max())))
    assert summary["metric_clean"] > 10 > -10 > summary["metric_corrupted"]
    assert (tmp_path / "induction_path_to_k.html").stat().st_size > 1000


def test_addition_digits_and_carries(tmp_path):
    summary = json.loads(circuits.main(["--ckpt", str(CKPT / "add3_none"), "--out", str(tmp_path), "--n", "4"]).read_text())
    found = summary["findings"]
    for place in range(3):  # every answer digit is copied from its scratchpad step, by one head
        f = found[f"answer digit r{place}"]
        assert f["read_from"] == f"s{place}.d" and f["moved_by"] == "L1H2", f
    for step in (1, 2):  # a step's carry-in is copied from the previous step's carry-out token
        assert found[f"carry into step {step}"]["read_from"] == f"s{step - 1}.k"
    exp = summary["experiments"]
    assert exp["answer_0"]["layer0_restoring_positions"][0]["normalized"] > 0.9
    assert exp["answer_0"]["top_heads"][0]["normalized"] > 0.9
    # the pairs differ exactly where the design says, and the metric is the model's logit difference
    model, _, task = load_with_task(CKPT / "add3_none")
    clean, corrupted, want, other, roles = circuits.addition_pairs(task, 4, "answer", 0)
    assert exp["answer_0"]["positions_that_differ"] == ["a0", "s0.x", "s0.d"] and roles[-1] == "r1"
    with torch.no_grad():
        logits = model(clean)[:, -1]
    direct = float((logits.gather(-1, want[:, None]) - logits.gather(-1, other[:, None])).mean())
    assert exp["answer_0"]["metric_clean"] == pytest.approx(direct, **approx_tol(
        direct, ulps=OTHER_CODE, scale=float(logits.abs().max())))
    assert (tmp_path / "add_answer_0_resid.html").exists()


def test_refuses_other_tasks(tmp_path):
    with pytest.raises(SystemExit, match="induction and arithmetic"):
        circuits.main(["--ckpt", str(CKPT / "shakespeare_vanilla"), "--out", str(tmp_path)])
