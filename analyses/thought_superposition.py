"""Does each continuous thought hold the breadth-first frontier in superposition ("Reasoning by
Superposition", Zhu, Hao et al. 2025)? Measured on a Coconut checkpoint of a graph task.

    python -m analyses.thought_superposition --ckpt data/checkpoints/coconut_prosqa_coconut --out out/superposition --n 200

On the first `--n` examples of the split, each with its own number of thoughts, writes
`summary.json` with

* `accuracy`: greedy answers the Coconut way (`interp.training.coconut.evaluate_coconut`);
* `nodes`: per thought k and node group (reachable in <= k steps, frontier = exactly k steps,
  optimal = on a shortest path to the target at step k, not reachable in k steps): the mean inner
  product of the thought with the nodes' embeddings, the mean lens probability per node and the
  group's total lens mass (`interp.superposition.thought_node_scores`);
* `edges`: the last layer's attention (summed over heads) to each edge triplet `s t |` from the
  position producing thought k, by the group of the edge's source after k - 1 expansions, and
  from the answer (`interp.superposition.edge_attention`);
* `copy_heads`: per first-layer head, attention from each `|` to its edge's nodes and from each
  edge target to its source (`interp.superposition.edge_copy_heads`);
* `checks`: the paper's findings as booleans per thought (reachable > not reachable, frontier >
  not reachable, optimal > frontier; edges out of the frontier read more than the rest);

and figures: the inner products and lens probabilities per group and thought (box plots), the
edge attention, the edge-copying heads.
"""

from __future__ import annotations

import torch

from interp import plots, superposition, thoughts
from interp.training.coconut import evaluate_coconut

from .common import parser, write


def checks(nodes: dict, edges: dict) -> dict:
    """The paper's qualitative findings, per thought k, on these measurements (None: a group was empty)."""
    def gt(a, b):
        return [None if x is None or y is None else bool(x > y) for x, y in zip(a, b)]

    inner = nodes["inner"]
    return {"inner_reachable_gt_not_reachable": gt(inner["reachable"], inner["not_reachable"]),
            "inner_frontier_gt_not_reachable": gt(inner["frontier"], inner["not_reachable"]),
            "inner_optimal_gt_frontier": gt(inner["optimal"], inner["frontier"]),
            "mass_frontier_gt_not_reachable": gt(nodes["mass"]["frontier"], nodes["mass"]["not_reachable"]),
            "edges_frontier_gt_not_reachable": gt(edges["mean"]["frontier"], edges["mean"]["not_reachable"])}


def main(argv=None):
    p = parser(__doc__.splitlines()[0])
    p.set_defaults(n=200)
    p.add_argument("--layer", type=int, default=-1, help="layer whose attention to the edges is read (default: last)")
    args = p.parse_args(argv)
    reasoner, tokenizer, staged = thoughts.load(args.ckpt, task_overrides={"n_train": 0} if args.split != "train" else None)
    if staged.o["mode"] != "coconut":
        raise SystemExit(f"{args.ckpt} was trained with mode={staged.o['mode']!r}: it has no continuous thoughts")
    examples = staged.parts(args.split)
    if not examples or "depth" not in examples[0].example.meta:
        raise SystemExit(f"{args.ckpt}: its task ({staged.name}) has no graphs; this analysis is for graph tasks")
    n = min(args.n, len(examples))
    acc = evaluate_coconut(reasoner.model, staged, args.split, n=n)
    nodes = superposition.thought_node_scores(reasoner, staged, args.split, n)
    figures = {"thought_node_inner": plots.superposition_boxes(nodes, "inner"),
               "thought_node_prob": plots.superposition_boxes(nodes, "prob")}
    summary = {"checkpoint": str(args.ckpt), "split": args.split, "n_examples": n, "accuracy": acc["accuracy"],
               "mean_generated_tokens": acc["mean_generated_tokens"],
               "nodes": {k: v for k, v in nodes.items() if k != "rows"}}
    try:
        edges = superposition.edge_attention(reasoner, staged, args.split, n, layer=args.layer)
        heads = superposition.edge_copy_heads(reasoner, staged, args.split, min(n, 50))
    except ValueError as e:  # not the symbolic vocabulary: no `s t |` triplets to read
        summary["edges"] = summary["copy_heads"] = f"skipped: {e}"
    else:
        summary.update(edges=edges, copy_heads=heads, checks=checks(nodes, edges))
        figures["edge_attention"] = plots.edge_attention_bars(edges)
        figures["edge_copy_heads"] = plots.edge_copy_head_bars(heads)
    return write(args.out, summary, figures)


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
