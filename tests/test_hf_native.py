"""`models.hf.InterpForCausalLM`: every preset as a transformers PreTrainedModel + GenerationMixin.

Cross-checks against our own model and generation loop (`models.generation.generate`), and
against HF's own no-cache path (beam search with and without our cache)."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, pipeline

import models  # noqa: F401  (registers model_type "interp")
from conftest import perturb
from tolerance import close
from interp.tokenizers import char_tokenizer
from models import presets
from models.generation import generate
from models.hf import HFConversionError, HookedCache, InterpConfig, InterpForCausalLM, export_hf, from_hf

pytestmark = pytest.mark.equivalence  # run again on other CPU kernels (Makefile `test`)

VOCAB = 50
PROMPTS = [[3, 4, 5], [6, 7, 8, 9, 10]]


def tiny(name: str, **overrides):
    torch.manual_seed(0)
    overrides.setdefault("d_vocab", VOCAB)
    overrides.setdefault("pad_token_id", 0)
    # large perturbation: generations must vary for equality to mean something
    return perturb(presets.make(name, "tiny", **overrides), scale=0.5).eval()


def left_padded(prompts, pad=0):
    width = max(map(len, prompts))
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    return ids, mask


@pytest.mark.parametrize("name", presets.NAMES + ("llama-like+learned",))
def test_hf_generate_equals_ours_for_every_preset(name, tmp_path):
    model = tiny("llama-like", positional="learned+rope") if name == "llama-like+learned" else tiny(name)
    InterpForCausalLM.from_hooked(model).save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "interp"
    hf_model = AutoModelForCausalLM.from_pretrained(tmp_path, local_files_only=True).eval()
    assert type(hf_model) is InterpForCausalLM and hf_model.model.cfg == model.cfg
    ours = generate(model, PROMPTS, max_new_tokens=10, greedy=True, stop_tokens=[])
    ids, mask = left_padded(PROMPTS)
    theirs = hf_model.generate(ids, attention_mask=mask, max_new_tokens=10, do_sample=False)
    torch.testing.assert_close(theirs, ours)
    assert len(set(ours[:, -10:].flatten().tolist())) > 3, "degenerate generations prove nothing"
    # logits through the HF forward, padded batch included
    close(hf_model(ids, attention_mask=mask).logits, model(ids, attention_mask=mask.bool()))


def test_generation_strategies():
    hf_model = InterpForCausalLM.from_hooked(tiny("factored-alibi")).eval()
    ids, mask = left_padded(PROMPTS)
    greedy = hf_model.generate(ids, attention_mask=mask, max_new_tokens=8, do_sample=False)
    # beam search: our cache reordered by beam_idx == HF recomputing everything without a cache
    beams = hf_model.generate(ids, attention_mask=mask, max_new_tokens=8, num_beams=3, num_return_sequences=2)
    no_cache = hf_model.generate(ids, attention_mask=mask, max_new_tokens=8, num_beams=3, num_return_sequences=2,
                                 use_cache=False)
    torch.testing.assert_close(beams, no_cache)
    assert beams.shape == (4, ids.shape[1] + 8)
    # sampling: top_k=1 is greedy; a seed makes it reproducible
    torch.testing.assert_close(hf_model.generate(ids, attention_mask=mask, max_new_tokens=8, do_sample=True, top_k=1),
                               greedy)
    draws = []
    for _ in range(2):
        torch.manual_seed(3)
        draws.append(hf_model.generate(ids, attention_mask=mask, max_new_tokens=8, do_sample=True,
                                       num_return_sequences=2))
    torch.testing.assert_close(draws[0], draws[1])
    # assisted decoding and prompt lookup crop our cache; the result is still exact greedy
    torch.manual_seed(5)
    assistant = InterpForCausalLM.from_hooked(presets.make("factored-alibi", "tiny", d_vocab=VOCAB)).eval()
    row = ids[1:]
    assisted = hf_model.generate(row, max_new_tokens=8, do_sample=False, assistant_model=assistant)
    torch.testing.assert_close(assisted, greedy[1:])
    lookup = hf_model.generate(row, max_new_tokens=8, do_sample=False, prompt_lookup_num_tokens=2)
    torch.testing.assert_close(lookup, greedy[1:])


def test_past_key_values_and_prepare_inputs_for_generation():
    hf_model = InterpForCausalLM.from_hooked(tiny("llama-like")).eval()
    ids, mask = left_padded([[5, 6, 7, 8, 9, 10, 11], [12, 13, 14, 15]])
    full = hf_model(ids, attention_mask=mask).logits
    first = hf_model(ids[:, :4], attention_mask=mask[:, :4], use_cache=True)
    assert isinstance(first.past_key_values, HookedCache) and first.past_key_values.get_seq_length() == 4
    rest = hf_model(ids[:, 4:], attention_mask=mask, past_key_values=first.past_key_values)  # full-length mask
    close(torch.cat([first.logits, rest.logits], 1), full)
    # the older calling convention: whole sequence + cache -> only the unseen tokens are fed
    cache = hf_model(ids[:, :5], attention_mask=mask[:, :5]).past_key_values
    inputs = hf_model.prepare_inputs_for_generation(ids, past_key_values=cache, attention_mask=mask)
    torch.testing.assert_close(inputs["input_ids"], ids[:, 5:])
    close(hf_model(**inputs).logits, full[:, 5:])
    with pytest.raises(TypeError, match="HookedCache"):
        from transformers import DynamicCache

        filled = DynamicCache()
        filled.update(torch.zeros(2, 1, 3, 4), torch.zeros(2, 1, 3, 4), 0)
        hf_model(ids, past_key_values=filled)


def test_cache_under_either_name():
    """transformers 5.24 renamed `past_key_values` to `cache` (argument and output field); the
    wrapper speaks the installed version's name and accepts both."""
    from models.hf.native import CACHE_KWARG

    import transformers

    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    assert CACHE_KWARG == ("cache" if (major, minor) >= (5, 24) else "past_key_values")
    hf_model = InterpForCausalLM.from_hooked(tiny("vanilla")).eval()
    ids = torch.randint(1, VOCAB, (1, 6))
    full = hf_model(ids).logits
    first = hf_model(ids[:, :4], use_cache=True)
    kept = getattr(first, CACHE_KWARG)
    assert isinstance(kept, HookedCache) and kept.get_seq_length() == 4
    for name in ("cache", "past_key_values"):
        cache = getattr(hf_model(ids[:, :4], use_cache=True), CACHE_KWARG)
        rest = hf_model(ids[:, 4:], **{name: cache}).logits
        close(rest, full[:, 4:])  # fp32, cached vs full attention
    with pytest.raises(ValueError, match="not both"):
        hf_model(ids[:, 4:], cache=kept, past_key_values=HookedCache(2))


def test_inputs_embeds_labels_and_input_embeddings():
    model = tiny("gptj")
    hf_model = InterpForCausalLM.from_hooked(model).eval()
    ids = torch.randint(1, VOCAB, (2, 9))
    emb = hf_model.get_input_embeddings()
    assert emb is model.embed
    torch.testing.assert_close(hf_model(inputs_embeds=emb(ids)).logits, hf_model(ids).logits)
    out = hf_model(ids, labels=ids)
    torch.testing.assert_close(out.loss, model(ids, return_type="loss"))
    # generate() from embeddings continues exactly like from the ids
    from_ids = hf_model.generate(ids[:1, :4], max_new_tokens=6, do_sample=False)
    from_embeds = hf_model.generate(inputs_embeds=emb(ids[:1, :4]), max_new_tokens=6, do_sample=False)
    torch.testing.assert_close(from_embeds, from_ids[:, 4:])
    # a new input embedding is used by the HF forward and by the wrapped model alike
    new = torch.nn.Embedding(VOCAB, model.cfg.d_model)
    hf_model.set_input_embeddings(new)
    assert hf_model.get_input_embeddings() is new and model.embed is new
    torch.testing.assert_close(hf_model(ids).logits, model(inputs_embeds=new(ids)))
    with pytest.raises(ValueError, match="nn.Embedding"):
        hf_model.set_input_embeddings(torch.nn.Embedding(VOCAB, 3))
    tied = InterpForCausalLM.from_hooked(tiny("vanilla"))
    assert tied.get_output_embeddings() is None and hf_model.get_output_embeddings() is model.unembed


def test_hook_points_stay_usable():
    model = tiny("factored")
    hf_model = InterpForCausalLM.from_hooked(model).eval()
    ids = torch.randint(1, VOCAB, (2, 8))
    clean = hf_model(ids).logits
    model.add_hook("blocks.0.hook_xt_post", lambda x, hook: torch.zeros_like(x))
    ablated = hf_model(ids).logits
    model.reset_hooks()
    assert not torch.allclose(clean, ablated, atol=1e-3)
    torch.testing.assert_close(hf_model(ids).logits, clean)
    out = hf_model(ids, output_attentions=True, output_hidden_states=True)
    logits, cache = hf_model.model.run_with_cache(ids)
    assert len(out.attentions) == model.cfg.n_layers and len(out.hidden_states) == model.cfg.n_layers + 1
    for i in range(model.cfg.n_layers):
        # exp turns a score's absolute rounding into the probability's relative one, and a score
        # q.k / sqrt(d) rounds like |q| |k| / sqrt(d) (Cauchy-Schwarz), however small it comes out
        q, k = cache["q", i].norm(dim=-1).max(), cache["k", i].norm(dim=-1).max()
        close(out.attentions[i], cache["pattern", i], scale=float(q * k) / model.cfg.d_head**0.5)
        close(out.hidden_states[i], cache["resid_pre", i])
    close(out.hidden_states[-1], cache["ln_final.hook_normalized"])
    assert out.logits.shape == logits.shape
    assert not model.hook_dict["blocks.0.attn.hook_pattern"]._forward_hooks  # the wrapper's hooks are gone


def test_pipeline_text_generation_and_config():
    tok = char_tokenizer("abcdefgh ")
    model = tiny("sasp", d_vocab=tok.vocab_size, pad_token_id=tok.pad_token_id)
    model.set_tokenizer(tok)
    hf_model = InterpForCausalLM.from_hooked(model).eval()
    gen = pipeline("text-generation", model=hf_model, tokenizer=tok.to_transformers())
    text = gen("abc", max_new_tokens=6, do_sample=False, return_full_text=False)[0]["generated_text"]
    prompt = [tok.bos_token_id] + tok.encode("abc")  # the HF tokenizer adds <bos> (our post-processor)
    ours = generate(model, [prompt], max_new_tokens=6, greedy=True, stop_tokens=[])[0, len(prompt):]
    assert text == tok.decode(ours.tolist(), skip_special_tokens=True)
    cfg = AutoConfig.for_model("interp", interp=model.cfg.to_dict())
    assert isinstance(cfg, InterpConfig) and cfg.vocab_size == tok.vocab_size and cfg.pad_token_id == tok.pad_token_id
    assert cfg.model_config() == model.cfg and not cfg.tie_word_embeddings


def test_export_falls_back_to_the_wrapper(tmp_path):
    model = tiny("factored-alibi")
    with pytest.raises(HFConversionError, match="stream='factored'"):
        export_hf(model, tmp_path / "native", arch="native")
    hf_model = export_hf(model, tmp_path / "auto", arch="auto")
    assert type(hf_model) is InterpForCausalLM
    native = export_hf(tiny("gptj"), tmp_path / "gptj", arch="auto")
    assert type(native).__name__ == "GPTJForCausalLM"
    back = from_hf(AutoModelForCausalLM.from_pretrained(tmp_path / "auto", local_files_only=True))
    ids = torch.randint(1, VOCAB, (1, 7))
    torch.testing.assert_close(back(ids), model(ids))


def test_cli_export_uses_the_wrapper_where_needed(tmp_path):
    from typer.testing import CliRunner

    from interp import checkpoint as ck
    from interp.cli import app

    tok = char_tokenizer("abcdefgh ")
    model = tiny("sasp", d_vocab=tok.vocab_size)
    path = ck.save(model, tmp_path / "c", tok)
    result = CliRunner().invoke(app, ["export", str(path), "--out", str(tmp_path / "hf")])
    assert result.exit_code == 0, result.output
    assert "InterpForCausalLM" in result.output
    hf_model = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", local_files_only=True).eval()
    ids = torch.tensor([tok.encode("abc defg")])
    close(hf_model(ids).logits, model(ids))
    gptj = ck.save(tiny("gptj", d_vocab=tok.vocab_size), tmp_path / "g", tok)
    result = CliRunner().invoke(app, ["export", str(gptj), "--out", str(tmp_path / "hf_g"), "--wrapper"])
    assert result.exit_code == 0 and "InterpForCausalLM" in result.output, result.output


def test_native_forward_takes_hf_arguments():
    """`HookedTransformer.forward(input_ids=, attention_mask=, labels=)` on a left-padded batch:
    the loss equals a naive per-row cross-entropy over the unpadded sequences."""
    model = tiny("math-compact")
    rows = [[5, 6, 7, 8, 9, 10], [11, 12, 13]]
    ids, mask = left_padded(rows)
    out = model(input_ids=ids, attention_mask=mask, labels=ids)
    nll, count = 0.0, 0
    for row in rows:
        logits = model(torch.tensor([row]))[0]
        nll = nll + torch.nn.functional.cross_entropy(logits[:-1], torch.tensor(row[1:]), reduction="sum")
        count += len(row) - 1
    close(out.loss, nll / count)
    last = model(input_ids=ids, attention_mask=mask, last_position_only=True)
    torch.testing.assert_close(last[:, 0], out.logits[:, -1])
    torch.testing.assert_close(model(inputs_embeds=model.embed(ids), attention_mask=mask, labels=ids).loss, out.loss)
