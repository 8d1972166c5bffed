"""pyvene's interchange interventions on our hook points give interp.patching's numbers (and a
run_with_hooks edit's). pyvene reads `model.config` and `model.device` and addresses our
modules by path ("blocks[1].hook_resid_pre.output"); a model class it has no card for needs an
entry in its dimension table (empty: interventions then take their width from the tensor).
Runs in .venv-clients/pyvene."""

from __future__ import annotations

import pytest
import torch

pv = pytest.importorskip("pyvene")
pytestmark = pytest.mark.clients

from common import TOL, induction_tokens, load  # noqa: E402
from models import HookedTransformer  # noqa: E402

pv.type_to_dimension_mapping.setdefault(HookedTransformer, {})


def _interchange(model, component, base, source, position):
    cfg = pv.IntervenableConfig(
        representations=[pv.RepresentationConfig(component=component, unit="pos", max_number_of_units=1)],
        intervention_types=pv.VanillaIntervention)
    intervenable = pv.IntervenableModel(cfg, model)
    _, logits = intervenable({"input_ids": base}, [{"input_ids": source}], {"sources->base": position})
    return logits


def test_interchange_at_resid_pre_equals_activation_patching():
    from interp import patching

    model = load("induction_attn_only")
    clean, corrupted = induction_tokens(model, seed=1), induction_tokens(model, seed=2)
    last = clean.shape[1] - 1
    answer, wrong = clean[:, last], corrupted[:, last]

    def metric(logits):
        rows = torch.arange(logits.shape[0])
        return (logits[rows, -1, answer] - logits[rows, -1, wrong]).mean()

    result = patching.activation_patching(model, clean, corrupted, metric, act="resid_pre", by="pos")
    _, clean_cache = model.run_with_cache(clean)
    assert result.values.std() > 0.1  # the grid has structure, so agreement is not trivial
    for layer, pos in [(0, 3), (1, 3), (1, last), (0, last - 8)]:
        logits = _interchange(model, f"blocks[{layer}].hook_resid_pre.output", corrupted, clean, pos)
        assert float(metric(logits)) == pytest.approx(float(result.values[layer, pos]), abs=1e-4)

        def put(x, hook, layer=layer, pos=pos):
            x = x.clone()
            x[:, pos] = clean_cache["resid_pre", layer][:, pos]
            return x

        torch.testing.assert_close(
            logits, model.run_with_hooks(corrupted, fwd_hooks=[(f"blocks.{layer}.hook_resid_pre", put)]), **TOL)


def test_intervention_on_a_pattern_takes_the_explicit_path():
    """pyvene's forward hook on hook_pattern makes that layer compute its pattern (the hook is
    an observer like any other); the interchanged pattern row equals a hook edit's."""
    model = load("induction_attn_only")
    base, source = induction_tokens(model, seed=2), induction_tokens(model, seed=1)
    _, src_cache = model.run_with_cache(source)
    logits = _interchange(model, "blocks[1].attn.hook_pattern.output", base, source, 0)
    assert model.blocks[1].attn.last_path == "explicit"
    # pyvene's "pos" unit on a (batch, head, q, k) tensor indexes dim 1: the head axis
    def put(p, hook):
        p = p.clone()
        p[:, 0] = src_cache["pattern", 1][:, 0]
        return p

    torch.testing.assert_close(logits, model.run_with_hooks(base, fwd_hooks=[("blocks.1.attn.hook_pattern", put)]), **TOL)
