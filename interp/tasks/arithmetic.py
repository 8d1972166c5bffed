"""Integer arithmetic (`+ - *`) with plain, reversed and scratchpad answers.

Options (`make_task("arithmetic", ...)`, all plain JSON values):

| option | default | meaning |
|---|---|---|
| `digits` | 3 | most digits per operand (int, or a list with one entry per operand) |
| `min_digits` | = `digits` | fewest digits per operand; an operand first draws its digit count uniformly in `[min_digits, digits]`, then a number uniformly among those with that many digits (1 digit includes 0). Default: every operand has exactly `digits` digits |
| `n_operands` | 2 | operands per problem, all joined by the same operator |
| `ops` | `["+"]` | operators to draw from (uniformly per problem): any of `+ - *` (a list or a string like `"+-"`) |
| `format` | `plain` | `plain`, `reversed` or `scratchpad` (below) |
| `step_masking_mode` | `none` | which segments are targets (below) |
| `allow_negative` | false | subtraction: when false only problems with result >= 0 are drawn (rejection sampling, so the pairs stay uniform over the allowed ones); when true results may be negative and carry a leading `-` |
| `n_train`, `n_val`, `n_test` | 10000, 500, 500 | split sizes (distinct problems) |
| `seed` | 0 | everything is a function of the options, seed included |

Sequences (arithmetic tokenizer, one token per character; see `interp.tokenizers`):

    plain       <bos>12+34=46<eos>
    reversed    <bos>12+34=64<eos>            (answer digits reversed; a `-` sign stays in front: 5-12=-7, 5-23=-81)
    scratchpad  <bos>123+459=<bot>3+9+0=2,1;2+5+1=8,0;1+4+0=5,0<eot>582<eos>

Segments: `<bos>` and the problem up to and including `=` are the prompt (0); `<bot>` ...
`<eot>` inclusive are steps (1); the answer and `<eos>` are the answer (2).

Scratchpad steps (separated by `;`), all numbers in plain decimal:

- **Addition** `x1+...+xk`: one step per digit column, least significant first, over
  L = the most digits of any operand (a shorter operand contributes 0):
  `d1+d2+...+dk+c=s,c'`: the column digits in operand order, the carry in `c` (0 for the
  first column), the result digit `s = (sum + c) % 10` and the carry out `c' = (sum + c) // 10`.
  The answer is the final carry (when non-zero) followed by the result digits read from the
  last step to the first.  `123+459`: `3+9+0=2,1;2+5+1=8,0;1+4+0=5,0` -> `582`.
- **Subtraction** `x1-x2-...-xk` (result >= 0): the same columns,
  `d1-d2-...-dk-b=s,b'` with the borrow in `b`, `v = d1 - d2 - ... - dk - b`,
  `s = v mod 10`, borrow out `b' = (s - v) / 10`. The answer is the result digits read from
  the last step to the first with leading zeros dropped. `582-459`:
  `2-9-0=3,1;8-5-1=2,0;5-4-0=1,0` -> `123`. With `allow_negative` (two operands only) a
  negative `a-b` is worked as `b-a` (steps with the larger operand first) and answered `-(b-a)`.
- **Multiplication** `a*b` (two operands only): the partial products, one per digit of `b`
  from the least significant, written with the shift as literal zeros,
  `a*dj0..0=a*dj*10^j`; then, when `b` has more than one digit, `|` and the running sums
  `s1+p=s2` (`s1` = first partial product). `123*45`: `123*5=615;123*40=4920|615+4920=5535`
  -> `5535`. The sums are whole numbers in one step (not digit by digit).

Masking (`labels = -100` marks "not a target"; the prompt is never a target, pads never are):

| mode | targets |
|---|---|
| `none` | everything after the prompt: `<bot>` steps `<eot>`, answer, `<eos>` |
| `mask_steps` | the answer and `<eos>` only; the steps are context the model is given (teacher forced) but never scored |
| `mask_answer` | the steps only (`<bot>` ... `<eot>`); needs `format: scratchpad` |

For `plain`/`reversed` there are no steps, so `mask_steps` equals `none` and `mask_answer` is
an error. `answer_spans` follows the same rule (see `Task.answer_spans`): with `none` the
model must produce steps, answer and `<eos>` exactly; with `mask_steps` it is given the
steps and must produce answer and `<eos>`; with `mask_answer` it must produce the steps.

Splits never share a problem (same operator and operands). They are drawn as one stream of
distinct problems: the first `n_test` are test, the next `n_val` val, the rest train, so
test and val do not move when only `n_train` changes. Small problem spaces (requests above a
quarter of all problems) are enumerated and permuted instead.
"""

from __future__ import annotations

import itertools
import random
from typing import Any, Optional, Sequence, Union

from ..tokenizers import arithmetic_tokenizer
from .base import (
    ANSWER,
    PROMPT,
    STEP,
    Example,
    Task,
    TaskConfigError,
    build_example,
    check_choice,
    check_int,
    draw_unique,
)

FORMATS = ("plain", "reversed", "scratchpad")
MASKING_MODES = ("none", "mask_steps", "mask_answer")
OPS = ("+", "-", "*")

__all__ = ["ArithmeticTask", "solve", "scratchpad_steps", "FORMATS", "MASKING_MODES", "OPS"]


def _digit(x: int, i: int) -> int:
    return (x // 10**i) % 10


def _ndigits(x: int) -> int:
    return len(str(abs(x)))


def _addition_steps(operands: Sequence[int]) -> list[str]:
    L = max(_ndigits(x) for x in operands)
    steps, carry = [], 0
    for i in range(L):
        col = [_digit(x, i) for x in operands]
        total = sum(col) + carry
        s, c = total % 10, total // 10
        steps.append("+".join(map(str, col)) + f"+{carry}={s},{c}")
        carry = c
    return steps


def _subtraction_steps(operands: Sequence[int]) -> list[str]:
    L = max(_ndigits(x) for x in operands)
    steps, borrow = [], 0
    for i in range(L):
        col = [_digit(x, i) for x in operands]
        v = col[0] - sum(col[1:]) - borrow
        s = v % 10
        b = (s - v) // 10
        steps.append("-".join(map(str, col)) + f"-{borrow}={s},{b}")
        borrow = b
    if borrow:
        raise ValueError(f"subtraction steps need a non-negative result, got {operands}")
    return steps


def _multiplication_steps(a: int, b: int) -> str:
    parts, steps = [], []
    for j in range(_ndigits(b)):
        dj = _digit(b, j)
        p = a * dj * 10**j
        steps.append(f"{a}*{dj}{'0' * j}={p}")
        parts.append(p)
    sums, acc = [], parts[0]
    for p in parts[1:]:
        sums.append(f"{acc}+{p}={acc + p}")
        acc += p
    return ";".join(steps) + ("|" + ";".join(sums) if sums else "")


def evaluate(op: str, operands: Sequence[int]) -> int:
    result = operands[0]
    for x in operands[1:]:
        result = result + x if op == "+" else result - x if op == "-" else result * x
    return result


def scratchpad_steps(op: str, operands: Sequence[int]) -> str:
    """The text between `<bot>` and `<eot>` for one problem (format in the module docstring)."""
    if op == "+":
        return ";".join(_addition_steps(operands))
    if op == "-":
        result = evaluate(op, operands)
        if result < 0:
            if len(operands) != 2:
                raise ValueError("scratchpad subtraction with a negative result needs exactly 2 operands")
            return ";".join(_subtraction_steps([operands[1], operands[0]]))
        return ";".join(_subtraction_steps(operands))
    if op == "*":
        if len(operands) != 2:
            raise ValueError("scratchpad multiplication needs exactly 2 operands")
        return _multiplication_steps(operands[0], operands[1])
    raise ValueError(f"unknown operator {op!r}; choose from {list(OPS)}")


def solve(op: str, operands: Sequence[int], format: str = "plain") -> tuple[str, Optional[str], str]:
    """`(prompt, steps or None, answer)` strings for one problem, e.g.
    `solve("+", [123, 459], "scratchpad") == ("123+459=", "3+9+0=2,1;...", "582")`."""
    if any(x < 0 for x in operands):
        raise ValueError(f"operands must be non-negative, got {list(operands)}")
    prompt = op.join(str(x) for x in operands) + "="
    result = evaluate(op, operands)
    if format == "reversed":
        answer = ("-" if result < 0 else "") + str(abs(result))[::-1]
    else:
        answer = str(result)
    steps = scratchpad_steps(op, operands) if format == "scratchpad" else None
    return prompt, steps, answer


def _as_list(task: str, option: str, value: Any, n: int) -> list[int]:
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise TaskConfigError(f"{task}: {option} has {len(value)} entries but n_operands={n}")
        out = list(value)
    else:
        out = [value] * n
    for v in out:
        check_int(task, option, v, 1)
    return out


def _range_for(lo: int, hi: int) -> tuple[int, int]:
    """Numbers with between lo and hi digits: [low, high)."""
    return (0 if lo == 1 else 10 ** (lo - 1)), 10**hi


class ArithmeticTask(Task):
    name = "arithmetic"

    def __init__(
        self,
        digits: Union[int, list[int]] = 3,
        n_operands: int = 2,
        ops: Union[str, list[str]] = ("+",),
        format: str = "plain",
        step_masking_mode: str = "none",
        min_digits: Union[int, list[int], None] = None,
        allow_negative: bool = False,
        n_train: int = 10000,
        n_val: int = 500,
        n_test: int = 500,
        seed: int = 0,
    ):
        t = self.name
        check_int(t, "n_operands", n_operands, 2)
        ops_list = list(ops)
        if not ops_list:
            raise TaskConfigError(f"{t}: ops is empty; use some of {list(OPS)}")
        for op in ops_list:
            check_choice(t, "ops", op, OPS)
        ops_list = list(dict.fromkeys(ops_list))
        check_choice(t, "format", format, FORMATS)
        check_choice(t, "step_masking_mode", step_masking_mode, MASKING_MODES)
        if step_masking_mode == "mask_answer" and format != "scratchpad":
            raise TaskConfigError(
                f"{t}: step_masking_mode='mask_answer' trains only the steps, but format={format!r} has none "
                "(use format='scratchpad')"
            )
        hi = _as_list(t, "digits", digits, n_operands)
        lo = _as_list(t, "min_digits", hi if min_digits is None else min_digits, n_operands)
        for a, b in zip(lo, hi):
            if a > b:
                raise TaskConfigError(f"{t}: min_digits {lo} exceeds digits {hi}")
        if format == "scratchpad" and n_operands != 2:
            if "*" in ops_list:
                raise TaskConfigError(f"{t}: scratchpad multiplication needs n_operands=2")
            if "-" in ops_list and allow_negative:
                raise TaskConfigError(f"{t}: scratchpad subtraction with allow_negative needs n_operands=2")
        if not isinstance(allow_negative, bool):
            raise TaskConfigError(f"{t}: allow_negative must be true/false, got {allow_negative!r}")
        for opt, v, m in (("n_train", n_train, 0), ("n_val", n_val, 0), ("n_test", n_test, 0), ("seed", seed, 0)):
            check_int(t, opt, v, m)
        super().__init__(
            digits=digits if isinstance(digits, int) else list(digits),
            n_operands=n_operands,
            ops=ops_list,
            format=format,
            step_masking_mode=step_masking_mode,
            min_digits=min_digits if min_digits is None or isinstance(min_digits, int) else list(min_digits),
            allow_negative=allow_negative,
            n_train=n_train,
            n_val=n_val,
            n_test=n_test,
            seed=seed,
        )
        self.tokenizer = arithmetic_tokenizer()
        self.ops = ops_list
        self.format = format
        self.step_masking_mode = step_masking_mode
        self.allow_negative = allow_negative
        self.n_operands = n_operands
        self.digit_ranges = [(a, b) for a, b in zip(lo, hi)]
        self._sizes = {"train": n_train, "val": n_val, "test": n_test}
        self._seed = seed

    # ------------------------------------------------------------------ problems
    def _valid(self, op: str, operands: Sequence[int]) -> bool:
        return self.allow_negative or op != "-" or evaluate(op, operands) >= 0

    def _draw(self, rng: random.Random):
        op = self.ops[rng.randrange(len(self.ops))] if len(self.ops) > 1 else self.ops[0]
        operands = []
        for lo, hi in self.digit_ranges:
            d = rng.randint(lo, hi)
            a, b = _range_for(d, d)
            operands.append(rng.randrange(a, b))
        return (op, tuple(operands)) if self._valid(op, operands) else None

    def _space(self) -> int:
        n = len(self.ops)
        for lo, hi in self.digit_ranges:
            a, b = _range_for(lo, hi)
            n *= b - a
        return n

    def _enumerate(self) -> list:
        ranges = [range(*_range_for(lo, hi)) for lo, hi in self.digit_ranges]
        return [
            (op, tuple(xs)) for op in self.ops for xs in itertools.product(*ranges) if self._valid(op, xs)
        ]

    def example_for(self, op: str, operands: Sequence[int]) -> Example:
        """The Example (this task's format and masking) for any problem, e.g. one typed in."""
        if op not in OPS:
            raise ValueError(f"unknown operator {op!r}; choose from {list(OPS)}")
        prompt, steps, answer = solve(op, operands, self.format)
        tok = self.tokenizer
        train_steps = self.step_masking_mode in ("none", "mask_answer")
        train_answer = self.step_masking_mode in ("none", "mask_steps")
        pieces: list = [([tok.bos_token_id], PROMPT, False), (prompt, PROMPT, False)]
        if steps is not None:
            pieces += [
                ([tok.bot_token_id], STEP, train_steps),
                (steps, STEP, train_steps),
                ([tok.eot_token_id], STEP, train_steps),
            ]
        pieces += [(answer, ANSWER, train_answer), ([tok.eos_token_id], ANSWER, train_answer)]
        meta = dict(op=op, operands=list(operands), result=evaluate(op, operands), answer=answer, steps=steps)
        return build_example(tok, pieces, meta)

    def _build_splits(self) -> dict[str, Sequence[Example]]:
        rng = random.Random(self._seed)
        sizes = [self._sizes["test"], self._sizes["val"], self._sizes["train"]]
        test, val, train = draw_unique(
            self.name, sizes, self._draw, rng, space=self._space(), enumerate_all=self._enumerate
        )
        return {
            name: [self.example_for(op, xs) for op, xs in items]
            for name, items in (("train", train), ("val", val), ("test", test))
        }
