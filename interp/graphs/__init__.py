"""Attribution graphs: trace a prediction through transcoder features (Circuit Tracing, 2025).

```python
from interp import graphs
g = graphs.attribute(ckpt_dir, transcoders_dir, "To be or not to", target=None)
g.completeness(), g.replacement()            # floats in [0, 1]
g.prune(node_threshold=0.8, edge_threshold=0.98).to_json("graph.json")
```

Where each part lives: `replacement.py` (the local replacement model: frozen norms and
patterns, transcoders with error terms, optional SAE cuts; what may attach where), `linear.py`
(its batched transposed pass: the edges), `attribute.py` (`attribute`, node table, targets,
the one-backward-per-node reference), `graph.py` (`AttributionGraph`, `Node`, save / load),
`prune.py` (influence, pruning, completeness and replacement scores), `export.py` (the JSON
circuit-tracer's front end reads), `cli.py` (`interp graph`).
"""

from __future__ import annotations

from .attribute import attribute, naive_rows, prepare
from .graph import AttributionGraph, Node, load
from .replacement import GraphError, Replacement, build, frozen, load_dictionaries

__all__ = ["attribute", "AttributionGraph", "Node", "GraphError", "load", "prepare", "naive_rows", "Replacement",
           "build", "frozen", "load_dictionaries"]
