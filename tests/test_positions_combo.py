"""Seed leftovers on the model side: learned positions + RoPE together, gradient
checkpointing every Nth layer, RoPE shape errors that name the shapes."""

import pytest
import torch

from models import ConfigError, HookedTransformer, ModelConfig, presets
from models.generation import generate
from models.positions import Rotary

from conftest import perturb
from tolerance import close

pytestmark = pytest.mark.equivalence  # run again on other CPU kernels (Makefile `test`)


def combo(seed: int = 0, **fields) -> HookedTransformer:
    torch.manual_seed(seed)
    base = dict(n_layers=2, d_model=32, n_heads=4, d_vocab=50, n_ctx=32, positional="learned+rope")
    base.update(fields)
    return perturb(HookedTransformer(ModelConfig(**base)), 0.1, seed).eval()


def test_learned_plus_rope_is_rope_plus_the_table_added_by_a_hook():
    """Independent construction: a RoPE-only model with the same weights, whose embedding gets
    the learned table added by a hook, computes the same function."""
    both = combo()
    assert both.cfg.uses_learned_positions and both.cfg.uses_rope
    rope = HookedTransformer(both.cfg.replace(positional="rope")).eval()
    sd = {k: v for k, v in both.state_dict().items() if k != "pos_embed.W_pos"}
    rope.load_state_dict(sd)
    tokens = torch.randint(0, 50, (2, 11))
    add_table = lambda x, hook: x + both.W_pos[: x.shape[1]]  # noqa: E731
    want = rope.run_with_hooks(tokens, fwd_hooks=[("hook_embed", add_table)])
    close(both(tokens), want)
    # and the table matters: zeroing it changes the output
    with torch.no_grad():
        both.pos_embed.W_pos.zero_()
    assert not torch.allclose(both(tokens), want, atol=1e-4)


def test_learned_plus_rope_fast_explicit_cache_and_padding_agree():
    model = combo(seed=1)
    tokens = torch.randint(0, 50, (2, 10))
    fast = model(tokens)
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_pattern"))
    explicit = model.run_with_hooks(tokens, fwd_hooks=[("blocks.0.attn.hook_pattern", lambda x, hook: x)])
    close(explicit, fast)
    assert "hook_pos_embed" in model.hook_dict and model.blocks[0].attn.rotary is not None
    # KV-cache generation equals full recomputation; left padding leaves each row unchanged
    with_cache = generate(model, [[3, 4, 5], [7, 8, 9, 10, 11]], max_new_tokens=6, greedy=True, stop_tokens=[])
    no_cache = generate(model, [[3, 4, 5], [7, 8, 9, 10, 11]], max_new_tokens=6, greedy=True, stop_tokens=[],
                        use_kv_cache=False)
    torch.testing.assert_close(with_cache, no_cache)
    alone = generate(model, [[3, 4, 5]], max_new_tokens=6, greedy=True, stop_tokens=[])
    torch.testing.assert_close(with_cache[0, -9:], alone[0])


def test_learned_plus_rope_counts_and_tl_type():
    cfg = ModelConfig(n_layers=1, d_model=32, n_heads=4, d_vocab=50, n_ctx=16, positional="learned+rope")
    model = HookedTransformer(cfg)
    assert cfg.positional_embedding_type == "standard"  # TL decompositions include hook_pos_embed
    assert model.W_pos.shape == (16, 32)
    assert model.get_num_params(non_embedding=False) - model.get_num_params() >= 16 * 32
    with pytest.raises(ConfigError, match="must be even"):
        ModelConfig(d_model=36, n_heads=4, positional="learned+rope", rope_fraction=1 / 3)


@pytest.mark.parametrize("every,recomputed", [(True, {0, 1, 2, 3}), (2, {1, 3}), (4, {3}), (3, {2}), (False, set())])
def test_gradient_checkpointing_every_nth_layer(every, recomputed):
    """Blocks chosen by (layer + 1) % N == 0 run twice (forward, then again in backward);
    loss and gradients equal the plain run."""
    torch.manual_seed(0)
    ref = presets.make("llama-like", "tiny", n_layers=4).train()
    model = presets.make("llama-like", "tiny", n_layers=4).train()
    model.load_state_dict(ref.state_dict())
    model.set_gradient_checkpointing(every)
    calls = {i: 0 for i in range(4)}

    def counting(i, forward):
        def run(*args, **kwargs):
            calls[i] += 1
            return forward(*args, **kwargs)
        return run

    for i, block in enumerate(model.blocks):  # (module hooks do not fire on the recompute)
        block.forward = counting(i, block.forward)
    tokens = torch.randint(0, model.cfg.d_vocab, (2, 12))
    loss = model(tokens, return_type="loss")
    loss.backward()
    ref_loss = ref(tokens, return_type="loss")
    ref_loss.backward()
    assert {i for i, n in calls.items() if n == 2} == recomputed
    assert all(n in (1, 2) for n in calls.values())
    torch.testing.assert_close(loss, ref_loss)
    for (name, p), q in zip(model.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=name)


def test_gradient_checkpointing_config_validation():
    assert ModelConfig(gradient_checkpointing=4).checkpointed(3)
    assert not ModelConfig(gradient_checkpointing=4).checkpointed(0)
    with pytest.raises(ConfigError, match="gradient_checkpointing"):
        ModelConfig(gradient_checkpointing=-1)
    with pytest.raises(ConfigError, match="gradient_checkpointing"):
        ModelConfig(gradient_checkpointing="every4")
    cfg = ModelConfig(gradient_checkpointing=4)
    assert ModelConfig.from_json(cfg.to_json()).gradient_checkpointing == 4


def test_rope_shape_errors_name_the_shapes():
    rot = Rotary(ModelConfig(d_model=32, n_heads=4, positional="rope"))  # d_head 8, rotary_dim 8
    x = torch.zeros(2, 5, 4, 8)
    cos, sin = rot.angles(torch.arange(5)[None])
    rot(x, cos, sin)  # fine
    with pytest.raises(ValueError, match=r"cos/sin \(1, 6, 1, 4\) do not fit x \(2, 5, 4, 8\)"):
        rot(x, *rot.angles(torch.arange(6)[None]))
    with pytest.raises(ValueError, match=r"d_head=6 < rotary_dim=8"):
        rot(torch.zeros(2, 5, 4, 6), cos, sin)
    with pytest.raises(ValueError, match=r"\(batch, pos, head, d_head\), got \(5, 4, 8\)"):
        rot(torch.zeros(5, 4, 8), cos, sin)
    with pytest.raises(ValueError, match=r"cos/sin \(3, 5, 1, 4\)"):
        rot(x, *rot.angles(torch.arange(5).expand(3, 5)))


def test_presets_config_prints_any_configs_parameter_count(tmp_path):
    """`interp presets --config`: a run YAML (vocabulary from its task), a checkpoint, a
    ModelConfig JSON; counts equal those of the model really built."""
    import json
    import re

    import yaml
    from typer.testing import CliRunner

    import interp
    from interp.cli import app
    from interp.tokenizers import char_tokenizer

    runner = CliRunner()
    run = {"model": {"preset": "llama-like", "size": "small", "positional": "learned+rope"},
           "task": {"name": "text", "texts": ["abc def ghi " * 20] * 20, "seq_len": 32},
           "train": {"gradient_checkpointing": 2}}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(run))
    result = runner.invoke(app, ["presets", "--config", str(tmp_path / "run.yaml"), "--json"])
    assert result.exit_code == 0, result.output
    row = json.loads(result.stdout)
    model = presets.make("llama-like", "small", positional="learned+rope", d_vocab=row["d_vocab"])
    assert row["params"] == sum(p.numel() for p in model.parameters())
    assert row["positional"] == "learned+rope" and row["d_vocab"] == 3 + 10  # <pad> <bos> <eos> + "abcdefghi "
    tok = char_tokenizer("abcdefgh ")
    interp.save(presets.make("gptj", "tiny", d_vocab=tok.vocab_size), tmp_path / "ckpt", tok)
    table = runner.invoke(app, ["presets", "--config", str(tmp_path / "ckpt")])
    assert table.exit_code == 0 and re.search(r"^block +parallel$", table.stdout, re.M), table.output
    (tmp_path / "cfg.json").write_text(ModelConfig(n_layers=3, d_model=48, n_heads=4).to_json())
    small = json.loads(runner.invoke(app, ["presets", "-c", str(tmp_path / "cfg.json"), "--json"]).stdout)
    assert small["params"] == sum(p.numel() for p in HookedTransformer(ModelConfig(n_layers=3, d_model=48,
                                                                                   n_heads=4)).parameters())
    bad = runner.invoke(app, ["presets", "--config", str(tmp_path / "nope.yaml")])
    assert bad.exit_code == 1 and "no such config file" in bad.output


def test_learned_plus_rope_static_cache_decoding_equals_step_by_step():
    """`models.decoding` (the default generate path on CUDA) rotates q/k and adds the table."""
    model = combo(seed=2)
    prompts = [[3, 4, 5, 6], [7, 8]]
    slow = generate(model, prompts, max_new_tokens=8, greedy=True, stop_tokens=[], fast=False, return_output=True)
    fast = generate(model, prompts, max_new_tokens=8, greedy=True, stop_tokens=[], fast=True, return_output=True)
    assert fast.new_tokens == slow.new_tokens
    assert len({t for row in slow.new_tokens for t in row}) > 3
