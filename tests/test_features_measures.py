"""interp.features.measures against naive loops: token purity, AUC, Fourier share, and the
activations read from a model."""

import math

import pytest
import torch

from interp import features
from interp.features.measures import latent_activations, live, summarize
from models import presets


def test_token_purity_equals_a_loop():
    g = torch.Generator().manual_seed(0)
    acts = torch.rand(200, 7, generator=g) * (torch.rand(200, 7, generator=g) > 0.6)
    acts[:, 6] = 0  # a latent that never fires
    toks = torch.randint(0, 5, (200,), generator=g)
    purity, top = features.token_purity(acts, toks, 5)
    for j in range(6):
        mass = [float(acts[toks == v, j].sum()) for v in range(5)]
        assert top[j] == max(range(5), key=lambda v: mass[v])
        assert purity[j].item() == pytest.approx(max(mass) / sum(mass), rel=1e-5)
    assert math.isnan(purity[6]) and top[6] == -1
    one = torch.zeros(10, 1)
    one[toks[:10] == toks[0]] = 1.0  # fires only on one token
    assert features.token_purity(one, toks[:10], 5)[0][0] == 1.0


def test_label_auc_equals_pairwise_counting():
    g = torch.Generator().manual_seed(1)
    labels = torch.rand(60, generator=g) > 0.5
    acts = torch.stack([labels.float() + torch.rand(60, generator=g) * 2,   # informative
                        torch.rand(60, generator=g),                         # noise
                        torch.zeros(60),                                      # all ties: 0.5
                        (~labels).float()], dim=1)                            # perfect, other class
    auc = features.label_auc(acts, labels)
    pos, neg = acts[labels], acts[~labels]
    for j in range(4):
        wins = (pos[:, None, j] > neg[None, :, j]).double() + 0.5 * (pos[:, None, j] == neg[None, :, j]).double()
        assert auc[j].item() == pytest.approx(float(wins.mean()), abs=1e-6)
    assert auc[2] == pytest.approx(0.5) and auc[3] == pytest.approx(0.0)
    assert torch.isnan(features.label_auc(acts, torch.ones(60, dtype=torch.bool))).all()


def test_fourier_share_of_pure_and_mixed_waves():
    p = 113
    x = torch.arange(p, dtype=torch.float64)
    w = lambda k: 2 * math.pi * k / p  # noqa: E731
    rows = torch.stack([torch.cos(w(14) * x) + 3.0,                      # pure 14 (+ a constant, left out)
                        torch.sin(w(26) * x),                            # pure 26
                        torch.cos(w(14) * x) + torch.cos(w(5) * x),      # half in {14}
                        torch.ones(p)])                                  # constant: NaN
    share = features.fourier_share(rows, [14, 26])
    assert share[0].item() == pytest.approx(1.0, abs=1e-9) and share[1].item() == pytest.approx(1.0, abs=1e-9)
    assert share[2].item() == pytest.approx(0.5, abs=1e-9) and math.isnan(share[3])


def test_latent_activations_read_the_hook_at_real_positions():
    torch.manual_seed(0)
    model = presets.make("vanilla", "tiny").eval()
    sae = features.make(dict(arch="topk", d_in=model.cfg.d_model, d_sae=32, k=4, hook_name="blocks.0.hook_resid_post"))
    tokens = torch.randint(3, model.cfg.d_vocab, (3, 6))
    mask = torch.ones(3, 6, dtype=torch.bool)
    mask[2, 4:] = False
    acts = latent_activations(sae, model, [features.TokenBatch(tokens, mask)])
    _, cache = model.run_with_cache(tokens, attention_mask=mask)
    want = sae.encode(cache["blocks.0.hook_resid_post"][mask])
    torch.testing.assert_close(acts.latents, want, rtol=1e-5, atol=1e-6)
    assert acts.tokens.tolist() == tokens[mask].tolist() and acts.positions.tolist() == [*range(6)] * 2 + [0, 1, 2, 3]
    assert acts.prev_tokens[0] == -1 and acts.prev_tokens[1] == tokens[0, 0]
    assert live(acts.latents).shape == (32,) and summarize(torch.tensor([1.0, float("nan"), 3.0]))["median"] == 2.0
