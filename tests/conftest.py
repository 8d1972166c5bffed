"""Shared fixtures for the model tests: tiny fp32 models with weights perturbed off their init."""

from __future__ import annotations

import pytest
import torch

from models import HookedTransformer, presets

PRESETS = presets.NAMES
VOCAB = 50


def perturb(model: HookedTransformer, scale: float = 0.1, seed: int = 0) -> HookedTransformer:
    """Add N(0, scale) to every parameter so degenerate inits (SAS-P W_Q = 0, beta == gamma,
    norms at w=1/b=0, zero biases) cannot make two computations agree by accident."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * scale)
    return model


def tiny(name: str, seed: int = 0, scale: float = 0.1, **overrides) -> HookedTransformer:
    """A 2-layer, d_model=64 preset with `VOCAB` tokens, perturbed and in eval mode."""
    torch.manual_seed(seed)
    overrides.setdefault("d_vocab", VOCAB)
    model = presets.make(name, "tiny", **overrides)
    return perturb(model, scale, seed).eval()


def build(seed: int = 0, scale: float = 0.1, **fields) -> HookedTransformer:
    """A small custom-config model, perturbed and in eval mode."""
    from models import ModelConfig

    torch.manual_seed(seed)
    base = dict(n_layers=2, d_model=32, n_heads=4, d_vocab=VOCAB, n_ctx=64)
    base.update(fields)
    return perturb(HookedTransformer(ModelConfig(**base)), scale, seed).eval()


def tokens(batch: int = 2, pos: int = 12, seed: int = 0, vocab: int = VOCAB) -> torch.Tensor:
    return torch.randint(1, vocab, (batch, pos), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run fastest single-threaded; on a busy 2-core box extra OpenMP threads
    make each step many times slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(params=PRESETS)
def preset_name(request) -> str:
    return request.param


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: takes more than a few seconds (deselect with -m 'not slow')")
    config.addinivalue_line("markers", "equivalence: two computations of the same numbers (fast vs explicit, cached vs "
                            "not, ours vs TL/HF); `make test` runs them a second time on other CPU kernels")
    config.addinivalue_line("markers", "clients: runs a peer library in its own virtualenv (skipped when it is missing)")
