"""Activation patching and path patching, batched: many patch sites per forward.

```python
from interp import patching
metric = patching.logit_diff(answer=ans_ids, wrong=wrong_ids, pos=-1)     # batched metric
res = patching.activation_patching(model, clean, corrupted, metric, act="resid_pre")   # (layer, pos)
res = patching.activation_patching(model, clean, corrupted, metric, act="z", by="head")  # (layer, head)
res.values; res.normalized(); res.to_frame(); res.top(5)
paths = patching.path_patching(model, clean, corrupted, metric, receivers=[(1, 0), (1, 1)], receiver_input="k")
```

**Directions.** `direction="denoise"` (default, TL's): run the corrupted prompts and patch in
clean activations; a site that restores the clean metric carries the information.
`"noise"`: run the clean prompts and patch in corrupted activations; a site whose patch
breaks the metric is necessary. The run that is patched is the *base*, the run the patched
values come from is the *source*; `PatchResult.baseline` / `.source` hold the metric of both
unpatched runs.

**Sites.** `act` is a hook kind:
`resid_pre | resid_mid | resid_post | attn_out | mlp_out` and, for factored-stream models,
`xt_pre | xt_mid | xt_post | xe_pre | xe_mid | xe_post` (by `"pos"`: a (layer, pos) grid, or
`"layer"`: every position of a layer at once); `z | q | k | v` (by `"head"`: (layer, head),
every position; or `"head_pos"`: (layer, pos, head)); `pattern` (by `"head"` or `"head_pos"`,
where pos is the query position). On a factored model `resid_*` patches `xt` and `xe`
together (the whole residual state; `hook_resid_*` there is a read-only view). For GQA/MQA
models `k` and `v` sites are key/value heads.

**Batching.** Each forward stacks S sites x B prompts along the batch axis (rows s*B + b),
starts at the first block any of its sites touches (the blocks before are the base run's,
taken from its cache), and is chunked so a forward fits `memory_budget` bytes. The numbers
equal one forward per site (TL's `transformer_lens.patching`), tested in fp32 to 1e-5.

**Metrics.** A metric maps logits to a number per prompt. The built-ins (`logit_diff`,
`logprob`, `prob`, `loss`) are `Metric`s: they take logits (*sites, batch, pos, d_vocab) and
return (*sites, batch), so one call scores a whole chunk. Any other callable is TL's
contract: logits (batch, pos, d_vocab) -> a scalar or a (batch,) tensor, called per site.
A name builds the built-in from the unpatched runs at each prompt's last real position
(`metrics.from_name`): `"loss"` is the clean prompts' next-token loss, `"logprob"` / `"prob"`
score the clean run's top-1 token, `"logit_diff"` the clean run's top-1 minus the corrupted
run's (refused, with the recipe, where both runs predict the same token). A mapping
name -> metric scores several metrics on the same forwards (a leading metric axis).

Layout: `metrics` (the metric contract and built-ins), `sites` (what a patch site is, hook
names, masks), `engine` (the base run that stacked runs start from, chunking, hooks),
`activation` (activation patching), `path` (path patching), `result` (`PatchResult`).
"""

from .activation import activation_patching
from .engine import rows_per_forward
from .metrics import Metric, logit_diff, logprob, loss, prob
from .path import path_patching
from .result import PatchResult
from .sites import DIRECTIONS, HEAD_ACTS, PATTERN_ACTS, STREAM_ACTS, act_hook_names

__all__ = [
    "Metric", "logit_diff", "logprob", "prob", "loss", "PatchResult", "activation_patching", "path_patching",
    "act_hook_names", "rows_per_forward", "STREAM_ACTS", "HEAD_ACTS", "PATTERN_ACTS", "DIRECTIONS",
]
