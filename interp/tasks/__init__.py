"""Synthetic tasks and text data, one interface (see `interp.tasks.base`).

```python
from interp.tasks import make_task, batches
task = make_task("arithmetic", digits=3, format="scratchpad", step_masking_mode="mask_steps")
for batch in batches(task, "train", 64, shuffle=True, seed=0, epochs=1):
    loss = model(batch.input_ids, labels=batch.labels, attention_mask=batch.attention_mask, return_type="loss")
```

Tasks: `arithmetic` (`ArithmeticTask`), `modular` (`ModularTask`), `induction`
(`InductionTask`), `text` (`TextTask`); each module's docstring documents its format.
"""

from .base import (
    ANSWER,
    IGNORE_INDEX,
    PAD_SEGMENT,
    PROMPT,
    SEGMENT_NAMES,
    SPLITS,
    STEP,
    TASKS,
    Batch,
    Example,
    Task,
    TaskConfigError,
    batches,
    collate,
    make_task,
)
from .arithmetic import ArithmeticTask
from .induction import InductionTask
from .modular import ModularTask
from .text import TextTask

__all__ = [
    "ANSWER",
    "IGNORE_INDEX",
    "PAD_SEGMENT",
    "PROMPT",
    "SEGMENT_NAMES",
    "SPLITS",
    "STEP",
    "TASKS",
    "Batch",
    "Example",
    "Task",
    "TaskConfigError",
    "batches",
    "collate",
    "make_task",
    "ArithmeticTask",
    "ModularTask",
    "InductionTask",
    "TextTask",
]

