"""Dictionary training (interp.features.training) on shipped checkpoints, on CPU: a tiny SAE
learns (FVE checked on held-out text with an independent computation), several dictionaries
from one forward equal separate runs, a paused run resumes exactly, the activation buffer
holds exactly the unmasked positions, and bad configs fail with errors that name the key."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

import interp
from interp import features
from interp.checkpoint import read_metrics
from interp.features.training import FeaturesConfigError, load_config, run
from interp.features.training.activations import ActivationBuffer, ActivationProducer, TokenSource, cached_task

VANILLA = "data/checkpoints/shakespeare_vanilla"
ADD3 = "data/checkpoints/add3_none"


def tiny(out_dir=None, **train) -> dict:
    """Two dictionaries on shakespeare_vanilla: a TopK SAE on layer 0's residual and a TopK
    transcoder for layer 1's MLP (ln2 output -> MLP output)."""
    return {
        "name": "tiny",
        "checkpoint": VANILLA,
        "data": {"batch_size": 8, "seq_len": 32},
        "train": {"tokens": 6144, "batch_tokens": 256, "buffer_tokens": 1024, "lr": 3e-3, "log_every": 4,
                  "device": "cpu", "progress": False, "out_dir": str(out_dir) if out_dir else None, **train},
        "defaults": {"arch": "topk", "d_sae": 64, "k": 4},
        "dictionaries": {
            "resid_0": {"hook_name": "blocks.0.hook_resid_post"},
            "mlp_1": {"hook_name": "blocks.1.ln2.hook_normalized", "out_hook_name": "blocks.1.hook_mlp_out",
                      "k": 8, "skip": True},
        },
    }


def held_out_fve(sae, ckpt: str, hook: str, n_windows: int = 16) -> float:
    """FVE on the checkpoint's val split, from TransformerLens-style caching and the
    dictionary's plain forward (none of the trainer's code), BOS position left out."""
    model, _ = interp.load(ckpt)
    task = cached_task(json.load(open(f"{ckpt}/config.json"))["task"])
    windows = task.token_windows("val")
    tokens = windows.rows(torch.arange(n_windows)).input_ids
    _, cache = model.run_with_cache(tokens, names_filter=[hook])
    x = cache[hook][:, 1:].reshape(-1, model.cfg.d_model)
    with torch.no_grad():
        x_hat, _ = sae(x)
    return float(1 - (x - x_hat).pow(2).sum() / (x - x.mean(0)).pow(2).sum())


def test_tiny_sae_learns_on_a_shipped_model():
    sae = features.train(VANILLA, hook="blocks.0.hook_resid_post", arch="topk", d_sae=256, k=16, tokens=40_960,
                         device="cpu", batch_tokens=512, buffer_tokens=8192, batch_size=4, lr=3e-3)
    assert isinstance(sae, features.SparseDictionary) and sae.cfg.d_in == 192 and sae.cfg.k == 16
    fve = held_out_fve(sae, VANILLA, "blocks.0.hook_resid_post")
    assert fve > 0.5, fve
    fresh = features.make({**sae.cfg.to_dict()})  # the same dictionary untrained: far worse
    fresh.init_from_data(torch.zeros(4, 192))
    assert held_out_fve(fresh, VANILLA, "blocks.0.hook_resid_post") < fve - 0.3


def test_several_dictionaries_from_one_forward_equal_separate_runs(tmp_path):
    together, run_dir = run(tiny(tmp_path / "both"))
    for name in ("resid_0", "mlp_1"):
        cfg = tiny(tmp_path / name)
        cfg["dictionaries"] = {name: cfg["dictionaries"][name]}
        alone, _ = run(cfg)
        for key, value in together[name].state_dict().items():
            assert torch.equal(value, alone[name].state_dict()[key]), (name, key)
    # the run directory: each dictionary in SAELens layout, one metrics row per dictionary per log step
    for name in ("resid_0", "mlp_1"):
        loaded = features.load(run_dir / name)
        x = torch.randn(5, 192)
        torch.testing.assert_close(loaded(x)[0], together[name](x)[0], rtol=1e-4, atol=1e-4)
    rows = [r for r in read_metrics(run_dir) if r["event"] == "train"]
    assert [(r["step"], r["dictionary"]) for r in rows] == [(s, n) for s in (4, 8, 12, 16, 20, 24)
                                                            for n in ("resid_0", "mlp_1")]
    assert {"loss", "mse", "aux", "l0", "fve", "dead_fraction", "dense_fraction", "lr"} <= set(rows[0])
    assert rows[-2]["fve"] > rows[0]["fve"]


def test_paused_run_resumes_exactly(tmp_path):
    full, _ = run(tiny(tmp_path / "full", save_every=8))
    # paused at step 10: mid-fill (the buffer serves 4 batches per fill) and between checkpoints
    _, paused_dir = run(tiny(tmp_path / "paused", save_every=8, stop_at=10))
    assert (paused_dir / "step_000010").is_dir() and not (paused_dir / "resid_0").exists()
    resumed, _ = run(resume=paused_dir)
    for name in full:
        for key, value in full[name].state_dict().items():
            assert torch.equal(value, resumed[name].state_dict()[key]), (name, key)
    want = [r for r in read_metrics(tmp_path / "full") if r["event"] == "train"]
    got = [r for r in read_metrics(paused_dir) if r["event"] == "train"]
    strip = lambda rows: [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in rows]  # noqa: E731
    assert strip(got) == strip(want)
    # a finished run resumed again has nothing left to do and changes nothing
    again, _ = run(resume=paused_dir)
    assert torch.equal(again["resid_0"].W_dec, full["resid_0"].W_dec)


def test_buffer_holds_exactly_the_unmasked_positions():
    """add3 examples are right-padded to different lengths: the buffer must hold every real
    non-BOS position of the batches it read, each once, and nothing else."""
    model, _ = interp.load(ADD3)
    task_cfg = json.load(open(f"{ADD3}/config.json"))["task"]
    source = TokenSource(task_cfg, "train", 4, None, True, model.cfg.bos_token_id, seed=0, device=torch.device("cpu"))
    hook = "blocks.1.hook_resid_post"
    producer = ActivationProducer(model, [hook], None)
    buffer = ActivationBuffer(source, producer, capacity=256, batch_rows=32, seed=0, dtype=torch.float32)
    rows = torch.cat([buffer.next()[hook] for _ in range(8)])  # one whole fill
    pad_id = cached_task(task_cfg).tokenizer.pad_token_id
    want = []
    i = 0
    while sum(len(w) for w in want) < 256:
        ids, mask = source.batch(i)
        assert not mask[:, 0].any() and (ids[:, 0] == model.cfg.bos_token_id).all()
        assert (mask.sum(1) == (ids != pad_id).sum(1) - 1).all()  # every real token but BOS
        _, cache = model.run_with_cache(ids, names_filter=[hook])
        want.append(cache[hook][mask])
        i += 1
    want = torch.cat(want)[:256]
    assert rows.shape == want.shape
    # the same rows in a shuffled order: match them up by sorting on a projection
    key = torch.randn(want.shape[1], dtype=torch.float64)
    torch.testing.assert_close(rows.double()[(rows.double() @ key).argsort()], want.double()[(want.double() @ key).argsort()],
                               rtol=1e-5, atol=1e-5)
    assert not torch.equal(rows, want), "rows come out shuffled"
    producer.close()


@pytest.mark.parametrize("edit, message", [
    (lambda c: c.update(bogus=1), "unknown top-level key(s) ['bogus']"),
    (lambda c: c["train"].update(token=5), "train: unknown key(s) ['token']"),
    (lambda c: c["train"].update(batch_tokens="many"), "train.batch_tokens must be a positive integer"),
    (lambda c: c["train"].update(buffer_tokens=10), "train.buffer_tokens=10 must be at least train.batch_tokens"),
    (lambda c: c["dictionaries"]["resid_0"].update(kk=3), "dictionaries.resid_0: unknown key(s) ['kk']"),
    (lambda c: c["dictionaries"]["resid_0"].update(d_in=3), "(d_in come from the model)"),
    (lambda c: c.update(dictionaries={}), "dictionaries: give at least one"),
    (lambda c: c["dictionaries"].update(last={"hook_name": "hook_embed"}), "cannot be a directory name"),
    (lambda c: c["data"].update(exclude_bos="yes"), "data.exclude_bos must be true or false"),
    (lambda c: c.pop("checkpoint"), "checkpoint: give the model checkpoint"),
])
def test_config_errors_name_the_key(edit, message):
    cfg = tiny()
    edit(cfg)
    with pytest.raises(FeaturesConfigError) as e:
        load_config(cfg)
    assert message in str(e.value)


def test_errors_that_need_the_model(tmp_path):
    cfg = tiny()
    cfg["dictionaries"]["resid_0"]["hook_name"] = "blocks.7.hook_resid_post"
    with pytest.raises(FeaturesConfigError, match=r"is not a hook of .*4 layers.*valid: .*blocks\.\{i\}\.hook_resid_post"):
        run(cfg)
    cfg = tiny()
    cfg["dictionaries"]["resid_0"]["hook_name"] = "blocks.0.attn.hook_pattern"
    with pytest.raises(FeaturesConfigError, match="not one vector per position"):
        run(cfg)
    cfg = tiny()
    cfg["dictionaries"]["resid_0"]["k"] = 64
    with pytest.raises(FeaturesConfigError, match=r"dictionaries\.resid_0: k=64: must be < d_sae=64"):
        run(cfg)
    with pytest.raises(FeaturesConfigError, match="neither a features run directory"):
        run(resume=tmp_path)
    run(tiny(tmp_path / "r", stop_at=2))
    with pytest.raises(FeaturesConfigError, match="already holds checkpoints"):
        run(tiny(tmp_path / "r"))


def test_overrides_and_yaml(tmp_path):
    file = tmp_path / "run.yaml"
    file.write_text(yaml.safe_dump(tiny()))
    cfg = load_config(file, ["k=6", "tokens=1e4", "dictionaries.mlp_1.d_sae=32", "train.lr=1e-3", "seq_len=16"])
    assert cfg["dictionaries"]["resid_0"]["k"] == 6 and cfg["dictionaries"]["mlp_1"]["k"] == 8  # its own k wins
    assert cfg["dictionaries"]["mlp_1"]["d_sae"] == 32
    assert cfg["train"]["tokens"] == 10_000 and cfg["train"]["lr"] == 1e-3 and cfg["data"]["seq_len"] == 16
    with pytest.raises(FeaturesConfigError, match="unknown key 'kay'"):
        load_config(file, ["kay=3"])
    with pytest.raises(FeaturesConfigError, match="no such config file"):
        load_config(tmp_path / "missing.yaml")


def test_cli_train_and_resume(tmp_path):
    from typer.testing import CliRunner

    from interp.cli import app

    cfg = tiny(tmp_path / "cli", stop_at=4)
    cfg["dictionaries"] = {"resid_0": cfg["dictionaries"]["resid_0"]}
    file = tmp_path / "cli.yaml"
    file.write_text(yaml.safe_dump(cfg))
    cli = CliRunner()
    done = cli.invoke(app, ["features", "train", "--config", str(file), "--set", "train.tokens=2048"])
    assert done.exit_code == 0, done.output
    assert done.output.strip().splitlines()[-1] == str(tmp_path / "cli")
    done = cli.invoke(app, ["features", "train", "--resume", str(tmp_path / "cli"), "--set", "train.stop_at=null"])
    assert done.exit_code == 0, done.output
    assert features.load(tmp_path / "cli" / "resid_0").cfg.k == 4
    bad = cli.invoke(app, ["features", "train", "--config", str(file), "--set", "train.tokenz=5"])
    assert bad.exit_code == 1 and "train: unknown key(s) ['tokenz']" in bad.output
