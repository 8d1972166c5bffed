"""Attribution graphs: trace a prediction through transcoder features (Circuit Tracing, 2025).

```python
from interp import graphs
g = graphs.attribute(ckpt_dir, transcoders_dir, "To be or not to", target=None)
g.completeness(), g.replacement()            # floats in [0, 1]
g.prune(node_threshold=0.8, edge_threshold=0.98).to_json("graph.json")
```

Where each part lives: `attach.py` (which dictionaries may attach where; loading them),
`replacement.py` (the local replacement model: frozen norms and patterns, transcoders with
error terms, optional SAE cuts), `linear.py` (its batched transposed pass: the edges), `tracing.py` (`attribute`, node table, targets,
constants, the one-backward-per-node reference), `graph.py` (`AttributionGraph`, `Node`, save /
load), `prune.py` (influence, pruning, completeness and replacement scores), `export.py` (the
JSON circuit-tracer's front end reads), `validate.py` (influence against ablations in the real
model), `cli.py` (`interp graph`).

Names are imported on first use, so `interp graph --help` starts without torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_NAMES = {
    "attribute": "tracing", "prepare": "tracing", "constants": "tracing", "naive_rows": "tracing",
    "Prepared": "tracing", "AttributionGraph": "graph", "Node": "graph", "load": "graph",
    "GraphError": "attach", "Replacement": "replacement", "build": "replacement", "frozen": "replacement",
    "load_dictionaries": "attach",
}

__all__ = sorted(_NAMES)


def __getattr__(name: str) -> Any:
    if name in _NAMES:
        return getattr(importlib.import_module(f".{_NAMES[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_NAMES))
