"""TransformerLens 4.3's `TransformerBridge`, booted offline on a tiny random local GPT-2,
sees the same residual streams and attention patterns as our imported model.

Two offline ways in, both exercised:
* `TransformerBridge.boot_transformers(local_dir)`: a directory written by `save_pretrained`
  (model + tokenizer); config, weights and tokenizer all load from disk.
* `TransformerBridge.boot_transformers(name, hf_model=model, tokenizer=...)`: an in-memory model.
  The tokenizer must be passed, and must itself come from a local directory: the bridge
  re-loads it with `AutoTokenizer.from_pretrained(tokenizer.name_or_path, add_bos_token=True)`
  (`get_tokenizer_with_bos`), which fails with `KeyError: 'name_or_path'` for a tokenizer built
  in memory. The bridge also re-wires the HF model's modules in place, so convert it with
  `from_hf` *before* handing it to the bridge.
"""

from __future__ import annotations

import pytest
import torch
import transformers as T
from tokenizers import Tokenizer, models as tm, pre_tokenizers

from models.hf import from_hf
from tolerance import OTHER_CODE, close

pytestmark = pytest.mark.equivalence  # run again on other CPU kernels (Makefile `test`)

V = 97


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    import huggingface_hub.constants as hub_constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)


def tiny_gpt2() -> T.GPT2LMHeadModel:
    torch.manual_seed(0)
    cfg = T.GPT2Config(n_layer=2, n_embd=64, n_head=4, n_positions=32, vocab_size=V, bos_token_id=0, eos_token_id=1)
    model = T.GPT2LMHeadModel(cfg)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return model.eval()


def tiny_tokenizer() -> T.PreTrainedTokenizerFast:
    tok = Tokenizer(tm.WordLevel({f"t{i}": i for i in range(V)}, unk_token="t2"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return T.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="t0", eos_token="t1", pad_token="t2", unk_token="t2")


@pytest.fixture(scope="module")
def local_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("gpt2")
    tiny_gpt2().save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path


def compare(bridge, ours, n_layers: int = 2) -> None:
    toks = torch.randint(0, V, (2, 10), generator=torch.Generator().manual_seed(1))
    names = [f"blocks.{i}.{h}" for i in range(n_layers) for h in ("hook_resid_post", "attn.hook_pattern")]
    with torch.no_grad():
        logits, theirs = bridge.run_with_cache(toks, names_filter=lambda n: n in names)
        our_logits, mine = ours.run_with_cache(toks, names_filter=lambda n: n in names)
    for name in names:
        assert theirs[name].shape == mine[name].shape, name
        close(theirs[name], mine[name], ulps=OTHER_CODE, msg=name)
    assert mine["blocks.1.attn.hook_pattern"].std() > 0.01  # patterns are not uniform
    close(logits, our_logits, ulps=OTHER_CODE)


def test_bridge_booted_from_local_dir_matches_ours(local_dir):
    from transformer_lens.model_bridge import TransformerBridge

    ours = from_hf(T.AutoModelForCausalLM.from_pretrained(local_dir, local_files_only=True))
    bridge = TransformerBridge.boot_transformers(str(local_dir), device="cpu")
    compare(bridge, ours)


def test_bridge_booted_from_in_memory_model_matches_ours(local_dir):
    from transformer_lens.model_bridge import TransformerBridge

    hf_model = tiny_gpt2()
    ours = from_hf(hf_model)  # before the bridge re-wires hf_model's modules
    tok = T.AutoTokenizer.from_pretrained(local_dir, local_files_only=True)
    bridge = TransformerBridge.boot_transformers("local-gpt2", hf_model=hf_model, tokenizer=tok, device="cpu")
    compare(bridge, ours)


def test_in_memory_tokenizer_is_refused_by_the_bridge():
    """Documents the failure mode above: a tokenizer never saved to disk has no name_or_path
    for the bridge's add_bos_token re-load."""
    from transformer_lens.model_bridge import TransformerBridge

    with pytest.raises(KeyError, match="name_or_path"):
        TransformerBridge.boot_transformers("local-gpt2", hf_model=tiny_gpt2(), tokenizer=tiny_tokenizer(), device="cpu")
