"""HF-style forward arguments: input_ids=, inputs_embeds=, labels -> (logits, loss), last_position_only."""

import pytest
import torch

from tolerance import close

from models import presets

pytestmark = pytest.mark.equivalence  # run again on other CPU kernels (Makefile `test`)


@pytest.mark.parametrize("name", presets.NAMES)
def test_inputs_embeds_equal_token_forward(name):
    torch.manual_seed(0)
    model = presets.make(name, "tiny").eval()
    tokens = torch.randint(0, model.cfg.d_vocab, (2, 9))
    mask = torch.ones_like(tokens, dtype=torch.bool)
    mask[1, :3] = False  # left padding
    ref = model(tokens, attention_mask=mask)
    out = model(inputs_embeds=model.embed(tokens), attention_mask=mask)
    close(out, ref)


def test_input_ids_and_labels_read_like_transformers():
    torch.manual_seed(0)
    model = presets.make("vanilla", "tiny").eval()
    tokens = torch.randint(0, model.cfg.d_vocab, (2, 7))
    out = model(input_ids=tokens, labels=tokens)
    torch.testing.assert_close(out.logits, model(tokens))
    torch.testing.assert_close(out.loss, model(tokens, return_type="loss"))
    emb = model(inputs_embeds=model.embed(tokens), labels=tokens)
    torch.testing.assert_close(emb.loss, out.loss)


def test_last_position_only():
    torch.manual_seed(0)
    model = presets.make("llama-like", "tiny").eval()
    tokens = torch.randint(0, model.cfg.d_vocab, (3, 6))
    last = model(tokens, last_position_only=True)
    assert last.shape == (3, 1, model.cfg.d_vocab)
    close(last, model(tokens)[:, -1:])


def test_forward_argument_errors():
    model = presets.make("vanilla", "tiny")
    tokens = torch.zeros(1, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="not both"):
        model(tokens, input_ids=tokens)
    with pytest.raises(ValueError, match="exactly one"):
        model()
    with pytest.raises(ValueError, match="needs labels"):
        model(inputs_embeds=torch.zeros(1, 4, model.cfg.d_model), return_type="loss")
    with pytest.raises(ValueError, match="d_model"):
        model(inputs_embeds=torch.zeros(1, 4, 3))
    with pytest.raises(ValueError, match="cannot give a loss"):
        model(tokens, return_type="loss", last_position_only=True)


@pytest.mark.parametrize("name", presets.NAMES)
def test_stop_at_layer_returns_the_residual_the_cache_sees(name):
    torch.manual_seed(0)
    model = presets.make(name, "tiny").eval()
    tokens = torch.randint(0, model.cfg.d_vocab, (2, 8))
    _, cache = model.run_with_cache(tokens)
    L = model.cfg.n_layers
    for stop in range(-L, L + 1):
        n = stop % L if stop < 0 else stop
        want = cache[f"blocks.{n}.hook_resid_pre"] if n < L else cache[f"blocks.{L - 1}.hook_resid_post"]
        close(model(tokens, stop_at_layer=stop), want)
    fired = []
    model.blocks[L - 1].hook_resid_pre.add_hook(lambda x, hook: fired.append(hook.name))
    model(tokens, stop_at_layer=L - 1)
    model.reset_hooks()
    assert fired == [], "a block after stop_at_layer ran"
    with pytest.raises(ValueError, match="stop_at_layer"):
        model(tokens, stop_at_layer=L + 1)
    with pytest.raises(ValueError, match="stop_at_layer"):
        model(tokens, return_type="loss", stop_at_layer=1)
