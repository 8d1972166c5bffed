"""Training sparse dictionaries (SAEs, transcoders) on a checkpoint's activations, at GPU speed.

```bash
interp features train --config configs/features/shakespeare_vanilla.yaml --set train.tokens=2e6
interp features train --resume runs/features/shakespeare_vanilla       # continue from its `last`
torchrun --nproc-per-node 4 -m interp.cli features train --config ...  # data- or dictionary-parallel
```
```python
from interp import features
sae = features.train("data/checkpoints/shakespeare_vanilla", hook="blocks.0.hook_resid_post",
                     arch="topk", d_sae=512, k=16, tokens=200_000, device="cpu")
```

Where each part lives:

* `config.py`: the YAML schema (`checkpoint`, `data`, `train`, `defaults`, `dictionaries`),
  `--set` overrides, validation with errors that name the key.
* `activations.py`: the token stream, the model forward with hooks (stopped after the last
  block needed), the shuffled on-device activation buffer.
* `trainer.py`: the step of every dictionary (compiled, one CUDA graph), metrics.jsonl,
  checkpoints and exact resume.
* `distributed.py`: torchrun: the token stream split over processes, DDP or one dictionary
  per process.
"""

from __future__ import annotations

from typing import Any, Optional

from .config import DEFAULT_DATA, DEFAULT_TRAIN, FeaturesConfigError, dictionary_fields, load_config
from .trainer import FeaturesTrainer, run

__all__ = ["train", "run", "load_config", "FeaturesConfigError", "FeaturesTrainer", "DEFAULT_TRAIN", "DEFAULT_DATA"]


def train(checkpoint, hook: str, *, arch: str = "topk", d_sae: Optional[int] = None, k: Optional[int] = None,
          tokens: int = 1_000_000, device: str = "auto", out_dir=None, name: str = "dictionary", **options: Any):
    """Train one dictionary on `hook` of `checkpoint`'s activations and return it (a
    `SparseDictionary`).

    `options` are any `train` or `data` key of a config (`batch_tokens`, `lr`, `seed`,
    `buffer_tokens`, `batch_size`, `progress`, ...) or any `DictionaryConfig` field
    (`out_hook_name` for a transcoder, `aux_k`, `normalize`, `expansion` instead of `d_sae`,
    ...). With `out_dir` the run is written there (checkpoints, metrics.jsonl, the dictionary
    in SAELens layout under `out_dir/name`); without it nothing is written.
    """
    spec: dict[str, Any] = {"hook_name": hook, "arch": arch}
    if d_sae is not None:
        spec["d_sae"] = d_sae
    if k is not None:
        spec["k"] = k
    train_cfg: dict[str, Any] = {"tokens": tokens, "device": device, "out_dir": out_dir, "progress": False}
    data_cfg: dict[str, Any] = {}
    dict_keys = dictionary_fields() | {"expansion", "lr"}
    for key, value in options.items():
        if key in DEFAULT_TRAIN:
            train_cfg[key] = value
        elif key in DEFAULT_DATA:
            data_cfg[key] = value
        elif key in dict_keys:
            spec[key] = value
        else:
            raise FeaturesConfigError(f"features.train: unknown option {key!r}; options are train keys "
                                      f"{sorted(DEFAULT_TRAIN)}, data keys {sorted(DEFAULT_DATA)} or dictionary "
                                      f"fields {sorted(dict_keys)}")
    config = {"name": name, "checkpoint": str(checkpoint), "train": train_cfg, "data": data_cfg,
              "dictionaries": {name: spec}}
    dictionaries, _ = run(config, persist=out_dir is not None)
    return dictionaries[name]
