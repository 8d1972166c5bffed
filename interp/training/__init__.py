"""Training from a YAML config: task -> tensors on the device -> model -> AdamW steps ->
evaluation, progress measures and checkpoints.

```bash
interp train --config configs/vanilla_induction.yaml --set train.steps=500 --set model.d_model=128
interp train --resume runs/vanilla_induction            # continue from its `last` checkpoint
interp data prepare --config configs/vanilla_shakespeare.yaml --out data/shards/shakespeare
```
```python
from interp.training import train, evaluate
ckpt = train("configs/vanilla_induction.yaml", ["train.steps=200"])   # -> final checkpoint dir
```

Where each part lives:

* `config.py`: the run config (YAML, `--set` overrides, defaults in `DEFAULT_TRAIN`,
  validation), building the task and the model config, AdamW parameter groups, the schedule.
* `data.py`: the data path: splits materialised once as device tensors, the deterministic
  step sampler, full-batch training, token shards on disk with a background loader.
* `loop.py`: `train` / `Trainer`: the step (eager or a captured CUDA graph), logging,
  checkpoints, resume, interrupts.
* `evaluate.py`: on-device evaluation (loss, per-segment loss and accuracy, exact match).
* `progress.py`: progress measures (`train.metrics`) logged at every eval.
"""

from .config import (
    DEFAULT_TRAIN,
    TASK_REGISTRY,
    Curriculum,
    TrainConfigError,
    apply_overrides,
    autocast_dtype,
    build_model_config,
    build_task,
    load_run_config,
    lr_at,
    param_groups,
    read_yaml,
    register_task,
    resolve_device,
)
from .data import ExampleTensors, StepSampler, TrainData, materialise
from .evaluate import EvalData, evaluate, evaluate_checkpoint, exact_match
from .loop import TRAINERS, Trainer, register_trainer, train
from .progress import MEASURES, register as register_measure

__all__ = [
    "DEFAULT_TRAIN", "TASK_REGISTRY", "Curriculum", "TrainConfigError", "apply_overrides", "autocast_dtype",
    "build_model_config", "build_task", "load_run_config", "lr_at", "param_groups", "read_yaml", "register_task",
    "resolve_device", "ExampleTensors", "StepSampler", "TrainData", "materialise", "EvalData",
    "evaluate", "evaluate_checkpoint", "exact_match", "Trainer", "train", "TRAINERS", "register_trainer", "MEASURES", "register_measure",
]
