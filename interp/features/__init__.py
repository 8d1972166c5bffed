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
(SAELens's on-disk format), `splicing.py` (dictionaries inside a model), `evaluation.py`
(L0, FVE, CE loss recovered, ...), `measures.py` (token purity, AUC against a label, Fourier share:
what latents are about), `data.py` (token batches of a checkpoint's own task),
`training/` (the trainer), `dashboards/` (feature dashboards: top contexts, activation bins,
logit effects, on disk), `steering.py` (steer with / ablate a feature), `cli.py` (`interp features ...`).

Attributes are imported lazily, so `import interp.features` (and the CLI) stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "DictionaryConfig": "dictionary", "SparseDictionary": "dictionary", "TrainOutput": "dictionary",
    "DictionaryError": "dictionary", "make": "dictionary", "register": "dictionary", "sparse_decode": "dictionary",
    "save": "io", "load": "io",
    "splice": "splicing", "model_identity": "splicing", "hook_widths": "splicing",
    "evaluate": "evaluation",
    "token_batches": "data", "TokenBatch": "data",
    "latent_activations": "measures", "token_purity": "measures", "label_auc": "measures", "fourier_share": "measures",
    "train": "training",
    "dashboard": "dashboards", "open_dashboards": "dashboards", "DashboardStore": "dashboards",
    "LatentDashboard": "dashboards", "prompt_latents": "dashboards",
    "steer": "steering", "ablate": "steering", "Intervention": "steering", "SteeringError": "steering",
}

__all__ = sorted([*_WHERE, "ARCHITECTURES"])


def __getattr__(name: str) -> Any:
    if name == "ARCHITECTURES":
        return importlib.import_module(".dictionary", __name__).architectures()
    if name in _WHERE:
        value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
