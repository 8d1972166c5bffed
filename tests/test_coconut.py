"""The Coconut curriculum trainer: stage layouts and labels, the schedule, optimizer resets,
exact resume across stages, options, and a tiny Coconut model learning a tiny graph task."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from interp import checkpoint as ckpt
from interp import training as tr
from interp.tasks import IGNORE_INDEX, make_task
from interp.training.coconut import (
    StageExample,
    StagedTask,
    _answer_correct,
    coconut_options,
    cot_steps,
    with_latent_token,
)

REPO = Path(__file__).resolve().parent.parent


def add3():
    return make_task("arithmetic", digits=3, format="scratchpad", n_train=64, n_val=16, n_test=16)


def test_latent_token_is_appended_to_arithmetic():
    task = add3()
    tok = with_latent_token(task.tokenizer)
    assert tok.token_to_id("<latent>") == task.tokenizer.vocab_size
    assert tok.vocab_size == task.tokenizer.vocab_size + 1
    assert tok.encode("12+3=<bot>") == task.tokenizer.encode("12+3=<bot>")
    graph = make_task("graph", n_train=8, n_val=2, n_test=2)
    assert with_latent_token(graph.tokenizer) is graph.tokenizer  # already has it


def test_arithmetic_steps_split_at_semicolons():
    task = add3()
    ex = task.example_for("+", [123, 459])
    tok = with_latent_token(task.tokenizer)
    assert [tok.decode(ex.input_ids[s:e]) for s, e in cot_steps(ex, tok)] == ["3+9+0=2,1;", "2+5+1=8,0;", "1+4+0=5,0"]


def layout(task, ex, mode, stage, **opts):
    staged = StagedTask(task, coconut_options({"mode": mode, "max_latent_stage": 3, **opts}))
    ids, labels, segs = StageExample(ex, staged.tokenizer).layout(mode, stage, staged.o, staged.latent_id)
    assert len(ids) == len(labels) == len(segs)
    text = staged.tokenizer.decode(ids)
    trained = staged.tokenizer.decode([t for t in labels if t != IGNORE_INDEX])
    return text, trained


def test_stage_layouts_and_labels():
    task = add3()
    ex = task.example_for("+", [123, 459])
    assert layout(task, ex, "coconut", 0) == ("<bos>123+459=<bot>3+9+0=2,1;2+5+1=8,0;1+4+0=5,0<eot>582<eos>",
                                              "3+9+0=2,1;2+5+1=8,0;1+4+0=5,0<eot>582<eos>")
    assert layout(task, ex, "coconut", 1) == ("<bos>123+459=<bot><latent>2+5+1=8,0;1+4+0=5,0<eot>582<eos>",
                                              "2+5+1=8,0;1+4+0=5,0<eot>582<eos>")
    # the last stage: every step latent; <eot> is fed, not predicted
    assert layout(task, ex, "pause", 4) == ("<bos>123+459=<bot><latent><latent><latent><eot>582<eos>", "582<eos>")
    text, _ = layout(task, ex, "coconut", 2, c_thought=2)
    assert text.count("<latent>") == 4 and "1+4+0=5,0<eot>" in text
    assert layout(task, ex, "no_cot", 3) == ("<bos>123+459=582<eos>", "582<eos>")
    assert layout(task, ex, "cot", 3)[0] == ex.text


def test_pad_latent_to_max():
    task = make_task("graph", path_length=2, branching=0, n_train=4, n_val=2, n_test=2)
    ex = task.split("train")[0]
    text, _ = layout(task, ex, "coconut", 4, max_latent_stage=3)  # 2 steps, padded to 3 thoughts
    assert text.count("<latent>") == 3
    text, _ = layout(task, ex, "coconut", 4, max_latent_stage=3, pad_latent_to_max=False)
    assert text.count("<latent>") == 2


@pytest.mark.parametrize("opts,match", [
    ({"mode": "latent"}, "mode"), ({"c_thought": 0}, "c_thought"), ({"epochs_per_stage": 0}, "epochs_per_stage"),
    ({"uniform_prob": 2}, "uniform_prob"), ({"reset_optimizer": "yes"}, "reset_optimizer"), ({"stages": 3}, "unknown"),
])
def test_options_are_validated(opts, match):
    with pytest.raises(tr.TrainConfigError, match=match):
        coconut_options(opts)


def test_coconut_options_need_the_coconut_trainer():
    with pytest.raises(tr.TrainConfigError, match="trainer"):
        tr.load_run_config({"task": {"name": "graph"}, "train": {"coconut": {"mode": "cot"}}})
    cfg = tr.load_run_config({"task": {"name": "graph"}, "train": {"trainer": "coconut"}},
                             ["train.coconut.mode=pause"])
    assert cfg["train"]["coconut"]["mode"] == "pause" and cfg["train"]["coconut"]["c_thought"] == 1


def test_answer_parsing():
    eos, eot = 2, 4
    assert _answer_correct([7, 8, eot, 9, eos], [9, eos], eos, eot, needs_eot=True)
    assert not _answer_correct([7, 8, 9, eos], [9, eos], eos, eot, needs_eot=True)
    assert not _answer_correct([eot, 9, 9, eos], [9, eos], eos, eot, needs_eot=True)
    assert _answer_correct([9, eos, 5], [9, eos], eos, eot, needs_eot=False)


def tiny_graph_config(tmp_path, name, mode="coconut", steps=12, **train):
    t = dict(trainer="coconut", steps=steps, batch_size=16, lr=3e-3, warmup=2, eval_every=6, eval_generate=8,
             eval_batches=1, save_every=100, log_every=1, out_dir=str(tmp_path / name), progress=False,
             coconut={"mode": mode, "epochs_per_stage": 0.25, "max_latent_stage": 2})
    t.update(train)
    return {"name": name,
            "model": {"preset": "math-compact", "size": "tiny", "n_layers": 1, "d_model": 32, "n_heads": 2},
            "task": {"name": "graph", "path_length": [1, 2], "branching": 1, "dead_end_length": 1, "n_concepts": 12,
                     "n_train": 64, "n_val": 16, "n_test": 16},
            "train": t}


def events(run_dir, kind):
    return [e for e in ckpt.read_metrics(Path(run_dir) / "metrics.jsonl") if e["event"] == kind]


def test_stages_switch_on_schedule_with_optimizer_resets(tmp_path):
    tr.train(tiny_graph_config(tmp_path, "sched"))
    stages = events(tmp_path / "sched", "stage")
    # 64 examples / 16 per step = 4 steps per epoch, 0.25 epochs per stage: one step per stage
    assert [(e["step"], e["stage"]) for e in stages] == [(0, 0), (1, 1), (2, 2), (3, 3)]
    assert [e["optimizer_reset"] for e in stages] == [False, True, True, True]
    evals = events(tmp_path / "sched", "eval")
    assert [e["stage"] for e in evals] == [3, 3] and all(0 <= e["accuracy"] <= 1 for e in evals)
    assert evals[-1]["mean_generated_tokens"] - evals[-1]["mean_language_tokens"] == 2  # two thoughts


def test_uniform_mixing_draws_from_every_stage_or_only_those_reached():
    task = make_task("graph", path_length=3, branching=0, n_train=200, n_val=2, n_test=2)
    drawn = {}
    for which in ("all", "so_far"):
        staged = StagedTask(task, coconut_options({"uniform_prob": 1.0, "uniform_stages": which, "max_latent_stage": 3}))
        drawn[which] = {e.meta["stage"] for e in staged.examples("train", 1, seed=0)}
    assert drawn["all"] == {0, 1, 2, 3} and drawn["so_far"] == {0, 1}
    with pytest.raises(tr.TrainConfigError, match="uniform_stages"):
        coconut_options({"uniform_stages": "later"})


def test_a_longer_first_stage(tmp_path):
    """first_stage_epochs: stage 0 (the CoT) lasts 2 steps here, every later stage 1 step."""
    tr.train(tiny_graph_config(tmp_path, "first", steps=5, eval_every=5,
                               coconut={"mode": "coconut", "epochs_per_stage": 0.25, "first_stage_epochs": 0.5,
                                        "max_latent_stage": 2}))
    assert [(e["step"], e["stage"]) for e in events(tmp_path / "first", "stage")] == [(0, 0), (2, 1), (3, 2), (4, 3)]
    with pytest.raises(tr.TrainConfigError, match="first_stage_epochs"):
        coconut_options({"first_stage_epochs": 0})


@pytest.mark.parametrize("stop_at", [2, 5])  # a stage boundary (stage 2 begins at step 2) and the last stage
def test_resume_across_stages_is_exact(tmp_path, stop_at):
    full = tr.train(tiny_graph_config(tmp_path, "full", steps=8, eval_every=8,
                                      coconut={"mode": "coconut", "epochs_per_stage": 0.5, "max_latent_stage": 2}))
    cfg = tiny_graph_config(tmp_path, "paused", steps=8, eval_every=8, stop_at=stop_at,
                            coconut={"mode": "coconut", "epochs_per_stage": 0.5, "max_latent_stage": 2})
    tr.train(cfg)
    resumed = tr.train(resume=tmp_path / "paused")
    a = [e["loss"] for e in events(full.parent, "train")]
    b = [e["loss"] for e in events(resumed.parent, "train")]
    assert a == b and len(a) == 8
    wa, _ = ckpt.load(full)
    wb, _ = ckpt.load(resumed)
    for (name, x), y in zip(wa.state_dict().items(), wb.state_dict().values()):
        assert torch.equal(x, y), name


def test_tiny_coconut_model_beats_chance_on_a_tiny_graph_task(tmp_path):
    """Seconds on CPU: 1-hop graphs (the root's only child is one of two candidates), one stage
    of CoT, then one continuous thought; chance is 50%."""
    # lr 3e-3: at 1e-2 the outcome swung between chance and 100% with the seed (and with the
    # rounding of an equivalent loss kernel); at 3e-3 four seeds gave 92-100%.
    cfg = tiny_graph_config(tmp_path, "learn", steps=600, lr=3e-3, warmup=10, eval_every=600, eval_generate=64,
                            batch_size=64, log_every=50,
                            coconut={"mode": "coconut", "epochs_per_stage": 0.5, "max_latent_stage": 1})
    cfg["model"].update(n_layers=2, d_model=64, n_heads=4)
    cfg["task"].update(path_length=1, branching=0, n_concepts=8, n_train=2000, n_val=64, n_test=64)
    tr.train(cfg)
    final = events(tmp_path / "learn", "eval")[-1]
    assert final["stage"] == 2 and final["mean_generated_tokens"] == 1 + 2  # the thought, answer, <eos>
    assert final["accuracy"] >= 0.7, final


@pytest.mark.parametrize("path", sorted((REPO / "configs" / "coconut").glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_coconut_configs(path, monkeypatch):
    monkeypatch.chdir(REPO)
    cfg = tr.load_run_config(path)
    task, mode = path.stem.rsplit("_", 1) if not path.stem.endswith("no_cot") else (path.stem[:-7], "no_cot")
    assert cfg["name"] == f"coconut_{path.stem}" and cfg["train"]["coconut"]["mode"] == mode
    assert cfg["task"]["name"] == {"graph": "graph", "add3": "arithmetic", "prosqa": "prosqa"}[task]
    built = tr.build_task({**cfg["task"], "n_train": 4, "n_val": 2, "n_test": 2})
    assert StagedTask(built, cfg["train"]["coconut"]).max_len < 400
