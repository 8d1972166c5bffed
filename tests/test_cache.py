import json

import pytest
import torch

from tolerance import close

from interp import cache
from models import presets

pytestmark = pytest.mark.equivalence  # run again on other CPU kernels (Makefile `test`)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return presets.make("vanilla", "tiny").eval()


def test_name_filters(model):
    assert cache.resolve_names(model, "pattern") == ["blocks.0.attn.hook_pattern", "blocks.1.attn.hook_pattern"]
    assert cache.resolve_names(model, ["hook_resid_post", "blocks.0.attn.hook_q"]) == [
        "blocks.0.attn.hook_q", "blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]
    assert cache.resolve_names(model, r"blocks\.1\.hook_resid_(pre|mid)") == [
        "blocks.1.hook_resid_pre", "blocks.1.hook_resid_mid"]
    assert cache.resolve_names(model, lambda n: n.startswith("ln_final")) == [
        "ln_final.hook_scale", "ln_final.hook_normalized"]
    with pytest.raises(ValueError, match="patern"):
        cache.resolve_names(model, ["patern", "pattern"])


def test_cached_slicing_matches_run_with_cache(model):
    tokens = torch.randint(0, 128, (3, 10))
    _, full = model.run_with_cache(tokens)
    c = cache.cached(model, tokens, names=["pattern", "resid_post"], batch=1, pos=slice(-4, None))
    assert set(c.keys()) == {"blocks.0.attn.hook_pattern", "blocks.1.attn.hook_pattern",
                             "blocks.0.hook_resid_post", "blocks.1.hook_resid_post"}
    close(c["blocks.1.hook_resid_post"], full["blocks.1.hook_resid_post"][1, -4:])
    close(c["blocks.0.attn.hook_pattern"], full["blocks.0.attn.hook_pattern"][1, :, -4:])
    c2 = cache.cached(model, tokens, names="resid_pre", batch=[0, 2], pos=3)
    torch.testing.assert_close(c2["blocks.0.hook_resid_pre"], full["blocks.0.hook_resid_pre"][[0, 2], 3:4])


def _store_equals_direct(reader, model, tokens, mask=None):
    names = reader.hooks
    _, direct = model.run_with_cache(tokens, attention_mask=mask)
    for i in range(len(tokens)):
        real = torch.arange(tokens.shape[1]) if mask is None else mask[i].nonzero().flatten()
        for name in names:
            want = direct[name][i]
            want = want.index_select(1, real).index_select(2, real) if "pattern" in name else want[real]
            close(reader[name][i], want)
        assert reader.tokens[i].tolist() == tokens[i, real].tolist()


def test_store_round_trip_and_shards(model, tmp_path):
    tokens = torch.randint(0, 128, (11, 9))
    store = cache.ActivationStore(tmp_path, model, ["resid_post", "pattern"], shard_examples=4, batch_size=3,
                                  progress=False)
    reader = store.write(tokens)
    assert len(reader) == 11 and len(reader.shards) == 3  # 4 + 4 + 3: memory bounded by shard size
    assert sorted(p.name for p in tmp_path.glob("shard_*.safetensors")) == [f"shard_{i:05d}.safetensors" for i in range(3)]
    _store_equals_direct(cache.ActivationStore.open(tmp_path), model, tokens)
    view = reader["blocks.1.hook_resid_post"]
    assert len(view) == 11 and view[2:7].shape == (5, 9, 64)
    batches = list(view.iter_batches(5))
    assert [len(b) for b in batches] == [5, 5, 1]
    torch.testing.assert_close(torch.cat(batches), view[0:11])
    assert not list(tmp_path.glob("*.tmp"))


def test_store_byte_budget(model, tmp_path):
    tokens = torch.randint(0, 128, (6, 8))
    per_example = 8 * 64 * 4  # one (pos, d_model) float32 resid_post
    store = cache.ActivationStore(tmp_path, model, "blocks.0.hook_resid_post", shard_examples=100,
                                  shard_bytes=2 * per_example, progress=False)
    assert len(store.write(tokens).shards) == 3


def test_store_padding_lengths(model, tmp_path):
    tokens = torch.randint(0, 128, (4, 7))
    mask = torch.ones(4, 7, dtype=torch.bool)
    mask[1, 5:] = False  # right padding
    mask[2, :3] = False  # left padding
    batches = [{"input_ids": tokens[:2], "attention_mask": mask[:2]}, {"input_ids": tokens[2:], "attention_mask": mask[2:]}]
    reader = cache.ActivationStore(tmp_path, model, ["resid_pre", "pattern"], shard_examples=3, progress=False).write(batches)
    assert reader.lengths.tolist() == [7, 5, 4, 7]
    assert reader["blocks.0.hook_resid_pre"][1].shape == (5, 64)
    assert reader["blocks.1.attn.hook_pattern"][2].shape == (4, 4, 4)
    padded = reader["blocks.0.hook_resid_pre"][1:3]
    assert padded.shape == (2, 5, 64) and padded[1, 4:].abs().sum() == 0
    _store_equals_direct(reader, model, tokens, mask)


def test_store_resume_skips_completed_shards(model, tmp_path):
    tokens = torch.randint(0, 128, (10, 6))
    store = cache.ActivationStore(tmp_path, model, "resid_post", shard_examples=4, batch_size=3, progress=False)
    store.write(tokens, max_examples=5)  # "crash" after one full shard + a partial buffer flushed
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert [s["stop"] for s in manifest["shards"]] == [4, 5]
    # simulate a crash in the middle of the next shard: a temp file and no manifest entry
    (tmp_path / "shard_00002.safetensors.tmp").write_bytes(b"half")
    first_mtime = (tmp_path / "shard_00000.safetensors").stat().st_mtime_ns

    calls = []
    handle = model.blocks[0].hook_resid_pre.add_hook(lambda x, hook: calls.append(x.shape[0]))
    try:
        reader = store.write(tokens)
    finally:
        model.reset_hooks()
    assert sum(calls) == 5  # only the 5 examples not yet stored were run
    assert (tmp_path / "shard_00000.safetensors").stat().st_mtime_ns == first_mtime
    assert len(reader) == 10 and reader.complete and not list(tmp_path.glob("*.tmp"))
    _store_equals_direct(reader, model, tokens)


def test_store_refuses_other_config(model, tmp_path):
    cache.ActivationStore(tmp_path, model, "resid_post", progress=False).write(torch.randint(0, 128, (2, 4)))
    with pytest.raises(ValueError, match="different configuration"):
        cache.ActivationStore(tmp_path, model, "pattern", progress=False).write(torch.randint(0, 128, (2, 4)))
    with pytest.raises(KeyError, match="stored hooks"):
        cache.ActivationStore.open(tmp_path)["blocks.0.attn.hook_pattern"]
