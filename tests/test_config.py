"""ModelConfig: JSON round trip, validation messages naming the field, every option builds."""

from __future__ import annotations

import json

import pytest
import torch

from models import ConfigError, HookedTransformer, ModelConfig, presets
from models.config import CHOICES

BASE = dict(n_layers=1, d_model=32, n_heads=4, d_vocab=20, n_ctx=16)


def _run(cfg: ModelConfig) -> torch.Tensor:
    model = HookedTransformer(cfg).eval()
    toks = torch.randint(0, cfg.d_vocab, (2, 7), generator=torch.Generator().manual_seed(0))
    logits = model(toks)
    assert logits.shape == (2, 7, cfg.d_vocab)
    assert torch.isfinite(logits).all()
    loss = model(toks, return_type="loss")
    loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad), "a parameter got no grad"
    return logits


# ------------------------------------------------------------------ serialisation
@pytest.mark.parametrize("name", presets.NAMES)
def test_json_round_trip_presets(name):
    cfg = presets.config(name, "tiny")
    again = ModelConfig.from_json(cfg.to_json())
    assert again == cfg
    assert again.to_dict() == cfg.to_dict()
    json.loads(cfg.to_json())  # plain JSON, no runtime fields
    assert "device" not in cfg.to_dict() and "dtype" not in cfg.to_dict()


def test_json_round_trip_every_field_changed():
    cfg = ModelConfig(
        **BASE, n_kv_heads=2, d_head=8, d_mlp=48, positional="rope", rope_theta=500.0, rope_fraction=0.5,
        rope_interleaved=True, norm="rmsnorm", norm_eps=1e-6, norm_bias=False, ffn="swiglu", block="parallel",
        attn_bias=False, mlp_bias=False, unembed_bias=True, tie_embeddings=True, dropout=0.1, init_range=0.03,
        pad_token_id=0, bos_token_id=1, eos_token_id=2, bot_token_id=3, eot_token_id=4, name="x",
        extra={"note": [1, 2]},
    )
    again = ModelConfig.from_json(cfg.to_json())
    assert again == cfg
    assert again.n_kv_heads == 2 and again.extra == {"note": [1, 2]}


def test_defaults_are_derived():
    cfg = ModelConfig(**BASE)
    assert cfg.n_kv_heads == 4 and cfg.d_head == 8 and cfg.d_mlp == 128
    assert cfg.replace(d_model=64).d_head == 16  # derived fields re-derive
    assert cfg.replace(d_model=64).d_mlp == 256


# ------------------------------------------------------------------ validation
@pytest.mark.parametrize(
    "change, fragment",
    [
        (dict(d_model=30, n_heads=4), "d_model % n_heads"),
        (dict(n_heads=4, n_kv_heads=3), "n_heads % n_kv_heads"),
        (dict(positional="rotary"), "positional='rotary'"),
        (dict(norm="batchnorm"), "norm='batchnorm'"),
        (dict(ffn="tanh"), "ffn='tanh'"),
        (dict(block="moe"), "block='moe'"),
        (dict(stream="double"), "stream='double'"),
        (dict(factored_value="nope"), "factored_value='nope'"),
        (dict(n_layers=0), "n_layers"),
        (dict(dropout=1.5), "dropout"),
        (dict(norm_eps=0.0), "norm_eps"),
        (dict(rope_fraction=0.0), "rope_fraction"),
        (dict(positional="rope", d_head=5, n_heads=4), "must be even"),
        (dict(pad_token_id=20), "pad_token_id"),
        (dict(stream="factored", block="shaped"), "shaped"),
        (dict(stream="factored", n_kv_heads=2), "n_kv_heads"),
        (dict(block="shaped", attn_only=True), "attn_only"),
    ],
)
def test_validation_names_the_field(change, fragment):
    with pytest.raises(ConfigError) as err:
        ModelConfig(**{**BASE, **change})
    assert fragment in str(err.value)


def test_unknown_option_lists_choices():
    with pytest.raises(ConfigError, match=r"positional='rotary' is not one of \['learned', 'rope', 'alibi', 'none', 'learned\+rope'\]"):
        ModelConfig(**BASE, positional="rotary")


def test_from_dict_unknown_field():
    data = ModelConfig(**BASE).to_dict()
    data["n_layer"] = 3
    with pytest.raises(ConfigError, match=r"unknown config field\(s\) \['n_layer'\]"):
        ModelConfig.from_dict(data)
    with pytest.raises(ConfigError, match="n_layer"):
        ModelConfig(**BASE).replace(n_layer=3)


def test_unknown_preset_and_size():
    with pytest.raises(ConfigError, match="unknown preset 'gpt5'"):
        presets.config("gpt5")
    with pytest.raises(ConfigError, match="unknown size 'huge'"):
        presets.config("vanilla", "huge")


# ------------------------------------------------------------------ every option builds
OPTIONS = (
    [dict(positional=p) for p in CHOICES["positional"]]
    + [dict(positional="rope", rope_theta=100.0, rope_fraction=0.5, rope_interleaved=i) for i in (False, True)]
    + [dict(norm=n, norm_eps=1e-3, norm_bias=b) for n in CHOICES["norm"] for b in (True, False)]
    + [dict(ffn=f) for f in CHOICES["ffn"]]
    + [dict(n_kv_heads=k) for k in (4, 2, 1)]
    + [dict(block=b) for b in CHOICES["block"]]
    + [dict(stream="factored", factored_value=v, factored_out_proj=o) for v in CHOICES["factored_value"] for o in (False, True)]
    + [dict(attn_only=True), dict(attn_only=True, stream="factored"), dict(attn_only=True, block="parallel")]
    + [dict(attn_bias=a, mlp_bias=m) for a in (True, False) for m in (True, False)]
    + [dict(tie_embeddings=t, unembed_bias=u) for t in (True, False) for u in (True, False)]
    + [dict(dropout=0.2)]
)


@pytest.mark.parametrize("opts", OPTIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
def test_every_option_builds_and_runs(opts):
    cfg = ModelConfig(**BASE, **opts)
    assert ModelConfig.from_json(cfg.to_json()) == cfg
    _run(cfg)


def test_option_effects_are_structural():
    """The options change the module tree the way they say they do."""
    m = HookedTransformer(ModelConfig(**BASE, n_kv_heads=1, attn_bias=False, mlp_bias=False, norm="rmsnorm"))
    attn = m.blocks[0].attn
    assert attn.qkv.weight.shape == ((4 + 2 * 1) * 8, 32) and attn.qkv.bias is None
    assert m.blocks[0].mlp.fc_in.bias is None and m.blocks[0].ln1.b is None
    assert m.W_K.shape == m.W_Q.shape == (1, 4, 32, 8)  # kv heads expanded TL-style

    tied = HookedTransformer(ModelConfig(**BASE, tie_embeddings=True))
    assert tied.unembed is None and tied.W_U.data_ptr() == tied.W_E.data_ptr()
    untied = HookedTransformer(ModelConfig(**BASE, tie_embeddings=False))
    assert untied.W_U.data_ptr() != untied.W_E.data_ptr()

    ln_no_bias = HookedTransformer(ModelConfig(**BASE, norm="layernorm", norm_bias=False))
    assert ln_no_bias.blocks[0].ln1.b is None
    assert isinstance(HookedTransformer(ModelConfig(**BASE, norm="none")).ln_final, torch.nn.Identity)

    gated = HookedTransformer(ModelConfig(**BASE, ffn="geglu", d_mlp=40))
    assert gated.blocks[0].mlp.fc_in.weight.shape == (80, 32) and gated.W_gate.shape == (1, 32, 40)

    par = HookedTransformer(ModelConfig(**BASE, block="parallel"))
    assert par.blocks[0].ln2 is None and par.cfg.parallel_attn_mlp

    ao = HookedTransformer(ModelConfig(**BASE, attn_only=True))
    assert ao.blocks[0].mlp is None and not hasattr(ao.blocks[0], "hook_mlp_out")

    fac = HookedTransformer(ModelConfig(**BASE, stream="factored", factored_value="modulated", factored_out_proj=True))
    assert fac.blocks[0].attn.out is not None and hasattr(fac.blocks[0].attn, "v_mod")
    assert "blocks.0.hook_xt_mid" in fac.hook_dict

    alibi = HookedTransformer(ModelConfig(**BASE, positional="alibi"))
    assert "blocks.0.attn.alibi_slopes" in dict(alibi.named_buffers())
    assert not hasattr(alibi, "pos_embed")


def test_tl_cfg_names():
    cfg = presets.config("llama-like", "tiny")
    assert cfg.normalization_type == "RMS" and cfg.positional_embedding_type == "rotary"
    assert cfg.act_fn == "silu" and cfg.gated_mlp and cfg.n_key_value_heads == cfg.n_kv_heads == 1
    gptj = presets.config("gptj", "tiny")
    assert gptj.parallel_attn_mlp and gptj.rotary_dim == 4 and gptj.rope_interleaved
    van = presets.config("vanilla", "tiny")
    assert van.normalization_type == "LN" and van.positional_embedding_type == "standard"
    assert van.n_key_value_heads is None
