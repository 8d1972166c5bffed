"""The tensor-resident training path: same losses as a plain collate-per-step loop, full batch,
progress measures in metrics.jsonl, interrupts save, token shards, compact checkpoint series.

The reference for the data path is written here from scratch: each step collates its
examples with `interp.tasks.collate` (the batching the trainer used before it kept tasks on
the device) in the order of the documented sampling rule, and steps a plain AdamW.
"""

from __future__ import annotations

import copy
import math
import os
import signal
import sys
from pathlib import Path

import pytest
import torch

from tolerance import approx_tol

from interp import checkpoint as ckpt
from interp import training as tr
from interp.tasks import collate
from interp.training import progress
from models import HookedTransformer

sys.path.insert(0, str(Path(__file__).parent))
from test_train import CountTask, eval_events, tiny_config, toolkit, train_events  # noqa: E402,F401

REPO = Path(__file__).resolve().parent.parent


def reference_losses(cfg: dict, init_state: dict, task, steps: int) -> list[float]:
    """Per-step losses of a collate-per-step loop over the same stream of examples."""
    t = cfg["train"]
    model_cfg = tr.build_model_config(cfg["model"], task.tokenizer, task.max_len)
    model = HookedTransformer(model_cfg)
    model.load_state_dict(init_state)
    model.train()
    opt = torch.optim.AdamW(tr.param_groups(model, float(t["weight_decay"]), bool(t["decay_all"])),
                            lr=float(t["lr"]), betas=tuple(t["betas"]), eps=float(t["eps"]))
    examples = task.split("train")
    n = len(examples)
    per_step = n if t["batch_size"] == "full" else t["batch_size"] * t["grad_accum"]
    losses = []
    for step in range(steps):
        if t["batch_size"] == "full":
            idx = list(range(n))
        else:
            idx = []
            for pos in range(step * per_step, (step + 1) * per_step):
                epoch, i = divmod(pos, n)
                perm = torch.randperm(n, generator=torch.Generator().manual_seed(t["seed"] * 1_000_003 + epoch))
                idx.append(int(perm[i]))
        for group in opt.param_groups:
            group["lr"] = tr.lr_at(step, t)
        chunk = per_step if t["batch_size"] == "full" else t["batch_size"]
        batches = [collate([examples[i] for i in idx[k : k + chunk]], task.tokenizer.pad_token_id)
                   for k in range(0, len(idx), chunk)]
        n_target = sum(int((b.labels[:, 1:] != -100).sum()) for b in batches)
        total = 0.0
        for b in batches:
            per_token = model(b.input_ids, return_type="loss", labels=b.labels, attention_mask=b.attention_mask,
                              loss_per_token=True)
            loss = per_token.sum() / n_target
            loss.backward()
            total += float(loss.detach())
        if t["grad_clip"]:
            torch.nn.utils.clip_grad_norm_(model.parameters(), float(t["grad_clip"]))
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(total)
    return losses


@pytest.mark.parametrize("extra", [dict(batch_size=16), dict(batch_size=8, grad_accum=2), dict(batch_size="full")],
                         ids=["batch", "accumulation", "full-batch"])
def test_tensor_path_equals_collate_loop(tmp_path, toolkit, extra):
    steps = 6
    cfg = tr.load_run_config(tiny_config(tmp_path, steps=steps, eval_every=steps, log_every=1, **extra))
    trainer = tr.Trainer(cfg)
    init = copy.deepcopy(trainer.model.state_dict())
    trainer.run()
    ours = [e["loss"] for e in train_events(trainer.run_dir)]
    ref = reference_losses(cfg, init, CountTask(), steps)
    assert len(ours) == steps
    for a, b in zip(ours, ref):
        assert abs(a - b) < 1e-5, (ours, ref)


def test_full_batch_sees_every_example_each_step(tmp_path, toolkit):
    cfg = tr.load_run_config(tiny_config(tmp_path, steps=2, eval_every=2, batch_size="full"))
    trainer = tr.Trainer(cfg)
    idx = trainer.data.sampler.indices(1)
    assert idx.tolist() == list(range(len(CountTask().split("train"))))
    with pytest.raises(ValueError, match="grad_accum must be 1"):
        tr.TrainData(trainer.data.tensors, "full", 2, 0, "cpu")


def test_materialised_split_matches_collate():
    task = CountTask(n_train=40)
    t = tr.ExampleTensors.from_examples(task.split("train"), task.tokenizer.pad_token_id)
    b = collate(list(task.split("train")), task.tokenizer.pad_token_id)
    assert torch.equal(t.input_ids, b.input_ids) and torch.equal(t.labels, b.labels)
    assert torch.equal(t.attention_mask, b.attention_mask) and torch.equal(t.segments, b.segments)
    mb = t.rows(torch.tensor([3, 1]), max_len=5)
    assert mb.input_ids.shape == (2, 5) and int(mb.n_tokens) == 10 and int(mb.n_truncated) == 2


def test_progress_measures_land_in_metrics(tmp_path, toolkit):
    calls = []

    @tr.register_measure("test_counter")
    def counter(model, task):
        calls.append(model.training)
        return {"counter": len(calls)}

    try:
        out = tr.train(tiny_config(tmp_path, steps=4, eval_every=2,
                                   metrics=["weight_norms", "attention_entropy", "head_scores", "test_counter"]))
    finally:
        progress.MEASURES.pop("test_counter")
    rows = [r for r in ckpt.read_metrics(out.parent) if r["event"] == "progress"]
    assert [r["step"] for r in rows] == [2, 4] and [r["counter"] for r in rows] == [1, 2]
    assert calls == [False, False]  # measured in eval mode
    last = rows[-1]
    assert last["weight_norm"] > 0 and "weight_norm/embed" in last and "weight_norm/blocks.0.attn" in last
    assert "attn_entropy/L0H0" in last and "induction/L0H1" in last and "prev_token/L0H0" in last
    model, _ = ckpt.load(out)
    expected = math.sqrt(sum(float(p.detach().pow(2).sum()) for p in model.parameters()))
    assert last["weight_norm"] == pytest.approx(expected, **approx_tol(expected))
    evals = eval_events(out.parent)
    assert all(e["train_loss"] is not None and e["train_token_acc"] is not None for e in evals)
    with pytest.raises(tr.TrainConfigError, match="unknown progress measure"):
        tr.load_run_config(tiny_config(tmp_path, metrics=["nope"]))


def test_fourier_measures_match_a_direct_computation():
    from interp.tasks import make_task

    task = make_task("modular", p=7, format="compact", eos=False, n_train=20, val_frac=0.0)
    torch.manual_seed(0)
    model = HookedTransformer(tr.build_model_config({"preset": None, "n_layers": 1, "d_model": 16, "n_heads": 2,
                                                     "n_ctx": 4, "norm": "none", "ffn": "relu"}, task.tokenizer))
    out = progress.fourier(model.eval(), task)
    # spectrum: project W_E[:7] on the DFT by hand
    W = model.W_E[:7].detach().double()
    x = torch.arange(7, dtype=torch.float64)
    share = []
    for k in range(1, 4):
        c, s = torch.cos(2 * math.pi * k * x / 7), torch.sin(2 * math.pi * k * x / 7)
        share.append(float(((c / c.norm()) @ W).pow(2).sum() + ((s / s.norm()) @ W).pow(2).sum()))
    total = sum(share)
    want = [v / total for v in share]  # float64 here, float32 in the measure
    assert out["fourier/spectrum"] == pytest.approx(want, **approx_tol(want))
    # restricted / excluded loss on synthetic logits with known structure
    p = 7
    a = torch.arange(p)
    answers = (a[:, None] + a[None, :]) % p
    train = torch.rand(p, p, generator=torch.Generator().manual_seed(0)) < 0.5
    g = torch.randn(p, p, generator=torch.Generator().manual_seed(1))
    of_sum = g[answers]  # L[a, b, c] = g[(a + b) mod p, c]: only the a+b directions (every frequency)
    ce = lambda logits, mask=None: float(torch.nn.functional.cross_entropy(  # noqa: E731
        logits.reshape(-1, p)[mask.reshape(-1)] if mask is not None else logits.reshape(-1, p),
        answers.reshape(-1)[mask.reshape(-1)] if mask is not None else answers.reshape(-1)))
    r, e = progress.restricted_and_excluded(of_sum, [1, 2, 3], answers, train)
    mean = of_sum.mean(dim=(0, 1), keepdim=True).expand_as(of_sum)
    assert r == pytest.approx(ce(of_sum), **approx_tol(ce(of_sum)))  # nothing outside the key directions
    assert e == pytest.approx(ce(mean, train), **approx_tol(ce(mean, train)))  # excluding them leaves the mean
    of_a = g[a][:, None, :].expand(p, p, p)  # depends on a only: no a+b component at all
    r, e = progress.restricted_and_excluded(of_a, [1, 2, 3], answers, train)
    want = ce(of_a.mean(dim=(0, 1), keepdim=True).expand_as(of_a))
    assert r == pytest.approx(want, **approx_tol(want))
    assert e == pytest.approx(ce(of_a, train), **approx_tol(ce(of_a, train)))


def test_sigint_saves_a_checkpoint_and_resume_continues(tmp_path, toolkit):
    @tr.register_measure("test_interrupt")
    def interrupt(model, task):
        os.kill(os.getpid(), signal.SIGINT)
        return {}

    cfg = tiny_config(tmp_path, steps=10, eval_every=3, save_every=100, metrics=["test_interrupt"])
    try:
        with pytest.raises(KeyboardInterrupt):
            tr.train(cfg)
    finally:
        progress.MEASURES.pop("test_interrupt")
    run = Path(cfg["train"]["out_dir"])
    saved = ckpt.resolve(run)
    assert saved.name == "step_000003" and (saved / "train_state.pt").exists()
    assert [r for r in ckpt.read_metrics(run) if r["event"] == "interrupted"][0]["signal"] == "SIGINT"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored
    out = tr.train(resume=run, overrides=["train.metrics=[]"])
    assert out.name == "step_000010"


def test_keep_all_series_is_compact_and_half_precision(tmp_path, toolkit):
    out = tr.train(tiny_config(tmp_path, steps=6, eval_every=2, save_every=2, keep_last="all", save_dtype="fp16",
                               save_best=False))
    series = ckpt.CheckpointManager(out.parent, keep_last=None).checkpoints()
    assert [s for s, _ in series] == [2, 4, 6]
    for step, path in series[:-1]:
        assert not (path / "train_state.pt").exists() and not (path / "metrics.jsonl").exists()
    assert (series[-1][1] / "train_state.pt").exists()
    from safetensors import safe_open

    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert all(f.get_tensor(k).dtype == torch.float16 for k in f.keys())
    model, _ = ckpt.load(out)
    assert next(model.parameters()).dtype == torch.float32


def test_bf16_on_cpu_uses_cpu_autocast(tmp_path, toolkit, capsys):
    out = tr.train(tiny_config(tmp_path, steps=2, eval_every=2, dtype="bf16"))
    assert "CPU autocast" in capsys.readouterr().err
    assert all(math.isfinite(e["loss"]) for e in train_events(out.parent))


def test_wandb_failure_is_one_clear_error(tmp_path, toolkit, monkeypatch):
    class FakeWandb:
        @staticmethod
        def init(**kwargs):
            raise RuntimeError("api_key not configured (no-tty). call wandb.login(key=[your_api_key])\nmore")

    monkeypatch.setitem(sys.modules, "wandb", FakeWandb)
    with pytest.raises(tr.TrainConfigError) as err:
        tr.train(tiny_config(tmp_path, steps=2, wandb=True))
    assert "\n" not in str(err.value) and "wandb login" in str(err.value)


def test_token_shards_train_like_the_text_task(tmp_path):
    from typer.testing import CliRunner

    from interp.cli import app

    cfg = {"name": "shards", "model": {"preset": "vanilla", "size": "tiny", "n_layers": 1, "d_model": 32},
           "task": {"name": "text", "path": str(REPO / "data/tinyshakespeare.txt"), "seq_len": 16,
                    "max_chars": 4000},
           "train": {"steps": 3, "batch_size": 4, "eval_every": 3, "eval_batches": 1, "eval_generate": 2,
                     "log_every": 1, "device": "cpu", "progress": False, "save_every": 100}}
    import yaml

    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    result = CliRunner().invoke(app, ["data", "prepare", "--config", str(path), "--out", str(tmp_path / "shards")])
    assert result.exit_code == 0, result.output
    memory = tr.build_task(cfg["task"])
    sharded = tr.build_task({**cfg["task"], "shards": str(tmp_path / "shards")})
    for split in ("train", "val", "test"):
        a, b = memory.split(split), sharded.split(split)
        assert len(a) == len(b) > 0
        assert a[0].input_ids == b[0].input_ids and a[len(a) - 1].labels == b[len(b) - 1].labels
    losses = []
    for name, task_cfg in (("mem", cfg["task"]), ("disk", {**cfg["task"], "shards": str(tmp_path / "shards")})):
        run = {**cfg, "task": task_cfg, "train": {**cfg["train"], "out_dir": str(tmp_path / name)}}
        out = tr.train(run)
        losses.append([e["loss"] for e in train_events(out.parent)])
    assert losses[0] == pytest.approx(losses[1], abs=1e-6)
    bad = CliRunner().invoke(app, ["data", "prepare", "--config", str(REPO / "configs/reference/grokking.yaml"),
                                   "--out", str(tmp_path / "x")])
    assert bad.exit_code == 1 and "not a text task" in bad.output


def test_modular_configs_say_which_is_the_grokking_setup():
    for path in sorted((REPO / "configs").glob("*modular*.yaml")):
        assert "configs/reference/grokking.yaml" in path.read_text(), path
    text = (REPO / "configs/reference/grokking.yaml").read_text()
    assert "Nanda et al." in text
