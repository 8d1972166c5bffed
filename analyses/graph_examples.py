"""Worked attribution-graph examples on the shipped checkpoints.

    python -m analyses.graph_examples --out out/graph_examples
    python -m analyses.graph_examples --out out/graph_examples --transcoders data/dictionaries/shakespeare_vanilla

* **induction** (`induction_attn_only`, no dictionaries: an attention-only model with frozen
  patterns is linear, so its graph is tokens -> logit, complete by construction): on `--n`
  test sequences (a random block repeated), cut in the middle of the repeat, the graph of the
  top prediction. Reported: how often the strongest input of the target logit is the
  embedding of the predicted token at its earlier occurrence (`top_is_earlier_occurrence`),
  and that edge's share of the logit value (logit minus mean logit): min / mean.
* **shakespeare** (`shakespeare_vanilla`, with `--transcoders`: one per MLP): the graph of the
  next character after `--prompt`, pruned at (0.8, 0.98): node counts, completeness and
  replacement scores, its strongest features.

Writes `summary.json` and each example's pruned graph as `NAME.json` (circuit-tracer's
front-end schema) and `NAME.html`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import interp
from interp import graphs, plots
from interp.checkpoint import load_config
from interp.tasks import make_task

from .common import write

ROOT = Path(__file__).resolve().parents[1]
CKPTS = ROOT / "data" / "checkpoints"


def induction(n: int, ckpt: Path = CKPTS / "induction_attn_only") -> tuple[dict, graphs.AttributionGraph]:
    model, tok = interp.load(ckpt)
    model.set_tokenizer(tok)
    _, meta = load_config(ckpt)
    task = make_task(**meta["task"])
    hits, shares, first_graph = 0, [], None
    examples = list(task.split("test"))[:n]
    for ex in examples:
        ids = list(ex.input_ids)
        block = (len(ids) - 2) // 2  # <bos> block block <eos>
        cut = 1 + block + block // 2 + 1  # inside the repeat: the next token is known from the first block
        g = graphs.attribute(model, None, ids[:cut], progress=False)
        logit = g.of_kind("logit")[0]
        node = g.nodes[logit]
        earlier = f"E_{node.feature}_{ids.index(node.feature)}"
        hits += g.inputs(logit, 1)[0][0] == earlier
        shares.append(float(g.adjacency[logit, g.index(earlier)]) / node.activation)
        first_graph = first_graph or g
    summary = dict(checkpoint=str(ckpt), n=len(examples), top_is_earlier_occurrence=hits / len(examples),
                   share_min=min(shares), share_mean=sum(shares) / len(shares),
                   example=dict(prompt=first_graph.prompt, target=next(x.token for x in first_graph.nodes if x.is_target),
                                inputs=first_graph.inputs(first_graph.of_kind("logit")[0], 3)))
    return summary, first_graph


def shakespeare(transcoders: Path, prompt: str, ckpt: Path = CKPTS / "shakespeare_vanilla"
                ) -> tuple[dict, graphs.AttributionGraph]:
    g = graphs.attribute(ckpt, transcoders, prompt, progress=False)
    p = g.prune()
    target = next(x for x in p.nodes if x.is_target)
    feats = sorted((x for x in p.nodes if x.kind == "feature"), key=lambda x: -(x.influence or 0))[:10]
    (r, c), (rp, cp) = g.scores(), p.scores()
    summary = dict(checkpoint=str(ckpt), transcoders=str(transcoders), prompt=g.prompt, target=target.token,
                   target_prob=target.prob, full=dict(counts=g.counts, replacement=r, completeness=c),
                   pruned=dict(counts=p.counts, replacement=rp, completeness=cp),
                   top_features=[dict(node=x.id, layer=x.layer, pos=x.pos, token=p.token_strs[x.pos], latent=x.latent,
                                      influence=x.influence, activation=x.activation) for x in feats])
    return summary, p


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--n", type=int, default=30, help="induction test sequences")
    ap.add_argument("--transcoders", type=Path, default=None, help="shakespeare_vanilla's transcoders (one per MLP)")
    ap.add_argument("--prompt", default="ROMEO:\nBut soft, what light through yonder window brea")
    args = ap.parse_args(argv)
    summary, figures = {}, {}
    args.out.mkdir(parents=True, exist_ok=True)
    s, g = induction(args.n)
    summary["induction"] = s
    p = g.prune()
    p.to_json(args.out / "induction.json", slug="induction")
    figures["induction"] = plots.attribution_graph(p, title=f"induction_attn_only: {s['example']['prompt'][-30:]!r} -> "
                                                            f"{s['example']['target']!r}")
    if args.transcoders is not None:
        s, p = shakespeare(args.transcoders, args.prompt)
        summary["shakespeare"] = s
        p.to_json(args.out / "shakespeare.json", slug="shakespeare")
        figures["shakespeare"] = plots.attribution_graph(p, title=f"shakespeare_vanilla: {args.prompt[-30:]!r} -> "
                                                                  f"{s['target']!r}")
    return write(args.out, summary, figures)


if __name__ == "__main__":
    main()
