"""Checkpoints: exact round trips, atomic saves, refusals that name the file and the fault,
GPU leftovers (bf16, compile/DDP prefixes, CUDA tensors), safe legacy loading, keep-last-K."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from tolerance import close

import interp
from interp import checkpoint as ck
from interp.checkpoint import CheckpointError, CheckpointManager
from interp.tokenizers import char_tokenizer
from models import presets

TOKENS = torch.tensor([[1, 5, 7, 3, 9, 4, 4, 2], [1, 8, 6, 6, 3, 2, 0, 0]])
MASK = TOKENS != 0


def make(name="vanilla", seed=0, **overrides):
    torch.manual_seed(seed)
    fields = dict(d_vocab=16, n_ctx=32, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    fields.update(overrides)
    return presets.make(name, "tiny", **fields).eval()


def tokenizer():
    return char_tokenizer("abcdefghijklm")  # 3 specials + 13 letters = 16


def logits(model):
    with torch.no_grad():
        return model(TOKENS, attention_mask=MASK)


# ============================================================ round trips
@pytest.mark.parametrize("name", presets.NAMES)
def test_round_trip_gives_identical_logits(tmp_path, name):
    model = make(name)
    with torch.no_grad():  # non-trivial norm/bias values, so a missed tensor would show
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    path = interp.save(model, tmp_path / "ckpt", tokenizer(), task={"name": "count"}, training={"step": 3})
    assert {p.name for p in path.iterdir()} >= {"config.json", "model.safetensors", "tokenizer.json",
                                                 "metrics.jsonl", "card.md"}
    loaded, tok = interp.load(path)
    assert loaded.cfg.to_dict() == model.cfg.to_dict()
    assert torch.equal(logits(loaded), logits(model))
    assert tok.encode("abc") == tokenizer().encode("abc") and loaded.tokenizer is tok
    assert not loaded.training
    data = json.loads((path / "config.json").read_text())
    assert data["format_version"] == ck.FORMAT_VERSION and data["task"] == {"name": "count"}
    assert data["training"]["step"] == 3 and data["n_layers"] == model.cfg.n_layers


def test_train_state_and_metrics_round_trip(tmp_path):
    model = make()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(TOKENS, return_type="loss").backward()
    opt.step()
    state = {"step": 7, "optimizer": opt.state_dict(), "rng": {"torch": torch.get_rng_state()}}
    rows = [{"event": "train", "step": 1, "loss": 2.5}, {"event": "eval", "step": 1, "loss": 2.4}]
    path = ck.save(model, tmp_path / "c", train_state=state, metrics=rows)
    back = ck.load_train_state(path)
    assert back["step"] == 7 and torch.equal(back["rng"]["torch"], state["rng"]["torch"])
    opt2 = torch.optim.AdamW(make().parameters(), lr=1e-3)
    opt2.load_state_dict(back["optimizer"])
    assert ck.read_metrics(path) == rows
    _, tok = ck.load(path)
    assert tok is None  # saved without a tokenizer


# ============================================================ atomic writes
def test_crash_mid_save_leaves_previous_checkpoint_intact(tmp_path, monkeypatch):
    old = make(seed=0)
    path = ck.save(old, tmp_path / "ckpt", tokenizer(), train_state={"step": 1})
    new = make(seed=1)

    def exploding_save(*args, **kwargs):  # config, weights and tokenizer are already written
        raise RuntimeError("disk full (simulated)")

    monkeypatch.setattr(ck.torch, "save", exploding_save)
    with pytest.raises(RuntimeError, match="simulated"):
        ck.save(new, path, tokenizer(), train_state={"step": 2})
    monkeypatch.undo()

    loaded, _ = ck.load(path)
    assert torch.equal(logits(loaded), logits(old))
    assert not torch.equal(logits(loaded), logits(new))
    assert ck.load_train_state(path)["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no temp dirs left behind


def test_crash_writing_weights_over_existing_checkpoint(tmp_path, monkeypatch):
    old = make(seed=0)
    path = ck.save(old, tmp_path / "ckpt")

    def half_write(tensors, file, *args):  # a truncated weights file, then the crash
        Path(file).write_bytes(b"\x10\x00\x00")
        raise OSError("killed")

    monkeypatch.setattr(ck, "_save_safetensors", half_write)
    with pytest.raises(OSError):
        ck.save(make(seed=1), path)
    monkeypatch.undo()
    assert torch.equal(logits(ck.load(path)[0]), logits(old))


def test_overwrite_replaces_checkpoint(tmp_path):
    path = ck.save(make(seed=0), tmp_path / "ckpt")
    new = make(seed=1)
    ck.save(new, path)
    assert torch.equal(logits(ck.load(path)[0]), logits(new))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


# ============================================================ refusals
@pytest.fixture
def saved(tmp_path):
    return ck.save(make(), tmp_path / "ckpt", tokenizer())


def test_truncated_safetensors_is_refused(saved):
    weights = saved / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"model\.safetensors.*(corrupt|truncated)"):
        ck.load(saved)


def test_garbage_safetensors_is_refused(saved):
    (saved / "model.safetensors").write_bytes(os.urandom(64))
    with pytest.raises(CheckpointError, match=r"model\.safetensors: .*corrupt or truncated"):
        ck.load(saved)


@pytest.mark.parametrize("name", ["model.safetensors", "config.json", "tokenizer.json"])
def test_missing_file_is_named(saved, name):
    (saved / name).unlink()
    with pytest.raises(CheckpointError, match=rf"{name.replace('.', '[.]')}: missing file"):
        ck.load(saved)


def test_missing_directory(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        ck.load(tmp_path / "nope")


def test_malformed_json_is_refused(saved):
    text = (saved / "config.json").read_text()
    (saved / "config.json").write_text(text[: len(text) // 2])
    with pytest.raises(CheckpointError, match=r"config\.json: malformed JSON at line \d+ column \d+"):
        ck.load(saved)


@pytest.mark.parametrize("version", [99, 0, "1", None])
def test_unknown_format_version_is_refused(saved, version):
    data = json.loads((saved / "config.json").read_text())
    data["format_version"] = version
    (saved / "config.json").write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match=r"config\.json: .*format_version"):
        ck.load(saved)


def test_unknown_config_field_is_refused(saved):
    data = json.loads((saved / "config.json").read_text())
    data["n_layerz"] = 3
    (saved / "config.json").write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match=r"config\.json: invalid model config.*n_layerz"):
        ck.load(saved)


def _as_written_elsewhere(path, sd=None):
    """Rewrite the weights as another tool (or an older interp) would: no integrity record
    in the safetensors header, no weights_sha256 in config.json. Then only the structural
    checks stand between a mismatched file and a wrong model."""
    sd = ck.load_state_dict(path) if sd is None else sd
    save_file(sd, str(path / "model.safetensors"))
    data = json.loads((path / "config.json").read_text())
    data.pop("weights_sha256", None)
    (path / "config.json").write_text(json.dumps(data))


def _edit_config(path, **changes):
    _as_written_elsewhere(path)
    data = json.loads((path / "config.json").read_text())
    data.update(changes)
    (path / "config.json").write_text(json.dumps(data))


def test_an_edited_config_is_refused_naming_the_field(saved):
    data = json.loads((saved / "config.json").read_text())
    data["rope_theta"] = 10001.0  # loads as a valid, different model: the record catches it
    (saved / "config.json").write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match=r"config\.json: differs from the config recorded in .*model\.safetensors.*"
                                              r"rope_theta: saved 10000.0, now 10001.0"):
        ck.load(saved)


def test_changed_weights_are_refused_by_their_hash(saved):
    data = bytearray((saved / "model.safetensors").read_bytes())
    data[-1] ^= 1  # one bit of the last weight
    (saved / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"model\.safetensors: contents differ from the sha256 recorded"):
        ck.load(saved)
    config = json.loads((saved / "config.json").read_text())
    del config["weights_sha256"]  # what the message says to do for a file changed on purpose
    (saved / "config.json").write_text(json.dumps(config))
    ck.load(saved)


def test_missing_keys_are_listed_by_name(saved):
    _edit_config(saved, n_layers=3)  # the weights have 2 layers
    with pytest.raises(CheckpointError) as err:
        ck.load(saved)
    msg = str(err.value)
    assert "model.safetensors" in msg and "weights do not match" in msg
    assert "missing keys" in msg and "blocks.2.attn.qkv.weight" in msg and "blocks.2.ln1.w" in msg
    assert "blocks.1." not in msg


def test_unexpected_keys_are_listed_by_name(saved):
    _edit_config(saved, n_layers=1)
    with pytest.raises(CheckpointError, match=r"unexpected keys \(\d+\): .*blocks\.1\.attn\.qkv\.weight"):
        ck.load(saved)


def test_misshaped_keys_show_both_shapes(saved):
    _edit_config(saved, d_mlp=64)  # tiny has d_mlp 256
    with pytest.raises(CheckpointError) as err:
        ck.load(saved)
    msg = str(err.value)
    assert "mis-shaped keys" in msg
    assert "blocks.0.mlp.fc_in.weight: checkpoint (256, 64) vs model (64, 64)" in msg
    assert "blocks.1.mlp.fc_out.weight: checkpoint (64, 256) vs model (64, 64)" in msg


# ============================================================ what GPU runs leave behind
@pytest.mark.parametrize("prefix", ["_orig_mod.", "module.", "module._orig_mod."])
def test_compile_and_ddp_prefixes_are_stripped(saved, prefix):
    model, _ = ck.load(saved)
    sd = {prefix + k: v.contiguous() for k, v in model.state_dict().items()}
    _as_written_elsewhere(saved, sd)  # by a GPU run of another tool: no integrity record
    loaded, _ = ck.load(saved)
    assert torch.equal(logits(loaded), logits(model))


def test_saving_a_compiled_wrapper_writes_plain_keys(tmp_path):
    model = make()
    compiled = torch.compile(model)  # never called: no compiler needed
    assert next(iter(compiled.state_dict())).startswith("_orig_mod.")
    path = ck.save(compiled, tmp_path / "c")
    assert all(not k.startswith("_orig_mod") for k in ck.load_state_dict(path))
    assert torch.equal(logits(ck.load(path)[0]), logits(model))


def test_bf16_weights_load_as_fp32_unless_dtype_given(saved):
    model, _ = ck.load(saved)
    sd = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in model.state_dict().items()}
    _as_written_elsewhere(saved, sd)  # by a GPU run of another tool: no integrity record
    loaded, _ = ck.load(saved)
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    assert torch.equal(loaded.embed.weight, sd["embed.weight"].float())
    close(logits(loaded), logits(model), dtype=torch.bfloat16, ulps=4)  # bf16 weights: bf16 rounding
    half, _ = ck.load(saved, dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in half.parameters())
    assert torch.equal(half.embed.weight, sd["embed.weight"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_bf16_checkpoint_loads_on_cpu(tmp_path):
    model = make().cuda().to(torch.bfloat16)
    path = ck.save(model, tmp_path / "c")
    loaded, _ = ck.load(path, device="cpu")
    assert loaded.embed.weight.device.type == "cpu" and loaded.embed.weight.dtype == torch.float32
    assert torch.equal(loaded.embed.weight, model.embed.weight.float().cpu())
    on_gpu, _ = ck.load(path, device="cuda")
    assert on_gpu.embed.weight.is_cuda


def test_shared_tensors_are_stored_once_and_restored(tmp_path):
    base = torch.randn(4, 6)
    sd = {"a": base, "b": base, "view": base[1:3], "t": base.t()}
    tensors, aliases = ck._prepare_state_dict(sd)
    assert aliases == {"b": "a"}
    ck._save_safetensors(tensors, tmp_path / "w.safetensors", aliases)
    back = ck.load_state_dict(tmp_path / "w.safetensors")
    for k, v in sd.items():
        assert torch.equal(back[k], v), k


def test_model_with_a_shared_parameter_round_trips(tmp_path):
    """A model whose state dict holds one tensor under two names (a manual tie) saves without
    safetensors' shared-tensor error and loads back."""
    model = make("llama-like")
    model.unembed.weight = model.embed.weight  # tie by sharing the Parameter
    path = ck.save(model, tmp_path / "tied")
    back = ck.load_state_dict(path)
    assert torch.equal(back["unembed.weight"], back["embed.weight"])
    loaded, _ = ck.load(path)
    assert torch.equal(logits(loaded), logits(model))


# ============================================================ legacy .pt files
def test_legacy_state_dict_loads_with_weights_only(tmp_path):
    model = make()
    torch.save({"model": model.state_dict(), "config": model.cfg.to_dict(), "step": 3}, tmp_path / "old.pt")
    loaded, tok = ck.load(tmp_path / "old.pt")
    assert tok is None and torch.equal(logits(loaded), logits(model))
    torch.save({"module." + k: v for k, v in model.state_dict().items()}, tmp_path / "bare.pt")
    with pytest.raises(CheckpointError, match="needs a model config"):
        ck.load(tmp_path / "bare.pt")
    loaded, _ = ck.load(tmp_path / "bare.pt", config=model.cfg)
    assert torch.equal(logits(loaded), logits(model))


class _Exploit:
    """Unpickling this calls os.system (a plain pickle.load / torch.load(weights_only=False)
    would create the marker file)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("wrapper", ["state_dict", "train_state"])
def test_malicious_pickle_runs_no_code(tmp_path, wrapper):
    marker = tmp_path / "pwned"
    model = make()
    payload = {"model": {**model.state_dict(), "evil": _Exploit(marker)}}
    if wrapper == "state_dict":
        torch.save(payload, tmp_path / "evil.pt")
        with pytest.raises(CheckpointError) as err:
            ck.load(tmp_path / "evil.pt", config=model.cfg)
        file = "evil.pt"
    else:
        path = ck.save(model, tmp_path / "c")
        torch.save({"step": 1, "x": _Exploit(marker)}, path / "train_state.pt")
        with pytest.raises(CheckpointError) as err:
            ck.load_train_state(path)
        file = "train_state.pt"
    msg = str(err.value)
    assert file in msg and "weights_only=True" in msg and "refusing to load" in msg
    assert "system" in msg  # names the blocked global
    assert not marker.exists()
    # sanity: the payload really is an exploit
    torch.load(tmp_path / ("evil.pt" if wrapper == "state_dict" else "c/train_state.pt"), weights_only=False)
    assert marker.exists()


# ============================================================ manager
def test_keep_last_k_plus_best(tmp_path):
    run = tmp_path / "run"
    mgr = CheckpointManager(run, keep_last=2)
    models = {}
    for step, metric in zip([100, 200, 300, 400, 500], [5.0, 3.0, 4.0, 6.0, 7.0]):
        models[step] = make(seed=step)
        mgr.save(models[step], step, tokenizer(), metric=metric)
    assert sorted(p.name for p in run.iterdir() if p.is_dir()) == ["step_000200", "step_000400", "step_000500"]
    assert (run / "last").read_text().strip() == "step_000500"
    assert (run / "best").read_text().strip() == "step_000200"
    assert mgr.best == run / "step_000200" and mgr.last == run / "step_000500" and mgr.best_metric == 3.0
    # load() follows a run dir to its last, and the pointer files themselves
    assert torch.equal(logits(interp.load(run)[0]), logits(models[500]))
    assert torch.equal(logits(interp.load(run / "best")[0]), logits(models[200]))
    assert torch.equal(logits(interp.load(run / "last")[0]), logits(models[500]))
    # a new manager on the same run dir remembers the best metric
    again = CheckpointManager(run, keep_last=2)
    assert again.best_metric == 3.0
    again.save(make(seed=6), 600, metric=2.0)
    assert again.best == run / "step_000600"
    assert sorted(p.name for p in run.iterdir() if p.is_dir()) == ["step_000500", "step_000600"]


def test_bad_pointer_file_is_refused(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "last").write_text("../../etc\n")
    with pytest.raises(CheckpointError, match="pointer"):
        ck.load(run)
