"""Which heads are previous-token, induction, duplicate-token or first-token heads?

    python -m analyses.heads --ckpt data/checkpoints/induction_attn_only --out out/heads

Writes `summary.json` (every head's scores, and the top head per score) and a (layer, head)
heatmap per score plus the all-head attention grid of the first example.
"""

from __future__ import annotations

import torch

from interp import plots
from interp.cache import cached
from interp.heads import head_scores

from .common import inputs, load_with_task, parser, write

SCORES = ("prev_token", "induction", "duplicate_token", "first_token", "entropy", "mean_distance")


def main(argv=None):
    args = parser(__doc__.splitlines()[0]).parse_args(argv)
    model, tokenizer, task = load_with_task(args.ckpt)
    batch = inputs(task, tokenizer, args.n, args.split)
    scores = head_scores(model, batch.input_ids, attention_mask=batch.attention_mask, induction_tokens=False)
    top = {}
    for name in SCORES[:4]:
        table = scores[name]
        layer, head = divmod(int(table.nan_to_num(-1).argmax()), table.shape[1])
        top[name] = {"head": f"L{layer}H{head}", "score": float(table[layer, head])}
    first = batch.input_ids[0][batch.attention_mask[0]]
    pattern = cached(model, first[None], names="pattern")
    grid = [pattern[f"blocks.{l}.attn.hook_pattern"][0] for l in range(model.cfg.n_layers)]
    labels = [tokenizer.decode([int(t)]) for t in first]
    figures = {f"head_{name}": plots.head_score_heatmap(scores[name], name) for name in SCORES}
    figures["attention_grid"] = plots.attention_grid(torch.stack(grid), labels, title="example 0")
    summary = {"checkpoint": str(args.ckpt), "n_examples": int(batch.input_ids.shape[0]), "top": top,
               "heads": scores.to_rows()}
    return write(args.out, summary, figures)


if __name__ == "__main__":
    main()
