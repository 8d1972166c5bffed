"""At which layer does the model know the next token?

    python -m analyses.logit_lens --ckpt data/checkpoints/shakespeare_factored_alibi --out out/lens

Writes `summary.json` with the mean probability and mean rank of the correct next token per
layer (per stream, resid / xt / xe, for factored models) and a lens heatmap of example 0.
"""

from __future__ import annotations

import torch

from interp import plots
from interp.lens import logit_lens

from .common import inputs, load_with_task, parser, write


def main(argv=None):
    args = parser(__doc__.splitlines()[0]).parse_args(argv)
    model, tokenizer, task = load_with_task(args.ckpt)
    batch = inputs(task, tokenizer, args.n, args.split)
    streams = ("resid", "xt", "xe") if model.cfg.stream == "factored" else ("resid",)
    per_stream, figures = {}, {}
    vocab = [tokenizer.decode([i]) for i in range(tokenizer.vocab_size)]
    for stream in streams:
        result = logit_lens(model, batch.input_ids, attention_mask=batch.attention_mask, stream=stream)
        scored = result.target_rank >= 0  # (layer, batch, pos): positions with a next token
        prob = torch.where(scored, result.target_prob, torch.zeros_like(result.target_prob))
        n = scored.sum(dim=(1, 2)).clamp(min=1)
        per_stream[stream] = {
            name: {"p_correct": float(prob[i].sum() / n[i]),
                   "rank": float(torch.where(scored[i], result.target_rank[i], 0).float().sum() / n[i])}
            for i, name in enumerate(result.layer_names)
        }
        figures[f"lens_{stream}"] = plots.logit_lens_heatmap(result, example=0, decode=vocab, title=f"logit lens ({stream})")
    summary = {"checkpoint": str(args.ckpt), "n_examples": int(batch.input_ids.shape[0]), "layers": per_stream}
    return write(args.out, summary, figures)


if __name__ == "__main__":
    main()
