"""`interp graph`: an attribution graph from the command line.

```bash
interp graph --ckpt data/checkpoints/shakespeare_vanilla --transcoders data/dictionaries/shakespeare_vanilla \
    --prompt "ROMEO:\nBut soft, what light" --out out/graph
```

Writes into `--out`: `graph.json` (the pruned graph in circuit-tracer's front-end schema),
`graph.html` (the pruned graph drawn by layer x position, plotly), `graph/` (the pruned graph
with its unpruned graph, `interp.graphs.load` reads it; the explorer's Graph page too), and
prints a JSON summary: node counts, completeness and replacement of both graphs, the targets,
the strongest inputs of the top target.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import List, Optional

import typer


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(1)


def graph(
    ckpt: Path = typer.Option(..., "--ckpt", help="Checkpoint directory."),
    transcoders: Optional[Path] = typer.Option(None, "--transcoders", help="Folder of saved dictionaries (one "
                                               "transcoder per MLP; residual SAEs on attention-only models)."),
    prompt: str = typer.Option(..., "--prompt", help="Prompt text (\\n for a newline)."),
    out: Path = typer.Option(..., "--out", help="Output directory (created)."),
    target: List[str] = typer.Option([], "--target", help="Token text whose logit to explain (repeatable; default: "
                                     "the top prediction)."),
    logit_mass: Optional[float] = typer.Option(None, "--logit-mass", help="Explain the most probable tokens up to "
                                               "this probability mass instead."),
    node_threshold: float = typer.Option(0.8, "--node-threshold", help="Share of influence the kept nodes hold."),
    edge_threshold: float = typer.Option(0.98, "--edge-threshold", help="Share of influence the kept edges hold."),
    kind: str = typer.Option("auto", "--kind", help="Dictionaries taken from the folder: auto, transcoders, saes, all."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Targets per backward pass (default: by memory)."),
) -> None:
    """Trace the model's prediction at the end of --prompt through transcoder features: an
    attribution graph (Circuit Tracing, 2025), pruned, as JSON + HTML."""
    from interp import graphs, plots

    GraphError = graphs.GraphError
    text = prompt.replace("\\n", "\n").replace("\\t", "\t")
    try:
        g = graphs.attribute(ckpt, transcoders, text, target=list(target) or None, logit_mass=logit_mass,
                             batch_size=batch_size, kind=kind)
        p = g.prune(node_threshold=node_threshold, edge_threshold=edge_threshold)
    except (GraphError, ValueError) as e:
        _fail(str(e))
    out.mkdir(parents=True, exist_ok=True)
    p.to_json(out / "graph.json", slug=out.name)
    fig = plots.attribution_graph(p, title=f"{Path(ckpt).name}: {text[-40:]!r} -> "
                                           f"{next(n.token for n in p.nodes if n.is_target)!r}")
    fig.write_html(out / "graph.html", include_plotlyjs="directory")  # plotly.min.js beside it: opens offline
    p.save(out / "graph")
    top = next(n for n in p.nodes if n.is_target)
    r, c = g.scores()
    rp, cp = p.scores()
    summary = dict(
        checkpoint=str(ckpt), prompt=text, n_tokens=len(g.tokens),
        targets=[dict(token=n.token, id=n.feature, prob=n.prob, value=n.activation) for n in g.nodes if n.kind == "logit"],
        full=dict(counts=g.counts, replacement=r, completeness=c),
        pruned=dict(counts=p.counts, replacement=rp, completeness=cp, node_threshold=node_threshold,
                    edge_threshold=edge_threshold),
        top_inputs=[dict(node=i, weight=w) for i, w in p.inputs(top.id, 10)],
        files=[str(out / "graph.json"), str(out / "graph.html"), str(out / "graph")])
    typer.echo(json.dumps(summary, indent=2, default=lambda x: None if isinstance(x, float) and not math.isfinite(x) else x))
