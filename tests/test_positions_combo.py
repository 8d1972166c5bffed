"""Seed leftovers on the model side: learned positions + RoPE together, gradient
checkpointing every Nth layer, RoPE shape errors that name the shapes."""

import pytest
import torch

from models import ConfigError, HookedTransformer, ModelConfig, presets
from models.generation import generate
from models.positions import Rotary

from conftest import perturb


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
    torch.testing.assert_close(both(tokens), want, atol=1e-5, rtol=1e-5)
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
    torch.testing.assert_close(explicit, fast, atol=1e-5, rtol=1e-5)
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
