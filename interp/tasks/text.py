"""Language modelling on a text file (default `data/tinyshakespeare.txt`), char-level or BPE.

Options: `path` (the corpus; relative paths are tried from the working directory, then
from the repository root), `tokenizer` (`char` | `bpe`), `seq_len` (128, tokens per example
including `<bos>`), `bpe_vocab_size` (512), `split_fractions` ([0.9, 0.05, 0.05]), `stride`
(None = `seq_len - 1`, i.e. back-to-back windows; smaller values overlap windows *within* a
split), `bos` (true), `max_chars` (None = the whole file; a prefix for quick runs),
`n_train` / `n_val` / `n_test` (None = every window of the split; a number takes a seeded
random subset, kept in corpus order), `seed` (0), `shards` (None; a directory written by
`interp data prepare`: the splits are read from its memory-mapped token shards and its
`tokenizer.json`, and `path`, `tokenizer`, `bpe_vocab_size`, `split_fractions`, `max_chars`
are ignored, since the shards were cut with them).

Splits are contiguous character ranges of the corpus, in order: train = the first 90%,
val the next 5%, test the last 5%. Each range is tokenized on its own and cut into windows
that stay inside it, so no token (and no window) is shared between splits.
The char vocabulary is every character of the whole corpus (so val/test never hit an
unknown character; only the alphabet is shared); the BPE merges are learned from the train
range only.

An example is `<bos>` + `seq_len - 1` corpus tokens. `<bos>` is the prompt (segment 0, not a
target); every corpus token is a target (segment 2, "answer"). Without `bos` the first token
plays the prompt. No `<eos>` (windows cut text mid-stream). `answer_spans` scores the last
token of the window given the rest (next-token accuracy).
"""

from __future__ import annotations

import random
from collections.abc import Sequence as SequenceABC
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

from ..tokenizers import Tokenizer, bpe_tokenizer, char_tokenizer, load_tokenizer
from .base import ANSWER, IGNORE_INDEX, PROMPT, SPLITS, Example, Task, TaskConfigError, check_choice, check_int

__all__ = ["TextTask", "DEFAULT_PATH", "resolve_path"]

DEFAULT_PATH = "data/tinyshakespeare.txt"
REPO_ROOT = Path(__file__).resolve().parents[2]


def resolve_shards(path: Union[str, Path]) -> Path:
    p = Path(path)
    if not p.is_dir() and not p.is_absolute() and (REPO_ROOT / p).is_dir():
        return REPO_ROOT / p
    return p


def resolve_path(path: Union[str, Path]) -> Path:
    p = Path(path)
    if p.is_file():
        return p
    alt = REPO_ROOT / p
    if not p.is_absolute() and alt.is_file():
        return alt
    raise FileNotFoundError(f"text corpus {str(path)!r} not found (looked in {Path.cwd()} and {REPO_ROOT})")


class _Windows(SequenceABC):
    """Examples made on access from one split's token ids (cheap to hold, cheap to index).
    `ids` is a list of ids, or a `ShardStream` over memory-mapped shards."""

    def __init__(self, task: "TextTask", ids, starts: Sequence[int], split: str):
        self.task, self.ids, self.starts, self.split = task, ids, starts, split

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        s = int(self.starts[i])
        w = self.task.window
        ids = self.ids[s : s + w] if isinstance(self.ids, list) else self.ids.gather(np.array([s]), w)[0].tolist()
        return self.task._example(ids, split=self.split, start=s)


class TextTask(Task):
    name = "text"

    def __init__(
        self,
        path: str = DEFAULT_PATH,
        tokenizer: str = "char",
        seq_len: int = 128,
        bpe_vocab_size: int = 512,
        split_fractions: Sequence[float] = (0.9, 0.05, 0.05),
        stride: Optional[int] = None,
        bos: bool = True,
        max_chars: Optional[int] = None,
        n_train: Optional[int] = None,
        n_val: Optional[int] = None,
        n_test: Optional[int] = None,
        seed: int = 0,
        shards: Optional[str] = None,
    ):
        t = self.name
        check_choice(t, "tokenizer", tokenizer, ("char", "bpe"))
        check_int(t, "seq_len", seq_len, 2 if bos else 1)
        check_int(t, "stride", stride, 1, optional=True)
        check_int(t, "max_chars", max_chars, 1, optional=True)
        for name, v in (("n_train", n_train), ("n_val", n_val), ("n_test", n_test)):
            check_int(t, name, v, 0, optional=True)
        check_int(t, "seed", seed, 0)
        fr = list(split_fractions)
        if len(fr) != 3 or any(not isinstance(f, (int, float)) or f < 0 for f in fr) or abs(sum(fr) - 1) > 1e-6:
            raise TaskConfigError(f"{t}: split_fractions must be 3 non-negative numbers summing to 1, got {fr}")
        super().__init__(
            path=str(path), tokenizer=tokenizer, seq_len=seq_len, bpe_vocab_size=bpe_vocab_size,
            split_fractions=fr, stride=stride, bos=bos, max_chars=max_chars,
            n_train=n_train, n_val=n_val, n_test=n_test, seed=seed, **({"shards": str(shards)} if shards else {}),
        )
        self.seq_len, self.bos = seq_len, bool(bos)
        self.window = seq_len - (1 if bos else 0)  # corpus tokens per example
        self.stride = stride or self.window
        self._sizes = {"train": n_train, "val": n_val, "test": n_test}
        self._seed = seed
        self._shards = None
        if shards:
            from ..training.data import ShardStream, read_shards

            meta = read_shards(resolve_shards(shards))
            self._shards = {k: ShardStream(v["arrays"]) for k, v in meta["splits"].items()}
            self.tokenizer = load_tokenizer(Path(resolve_shards(shards)) / meta["tokenizer"])
            missing = [s for s in SPLITS if s not in self._shards]
            if missing:
                raise TaskConfigError(f"{t}: shards {shards!r} have no split(s) {missing}")
            return
        text = resolve_path(path).read_text(encoding="utf-8")
        if max_chars is not None:
            text = text[:max_chars]
        n = len(text)
        c1 = int(n * fr[0])
        c2 = c1 + int(n * fr[1])
        self.char_ranges = {"train": (0, c1), "val": (c1, c2), "test": (c2, n)}
        self._text = text
        if tokenizer == "char":
            self.tokenizer: Tokenizer = char_tokenizer(text)
        else:
            self.tokenizer = bpe_tokenizer(text[:c1], vocab_size=bpe_vocab_size)

    def _example(self, ids: list[int], split: str = "", start: int = 0) -> Example:
        if self.bos:
            input_ids = [self.tokenizer.bos_token_id] + list(ids)
            labels = [IGNORE_INDEX] + list(ids)
        else:
            input_ids = list(ids)
            labels = [IGNORE_INDEX] + list(ids[1:])
        segments = [PROMPT] + [ANSWER] * (len(input_ids) - 1)
        return Example(input_ids, labels, segments, self.tokenizer.decode(input_ids), dict(split=split, start=start))

    def _split_ids(self, name: str):
        """The split's token stream: a list of ids, or a `ShardStream` for shards on disk."""
        if self._shards is not None:
            return self._shards[name]
        lo, hi = self.char_ranges[name]
        return self.tokenizer.encode(self._text[lo:hi])

    def _build_splits(self) -> dict[str, Sequence[Example]]:
        out = {}
        self._streams = {}
        for k, name in enumerate(SPLITS):
            ids = self._split_ids(name)
            if isinstance(ids, list):
                starts = list(range(0, len(ids) - self.window + 1, self.stride))
            else:
                starts = ids.window_starts(self.window, self.stride)
            want = self._sizes[name]
            if want is not None:
                if want > len(starts):
                    raise TaskConfigError(
                        f"{self.name}: n_{name}={want} but the {name} range has only {len(starts)} windows "
                        f"of {self.window} tokens"
                    )
                picked = sorted(random.Random(self._seed * 1_000_003 + k).sample(range(len(starts)), want))
                starts = [starts[i] for i in picked] if isinstance(starts, list) else starts[picked]
            out[name] = _Windows(self, ids, starts, name)
        return out

    def token_windows(self, split: str):
        """The split as a `interp.training.data.WindowTensors` (token stream + window starts) on
        the CPU: the trainer gathers batches from it on the device without building Examples."""
        import torch

        from ..training.data import WindowTensors

        windows = self.split(split)
        starts = torch.as_tensor(np.asarray(windows.starts, dtype=np.int64))
        stream = windows.ids if not isinstance(windows.ids, list) else torch.tensor(windows.ids, dtype=torch.long)
        return WindowTensors(stream, starts, self.window, self.tokenizer.bos_token_id if self.bos else None)

    def lengths(self, split: str) -> list[int]:
        return [self.seq_len] * len(self.split(split))

    @property
    def max_len(self) -> int:
        return self.seq_len

    def answer_spans(self, example: Example) -> tuple[list[int], list[int]]:
        """Next-token accuracy at the window's end: (all but the last token, [last token])."""
        return list(example.input_ids[:-1]), list(example.input_ids[-1:])
