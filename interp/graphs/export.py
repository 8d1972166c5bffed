"""An attribution graph as the JSON circuit-tracer's front end reads.

The schema is circuit-tracer's `frontend/graph_models.py` (pydantic `Model`: `metadata`,
`qParams`, `nodes`, `links`), which its `create_graph_files` writes and the attribution-graphs
front end (`attribution_graph/util-cg.js`, `formatData`) reads: `metadata.prompt_tokens`,
`metadata.scan`, `metadata.slug`; per node `node_id`, `jsNodeId`, `feature`, `layer` (a string;
"E" for tokens), `ctx_idx`, `feature_type` ("cross layer transcoder", "mlp reconstruction error",
"embedding", "logit"), `clerp` (a logit's reads `Output "tok" (p=0.123)`), `token_prob`,
`is_target_logit`; per link `source`, `target`, `weight`. The tests validate our documents
against a fixture of those keys and types written from that source
(`tests/data/circuit_tracer_graph_schema.json`).

We add keys the front end ignores: `stream` ("resid" / "xt" / "xe"), `latent`, `dictionary`,
`hook`, `pos`, `kind`, and `metadata.interp` (model identity, dictionaries, pruning, scores).
Feature types: transcoder features are "cross layer transcoder" (the front end draws only that
type as a feature), SAE features the same with `dictionary` telling them apart.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Union

__all__ = ["to_json", "FEATURE_TYPES"]

FEATURE_TYPES = {"feature": "cross layer transcoder", "error": "mlp reconstruction error",
                 "embedding": "embedding", "logit": "logit"}

def _node(n, n_layers: int, dictionaries: list[dict]) -> dict:
    layer = "E" if n.kind == "embedding" else str(n.layer if n.kind != "logit" else n_layers + 1)
    clerp = ""
    if n.kind == "logit":
        clerp = f'Output "{n.token}" (p={n.prob:.3f})'
    elif n.kind == "feature" and n.dictionary is not None:
        clerp = f"{dictionaries[n.dictionary]['name']} #{n.latent}"
    d = dict(node_id=n.id, feature=int(n.feature), layer=layer, ctx_idx=int(n.pos),
             feature_type=FEATURE_TYPES[n.kind], token_prob=float(n.prob or 0.0), is_target_logit=bool(n.is_target),
             run_idx=0, reverse_ctx_idx=0, jsNodeId=f"{layer}_{n.feature}-{n.pos}", clerp=clerp,
             influence=n.influence, activation=float(n.activation),
             # ours (the front end ignores them)
             kind=n.kind, pos=int(n.pos), stream=n.stream, latent=n.latent, dictionary=n.dictionary,
             probe_location_idx=0 if n.dictionary is None else int(dictionaries[n.dictionary].get("slot", 0)))
    if n.dictionary is not None:
        d["hook"] = dictionaries[n.dictionary]["write"]
    return d


def to_json(graph, path: Union[str, Path, None] = None, slug: Optional[str] = None, max_links: int = 500_000) -> dict:
    """The front end's document for `graph` (pruned or not); written to `path` when given."""
    links = graph.edges()
    if len(links) > max_links:
        raise ValueError(f"the graph has {len(links)} edges (max_links={max_links}); prune it first "
                         "(graph.prune(node_threshold=0.8, edge_threshold=0.98)) or raise max_links")
    n_layers = int(graph.model.get("n_layers", 0))
    names = [d["name"] for d in graph.dictionaries]
    scan = graph.model.get("checkpoint_name") or graph.model.get("name") or "interp"
    replacement, completeness = graph.scores()
    doc = dict(
        metadata=dict(
            slug=slug or "graph", scan=str(scan), transcoder_list=names, prompt_tokens=list(graph.token_strs),
            prompt=graph.prompt, node_threshold=(graph.pruning or {}).get("node_threshold"), schema_version=1,
            interp=dict(model=graph.model, dictionaries=graph.dictionaries, pruning=graph.pruning,
                        replacement=replacement, completeness=completeness)),
        qParams=dict(pinnedIds=[], supernodes=[], linkType="both", clickedId="", sg_pos=""),
        nodes=[_node(n, n_layers, graph.dictionaries) for n in graph.nodes],
        links=links,
    )
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(doc))
    return doc
