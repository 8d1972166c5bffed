"""Dictionary training on 2 CPU processes (gloo) equals 1 process: one dictionary per process
(`train.parallel=dictionaries`) and data-parallel (`ddp`, each process half of every batch,
gradients averaged), plus a ddp run paused and resumed, all in one torchrun launch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from interp import features
from interp.checkpoint import read_metrics
from interp.features.training import run

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from test_features_train import tiny  # noqa: E402


def launch(args: list[str]) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]


def test_two_processes_equal_one(tmp_path):
    one, _ = run(tiny(tmp_path / "one"))
    jobs = [
        {"config": tiny(tmp_path / "dicts", parallel="dictionaries")},
        {"config": tiny(tmp_path / "ddp", parallel="ddp")},
        {"config": tiny(tmp_path / "ddp_pause", parallel="ddp", stop_at=10)},
        {"resume": str(tmp_path / "ddp_pause")},
    ]
    (tmp_path / "jobs.json").write_text(json.dumps(jobs))
    launch([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
            str(REPO / "tests" / "features_train_worker.py"), str(tmp_path / "jobs.json")])
    want_rows = [r for r in read_metrics(tmp_path / "one") if r["event"] == "train"]
    for run_name in ("dicts", "ddp", "ddp_pause"):
        for name, sae in one.items():
            got = features.load(tmp_path / run_name / name)
            x = torch.randn(64, sae.cfg.d_in, generator=torch.Generator().manual_seed(0))
            with torch.no_grad():
                torch.testing.assert_close(got(x)[0], sae(x)[0], rtol=1e-4, atol=1e-4, msg=f"{run_name}/{name}")
                torch.testing.assert_close(got.W_dec, sae.W_dec, rtol=1e-4, atol=1e-5, msg=f"{run_name}/{name}")
        rows = [r for r in read_metrics(tmp_path / run_name) if r["event"] == "train"]
        assert [(r["step"], r["dictionary"]) for r in rows] == [(r["step"], r["dictionary"]) for r in want_rows]
        for got_row, want_row in zip(rows, want_rows):
            for key in ("loss", "l0", "fve"):
                assert abs(got_row[key] - want_row[key]) <= 1e-3 * max(1.0, abs(want_row[key])), (run_name, key)
