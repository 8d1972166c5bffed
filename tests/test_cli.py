"""`interp` CLI through typer's CliRunner: presets, train, eval, explore, export."""

from __future__ import annotations

import json
import subprocess

import pytest
import torch
import yaml
from typer.testing import CliRunner

from tolerance import OTHER_CODE, close

from interp import checkpoint as ck
from interp.cli import app
from models import presets

runner = CliRunner()


@pytest.fixture
def tiny_yaml(tmp_path):
    """A small real task (1-digit addition) and a tiny model."""
    cfg = {
        "model": {"preset": "math-compact", "size": "tiny", "n_layers": 1, "d_model": 32},
        "task": {"name": "arithmetic", "digits": 1, "n_train": 60, "n_val": 20, "n_test": 20},
        "train": {"steps": 50, "batch_size": 8, "lr": 3e-3, "warmup": 1, "eval_every": 50, "eval_batches": 1,
                  "eval_generate": 4, "save_every": 50, "log_every": 1, "device": "cpu", "progress": False},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_presets_lists_every_preset_and_size():
    result = runner.invoke(app, ["presets"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split()[:2] == ["preset", "size"]
    for name in presets.NAMES:
        assert sum(line.split()[0] == name for line in lines[2:]) == len(presets.SIZES), name
    vanilla_tiny = next(r for r in presets.table() if r["preset"] == "vanilla" and r["size"] == "tiny")
    assert f"{vanilla_tiny['params']:,}" in result.stdout


def test_presets_json():
    result = runner.invoke(app, ["presets", "--json"])
    rows = json.loads(result.stdout)
    assert {r["preset"] for r in rows} == set(presets.NAMES) and len(rows) == len(presets.NAMES) * len(presets.SIZES)


def test_train_with_overrides_writes_a_checkpoint_then_eval_prints_metrics(tiny_yaml, tmp_path):
    out_dir = tmp_path / "run"
    result = runner.invoke(app, ["train", "--config", str(tiny_yaml), "--set", "train.steps=5",
                                 "--set", f"train.out_dir={out_dir}", "--set", "model.d_model=48",
                                 "--set", "eval_every=5"])
    assert result.exit_code == 0, result.output
    ckpt_dir = out_dir / "step_000005"
    assert result.stdout.strip().splitlines()[-1] == str(ckpt_dir)
    model, tok = ck.load(out_dir)
    assert model.cfg.d_model == 48 and tok is not None
    _, data = ck.load_config(ckpt_dir)
    assert data["training"]["run_config"]["train"]["steps"] == 5 and data["task"]["digits"] == 1
    steps = [e["step"] for e in ck.read_metrics(out_dir) if e["event"] == "train"]
    assert steps == [1, 2, 3, 4, 5]

    result = runner.invoke(app, ["eval", str(out_dir), "--split", "test", "--generate", "5"])
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)
    assert metrics["split"] == "test" and metrics["step"] == 5 and metrics["n_generated"] == 5
    for key in ("loss", "ppl", "exact_match", "loss_prompt", "loss_step", "loss_answer"):
        assert key in metrics

    # resume: continue the same run to step 8
    result = runner.invoke(app, ["train", "--resume", str(out_dir), "--set", "train.steps=8"])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().splitlines()[-1] == str(out_dir / "step_000008")


def test_train_reports_config_errors_cleanly(tiny_yaml):
    result = runner.invoke(app, ["train", "--config", str(tiny_yaml), "--set", "train.lrr=1"])
    assert result.exit_code == 1
    assert "lrr" in result.output and "Traceback" not in result.output
    result = runner.invoke(app, ["train"])
    assert result.exit_code == 1 and "--config" in result.output


def test_eval_of_a_broken_checkpoint_fails_with_the_reason(tmp_path):
    result = runner.invoke(app, ["eval", str(tmp_path / "missing")])
    assert result.exit_code == 1 and "no such checkpoint" in result.output


def test_explore_runs_streamlit_on_the_app(monkeypatch, tmp_path):
    import interp.cli as cli

    calls = []
    monkeypatch.setattr(cli, "REPO_ROOT", tmp_path)
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "explorer.py").write_text("")
    monkeypatch.setattr(subprocess, "run", lambda cmd, **kw: calls.append(cmd) or subprocess.CompletedProcess(cmd, 0))
    result = runner.invoke(app, ["explore", "runs/x"])
    assert result.exit_code == 0, result.output
    cmd = calls[0]
    assert cmd[1:4] == ["-m", "streamlit", "run"] and cmd[4] == str(tmp_path / "app" / "explorer.py")
    assert cmd[-3:] == ["--", "--ckpt", "runs/x"]


def test_export_hf(tmp_path):
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    from interp.tokenizers import char_tokenizer

    tok = char_tokenizer("abcdefgh ")
    model = presets.make("vanilla", "tiny", d_vocab=tok.vocab_size, n_ctx=32)
    path = ck.save(model, tmp_path / "c", tok)
    out = tmp_path / "hf"
    result = runner.invoke(app, ["export", str(path), "--format", "hf", "--out", str(out)])
    assert result.exit_code == 0, result.output
    hf_model = AutoModelForCausalLM.from_pretrained(out, local_files_only=True).eval()
    ids = torch.tensor([tok.encode("abc defg")])
    close(hf_model(ids).logits, model.eval()(ids), ulps=OTHER_CODE)  # transformers' GPT-2
    assert PreTrainedTokenizerFast.from_pretrained(out).encode("abc", add_special_tokens=False) == tok.encode("abc")
    assert runner.invoke(app, ["export", str(path), "--format", "onnx", "--out", str(out)]).exit_code == 1
