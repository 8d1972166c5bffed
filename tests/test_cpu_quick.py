"""configs/cpu_quick.yaml trains something real on a CPU in seconds: the README's CPU quick
start. Run here to step 400 of its 600 (`stop_at` keeps the schedule), one eval at the end."""

from __future__ import annotations

from pathlib import Path

from interp import checkpoint as ckpt
from interp import training as tr

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "cpu_quick.yaml"


def test_cpu_quick_forms_induction_heads(tmp_path):
    cfg = tr.load_run_config(CONFIG, [f"train.out_dir={tmp_path / 'run'}", "train.progress=false",
                                      "train.stop_at=400", "train.eval_every=400"])
    assert cfg["train"]["device"] == "cpu" and cfg["train"]["steps"] == 600
    out = tr.train(cfg)
    rows = ckpt.read_metrics(out.parent)
    last = [r for r in rows if r["event"] == "eval"][-1]
    scores = [r for r in rows if r["event"] == "progress"][-1]
    assert last["step"] == 400
    # measured here at step 400: val loss 0.019, exact match 0.97 (the whole second copy right)
    assert last["loss"] < 0.1 and last["exact_match"] >= 0.85, last
    # ... because layer 1 has induction heads fed by a layer-0 previous-token head
    assert max(v for k, v in scores.items() if k.startswith("induction/L1")) > 0.8, scores
    assert max(v for k, v in scores.items() if k.startswith("prev_token/L0")) > 0.4, scores
