"""Modular arithmetic `a op b mod p` (grokking; Power et al. 2022, Nanda et al. 2023).

Options: `p` (113), `op` (`+`, also `-` or `*`), `train_frac` (0.3), `val_frac` (0.1),
`n_train` / `n_val` / `n_test` (None: derived from the fractions, the test split takes every
remaining pair), `eos` (true), `format` (`full`, or `compact`: Nanda et al.'s three-token
prompt `a b =` with no `<bos>`, no operator token and no `<eos>`), `seed` (0).

All `p * p` ordered pairs `(a, b)` are permuted with `random.Random(seed)`; train is the first
`n_train` of the permutation, val the next `n_val`, test the next `n_test`, so the splits never
share a pair.

Sequence (word-level tokenizer, tokens separated by spaces in the text):

    <bos> a + b = c <eos>          e.g. "<bos> 5 + 110 = 2 <eos>" for p=113

Token ids: the number n is token n (0..p-1), then `+ - * =`, then `<pad> <bos> <eos>`, so
`W_E[:p]` are the number embeddings (handy for Fourier analyses). Segments: `<bos> a op b =`
is the prompt, `c <eos>` the answer; the answer tokens are the only targets. With
`eos: false` the sequence ends at `c` (the classic one-target setup). `format: compact`
gives `a b = c` (Nanda et al. 2023's grokking setup: `configs/reference/grokking.yaml`).
"""

from __future__ import annotations

import random
from typing import Optional, Sequence

from ..tokenizers import word_tokenizer
from .base import ANSWER, PROMPT, Example, Task, TaskConfigError, build_example, check_choice, check_int

__all__ = ["ModularTask"]

OPS = ("+", "-", "*")
FORMATS = ("full", "compact")


class ModularTask(Task):
    name = "modular"

    def __init__(
        self,
        p: int = 113,
        op: str = "+",
        train_frac: float = 0.3,
        val_frac: float = 0.1,
        n_train: Optional[int] = None,
        n_val: Optional[int] = None,
        n_test: Optional[int] = None,
        eos: bool = True,
        seed: int = 0,
        format: str = "full",
    ):
        t = self.name
        check_int(t, "p", p, 2)
        check_choice(t, "op", op, OPS)
        check_choice(t, "format", format, FORMATS)
        if format == "compact" and eos:
            raise TaskConfigError(f"{t}: format=compact is 'a b = c' with no <eos>; set eos: false")
        for name, frac in (("train_frac", train_frac), ("val_frac", val_frac)):
            if isinstance(frac, bool) or not isinstance(frac, (int, float)) or not 0 <= frac <= 1:
                raise TaskConfigError(f"{t}: {name} must be a number in [0, 1], got {frac!r}")
        for name, v in (("n_train", n_train), ("n_val", n_val), ("n_test", n_test)):
            check_int(t, name, v, 0, optional=True)
        check_int(t, "seed", seed, 0)
        total = p * p
        nt = round(train_frac * total) if n_train is None else n_train
        nv = round(val_frac * total) if n_val is None else n_val
        if nt + nv > total:
            raise TaskConfigError(f"{t}: n_train + n_val = {nt + nv} exceeds the {total} pairs for p={p}")
        ns = total - nt - nv if n_test is None else n_test
        if nt + nv + ns > total:
            raise TaskConfigError(f"{t}: n_train + n_val + n_test = {nt + nv + ns} exceeds the {total} pairs for p={p}")
        super().__init__(
            p=p, op=op, train_frac=train_frac, val_frac=val_frac, n_train=n_train, n_val=n_val,
            n_test=n_test, eos=eos, seed=seed, **({"format": format} if format != "full" else {}),
        )
        self.format = format
        self.p, self.op, self.eos, self._seed = p, op, bool(eos), seed
        self._sizes = (nt, nv, ns)
        self.tokenizer = word_tokenizer([str(i) for i in range(p)] + list(OPS) + ["="], specials_first=False)

    def answer(self, a: int, b: int) -> int:
        if self.op == "+":
            return (a + b) % self.p
        if self.op == "-":
            return (a - b) % self.p
        return (a * b) % self.p

    def example_for(self, a: int, b: int) -> Example:
        if not (0 <= a < self.p and 0 <= b < self.p):
            raise ValueError(f"operands must lie in [0, {self.p}), got {a}, {b}")
        tok = self.tokenizer
        c = self.answer(a, b)
        # ids straight from the layout (number n is token n): same as encoding f"{a} {op} {b} ="
        if self.format == "compact":
            pieces: list = [([a, b, tok.token_to_id("=")], PROMPT, False), ([c], ANSWER, True)]
            return build_example(tok, pieces, dict(a=a, b=b, c=c))
        prompt = [a, tok.token_to_id(self.op), b, tok.token_to_id("=")]
        pieces = [([tok.bos_token_id], PROMPT, False), (prompt, PROMPT, False), ([c], ANSWER, True)]
        if self.eos:
            pieces.append(([tok.eos_token_id], ANSWER, True))
        return build_example(tok, pieces, dict(a=a, b=b, c=c))

    def _build_splits(self) -> dict[str, Sequence[Example]]:
        pairs = [(a, b) for a in range(self.p) for b in range(self.p)]
        random.Random(self._seed).shuffle(pairs)
        nt, nv, ns = self._sizes
        cuts = {"train": pairs[:nt], "val": pairs[nt : nt + nv], "test": pairs[nt + nv : nt + nv + ns]}
        return {name: [self.example_for(a, b) for a, b in items] for name, items in cuts.items()}
