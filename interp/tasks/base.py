"""What every task shares: `Example`, `Task`, padded batching, and `make_task`.

Conventions (every task follows them, tests check them):

- `Example.input_ids` is one whole sequence, `<bos> ... <eos>` for the synthetic tasks.
- `Example.labels` has the same length and is **unshifted** (HF style): `labels[t]` is the
  target the model's prediction at position `t - 1` is scored against; the model shifts inside
  (`HookedTransformer(..., labels=...)`). `-100` (`IGNORE_INDEX`) = not a target.
  `labels[t]` is either `input_ids[t]` or `-100`, nothing else.
- `Example.segments` tags every token: 0 = prompt, 1 = step (scratchpad / chain of thought,
  `<bot>`..`<eot>` inclusive), 2 = answer (the answer tokens and the closing `<eos>`).
  Padding gets -1 in a `Batch`. Prompt tokens are never targets; pads never are.
- `Example.text == tokenizer.decode(input_ids)` (special tokens written out).
- Splits ("train", "val", "test") are deterministic functions of the task config (seed
  included) and never share an example (by content for the synthetic tasks, by corpus range
  for text).
"""

from __future__ import annotations

import dataclasses
import inspect
import random
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional, Sequence, Union

import torch

from ..tokenizers import Tokenizer

__all__ = [
    "SEGMENT_NAMES",
    "PROMPT",
    "STEP",
    "ANSWER",
    "PAD_SEGMENT",
    "IGNORE_INDEX",
    "SPLITS",
    "Example",
    "Batch",
    "Task",
    "TaskConfigError",
    "collate",
    "batches",
    "make_task",
    "TASKS",
]

SEGMENT_NAMES = ("prompt", "step", "answer")
PROMPT, STEP, ANSWER = 0, 1, 2
PAD_SEGMENT = -1
IGNORE_INDEX = -100
SPLITS = ("train", "val", "test")


class TaskConfigError(ValueError):
    """A task option holds a value the task cannot be built from."""


@dataclass
class Example:
    input_ids: list[int]  # includes <bos> ... <eos>
    labels: list[int]  # same length, unshifted (HF style), -100 = not a target
    segments: list[int]  # same length, 0 prompt / 1 step / 2 answer
    text: str  # tokenizer.decode(input_ids) with special tokens written out
    meta: dict = field(default_factory=dict)  # task facts (operands, result, ...) for analyses

    def __post_init__(self) -> None:
        n = len(self.input_ids)
        if len(self.labels) != n or len(self.segments) != n:
            raise ValueError(
                f"Example lengths differ: input_ids {n}, labels {len(self.labels)}, segments {len(self.segments)}"
            )

    def __len__(self) -> int:
        return len(self.input_ids)

    def positions(self, segment: Union[int, str]) -> list[int]:
        """Indices of the tokens of one segment ('prompt' / 'step' / 'answer' or 0/1/2)."""
        seg = SEGMENT_NAMES.index(segment) if isinstance(segment, str) else int(segment)
        return [i for i, s in enumerate(self.segments) if s == seg]


def build_example(
    tokenizer: Tokenizer,
    pieces: Sequence[tuple[Union[str, Sequence[int]], int, bool]],
    meta: Optional[dict] = None,
) -> Example:
    """Concatenate `(text or ids, segment, trained)` pieces into an Example: trained pieces
    get `labels = ids`, the others -100."""
    ids: list[int] = []
    labels: list[int] = []
    segments: list[int] = []
    for piece, seg, trained in pieces:
        p = tokenizer.encode(piece) if isinstance(piece, str) else [int(i) for i in piece]
        if trained and seg == PROMPT:
            raise ValueError("prompt tokens are never targets")
        ids.extend(p)
        labels.extend(p if trained else [IGNORE_INDEX] * len(p))
        segments.extend([seg] * len(p))
    return Example(ids, labels, segments, tokenizer.decode(ids), dict(meta or {}))


# ---------------------------------------------------------------------- batches
@dataclass
class Batch:
    input_ids: torch.Tensor  # (B, T) long, right-padded with pad_id
    attention_mask: torch.Tensor  # (B, T) bool, True = real token
    labels: torch.Tensor  # (B, T) long, -100 on pads and non-targets (unshifted)
    segments: torch.Tensor  # (B, T) long, -1 on pads
    n_tokens: int  # real (non-pad) tokens in the batch
    n_truncated: int = 0  # examples cut to max_len
    n_targets: int = 0  # labels != -100 (the model scores labels[:, 1:], so label 0 never counts)

    def to(self, device: Union[str, torch.device], non_blocking: bool = False) -> "Batch":
        return dataclasses.replace(
            self,
            **{
                k: getattr(self, k).to(device, non_blocking=non_blocking)
                for k in ("input_ids", "attention_mask", "labels", "segments")
            },
        )

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.input_ids.shape)  # type: ignore[return-value]


def collate(
    examples: Sequence[Example],
    pad_id: int,
    max_len: Optional[int] = None,
    *,
    warn: bool = True,
) -> Batch:
    """Right-pad `examples` into a `Batch`. Examples longer than `max_len` are cut to their
    first `max_len` tokens; the count is returned in `n_truncated` and warned about."""
    if not examples:
        raise ValueError("collate needs at least one example")
    if pad_id is None or int(pad_id) < 0:
        raise ValueError(f"collate needs a pad id >= 0, got {pad_id!r}")
    if max_len is not None and max_len <= 0:
        raise ValueError(f"max_len must be positive, got {max_len}")
    lengths = [len(e.input_ids) for e in examples]
    n_truncated = 0
    dropped = 0
    if max_len is not None:
        over = [n for n in lengths if n > max_len]
        n_truncated = len(over)
        dropped = sum(n - max_len for n in over)
        lengths = [min(n, max_len) for n in lengths]
    width = max(lengths)
    B = len(examples)
    input_ids = torch.full((B, width), int(pad_id), dtype=torch.long)
    labels = torch.full((B, width), IGNORE_INDEX, dtype=torch.long)
    segments = torch.full((B, width), PAD_SEGMENT, dtype=torch.long)
    attention_mask = torch.zeros((B, width), dtype=torch.bool)
    for b, (ex, n) in enumerate(zip(examples, lengths)):
        input_ids[b, :n] = torch.tensor(ex.input_ids[:n], dtype=torch.long)
        labels[b, :n] = torch.tensor(ex.labels[:n], dtype=torch.long)
        segments[b, :n] = torch.tensor(ex.segments[:n], dtype=torch.long)
        attention_mask[b, :n] = True
    if n_truncated and warn:
        warnings.warn(
            f"collate: truncated {n_truncated} of {B} examples to max_len={max_len} "
            f"(longest {max(len(e.input_ids) for e in examples)}; {dropped} tokens dropped)",
            stacklevel=2,
        )
    return Batch(
        input_ids=input_ids,
        attention_mask=attention_mask,
        labels=labels,
        segments=segments,
        n_tokens=int(sum(lengths)),
        n_truncated=n_truncated,
        n_targets=int((labels != IGNORE_INDEX).sum()),
    )


def batches(
    task: Union["Task", Sequence[Example]],
    split: Optional[str] = "train",
    batch_size: int = 32,
    *,
    shuffle: bool,
    seed: int = 0,
    max_len: Optional[int] = None,
    epochs: Optional[int] = None,
    drop_last: bool = False,
    pad_id: Optional[int] = None,
) -> Iterator[Batch]:
    """Padded batches of one split, deterministic given `seed`.

    `epochs=None` cycles **forever** (pair it with a step count: `zip(range(steps), ...)`);
    `epochs=1` is one pass (what evaluation wants). With `shuffle`, epoch `e` uses the order
    `random.Random(seed * 1_000_003 + e).shuffle`. The last partial batch is kept unless
    `drop_last`. Truncation to `max_len` is warned about once, up front, with the counts for
    the whole split (`Batch.n_truncated` still counts per batch).
    `task` may also be a plain sequence of Examples (then `pad_id` is required)."""
    if isinstance(task, Task):
        data = task.split(split or "train")
        pad = task.tokenizer.pad_token_id if pad_id is None else pad_id
        where = f"{task.name}/{split}"
    else:
        data, pad, where = task, pad_id, "examples"
    if pad is None:
        raise ValueError(f"batches({where}): the tokenizer has no <pad>; pass pad_id=")
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    n = len(data)
    if n == 0:
        raise ValueError(f"batches({where}): the split is empty")
    if drop_last and n < batch_size:
        raise ValueError(f"batches({where}): {n} examples < batch_size {batch_size} with drop_last")
    if max_len is not None:
        lengths = [len(data[i].input_ids) for i in range(n)] if not isinstance(task, Task) else task.lengths(split)
        over = [L for L in lengths if L > max_len]
        if over:
            warnings.warn(
                f"batches({where}): {len(over)} of {n} examples are longer than max_len={max_len} "
                f"(longest {max(over)}) and will be truncated",
                stacklevel=2,
            )
    epoch = 0
    while epochs is None or epoch < epochs:
        order = list(range(n))
        if shuffle:
            random.Random(seed * 1_000_003 + epoch).shuffle(order)
        stop = n - n % batch_size if drop_last else n
        for start in range(0, stop, batch_size):
            idx = order[start : start + batch_size]
            yield collate([data[i] for i in idx], pad, max_len, warn=False)
        epoch += 1


# ---------------------------------------------------------------------- Task
class Task:
    """Base class: a tokenizer plus three deterministic, disjoint splits of Examples.

    Subclasses set `name`, `self.tokenizer`, call `super().__init__(**their kwargs)` (so
    `config()` can return them) and implement `_build_splits()`."""

    name: str = "task"
    tokenizer: Tokenizer

    def __init__(self, **config: Any):
        self._config = dict(config)
        self._splits: Optional[dict[str, Sequence[Example]]] = None
        self._lengths: dict[str, list[int]] = {}

    # --- subclass API
    def _build_splits(self) -> dict[str, Sequence[Example]]:  # pragma: no cover - abstract
        raise NotImplementedError

    # --- public API
    def config(self) -> dict:
        """`{"name": ..., **kwargs}`: JSON-able; `make_task(**task.config())` rebuilds the task."""
        return {"name": self.name, **self._config}

    def split(self, name: str) -> Sequence[Example]:
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; choose from {list(SPLITS)}")
        if self._splits is None:
            self._splits = self._build_splits()
        return self._splits[name]

    def lengths(self, split: str) -> list[int]:
        if split not in self._lengths:
            data = self.split(split)
            self._lengths[split] = [len(data[i].input_ids) for i in range(len(data))]
        return self._lengths[split]

    @property
    def n_train(self) -> int:
        return len(self.split("train"))

    @property
    def n_val(self) -> int:
        return len(self.split("val"))

    @property
    def n_test(self) -> int:
        return len(self.split("test"))

    @property
    def max_len(self) -> int:
        """Longest example (tokens) over all three splits: the `n_ctx` a model needs."""
        return max(max(self.lengths(s), default=0) for s in SPLITS)

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    def special_token_ids(self) -> dict[str, int]:
        return self.tokenizer.special_token_ids()

    def answer_spans(self, example: Example) -> tuple[list[int], list[int]]:
        """`(prompt_ids, target_ids)` for greedy exact-match accuracy: feed `prompt_ids`,
        greedily decode `len(target_ids)` tokens, compare. Default rule: the target is the run
        from the first to the last trained token (labels != -100), the prompt everything
        before it; so what is scored is exactly what the masking mode trains."""
        trained = [i for i, y in enumerate(example.labels) if y != IGNORE_INDEX]
        if not trained:
            raise ValueError(f"{self.name}: example has no target tokens: {example.text!r}")
        first, last = trained[0], trained[-1]
        if first == 0:
            raise ValueError(f"{self.name}: the first token is a target, there is no prompt")
        return list(example.input_ids[:first]), list(example.input_ids[first : last + 1])

    def batches(self, split: str, batch_size: int, **kwargs) -> Iterator[Batch]:
        return batches(self, split, batch_size, **kwargs)

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self._config.items())
        return f"{type(self).__name__}({opts})"


# ---------------------------------------------------------------------- helpers for tasks
def check_choice(task: str, option: str, value: Any, choices: Sequence[Any]) -> None:
    if value not in choices:
        raise TaskConfigError(f"{task}: {option}={value!r} is not one of {list(choices)}")


def check_int(task: str, option: str, value: Any, minimum: int = 0, optional: bool = False) -> None:
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise TaskConfigError(f"{task}: {option} must be an integer >= {minimum}, got {value!r}")


def draw_unique(
    task: str,
    sizes: Sequence[int],
    draw: Callable[[random.Random], Any],
    rng: random.Random,
    space: Optional[int] = None,
    enumerate_all: Optional[Callable[[], list]] = None,
    max_tries_factor: int = 50,
) -> list[list]:
    """Draw `sum(sizes)` distinct items (by `==`/hash) and cut them into consecutive groups
    of `sizes`. `draw(rng)` returns an item or None (rejected). When the request is a large
    share of a small space (`space`, `enumerate_all` given), enumerate everything instead and
    take a seeded permutation. Raises when there are not enough distinct items."""
    total = sum(sizes)
    items: list
    if enumerate_all is not None and space is not None and space <= 2_000_000 and total * 4 > space:
        pool = enumerate_all()
        if total > len(pool):
            raise TaskConfigError(
                f"{task}: asked for {total} distinct examples (train+val+test = {list(sizes)}) "
                f"but only {len(pool)} exist; lower n_train/n_val/n_test or widen the task"
            )
        rng.shuffle(pool)
        items = pool[:total]
    else:
        seen: set = set()
        items = []
        tries = 0
        limit = max_tries_factor * total + 1000
        while len(items) < total:
            tries += 1
            if tries > limit:
                raise TaskConfigError(
                    f"{task}: found only {len(items)} distinct examples of {total} requested after "
                    f"{tries - 1} draws; lower n_train/n_val/n_test or widen the task"
                )
            item = draw(rng)
            if item is None or item in seen:
                continue
            seen.add(item)
            items.append(item)
    out, start = [], 0
    for n in sizes:
        out.append(items[start : start + n])
        start += n
    return out


# ---------------------------------------------------------------------- registry
TASKS: dict[str, str] = {
    "arithmetic": "interp.tasks.arithmetic:ArithmeticTask",
    "modular": "interp.tasks.modular:ModularTask",
    "induction": "interp.tasks.induction:InductionTask",
    "text": "interp.tasks.text:TextTask",
    "graph": "interp.tasks.graph:GraphTask",
    "rules": "interp.tasks.rules:RulesTask",
    "prosqa": "interp.tasks.prosqa:ProsQATask",
}


def task_class(name: str) -> type:
    if name not in TASKS:
        raise TaskConfigError(f"unknown task {name!r}; choose from {list(TASKS)}")
    import importlib

    module, cls = TASKS[name].split(":")
    return getattr(importlib.import_module(module), cls)


def make_task(name: str, **kwargs: Any) -> Task:
    """Build a task by name from plain (JSON/YAML) options, e.g.
    `make_task("arithmetic", digits=3, format="scratchpad", step_masking_mode="mask_steps")`.
    Unknown options raise naming the option and listing the valid ones."""
    cls = task_class(name)
    params = inspect.signature(cls.__init__).parameters
    allowed = [p for p in params if p != "self" and params[p].kind is not inspect.Parameter.VAR_KEYWORD]
    unknown = [k for k in kwargs if k not in allowed]
    if unknown:
        raise TaskConfigError(f"task {name!r} has no option(s) {unknown}; valid options: {allowed}")
    return cls(**kwargs)
