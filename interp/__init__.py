"""Mechanistic-interpretability toolkit for small transformers you train yourself.

```python
import interp
model, tokenizer = interp.load("runs/vanilla_induction")   # a checkpoint or run dir
interp.save(model, "out/ckpt", tokenizer)
```

Attributes are imported lazily, so `import interp` stays cheap (the CLI starts fast).
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["save", "load"]

_FROM_CHECKPOINT = ("save", "load", "CheckpointError", "CheckpointManager")


def __getattr__(name: str) -> Any:
    if name in _FROM_CHECKPOINT:
        return getattr(importlib.import_module(".checkpoint", __name__), name)
    if not name.startswith("_"):
        try:
            return importlib.import_module(f".{name}", __name__)  # interp.tasks, interp.training, ...
        except ModuleNotFoundError as e:
            if e.name != f"{__name__}.{name}":
                raise
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_FROM_CHECKPOINT))
