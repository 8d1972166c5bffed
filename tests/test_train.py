"""Trainer: learning, exact resume, metrics, curriculum, accumulation, configs.

Most tests train on a "count" task defined here (each next letter follows the previous one in
a cyclic alphabet: a bigram a 1-layer model learns in seconds on CPU), built on
`interp.tasks.Task` and registered with `interp.training.register_task` for the run.
"""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest
import torch

from interp import checkpoint as ckpt
from models import HookedTransformer
from interp import training as tr
from interp.tasks import Task
from interp.tasks.base import ANSWER, PROMPT, STEP, build_example
from interp.tokenizers import char_tokenizer

REPO = Path(__file__).resolve().parent.parent


class CountTask(Task):
    """`<bos>` + 3 letters (prompt), 3 more (step), 1-4 more (answer), counting up a cyclic
    alphabet: 'fgh' 'ijk' 'lm'. No `<eos>` (the random length would be unpredictable).
    `mask="mask_steps"` trains the answer only."""

    name = "count"

    def __init__(self, n_train=512, n_val=64, n_test=64, seed=0, alphabet="abcdefghijklmnop", mask="none"):
        super().__init__(n_train=n_train, n_val=n_val, n_test=n_test, seed=seed, alphabet=alphabet, mask=mask)
        self.alphabet, self.mask = alphabet, mask
        self.tokenizer = char_tokenizer(alphabet)

    def _example(self, rng):
        n, start = rng.randint(7, 10), rng.randrange(len(self.alphabet))
        text = "".join(self.alphabet[(start + i) % len(self.alphabet)] for i in range(n))
        tok = self.tokenizer
        return build_example(tok, [([tok.bos_token_id], PROMPT, False), (text[:3], PROMPT, False),
                                   (text[3:6], STEP, self.mask == "none"),
                                   (text[6:], ANSWER, True)])

    def _build_splits(self):
        rng = random.Random(self._config["seed"])
        return {s: [self._example(rng) for _ in range(self._config[f"n_{s}"])] for s in ("train", "val", "test")}


@pytest.fixture
def toolkit(monkeypatch):
    """Make `task: {name: count}` build a CountTask."""
    monkeypatch.setitem(tr.TASK_REGISTRY, "count", CountTask)
    return CountTask


def tiny_config(tmp_path, name="run", **train):
    t = dict(steps=20, batch_size=16, lr=1e-2, warmup=2, min_lr=1e-3, weight_decay=0.01, eval_every=10,
             eval_batches=2, eval_generate=16, save_every=100, keep_last=2, log_every=1, seed=0, device="cpu",
             progress=False, out_dir=str(tmp_path / name))
    t.update(train)
    return {"name": name,
            "model": {"preset": "vanilla", "size": "tiny", "n_layers": 1, "d_model": 32, "n_heads": 2},
            "task": {"name": "count"},
            "train": t}


def train_events(run_dir):
    return [e for e in ckpt.read_metrics(run_dir) if e["event"] == "train"]


def eval_events(run_dir):
    return [e for e in ckpt.read_metrics(run_dir) if e["event"] == "eval"]


# ============================================================ learning
def test_tiny_model_learns_far_below_chance(tmp_path, toolkit):
    cfg = tiny_config(tmp_path, steps=150, eval_every=50, eval_generate=32)
    out = tr.train(cfg)
    evals = eval_events(out.parent)
    chance = math.log(CountTask().tokenizer.vocab_size)
    first, last = train_events(out.parent)[0]["loss"], evals[-1]
    assert first > 0.7 * chance
    assert last["loss"] < 0.15 * chance, (last, chance)
    assert last["exact_match"] >= 0.9
    assert last["token_acc_answer"] >= 0.95
    # the returned checkpoint loads and reproduces the eval
    model, tok = ckpt.load(out)
    again = tr.evaluate(model, tok, CountTask(), "val", batch_size=16, max_batches=2, n_generate=32)
    assert again["loss"] == pytest.approx(last["loss"], abs=1e-5)
    assert again["exact_match"] == last["exact_match"]


def test_metrics_have_segment_losses_and_accuracy(tmp_path, toolkit):
    out = tr.train(tiny_config(tmp_path, steps=4, eval_every=2))
    rows = ckpt.read_metrics(out.parent)
    evals = [r for r in rows if r["event"] == "eval"]
    assert [e["step"] for e in evals] == [2, 4]
    for key in ("loss", "ppl", "token_acc", "exact_match", "loss_prompt", "loss_step", "loss_answer",
                "token_acc_answer", "n_tokens"):
        assert key in evals[-1] and evals[-1][key] is not None, key
    assert evals[-1]["ppl"] == pytest.approx(math.exp(evals[-1]["loss"]), rel=1e-6)
    trains = [r for r in rows if r["event"] == "train"]
    assert [r["step"] for r in trains] == [1, 2, 3, 4]
    assert all(r["tokens_per_s"] > 0 and r["lr"] > 0 for r in trains)
    # the checkpoint carries the log and the config carries task + training info
    _, data = ckpt.load_config(out)
    assert data["task"]["name"] == "count"
    assert data["training"]["step"] == 4 and data["training"]["run_config"]["train"]["steps"] == 4
    assert len(ckpt.read_metrics(out)) == len(rows)


def test_segment_loss_counts_masked_segments_too(tmp_path, toolkit):
    """With steps masked from training, the main loss scores answers only, while the
    per-segment losses still report every segment."""
    task = CountTask(mask="mask_steps")
    model = HookedTransformer(tr.build_model_config({"preset": "vanilla", "size": "tiny", "n_layers": 1},
                                                       task.tokenizer, task.max_len))
    m = tr.evaluate(model, task.tokenizer, task, "val", batch_size=16, max_batches=1, n_generate=4)
    assert m["loss_prompt"] is not None and m["loss_step"] is not None
    # labels are -100 before the answer, so the main loss is the answer segment's loss
    assert m["loss"] == pytest.approx(m["loss_answer"], rel=1e-5)


# ============================================================ resume
def test_resume_reproduces_uninterrupted_run(tmp_path, toolkit):
    full = tr.train(tiny_config(tmp_path, "full", steps=20, eval_every=5))
    paused = tr.train(tiny_config(tmp_path, "paused", steps=20, eval_every=5, stop_at=10))
    assert paused.name == "step_000010"
    assert [e["step"] for e in train_events(paused.parent)] == list(range(1, 11))
    resumed = tr.train(resume=paused.parent)  # the run dir: follows its `last` pointer
    assert resumed.name == "step_000020" and resumed.parent == paused.parent

    a = {e["step"]: e["loss"] for e in train_events(full.parent)}
    b = {e["step"]: e["loss"] for e in train_events(paused.parent)}
    assert sorted(a) == sorted(b) == list(range(1, 21))
    for step in a:
        assert abs(a[step] - b[step]) <= 1e-6, (step, a[step], b[step])
    ea = {e["step"]: e["loss"] for e in eval_events(full.parent)}
    eb = {e["step"]: e["loss"] for e in eval_events(paused.parent)}
    assert sorted(ea) == sorted(eb) == [5, 10, 15, 20]
    assert all(abs(ea[s] - eb[s]) <= 1e-6 for s in ea)
    m1, _ = ckpt.load(full)
    m2, _ = ckpt.load(resumed)
    for (k, v1), v2 in zip(m1.state_dict().items(), m2.state_dict().values()):
        torch.testing.assert_close(v1, v2, atol=1e-6, rtol=0, msg=k)


def test_resume_from_a_step_checkpoint_with_overrides(tmp_path, toolkit):
    first = tr.train(tiny_config(tmp_path, steps=6, save_every=3, keep_last=5, eval_every=3))
    step3 = first.parent / "step_000003"
    assert step3.is_dir()
    out = tr.train(resume=step3, overrides=["train.steps=8"])
    assert out.name == "step_000008"
    steps = [e["step"] for e in train_events(out.parent)]
    assert steps == list(range(1, 9))  # the log was rewound to step 3, then continued


def test_init_from_starts_from_the_checkpoint_weights(tmp_path, toolkit):
    """`train.init_from`: the new run starts at step 0 from the checkpoint's weights (its first
    loss is the trained model's, far below a fresh model's); a checkpoint of another shape is
    refused with the differing keys."""
    first = tr.train(tiny_config(tmp_path, "first", steps=20, eval_every=20))
    fresh = tr.train(tiny_config(tmp_path, "fresh", steps=1, eval_every=1))
    warm = tr.train(tiny_config(tmp_path, "warm", steps=1, eval_every=1, init_from=str(first)))
    assert warm.name == "step_000001" and [e["step"] for e in train_events(warm.parent)] == [1]
    trained_loss = train_events(first.parent)[-1]["loss"]
    assert train_events(warm.parent)[0]["loss"] < min(2 * trained_loss, 0.5 * train_events(fresh.parent)[0]["loss"])
    with pytest.raises(tr.TrainConfigError, match="train.init_from.*d_model"):
        tr.train(tiny_config(tmp_path, "other", steps=1, init_from=str(first)), ["model.d_model=48"])
    with pytest.raises(tr.TrainConfigError, match="train.init_from: .*no such checkpoint"):
        tr.train(tiny_config(tmp_path, "missing", steps=1, init_from=str(tmp_path / "nope")))


def test_fresh_run_refuses_to_clobber_checkpoints(tmp_path, toolkit):
    cfg = tiny_config(tmp_path, steps=2, eval_every=2)
    tr.train(cfg)
    with pytest.raises(tr.TrainConfigError, match="already holds checkpoints"):
        tr.train(cfg)
    out = tr.train(cfg, ["train.overwrite=true"])
    assert out.name == "step_000002"


# ============================================================ curriculum, accumulation, schedule
def test_seq_len_curriculum_changes_max_len(tmp_path, toolkit):
    out = tr.train(tiny_config(tmp_path, steps=8, eval_every=8, seq_len_curriculum=[[0, 5], [4, 9]]))
    events = train_events(out.parent)
    assert [e["max_len"] for e in events] == [5] * 4 + [9] * 4
    assert all(e["seq_len"] <= 5 and e["n_truncated"] > 0 for e in events[:4])
    assert all(5 < e["seq_len"] <= 9 for e in events[4:])
    # learned positions must reach the task's full length, not only the curriculum's
    model, _ = ckpt.load(out)
    assert model.cfg.n_ctx >= CountTask().max_len


def test_grad_accumulation_matches_big_batch(tmp_path, toolkit):
    big = tr.train(tiny_config(tmp_path, "big", steps=4, batch_size=16, grad_accum=1, eval_every=4))
    acc = tr.train(tiny_config(tmp_path, "acc", steps=4, batch_size=8, grad_accum=2, eval_every=4))
    la = [e["loss"] for e in train_events(big.parent)]
    lb = [e["loss"] for e in train_events(acc.parent)]
    assert len(la) == len(lb) == 4
    for x, y in zip(la, lb):
        assert abs(x - y) < 1e-5, (la, lb)


def test_gradient_checkpointing_gives_the_same_losses(tmp_path, toolkit):
    plain = tr.train(tiny_config(tmp_path, "plain", steps=3, eval_every=3))
    ckpted = tr.train(tiny_config(tmp_path, "gc", steps=3, eval_every=3, gradient_checkpointing=True))
    la = [e["loss"] for e in train_events(plain.parent)]
    lb = [e["loss"] for e in train_events(ckpted.parent)]
    assert la == pytest.approx(lb, abs=1e-6)


def test_lr_schedule_warmup_then_cosine():
    t = dict(tr.DEFAULT_TRAIN, lr=1.0, min_lr=0.1, warmup=10, steps=110)
    assert tr.lr_at(0, t) == pytest.approx(0.1)
    assert tr.lr_at(9, t) == pytest.approx(1.0)
    assert tr.lr_at(10, t) == pytest.approx(1.0)
    assert tr.lr_at(60, t) == pytest.approx(0.55)
    assert tr.lr_at(110, t) == pytest.approx(0.1)
    lrs = [tr.lr_at(s, t) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))


def test_param_groups_decay_only_matrices():
    from models import presets

    for name in presets.NAMES:
        model = presets.make(name, "tiny")
        decay, no_decay = tr.param_groups(model, 0.1)  # [decay group, no-decay group]
        names = {id(p): n for n, p in model.named_parameters()}
        no = {names[id(p)] for p in no_decay["params"]}
        yes = {names[id(p)] for p in decay["params"]}
        assert no_decay["weight_decay"] == 0.0 and decay["weight_decay"] == 0.1
        assert "embed.weight" in no
        assert all(model.get_parameter(n).ndim >= 2 for n in yes)
        assert not any(n.endswith((".bias", ".w", ".b")) or "ln" in n for n in yes), yes
        assert len(no) + len(yes) == len(list(model.parameters()))


# ============================================================ config handling
def test_overrides_parse_types_and_route_bare_keys():
    cfg = tr.load_run_config(
        {"task": {"name": "count"}},
        ["train.lr=3e-4", "steps=7", "d_model=48", "model.preset=llama-like", "train.betas=[0.9, 0.99]",
         "train.seq_len_curriculum=[[0, 16], [100, 32]]", "task.n_digits=3", "train.compile=false"],
    )
    assert cfg["train"]["lr"] == 3e-4 and isinstance(cfg["train"]["lr"], float)
    assert cfg["train"]["steps"] == 7 and cfg["model"]["d_model"] == 48 and cfg["model"]["preset"] == "llama-like"
    assert cfg["train"]["betas"] == [0.9, 0.99] and cfg["train"]["compile"] is False
    assert cfg["task"]["n_digits"] == 3
    with pytest.raises(tr.TrainConfigError, match="unknown key"):
        tr.load_run_config({"task": {"name": "count"}}, ["bogus=1"])
    with pytest.raises(tr.TrainConfigError, match="lrr"):
        tr.load_run_config({"task": {"name": "count"}, "train": {"lrr": 1}})
    with pytest.raises(tr.TrainConfigError, match="key=value"):
        tr.load_run_config({"task": {"name": "count"}}, ["train.lr"])


def test_model_config_takes_vocab_and_specials_from_tokenizer():
    tok = char_tokenizer("abcdef")
    cfg = tr.build_model_config({"preset": "math-compact", "size": "tiny", "ffn": "swiglu"}, tok, max_len=300)
    assert cfg.d_vocab == tok.vocab_size and cfg.pad_token_id == 0 and cfg.eos_token_id == 2
    assert cfg.ffn == "swiglu" and cfg.positional == "rope" and cfg.n_ctx == 300


CONFIGS = sorted((REPO / "configs").glob("*.yaml"))


def test_shipped_configs_cover_every_preset_and_task():
    from models import presets

    names = {p.stem for p in CONFIGS}
    for preset in presets.NAMES:
        assert f"{preset}_shakespeare" in names, preset
    for preset in ("math-compact", "vanilla"):
        for mode in ("none", "mask_steps", "mask_answer"):
            assert f"{preset}_add3_{mode}" in names
    assert {"vanilla_induction", "attn-only_induction", "vanilla_modular"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_shipped_config_is_valid(path):
    cfg = tr.load_run_config(path)
    assert cfg["name"] == path.stem
    model_cfg = tr.build_model_config(cfg["model"], char_tokenizer("abc"), max_len=64)
    assert model_cfg.d_vocab == 6
    if cfg["model"]["preset"] is not None:
        assert model_cfg.name.startswith(cfg["model"]["preset"])


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_shipped_config_builds_its_task(path, monkeypatch):
    monkeypatch.chdir(REPO)
    cfg = tr.load_run_config(path)
    task = tr.build_task(cfg["task"])
    assert len(task.split("train")) > 0 and task.tokenizer.vocab_size > 0


def test_train_accepts_a_task_object(tmp_path):
    """Python API: pass a ready task (no registry entry, no `task` section in the config)."""
    cfg = tiny_config(tmp_path, steps=2, eval_every=2)
    del cfg["task"]
    out = tr.train(cfg, task=CountTask(n_train=64, n_val=16))
    _, data = ckpt.load_config(out)
    assert data["task"]["name"] == "count" and data["task"]["n_train"] == 64
    model, tok = ckpt.load(out)
    assert tok.vocab_size == model.cfg.d_vocab
