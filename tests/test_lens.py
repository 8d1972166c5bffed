import pytest
import torch

from tolerance import close

from interp import lens
from models import presets

pytestmark = pytest.mark.equivalence  # run again on other CPU kernels (Makefile `test`)


@pytest.fixture(scope="module", params=["vanilla", "factored-alibi", "llama-like"])
def model(request):
    torch.manual_seed(1)
    m = presets.make(request.param, "tiny", init_range=0.2).eval()
    return m


def test_last_layer_is_model_softmax(model):
    tokens = torch.randint(0, 128, (2, 12))
    res = lens.logit_lens(model, tokens, k=3)
    L = model.cfg.n_layers + 1
    assert res.top_tokens.shape == (L, 2, 12, 3) and res.target_prob.shape == (L, 2, 12)
    with torch.no_grad():
        probs = model(tokens).softmax(-1)
    want = probs[:, :-1].gather(-1, tokens[:, 1:, None])[..., 0]
    torch.testing.assert_close(res.target_prob[-1, :, :-1], want)
    assert torch.isnan(res.target_prob[:, :, -1]).all() and (res.target_rank[:, :, -1] == -1).all()
    top_p, top_i = probs.topk(3, -1)
    torch.testing.assert_close(res.top_probs[-1], top_p)
    assert torch.equal(res.top_tokens[-1], top_i)


def test_intermediate_layer_rank_and_prob(model):
    tokens = torch.randint(0, 128, (2, 10))
    res = lens.logit_lens(model, tokens)
    _, c = model.run_with_cache(tokens)
    with torch.no_grad():
        # direct: layer 1 = after block 0, normalised by hand with ln_final's weights
        x = c["blocks.0.hook_resid_post"]
        ln = model.ln_final
        if model.cfg.norm == "layernorm":
            x = x - x.mean(-1, keepdim=True)
        x = x / (x.pow(2).mean(-1, keepdim=True) + ln.eps).sqrt() * ln.w + (ln.b if ln.b is not None else 0)
        logits = x @ model.W_U
    tgt = tokens[:, 1:]
    lg = logits[:, :-1]
    want_p = lg.softmax(-1).gather(-1, tgt[..., None])[..., 0]
    want_rank = (lg > lg.gather(-1, tgt[..., None])).sum(-1)
    close(res.target_prob[1, :, :-1], want_p)
    assert torch.equal(res.target_rank[1, :, :-1], want_rank)
    assert (res.target_rank[:, :, :-1] >= 0).all()
    # rank 0 exactly where the target is the top-1 token
    assert torch.equal(res.target_rank[:, :, :-1] == 0, res.top_tokens[:, :, :-1, 0] == tokens[None, :, 1:])


def test_streams(model):
    tokens = torch.randint(0, 128, (1, 8))
    if model.cfg.stream != "factored":
        with pytest.raises(ValueError, match="factored"):
            lens.logit_lens(model, tokens, stream="xt")
        return
    xt = lens.logit_lens(model, tokens, stream="xt")
    xe = lens.logit_lens(model, tokens, stream="xe")
    _, c = model.run_with_cache(tokens)
    with torch.no_grad():
        direct = model.unembed_resid(model.ln_final(c["blocks.1.hook_xt_post"])).softmax(-1)
    close(xt.target_prob[2, 0, :-1], direct[0, :-1].gather(-1, tokens[0, 1:, None])[..., 0])
    # xe is zero before any MLP: a uniform readout
    torch.testing.assert_close(xe.target_prob[0, 0, :-1], torch.full((7,), 1 / 128))
    assert xt.stream == "xt"


def test_explicit_targets_cache_and_padding(model):
    tokens = torch.randint(0, 128, (2, 6))
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[1, 4:] = False
    res = lens.logit_lens(model, tokens, attention_mask=mask)
    assert torch.isnan(res.target_prob[:, 1, 3:]).all() and not torch.isnan(res.target_prob[:, 1, :3]).any()
    targets = torch.full_like(tokens, -100)
    targets[:, 2] = 5
    _, c = model.run_with_cache(tokens)
    res2 = lens.logit_lens(model, tokens, cache=c, targets=targets)
    assert (~torch.isnan(res2.target_prob)).sum() == res2.n_layers * 2
    with pytest.raises(KeyError, match="lens hooks"):
        lens.logit_lens(model, tokens, cache=model.run_with_cache(tokens, names_filter="hook_embed")[1])
