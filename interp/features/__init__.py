"""Features: sparse dictionaries (SAEs and transcoders) on a model's hooks.

```python
from interp import features
sae = features.make(dict(arch="topk", d_in=192, d_sae=1536, k=16, hook_name="blocks.1.hook_resid_post"))
z = sae.encode(acts); x_hat = sae.decode(z)             # dense latents / reconstruction
sae.save("out/sae"); sae2 = features.load("out/sae")    # SAELens's layout: cfg.json + sae_weights.safetensors
with features.splice(model, sae):                       # the model now runs on the reconstruction
    logits = model(tokens)
stats = features.evaluate(sae, "data/checkpoints/shakespeare_vanilla", tokens=50_000)
```

Where each part lives: `dictionary.py` (`SparseDictionary`, `DictionaryConfig`, the registry),
one file per architecture (`relu`, `topk`, `batchtopk`, `jumprelu`, `matryoshka`), `io.py`
(SAELens's on-disk format), `splice.py` (dictionaries inside a model), `evaluate.py`
(L0, FVE, CE loss recovered, ...), `data.py` (token batches of a checkpoint's own task),
`training/` (the trainer), `cli.py` (`interp features ...`).

`train` is imported on first use (the trainer is the heavy part); `features.splice` and
`features.evaluate` are the functions (their modules are `interp.features.splice` / `.evaluate`).
"""

from __future__ import annotations

import importlib
from typing import Any

from .data import TokenBatch, token_batches
from .dictionary import (
    DictionaryConfig, DictionaryError, SparseDictionary, TrainOutput, architectures, make, register, sparse_decode,
)
from .evaluate import evaluate
from .io import load, save
from .splice import hook_widths, model_identity, splice

ARCHITECTURES = architectures()

__all__ = [
    "ARCHITECTURES", "DictionaryConfig", "DictionaryError", "SparseDictionary", "TokenBatch", "TrainOutput",
    "evaluate", "hook_widths", "load", "make", "model_identity", "register", "save", "sparse_decode", "splice",
    "token_batches", "train",
]


def __getattr__(name: str) -> Any:
    if name == "train":  # the trainer (interp/features/training)
        return importlib.import_module(".training", __name__).train
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
