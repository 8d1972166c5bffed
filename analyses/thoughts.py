"""What do a Coconut model's continuous thoughts hold?

    python -m analyses.thoughts --ckpt data/checkpoints/coconut_graph_coconut --out out/thoughts

On the first `--n` examples of the split, in the last-stage layout (`prompt <bot> thoughts <eot>
answer`), writes `summary.json` with

* `accuracy`: greedy answers the Coconut way (`interp.training.coconut.evaluate_coconut`);
* `frontier` (graph task): where each thought's decoded next-node distribution puts its mass:
  the path node at BFS depth j, the other nodes at depth j (the rest of the search frontier),
  reachable nodes at other depths, unreachable nodes, non-nodes; per node, and how often a
  non-path frontier node is in the top 3 (`interp.thoughts.frontier_mass`);
* `answer_prob_by_thoughts`: mean P(answer) at `<eot>` with 0 .. n thoughts;
* `answer_attention`: mean attention from `<eot>` into each slot, per layer;
* `patching`: per slot, P(own answer) and P(the other example's answer) when that thought is
  replaced by the same thought of another example;

and figures: the thought lens of example 0, frontier mass, attention into the slots, the
answer-probability curve and the timeline of example 0.
"""

from __future__ import annotations

import torch

from interp import plots, thoughts
from interp.training.coconut import evaluate_coconut

from .common import parser, write


def main(argv=None):
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--k", type=int, default=5, help="top tokens per thought")
    args = p.parse_args(argv)
    reasoner, tokenizer, staged = thoughts.load(args.ckpt, task_overrides={"n_train": 0} if args.split != "train" else None)
    if staged.o["mode"] != "coconut":
        raise SystemExit(f"{args.ckpt} was trained with mode={staged.o['mode']!r}: it has no continuous thoughts")
    n = args.n
    batch = thoughts.latent_batch(staged, args.split, n)
    source = thoughts.latent_batch(staged, args.split, n, start=n)  # donors for patching
    vocab = [tokenizer.decode([i]) for i in range(tokenizer.vocab_size)]

    acc = evaluate_coconut(reasoner.model, staged, args.split, n=n)
    lens = thoughts.thought_lens(reasoner, batch.input_ids, k=args.k)
    attn = thoughts.answer_attention(reasoner, batch)  # (batch, layer, head, slot)
    curve = thoughts.answer_prob_by_thoughts(reasoner, staged, args.split, n)
    patching = {}
    for slot in range(batch.n_latents):
        r = thoughts.patch_thought(reasoner, batch, source, slot)
        patching[slot] = {k: float(v.mean()) for k, v in r.items()}
    summary = {
        "checkpoint": str(args.ckpt), "split": args.split, "n_examples": len(batch), "n_latents": batch.n_latents,
        "accuracy": acc["accuracy"], "mean_generated_tokens": acc["mean_generated_tokens"],
        "answer_prob_by_thoughts": curve.mean(0).tolist(),
        "answer_attention": attn.mean(dim=(0, 2)).tolist(),  # (layer, slot)
        "patching": patching,
        "example0_top_tokens": [[vocab[i] for i in row] for row in lens.top_ids[0, :, -1].tolist()],
    }
    figures = {
        "thought_lens": plots.thought_lens_heatmap(lens, 0, vocab),
        "answer_attention": plots.thought_attention_heatmap(attn.mean(0)),
        "answer_prob": plots.answer_prob_curve(curve),
        "timeline": plots.thought_timeline(thoughts.timeline(reasoner, staged, args.split, 0, k=args.k)),
    }
    if "depth" in batch.examples[0].meta:
        summary["frontier"] = thoughts.frontier_mass(lens.probs[:, :, -1], batch.examples, tokenizer)
        figures["frontier_mass"] = plots.frontier_mass_bars(summary["frontier"])
    return write(args.out, summary, figures)


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
