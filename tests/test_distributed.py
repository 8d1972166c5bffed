"""Distributed training on CPU with the gloo backend: 2 processes (DDP, FSDP2) reach the same
losses and weights as 1 process with the same global batch, and resume exactly, also across
modes (a single-process checkpoint continued by DDP, an FSDP run paused and resumed).

Two launches of 2 processes: `interp train --nproc 2` (torchrun underneath, DDP chosen from
WORLD_SIZE) and torchrun on tests/distributed_worker.py for the rest."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

import interp
from interp.checkpoint import read_metrics
from interp.training import train

REPO = Path(__file__).resolve().parents[1]
STEPS = 4  # epochs=1 over 64 examples at a global batch of 16


def config(out_dir: Path, **train_overrides) -> dict:
    return {
        "name": "dist",
        "model": {"preset": "llama-like", "size": "tiny", "n_layers": 2},
        # 1-digit addition: examples of different lengths, so each rank holds a different
        # number of targets per step (the global normalisation has to get that right)
        "task": {"name": "arithmetic", "digits": 1, "n_train": 64, "n_val": 16, "n_test": 16},
        "train": {"epochs": 1, "batch_size": 8, "grad_accum": 2, "lr": 3e-3, "warmup": 1, "eval_every": 2, "eval_batch_size": 8,
                  "eval_batches": 1, "eval_generate": 4, "save_every": 2, "log_every": 1, "device": "cpu",
                  "progress": False, "out_dir": str(out_dir), **train_overrides},
    }


def losses(run: Path) -> list[float]:
    rows = [r for r in read_metrics(run) if r["event"] == "train"]
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1)), "one train event per step (rank 0 only)"
    return [r["loss"] for r in rows]


def launch(args: list[str]) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    return done


def test_two_processes_match_one_and_resume(tmp_path):
    # 1 process, batch 8 x accumulation 2 (and the same run paused at step 2)
    ref = train(config(tmp_path / "one"))
    train(config(tmp_path / "one_pause", stop_at=2))
    want = losses(tmp_path / "one")
    ref_model, _ = interp.load(ref)

    # 2 processes x batch 4 x accumulation 2 through the CLI shortcut: DDP picked from WORLD_SIZE
    cfg_file = tmp_path / "dist.yaml"
    cfg_file.write_text(yaml.safe_dump(config(tmp_path / "ddp", batch_size=4)))
    out = launch([sys.executable, "-m", "interp.cli", "train", "--nproc", "2", "--config", str(cfg_file)])
    assert out.stdout.strip().splitlines()[-1] == str(tmp_path / "ddp" / f"step_{STEPS:06d}")  # rank 0 prints

    # the rest in one torchrun launch: FSDP; FSDP paused + resumed; DDP resuming the 1-process pause
    jobs = [
        {"config": config(tmp_path / "fsdp", batch_size=4, parallel="fsdp")},
        {"config": config(tmp_path / "fsdp_pause", batch_size=4, parallel="fsdp", stop_at=2)},
        {"resume": str(tmp_path / "fsdp_pause")},
        {"resume": str(tmp_path / "one_pause" / "step_000002"),
         "overrides": ["train.batch_size=4", f"train.out_dir={tmp_path / 'ddp_from_one'}"]},
    ]
    (tmp_path / "jobs.json").write_text(json.dumps(jobs))
    launch([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
            str(REPO / "tests" / "distributed_worker.py"), str(tmp_path / "jobs.json")])

    for run in ("ddp", "fsdp", "fsdp_pause", "ddp_from_one"):
        got = losses(tmp_path / run)
        assert max(abs(a - b) for a, b in zip(got, want)) < 1e-5, (run, got, want)
        model, _ = interp.load(tmp_path / run)  # a plain checkpoint: gathered full weights
        for (name, p), q in zip(model.state_dict().items(), ref_model.state_dict().values()):
            torch.testing.assert_close(p, q, atol=1e-5, rtol=1e-5, msg=f"{run}: {name}")
        evals = [r for r in read_metrics(tmp_path / run) if r["event"] == "eval"]
        assert [r["step"] for r in evals] == [2, 4]
        assert evals[-1]["loss"] == pytest.approx([r for r in read_metrics(tmp_path / "one")
                                                   if r["event"] == "eval"][-1]["loss"], abs=1e-5)
    state = torch.load(tmp_path / "fsdp" / f"step_{STEPS:06d}" / "train_state.pt", weights_only=True)
    ref_state = torch.load(ref / "train_state.pt", weights_only=True)
    assert sorted(state["optimizer"]["state"]) == sorted(ref_state["optimizer"]["state"])  # single-process layout
    for i, s in ref_state["optimizer"]["state"].items():
        torch.testing.assert_close(state["optimizer"]["state"][i]["exp_avg"], s["exp_avg"], atol=1e-6, rtol=1e-4)


def test_parallel_config_errors(tmp_path, monkeypatch):
    from interp.training import TrainConfigError
    from interp.training.distributed import for_config, resolve_parallel
    from interp.training.loop import Trainer

    with pytest.raises(TrainConfigError, match="train.parallel must be one of"):
        train(config(tmp_path / "x", parallel="zero3"))
    assert resolve_parallel({"parallel": "auto"}) == "none"
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert resolve_parallel({"parallel": "auto"}) == "ddp"
    with pytest.raises(TrainConfigError, match="every process would train alone"):
        resolve_parallel({"parallel": "none"})
    cls = for_config(Trainer, {"train": {"parallel": "fsdp"}})
    assert cls.__name__ == "DistributedTrainer" and issubclass(cls, Trainer)
    monkeypatch.delenv("WORLD_SIZE")
    assert for_config(Trainer, {"train": {"parallel": "auto"}}) is Trainer
    with pytest.raises(TrainConfigError, match="cpu_offload=true needs train.parallel=fsdp on CUDA"):
        train(config(tmp_path / "y", parallel="ddp", cpu_offload=True))


def test_nproc_relaunches_through_torchrun(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from interp.cli import app

    calls = []
    monkeypatch.setattr(subprocess, "run", lambda cmd, **kw: calls.append(cmd) or subprocess.CompletedProcess(cmd, 0))
    result = CliRunner().invoke(app, ["train", "--nproc", "4", "--config", "c.yaml", "--set", "train.parallel=fsdp"])
    assert result.exit_code == 0, result.output
    assert calls == [[sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=4",
                      "-m", "interp.cli", "train", "--config", "c.yaml", "--set", "train.parallel=fsdp"]]
