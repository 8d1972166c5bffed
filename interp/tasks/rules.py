"""ProntoQA-like rule chaining (Saparov & He 2023), generated locally.

A person belongs to a chain of made-up concepts (`tom is a c0`, `every c0 is a c1`, ...); the
last concept of the chain carries a property, asserted or denied (`every c3 is not sour`).
The question asks whether the person has the property; the chain of thought deduces one
membership per step and then the property, and the answer is `yes` / `no`:

    <bos> every c1 is a c2 . tom is a c0 . every e0 is sour . every c2 is not sour . ...
    is tom sour ? <bot> tom is a c1 . tom is a c2 . tom is not sour . <eot> no <eos>

Distractors (all seeded): the queried property is also given, with the opposite polarity, to
a concept outside the person's chain (so its polarity alone says nothing), that concept sits
in a chain of its own, and chain concepts before the last carry other properties. Options:
`hops` (the chain's length, an integer or `[min, max]`; 3..5), `n_distractor_rules` (other
properties on the chain, 2), `step_masking_mode` (`none` | `mask_steps` | `mask_answer`),
`n_train` / `n_val` / `n_test`, `seed`. Answers are balanced (the polarity is a fair coin):
chance is 50%.

Segments, `Example.meta["step_spans"]` and the tokenizer are those of `interp.tasks.graph`
(which see); the meta also holds `chain`, `property`, `holds` and the `person`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Sequence, Union

from .base import Example, check_int
from .graph import CONCEPTS, PERSONS, PROPERTIES, FactsTask, _range

__all__ = ["RulesTask"]


@dataclass(frozen=True)
class RulesProblem:
    person: str
    chain: tuple[str, ...]  # c0 .. cH
    prop: str
    holds: bool
    facts: tuple[tuple[str, ...], ...]  # each a sentence without the final "."


class RulesTask(FactsTask):
    name = "rules"

    def __init__(
        self,
        hops: Union[int, list[int]] = (3, 5),
        n_distractor_rules: int = 2,
        step_masking_mode: str = "none",
        n_train: int = 10000,
        n_val: int = 500,
        n_test: int = 500,
        seed: int = 0,
    ):
        t = self.name
        self.hop_range = _range(t, "hops", hops, 1)
        check_int(t, "n_distractor_rules", n_distractor_rules, 0)
        self.n_distractor_rules = n_distractor_rules
        super().__init__(step_masking_mode, hops=list(hops) if isinstance(hops, (list, tuple)) else hops,
                         n_distractor_rules=n_distractor_rules, n_train=n_train, n_val=n_val, n_test=n_test,
                         seed=seed)

    def _draw(self, rng: random.Random) -> RulesProblem:
        H = rng.randint(*self.hop_range)
        names = rng.sample(CONCEPTS, H + 1 + 3)
        chain, other = names[: H + 1], names[H + 1 :]  # other: a distractor chain e0 -> e1 -> e2
        person = rng.choice(PERSONS)
        props = rng.sample(PROPERTIES, 1 + self.n_distractor_rules + 1)
        prop, holds = props[0], rng.random() < 0.5
        polarity = lambda yes: () if yes else ("not",)  # noqa: E731
        facts: list[tuple[str, ...]] = [(person, "is", "a", chain[0])]
        facts += [("every", a, "is", "a", b) for a, b in zip(chain, chain[1:])]
        facts.append(("every", chain[-1], "is", *polarity(holds), prop))
        facts += [("every", a, "is", "a", b) for a, b in zip(other, other[1:])]
        facts.append(("every", rng.choice(other), "is", *polarity(not holds), prop))
        for q in props[1:-1]:  # other properties on the chain before its last concept
            facts.append(("every", rng.choice(chain[:-1]), "is", *polarity(rng.random() < 0.5), q))
        facts.append(("every", rng.choice(other), "is", *polarity(rng.random() < 0.5), props[-1]))
        rng.shuffle(facts)
        return RulesProblem(person, tuple(chain), prop, holds, tuple(facts))

    def example_for(self, problem: RulesProblem) -> Example:
        facts: list[str] = []
        for sentence in problem.facts:
            facts += [*sentence, "."]
        question = ["is", problem.person, problem.prop, "?"]
        steps: list[Sequence[str]] = [[problem.person, "is", "a", c, "."] for c in problem.chain[1:]]
        steps.append([problem.person, "is", *(() if problem.holds else ("not",)), problem.prop, "."])
        meta = dict(person=problem.person, chain=list(problem.chain), property=problem.prop, holds=problem.holds,
                    n_steps=len(steps))
        return self.build(facts + question, steps, ["yes" if problem.holds else "no"], meta)
