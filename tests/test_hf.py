"""models.hf against transformers itself: tiny randomly initialised HF models built from config
objects (never the Hub), compared in fp32 on logits, every residual stream, greedy KV-cache
generation, left-padded batches, ALiBi past the trained length, and exact round trips."""

from __future__ import annotations


import pytest
import torch
import transformers as T

import tolerance

from models import HookedTransformer, presets
from models.generation import generate
from models.hf import HFConversionError, export_hf, from_hf, mpt_slopes, to_hf
from models.positions import alibi_slopes

pytestmark = pytest.mark.equivalence  # run again on other CPU kernels (Makefile `test`)

V = 97


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """No Hub access, ever: env var for subprocesses, constant for this process."""
    import huggingface_hub.constants as hub_constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)


# bos/eos are None so generation never stops early on either side.
NOSPECIAL = dict(bos_token_id=None, eos_token_id=None, pad_token_id=None)
HF_CONFIGS = {
    "gpt2": lambda: T.GPT2Config(n_layer=2, n_embd=64, n_head=4, n_positions=32, vocab_size=V, **NOSPECIAL),
    # GQA: 4 query heads share 2 key/value heads; untied head; non-default theta.
    "llama": lambda: T.LlamaConfig(
        hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=V, max_position_embeddings=64, rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 500.0}, **NOSPECIAL,
    ),
    # biases everywhere, tied embeddings, GEGLU, MQA, head_dim != hidden / heads
    "llama-bias": lambda: T.LlamaConfig(
        hidden_size=64, intermediate_size=80, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1,
        head_dim=24, vocab_size=V, max_position_embeddings=64, attention_bias=True, mlp_bias=True,
        hidden_act="gelu", tie_word_embeddings=True, **NOSPECIAL,
    ),
    # partial rotary: 8 of 16 channels per head
    "gptj": lambda: T.GPTJConfig(n_layer=2, n_embd=64, n_head=4, rotary_dim=8, n_positions=64, vocab_size=V, **NOSPECIAL),
    # ALiBi; trained length 16
    "mpt": lambda: T.MptConfig(n_layers=2, d_model=64, n_heads=4, max_seq_len=16, vocab_size=V, **NOSPECIAL),
}
ARCHS = list(HF_CONFIGS)


def perturb_(module: torch.nn.Module, seed: int = 0, scale: float = 0.05) -> None:
    """Move every parameter off its init (norms off 1, biases off 0) so a missed copy shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)


def make_hf(arch: str, seed: int = 0):
    torch.manual_seed(seed)
    model = T.AutoModelForCausalLM.from_config(HF_CONFIGS[arch](), attn_implementation="eager")
    perturb_(model, seed)
    return model.eval()


def tokens(batch: int, length: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, V, (batch, length), generator=torch.Generator().manual_seed(seed))


def close(a: torch.Tensor, b: torch.Tensor) -> None:
    """transformers' code against ours: the other-code margin of tests/tolerance.py."""
    tolerance.close(a, b, ulps=tolerance.OTHER_CODE)


@pytest.fixture(scope="module")
def pairs():
    """(hf_model, our_model) per architecture, built once."""
    out = {}
    for arch in ARCHS:
        hf_model = make_hf(arch)
        out[arch] = (hf_model, from_hf(hf_model))
    return out


# ----------------------------------------------------------------------------- numerics
@pytest.mark.parametrize("arch", ARCHS)
def test_logits_and_every_residual_stream(pairs, arch):
    hf_model, ours = pairs[arch]
    x = tokens(2, 12)
    with torch.no_grad():
        ref = hf_model(x, output_hidden_states=True)
        logits, cache = ours.run_with_cache(x, names_filter=lambda n: n.endswith(("hook_resid_pre", "hook_resid_post")))
    close(logits, ref.logits)
    assert ref.logits.abs().max() > 0.1  # not a trivially-zero comparison
    L = ours.cfg.n_layers
    assert len(ref.hidden_states) == L + 1
    close(cache["blocks.0.hook_resid_pre"], ref.hidden_states[0])
    for i in range(L - 1):
        close(cache[f"blocks.{i}.hook_resid_post"], ref.hidden_states[i + 1])
    # HF's last hidden state is after the final norm (true of all four architectures)
    with torch.no_grad():
        close(ours.ln_final(cache[f"blocks.{L - 1}.hook_resid_post"]), ref.hidden_states[L])


@pytest.mark.parametrize("arch", ARCHS)
def test_config_mapping(pairs, arch):
    hf_model, ours = pairs[arch]
    cfg, hc = ours.cfg, hf_model.config
    assert (cfg.n_layers, cfg.d_model, cfg.d_vocab) == (hc.num_hidden_layers, hc.hidden_size, V)
    expect = {
        "gpt2": dict(positional="learned", norm="layernorm", ffn="gelu_new", tie_embeddings=True, n_ctx=32),
        "llama": dict(positional="rope", norm="rmsnorm", ffn="swiglu", n_kv_heads=2, rope_theta=500.0,
                      attn_bias=False, mlp_bias=False, tie_embeddings=False, norm_eps=1e-5),
        "llama-bias": dict(ffn="geglu", n_kv_heads=1, d_head=24, attn_bias=True, mlp_bias=True, tie_embeddings=True),
        "gptj": dict(block="parallel", rope_interleaved=True, rope_fraction=0.5, unembed_bias=True,
                     attn_bias=False, mlp_bias=True, ffn="gelu_new", tie_embeddings=False),
        "mpt": dict(positional="alibi", norm_bias=False, attn_bias=False, mlp_bias=False, ffn="gelu",
                    d_mlp=256, tie_embeddings=True, n_ctx=16),
    }[arch]
    assert {k: getattr(cfg, k) for k in expect} == expect
    if arch == "gptj":
        assert cfg.rotary_dim == 8 < cfg.d_head
    assert ours.unembed is None if cfg.tie_embeddings else ours.unembed is not None


@pytest.mark.parametrize("arch", ARCHS)
def test_left_padded_batch_matches_on_real_tokens(pairs, arch):
    hf_model, ours = pairs[arch]
    x = tokens(3, 10, seed=2)
    mask = torch.ones_like(x)
    mask[0, :4] = 0
    mask[1, :1] = 0
    kwargs = {}
    if arch != "mpt":  # HF takes positions from the caller; MPT's ALiBi is shift-invariant
        kwargs["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        ref = hf_model(x, attention_mask=mask, **kwargs).logits
        got = ours(x, attention_mask=mask)
    real = mask.bool()
    close(got[real], ref[real])
    # and the real tokens of row 0 equal running them alone
    with torch.no_grad():
        alone = ours(x[0:1, 4:])
    close(got[0, 4:], alone[0])


@pytest.mark.parametrize("arch", ARCHS)
def test_greedy_generation_token_for_token(pairs, arch):
    hf_model, ours = pairs[arch]
    prompts = [tokens(1, 5, seed=3)[0].tolist(), tokens(1, 3, seed=4)[0].tolist()]
    new = 8
    got = generate(ours, prompts, max_new_tokens=new, greedy=True)  # KV cache, left-padded batch
    for row, prompt in enumerate(prompts):
        ids = torch.tensor([prompt])
        ref = hf_model.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, do_sample=False, pad_token_id=0, use_cache=True
        )
        assert got[row, -new:].tolist() == ref[0, len(prompt):].tolist()
    # the batched HF run (left padding) agrees too
    width = max(map(len, prompts))
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    ref = hf_model.generate(ids, attention_mask=mask, max_new_tokens=new, do_sample=False, pad_token_id=0)
    assert got[:, -new:].tolist() == ref[:, width:].tolist()


def test_alibi_past_trained_length():
    """MPT trained at max_seq_len=16; run both at 32. HF builds its ALiBi table from
    config.max_seq_len, so the reference gets the same weights with the table widened."""
    hf_model = make_hf("mpt")
    ours = from_hf(hf_model)
    assert ours.cfg.n_ctx == 16
    x = tokens(2, 32, seed=5)
    with pytest.raises(RuntimeError):  # transformers itself cannot run past max_seq_len
        with torch.no_grad():
            hf_model(x)
    hf_model.config.max_seq_len = 32
    with torch.no_grad():
        close(ours(x), hf_model(x).logits)


@pytest.mark.parametrize("n_heads", [1, 2, 3, 4, 5, 6, 8, 12, 16])
def test_mpt_slopes_equal_ours(n_heads):
    torch.testing.assert_close(mpt_slopes(n_heads), alibi_slopes(n_heads), rtol=1e-6, atol=0)


def test_mpt_slopes_are_checked_on_export():
    model = alibi_standard()
    model.blocks[1].attn.alibi_slopes.mul_(0.5)
    with pytest.raises(HFConversionError, match="alibi_slopes"):
        to_hf(model)


# ----------------------------------------------------------------------------- ours -> HF
def alibi_standard(**kw) -> HookedTransformer:
    fields = dict(positional="alibi", norm_bias=False, attn_bias=False, mlp_bias=False)
    return presets.make("vanilla", "tiny", **(fields | kw))


OURS = {
    "vanilla": lambda: presets.make("vanilla", "tiny"),  # -> GPT-2, tied, exact GELU
    # -> Llama, GQA 6:1 (d_model 96: transformers wants d_model % n_heads == 0)
    "llama-like": lambda: presets.make("llama-like", "tiny", d_model=96),
    "math-compact-rms": lambda: presets.make("math-compact", "tiny", norm="rmsnorm", ffn="swiglu"),  # -> Llama with biases
    "gptj": lambda: presets.make("gptj", "tiny"),  # -> GPT-J, partial interleaved rotary
    "alibi": lambda: alibi_standard(),  # -> MPT
}


def perturbed(name: str) -> HookedTransformer:
    torch.manual_seed(0)
    model = OURS[name]()
    perturb_(model, scale=0.05)
    return model.eval()


@pytest.mark.parametrize("name", list(OURS))
def test_round_trip_ours_hf_ours_is_exact(name):
    ours = perturbed(name)
    hf_model = to_hf(ours)
    back = from_hf(hf_model)
    assert back.cfg.to_dict() | {"name": ""} == ours.cfg.to_dict() | {"name": ""}
    a, b = ours.state_dict(), back.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    x = tokens(2, 12)
    with torch.no_grad():
        close(hf_model(x).logits, ours(x))


def test_export_then_auto_load_offline(tmp_path):
    from tokenizers import Tokenizer, models as tm, pre_tokenizers

    ours = perturbed("llama-like")
    tok = Tokenizer(tm.WordLevel({f"w{i}": i for i in range(ours.cfg.d_vocab)}, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    export_hf(ours, tmp_path, tokenizer=tok)
    assert (tmp_path / "config.json").exists() and (tmp_path / "model.safetensors").exists()
    assert (tmp_path / "tokenizer.json").exists()
    loaded = T.AutoModelForCausalLM.from_pretrained(tmp_path, local_files_only=True).eval()
    assert type(loaded).__name__ == "LlamaForCausalLM"
    x = tokens(2, 12)
    with torch.no_grad():
        close(loaded(x).logits, ours(x))
    hf_tok = T.AutoTokenizer.from_pretrained(tmp_path, local_files_only=True)
    assert hf_tok("w3 w5 w7", add_special_tokens=False)["input_ids"] == [3, 5, 7]


# ----------------------------------------------------------------------------- refusals
@pytest.mark.parametrize(
    "arch, option, value",
    [
        ("gpt2", "scale_attn_by_inverse_layer_idx", True),
        ("gpt2", "scale_attn_weights", False),
        ("gpt2", "add_cross_attention", True),
        ("llama", "rope_parameters", {"rope_type": "linear", "rope_theta": 1e4, "factor": 2.0}),
        ("llama", "hidden_act", "relu"),
        ("gptj", "rotary_dim", None),
        ("mpt", "attn_config.clip_qkv", 6.0),
        ("mpt", "attn_config.qk_ln", True),
        ("mpt", "no_bias", False),
        ("mpt", "attn_config.alibi_bias_max", 6),
    ],
)
def test_unrepresentable_hf_options_name_the_option(arch, option, value):
    c = HF_CONFIGS[arch]()
    target = c
    *path, last = option.split(".")
    for p in path:
        target = getattr(target, p)
    object.__setattr__(target, last, value)
    from models.hf import config_from_hf

    with pytest.raises(HFConversionError, match=option.split(".")[-1] if option != "rope_parameters" else "rope"):
        config_from_hf(c)


@pytest.mark.parametrize(
    "name, overrides, blocker",
    [
        ("factored", {}, "stream='factored'"),
        ("sasp", {}, "block='shaped'"),
        ("math-compact", {}, "norm='layernorm'"),  # RoPE + sequential -> Llama needs RMSNorm
        ("llama-like", {"rope_fraction": 0.5}, "rope_fraction=0.5"),
        ("vanilla", {"norm": "rmsnorm"}, "norm='rmsnorm'"),
        ("vanilla", {"n_kv_heads": 2}, "n_kv_heads=2"),
        ("gptj", {"attn_bias": True}, "attn_bias=True"),
        ("llama-like", {}, "not a multiple of n_heads=6"),
        ("gptj", {"rope_interleaved": False}, "rope_interleaved=False"),
        ("factored-alibi", {}, "stream='factored'"),
    ],
)
def test_configs_without_counterpart_name_the_option(name, overrides, blocker):
    model = presets.make(name, "tiny", **overrides)
    with pytest.raises(HFConversionError, match=blocker.replace("(", r"\(")):
        to_hf(model)


def test_alibi_with_biases_has_no_counterpart():
    with pytest.raises(HFConversionError, match="attn_bias=True"):
        to_hf(alibi_standard(attn_bias=True))


def test_wrong_head_class_is_refused():
    hf_model = T.GPT2Model(HF_CONFIGS["gpt2"]())
    with pytest.raises(HFConversionError, match="GPT2LMHeadModel"):
        from_hf(hf_model)
