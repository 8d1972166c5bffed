"""Repeated random sequences: the setting where induction heads form (Olsson et al. 2022).

Options: `vocab` (32 symbols), `seq_len` (16, length of the random block), `min_seq_len`
(None: every block has `seq_len` symbols; else each block's length is drawn from
[min_seq_len, seq_len], so the distance to the earlier copy varies and a fixed positional
offset cannot solve the task: a genuine previous-token + induction circuit is needed), `repeats` (2),
`label_mode` (`second_half` | `all`), `unique` (true), `n_train` (5000), `n_val` / `n_test`
(500), `seed` (0).

Sequence (word-level tokenizer over symbol tokens `t0 .. t{vocab-1}`):

    <bos> x1 .. xn x1 .. xn <eos>       e.g. "<bos> t3 t17 t5 t3 t17 t5 <eos>"

The block `x1..xn` is drawn with `random.Random(seed)`; with `unique` (needs seq_len <= vocab)
its symbols are distinct (sampled without replacement), so every repeated token has exactly
one earlier occurrence to copy from; otherwise symbols are drawn with replacement. With
`repeats > 2` the block appears that many times.

Token ids: symbol `ti` is token i (0..vocab-1), then `<pad> <bos> <eos>`.

Labels / segments:
- `second_half` (default): `<bos>` and the first block are the prompt (not targets); every
  later copy and `<eos>` are the answer and are the targets (for `repeats=2`: the second half).
- `all`: every token after `<bos>` is a target (the first block is unpredictable, so the loss
  floor is higher); all of them are tagged answer, `<bos>` is the prompt.
`meta["block"]` holds the block and `meta["seq_len"]` its length, so the first copy spans
positions `1 .. seq_len`.

Splits are distinct sequences (no block appears in two splits).
"""

from __future__ import annotations

import itertools
import math
import random
from typing import Sequence

from ..tokenizers import word_tokenizer
from .base import ANSWER, PROMPT, Example, Task, TaskConfigError, build_example, check_choice, check_int, draw_unique

__all__ = ["InductionTask"]

LABEL_MODES = ("second_half", "all")


class InductionTask(Task):
    name = "induction"

    def __init__(
        self,
        vocab: int = 32,
        seq_len: int = 16,
        min_seq_len: int | None = None,
        repeats: int = 2,
        label_mode: str = "second_half",
        unique: bool = True,
        n_train: int = 5000,
        n_val: int = 500,
        n_test: int = 500,
        seed: int = 0,
    ):
        t = self.name
        check_int(t, "vocab", vocab, 2)
        check_int(t, "seq_len", seq_len, 1)
        check_int(t, "repeats", repeats, 2)
        if min_seq_len is not None:
            check_int(t, "min_seq_len", min_seq_len, 1)
            if min_seq_len > seq_len:
                raise TaskConfigError(f"{t}: min_seq_len ({min_seq_len}) must be <= seq_len ({seq_len})")
        check_choice(t, "label_mode", label_mode, LABEL_MODES)
        if unique and seq_len > vocab:
            raise TaskConfigError(f"{t}: unique=true needs seq_len ({seq_len}) <= vocab ({vocab})")
        for name, v in (("n_train", n_train), ("n_val", n_val), ("n_test", n_test), ("seed", seed)):
            check_int(t, name, v, 0)
        super().__init__(
            vocab=vocab, seq_len=seq_len, min_seq_len=min_seq_len, repeats=repeats, label_mode=label_mode, unique=unique,
            n_train=n_train, n_val=n_val, n_test=n_test, seed=seed,
        )
        self.n_symbols, self.seq_len, self.repeats = vocab, seq_len, repeats
        self.min_seq_len = min_seq_len
        self.label_mode, self.unique, self._seed = label_mode, bool(unique), seed
        self._sizes = [n_test, n_val, n_train]
        self.tokenizer = word_tokenizer([f"t{i}" for i in range(vocab)], specials_first=False)

    def example_for(self, block: Sequence[int]) -> Example:
        block = [int(x) for x in block]
        if any(not 0 <= x < self.n_symbols for x in block):
            raise ValueError(f"symbols must lie in [0, {self.n_symbols}), got {block}")
        tok = self.tokenizer
        train_first = self.label_mode == "all"
        pieces: list = [
            ([tok.bos_token_id], PROMPT, False),
            (block, ANSWER if train_first else PROMPT, train_first),
        ]
        pieces += [(block, ANSWER, True)] * (self.repeats - 1)
        pieces.append(([tok.eos_token_id], ANSWER, True))
        return build_example(tok, pieces, dict(block=block, seq_len=len(block)))

    def _block_lengths(self) -> range:
        return range(self.min_seq_len or self.seq_len, self.seq_len + 1)

    def _draw(self, rng: random.Random):
        n = rng.choice(self._block_lengths()) if self.min_seq_len is not None else self.seq_len
        if self.unique:
            return tuple(rng.sample(range(self.n_symbols), n))
        return tuple(rng.randrange(self.n_symbols) for _ in range(n))

    def _space(self) -> int:
        if self.unique:
            return sum(math.perm(self.n_symbols, n) for n in self._block_lengths())
        return sum(self.n_symbols**n for n in self._block_lengths())

    def _enumerate(self) -> list:
        symbols = range(self.n_symbols)
        if self.unique:
            return [b for n in self._block_lengths() for b in itertools.permutations(symbols, n)]
        return [b for n in self._block_lengths() for b in itertools.product(symbols, repeat=n)]

    def _build_splits(self) -> dict[str, Sequence[Example]]:
        test, val, train = draw_unique(
            self.name, self._sizes, self._draw, random.Random(self._seed),
            space=self._space(), enumerate_all=self._enumerate,
        )
        return {
            name: [self.example_for(b) for b in items]
            for name, items in (("train", train), ("val", val), ("test", test))
        }
