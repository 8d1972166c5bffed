"""Does the graph say what the model does? A feature's influence in the graph against the
effect of zeroing it in the real model (Circuit Tracing §5: Spearman rho ~ 0.72 there).

```python
from interp.graphs import validate
rows = validate.ablation_check(g, model, dictionaries, k=20)   # one dict per top-influence feature
validate.spearman([r["influence"] for r in rows], [abs(r["ablation"]) for r in rows])
```

The ablation runs in the real model with every dictionary of the graph spliced in with its
error term (`features.splice(..., include_error=True)`: the spliced model computes exactly what
the model does), zeroing one feature at its position through `hook_sae_acts_post`; everything
downstream (attention patterns, norms, the other features) responds as in the model. The
effect is the change of the target logit minus the mean logit (the graph's logit value).
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch

from .graph import AttributionGraph

__all__ = ["spearman", "ablation_check", "logit_value"]


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n, ties given their average rank."""
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(1, len(x) + 1)
    for v in np.unique(x):
        tie = x == v
        if tie.sum() > 1:
            ranks[tie] = ranks[tie].mean()
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation (Pearson r of the ranks; NaN with < 3 points or no spread)."""
    x, y = np.asarray(x, dtype=float).reshape(-1), np.asarray(y, dtype=float).reshape(-1)
    if len(x) != len(y):
        raise ValueError(f"spearman: {len(x)} vs {len(y)} values")
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if len(x) < 3:
        return float("nan")
    rx, ry = _ranks(x), _ranks(y)
    if rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


def logit_value(logits: torch.Tensor, token: int) -> float:
    """The graph's logit node value: logit - mean logit (last position)."""
    last = logits[0, -1].double()
    return float(last[token] - last.mean())


@torch.no_grad()
def ablation_check(graph: AttributionGraph, model, dictionaries: Sequence, k: int = 20,
                   target: Optional[str] = None) -> list[dict]:
    """For the `k` feature nodes of highest influence: influence, the graph's linear prediction
    of zeroing it (-total_effect on the target logit) and the real change of the target logit
    when it is zeroed in the model (dictionaries spliced with their errors). `dictionaries` are
    the graph's own, in its order (`graphs.load_dictionaries`); `target` a logit node id
    (default: the top target)."""
    from interp.features import splice

    logit = graph.index(target) if target is not None else next(i for i, n in enumerate(graph.nodes) if n.is_target)
    token = graph.nodes[logit].feature
    by_hooks = {(d.cfg.hook_name, d.cfg.out_hook_name): d for d in dictionaries}
    try:
        dictionaries = [by_hooks[(info["hook_name"], info["out_hook_name"])] for info in graph.dictionaries]
    except KeyError as e:
        raise ValueError(f"no dictionary given for the graph's {e.args[0]}") from None
    tokens = torch.tensor(graph.tokens, device=next(model.parameters()).device)[None]
    influence = graph.influence()
    effect = graph.total_effect(graph.nodes[logit].id)
    feats = [i for i, n in enumerate(graph.nodes) if n.kind == "feature"]
    top = sorted(feats, key=lambda i: -float(influence[i]))[:k]
    was = model.training
    model.eval()
    try:
        clean = logit_value(model(tokens), token)
        with splice(model, *dictionaries, include_error=True, check_model=False):
            spliced = logit_value(model(tokens), token)
            if abs(spliced - clean) > 1e-3 * max(1.0, abs(clean)):
                raise RuntimeError(f"the spliced model's logit {spliced:.6f} differs from the model's {clean:.6f}: "
                                   "the dictionaries do not splice with their errors exactly")
            rows = []
            for i in top:
                n = graph.nodes[i]
                hook = dictionaries[n.dictionary].cfg.hook_name + ".hook_sae_acts_post"

                def zero(acts, hook, pos=n.pos, latent=n.latent):
                    acts = acts.clone()
                    acts[:, pos, latent] = 0.0
                    return acts

                ablated = logit_value(model.run_with_hooks(tokens, fwd_hooks=[(hook, zero)]), token)
                rows.append(dict(node=n.id, layer=n.layer, pos=n.pos, latent=n.latent, dictionary=n.dictionary,
                                 activation=n.activation, influence=float(influence[i]),
                                 predicted=-float(effect[i]), ablation=ablated - clean))
    finally:
        model.train(was)
    return rows
