"""The explorer's data package (`app/data/`) and the small analyses it calls in
`interp.explore`: per-token loss, top-1 predictions and the one-token corruption search,
each checked against a naive implementation (one sequence, one candidate at a time)."""

from __future__ import annotations

import math

import pytest
import torch

import interp
from app_fixtures import make_checkpoint  # tests/ is on sys.path (rootdir conftest)
from interp import explore


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    m, tok = interp.load(make_checkpoint(tmp_path_factory.mktemp("data_ckpt"), "shakespeare_factored_alibi"))
    return m.eval(), tok


@pytest.fixture(scope="module")
def model(loaded):
    return loaded[0]


def test_every_name_the_pages_use_is_importable_from_app_data():
    import ast
    from pathlib import Path

    from app import data

    used = set()
    for f in (Path(__file__).resolve().parents[1] / "app").rglob("*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "data":
                used.add(node.attr)
            if isinstance(node, ast.ImportFrom) and node.module in ("data", "app.data") and node.level <= 2:
                used |= {a.name for a in node.names}
    missing = sorted(n for n in used if not hasattr(data, n))
    assert not missing, missing


def test_token_losses_and_top1_match_a_naive_loop(model):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.cfg.d_vocab, (20,), generator=g)
    with torch.no_grad():
        logits = model(ids[None])[0].double()
    want = [-(logits[i].log_softmax(-1)[ids[i + 1]]).item() for i in range(len(ids) - 1)]
    got = explore.token_losses(model, ids).tolist()
    assert len(got) == len(ids) - 1
    assert all(math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-5) for a, b in zip(got, want))
    assert explore.top1(model, ids).tolist() == [int(logits[i].argmax()) for i in range(len(ids))]


def _naive_corruption(model, ids, read_at, positions, protected, travel, n_alt=3):
    """One forward per candidate, no batching: what `one_token_corruption` must agree with."""
    with torch.no_grad():
        logits = model(torch.tensor([ids]))[0]
        base = logits.argmax(-1).tolist()
        found = []
        for q in positions:
            if q < 1 or q >= len(ids) or ids[q] in protected:
                continue
            order = logits[q - 1].topk(2 * n_alt).indices.tolist()
            for t in [t for t in order if t not in protected and t != ids[q]][:n_alt]:
                x = list(ids)
                x[q] = t
                pred = model(torch.tensor([x]))[0].argmax(-1).tolist()
                found.append((q, t, [a != b for a, b in zip(pred, base)]))
    if not travel:
        hit = next(((q, t) for q, t, f in found if f[read_at]), None)
        if hit:
            return hit + (read_at,)
    else:
        best = None
        for q, t, f in found:
            later = [r for r in range(q + 2, len(ids)) if f[r]]
            if later and (best is None or (later[-1] - q, later[-1]) > (best[2] - best[0], best[2])):
                best = (q, t, later[-1])
        if best:
            return best
    here = [(q, t, f) for q, t, f in found if q == read_at]
    q, t, f = next((c for c in here if c[2][read_at]), here[0] if here else found[0])
    return q, t, read_at if f[read_at] else None


@pytest.mark.parametrize("travel", [False, True])
def test_one_token_corruption_matches_a_one_at_a_time_search(loaded, travel):
    model, tok = loaded
    ids = [model.cfg.bos_token_id] + list(tok.encode("To be, or not to be, that is the question"))
    T = len(ids)
    read_at = T - 1
    positions = list(range(T - 2, max(0, T - 14), -1)) + [read_at]
    protected = {model.cfg.bos_token_id}
    got = explore.one_token_corruption(model, torch.tensor(ids), read_at=read_at, positions=positions,
                                       protected=protected, travel=travel)
    want = _naive_corruption(model, ids, read_at, positions, protected, travel)
    assert (got.position, got.token, got.changes_at) == want
    assert explore.one_token_corruption(model, torch.tensor(ids), read_at=read_at, positions=[0]) is None
