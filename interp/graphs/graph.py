"""`AttributionGraph`: the nodes and direct-effect edges of one prompt's replacement model.

```python
g = graphs.attribute("data/checkpoints/shakespeare_vanilla", "data/dictionaries/shakespeare_vanilla", "To be or not to")
g.nodes[0]                        # Node(kind="feature", layer=0, pos=3, feature=117, activation=2.1, ...)
g.adjacency                       # (n, n): A[t, s] = direct effect of node s on node t
g.completeness(), g.replacement() # floats in [0, 1]
p = g.prune(node_threshold=0.8, edge_threshold=0.98)
p.inputs("3_117_9"), p.outputs("3_117_9")   # the strongest edges into / out of a node
p.to_json("graph.json")           # circuit-tracer's front-end schema (see export.py)
g.save("graph_dir"); graphs.load("graph_dir")
```

Node order (as circuit-tracer): feature nodes (dictionary by dictionary in forward order, then
position, then latent), error nodes (dictionary, position), token nodes (position), logit
nodes (descending probability). A feature's or logit's value is the sum of its row plus its
`constant` (what the biases contribute): exactly, because the replacement is linear.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Optional, Union

import torch
from jaxtyping import Float
from torch import Tensor

from . import prune as _prune

__all__ = ["Node", "AttributionGraph", "load"]

KIND_CODE = {k: i for i, k in enumerate(_prune.KINDS)}
FORMAT = "interp-attribution-graph"
FORMAT_VERSION = 1


@dataclass
class Node:
    """One node. `id` follows circuit-tracer (feature "{layer}_{feature}_{pos}", token
    "E_{token_id}_{pos}", logit "{n_layers + 1}_{token_id}_{pos}"; errors "err_{layer}_{pos}").

    kind: "feature" | "error" | "embedding" | "logit"
    layer: the block of its dictionary (feature, error); -1 for tokens; n_layers for logits
    pos: position in the prompt (logits: the position they predict from)
    feature: feature: its id in the layer (latent + the widths of earlier dictionaries of the same
        layer, so ids stay unique); token / logit: the token id; error: -1
    latent: the dictionary's latent index (features), else None
    dictionary: index into `AttributionGraph.dictionaries` (features, errors), else None
    stream: which stream the node writes ("resid"; "xt" / "xe" in factored models)
    activation: feature: its activation; error: the error vector's norm; token: the embedding's
        norm; logit: the logit minus the mean logit (the value the graph explains)
    constant: the biases' share of the value (features, logits; 0 elsewhere)
    token: the token's text (tokens, logits)
    prob: the logit's probability (logits); is_target: the first (most probable) target logit
    influence: share of the logit influence (set by `prune`), cumulative: rank as cumulative share
    """

    id: str
    kind: str
    layer: int
    pos: int
    feature: int
    latent: Optional[int] = None
    dictionary: Optional[int] = None
    stream: str = "resid"
    activation: float = 0.0
    constant: float = 0.0
    token: Optional[str] = None
    prob: Optional[float] = None
    is_target: bool = False
    influence: Optional[float] = None
    cumulative: Optional[float] = None


@dataclass
class AttributionGraph:
    """Nodes, adjacency (rows = targets, columns = sources) and the prompt's metadata.

    tokens / token_strs: the prompt; prompt: its text; dictionaries: one dict per dictionary
    (index, name, kind, layer, stream, hook_name, out_hook_name, arch, d_sae, path, ...);
    model: the model's identity (config fields, checkpoint). A pruned graph (`prune`) keeps
    the kept nodes, their edges that survived, the thresholds in `pruning`, and `full` (the
    unpruned graph) for its scores.
    """

    nodes: list[Node]
    adjacency: Float[Tensor, "n n"]
    tokens: list[int]
    token_strs: list[str]
    prompt: str
    dictionaries: list[dict]
    model: dict
    pruning: Optional[dict] = None
    full: Optional["AttributionGraph"] = field(default=None, repr=False)
    _index: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        self._index = {n.id: i for i, n in enumerate(self.nodes)}
        if len(self._index) != len(self.nodes):
            raise ValueError("node ids must be unique")  # pragma: no cover - attribute builds them unique

    # ------------------------------------------------------------------ lookups
    def __len__(self) -> int:
        return len(self.nodes)

    def index(self, node: Union[str, int, Node]) -> int:
        if isinstance(node, Node):
            node = node.id
        if isinstance(node, int):
            return node
        if node not in self._index:
            raise KeyError(f"no node {node!r} in this graph")
        return self._index[node]

    def node(self, node: Union[str, int]) -> Node:
        return self.nodes[self.index(node)]

    def of_kind(self, kind: str) -> list[int]:
        return [i for i, n in enumerate(self.nodes) if n.kind == kind]

    @property
    def kinds(self) -> Tensor:
        return torch.tensor([KIND_CODE[n.kind] for n in self.nodes])

    @property
    def logit_weights(self) -> Float[Tensor, "n"]:
        """Each target logit's probability (zero for other nodes): what influence is measured against."""
        return torch.tensor([n.prob if n.kind == "logit" else 0.0 for n in self.nodes], dtype=self.adjacency.dtype)

    @property
    def counts(self) -> dict[str, int]:
        out = {k: 0 for k in _prune.KINDS}
        for n in self.nodes:
            out[n.kind] += 1
        return out

    # ------------------------------------------------------------------ analysis
    def influence(self) -> Float[Tensor, "n"]:
        """Every node's influence on the target logits (circuit-tracer's definition)."""
        return _prune.influence(self.adjacency, self.logit_weights)

    def total_effect(self, target: Union[str, int, None] = None) -> Float[Tensor, "n"]:
        """Each node's signed effect on the target logits (probability-weighted; or on the one
        logit node `target`, unweighted) through every path of the graph, downstream features
        moving with their inputs: the sum over paths of the product of edge weights, each edge
        after the first divided by the activation of the feature it leaves (a feature passes
        on a change of its input one for one while it stays active). Zeroing a feature then
        moves the logit by about -total_effect: the linear prediction of an ablation."""
        A = self.adjacency.double()
        act = torch.tensor([n.activation if n.kind == "feature" else 0.0 for n in self.nodes], dtype=A.dtype)
        safe = torch.where(act != 0, act, torch.ones_like(act))
        J = torch.where(act[None, :] != 0, A / safe[None, :], torch.zeros_like(A))  # per unit of a feature source
        per_unit = self.logit_weights.double()  # effect on the weighted logits of one unit of each node
        if target is not None:
            per_unit = torch.zeros_like(per_unit)
            per_unit[self.index(target)] = 1.0
        cur = per_unit
        for _ in range(len(self.nodes)):
            cur = cur @ J
            if not bool(cur.any()):
                break
            per_unit = per_unit + cur
        return (per_unit @ A).float()

    def scores(self) -> tuple[float, float]:
        """(replacement, completeness). A pruned graph is scored on its unpruned graph with the
        pruned-away features counted as unexplained (like errors)."""
        if self.full is None:
            return _prune.scores(self.adjacency, self.logit_weights, self.kinds)
        full = self.full
        kept = torch.zeros(len(full), dtype=torch.bool)
        kept[[full.index(n.id) for n in self.nodes]] = True
        kinds = full.kinds
        unexplained = (kinds == 1) | ((kinds == 0) & ~kept)
        return _prune.scores(full.adjacency, full.logit_weights, kinds, unexplained)

    def completeness(self) -> float:
        return self.scores()[1]

    def replacement(self) -> float:
        return self.scores()[0]

    def prune(self, node_threshold: float = 0.8, edge_threshold: float = 0.98) -> "AttributionGraph":
        """A new graph with the nodes holding `node_threshold` of the logit influence and the
        edges holding `edge_threshold` of what remains (see `prune.py`); each kept node gets its
        `influence` and `cumulative` share. Pruning a pruned graph prunes its unpruned graph."""
        base = self.full or self
        res = _prune.prune(base.adjacency, base.logit_weights, base.kinds, node_threshold, edge_threshold)
        keep = res.kept
        total = float(res.node_influence.sum()) or 1.0
        nodes = []
        for i in keep.tolist():
            n = Node(**{f.name: getattr(base.nodes[i], f.name) for f in fields(Node)})
            n.influence = float(res.node_influence[i]) / total
            n.cumulative = float(res.cumulative[i])
            nodes.append(n)
        A = base.adjacency[keep][:, keep] * res.edge_mask
        return AttributionGraph(nodes=nodes, adjacency=A, tokens=base.tokens, token_strs=base.token_strs,
                                prompt=base.prompt, dictionaries=base.dictionaries, model=base.model,
                                pruning=dict(node_threshold=node_threshold, edge_threshold=edge_threshold,
                                             n_nodes_before=len(base), n_nodes_after=len(nodes)),
                                full=base)

    # ------------------------------------------------------------------ edges
    def edges(self, min_abs: float = 0.0) -> list[dict]:
        """Every nonzero edge (|weight| > min_abs) as {"source", "target", "weight"} (node ids)."""
        A = self.adjacency
        t, s = ((A.abs() > min_abs) & (A != 0)).nonzero(as_tuple=True)
        w = A[t, s].tolist()
        return [dict(source=self.nodes[j].id, target=self.nodes[i].id, weight=x)
                for i, j, x in zip(t.tolist(), s.tolist(), w)]

    def inputs(self, node: Union[str, int, Node], k: int = 10) -> list[tuple[str, float]]:
        """The k strongest edges into `node`: (source id, weight), by |weight|."""
        return self._top(self.adjacency[self.index(node)], k)

    def outputs(self, node: Union[str, int, Node], k: int = 10) -> list[tuple[str, float]]:
        """The k strongest edges out of `node`: (target id, weight), by |weight|."""
        return self._top(self.adjacency[:, self.index(node)], k)

    def _top(self, v: Tensor, k: int) -> list[tuple[str, float]]:
        order = v.abs().argsort(descending=True)[:k]
        return [(self.nodes[i].id, float(v[i])) for i in order.tolist() if v[i] != 0]

    # ------------------------------------------------------------------ export / io
    def to_json(self, path: Union[str, Path, None] = None, slug: Optional[str] = None, max_links: int = 500_000) -> dict:
        """The graph in the JSON schema circuit-tracer's front end reads (`export.py`); written
        to `path` when given."""
        from .export import to_json

        return to_json(self, path, slug=slug, max_links=max_links)

    def save(self, path: Union[str, Path]) -> Path:
        """`path/graph.json` (nodes, metadata) + `path/adjacency.safetensors`; no pickle."""
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        meta = dict(format=FORMAT, format_version=FORMAT_VERSION, nodes=[asdict(n) for n in self.nodes],
                    tokens=self.tokens, token_strs=self.token_strs, prompt=self.prompt,
                    dictionaries=self.dictionaries, model=_jsonable(self.model), pruning=self.pruning)
        save_file({"adjacency": self.adjacency.contiguous().float()}, str(path / "adjacency.safetensors"))
        (path / "graph.json").write_text(json.dumps(meta, indent=1))
        if self.full is not None:
            self.full.save(path / "full")
        return path

    def __repr__(self) -> str:
        c = self.counts
        pr = f", pruned {self.pruning['node_threshold']}/{self.pruning['edge_threshold']}" if self.pruning else ""
        return (f"AttributionGraph({c['feature']} features, {c['error']} errors, {c['embedding']} tokens, "
                f"{c['logit']} logits{pr}; prompt {self.prompt[:40]!r})")


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return str(obj)


def load(path: Union[str, Path]) -> AttributionGraph:
    """A graph written by `AttributionGraph.save` (errors name the file and the fault)."""
    from safetensors.torch import load_file

    from .attach import GraphError

    path = Path(path)
    meta_file, adj_file = path / "graph.json", path / "adjacency.safetensors"
    for f in (meta_file, adj_file):
        if not f.exists():
            raise GraphError(f"{f}: missing (a saved graph is a folder with graph.json and adjacency.safetensors)")
    try:
        meta = json.loads(meta_file.read_text())
    except json.JSONDecodeError as e:
        raise GraphError(f"{meta_file}: not valid JSON ({e})") from None
    if meta.get("format") != FORMAT:
        raise GraphError(f"{meta_file}: not an attribution graph (format={meta.get('format')!r})")
    try:
        A = load_file(str(adj_file))["adjacency"]
    except Exception as e:  # safetensors raises its own error types
        raise GraphError(f"{adj_file}: cannot read ({e})") from None
    nodes = [Node(**n) for n in meta["nodes"]]
    if A.shape != (len(nodes), len(nodes)):
        raise GraphError(f"{adj_file}: adjacency {tuple(A.shape)} does not match {len(nodes)} nodes")
    full = load(path / "full") if (path / "full").exists() else None
    return AttributionGraph(nodes=nodes, adjacency=A, tokens=meta["tokens"], token_strs=meta["token_strs"],
                            prompt=meta["prompt"], dictionaries=meta["dictionaries"], model=meta["model"],
                            pruning=meta.get("pruning"), full=full)
