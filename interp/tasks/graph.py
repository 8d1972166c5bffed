"""ProsQA-like graph reasoning (Hao et al. 2024, "Coconut"), generated locally.

A random DAG of made-up concepts is stated as facts, one edge each, in random order; the
question names two candidate concepts, exactly one of which the person at the root *is*
(reachable from it). The chain of thought is the path from the root to that candidate, one
fact per step, as ProsQA's; the answer names it.

    <bos> wumpus is a lorpus . tom is a zumpus . ... is tom a lorpus or a gorpus ?
    <bot> tom is a zumpus . zumpus is a wumpus . wumpus is a lorpus . <eot> lorpus <eos>

How a graph is built (every choice seeded; `path_length` and `branching` set the difficulty):

- the **path** root -> v1 -> ... -> vL (L drawn from `path_length`); vL is the target;
- **dead ends**: each path node except the target starts 0..`branching` side chains of
  1..`dead_end_length` fresh concepts that lead nowhere, so at every step of the path there
  are wrong turns a chain of thought can take (ProsQA's difficulty: planning, not recall);
- the **distractor** side: a chain u0 -> ... -> D of length L-1..L+1 from a parentless
  concept, with its own dead ends, and 0..2 edges from it *into* dead ends of the root's side
  (harmless to reachability from the root, but they make a backward search from the
  candidates meet both sides). No edge leads from the root's side to the distractor side, so
  D is unreachable and the path is the root's only route to the target.

The question lists target and distractor in random order: chance is 50%. `Example.meta` holds
the graph (`edges`, `root`, `target`, `distractor`, `path`, `depth`: the BFS depth of every
node reachable from the root) and `step_spans`: the [start, end) token range of every CoT
step (what the Coconut curriculum replaces by latent slots; see `interp.training.coconut`).
The thought after k latent steps is expected to hold the BFS frontier at depth k
(`interp.thoughts.frontier_mass`).

Segments: `<bos>`, facts and question are the prompt (0); `<bot>` steps `<eot>` are steps (1);
the answer and `<eos>` are the answer (2). `step_masking_mode` works as for arithmetic:
`none` (default) trains steps and answer, `mask_steps` the answer only, `mask_answer` the
steps only. Splits never share an example (by content).

The tokenizer (`reasoning_tokenizer`, shared with `interp.tasks.rules`) is fixed: every
concept, person and property word of both tasks plus `<pad> <bos> <eos> <bot> <eot> <latent>`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Optional, Sequence, Union

from ..tokenizers import Tokenizer, word_tokenizer
from .base import (
    ANSWER,
    IGNORE_INDEX,
    PROMPT,
    STEP,
    Example,
    Task,
    TaskConfigError,
    check_choice,
    check_int,
    draw_unique,
)

__all__ = ["GraphTask", "reasoning_tokenizer", "CONCEPTS", "PERSONS", "PROPERTIES", "REASONING_SPECIALS",
           "MASKING_MODES", "FactsTask", "build_facts_example", "bfs_depths"]

REASONING_SPECIALS = ("<pad>", "<bos>", "<eos>", "<bot>", "<eot>", "<latent>")
_ONSETS = ("w", "y", "z", "d", "r", "n", "t", "v", "j", "g", "sh", "l", "st", "gr", "br", "f", "k", "b", "m",
           "p", "h", "s", "sl", "tr")
_RIMES = ("umpus", "orpus", "impus", "erpus", "ompus", "alpus")
CONCEPTS: tuple[str, ...] = tuple(o + r for r in _RIMES for o in _ONSETS)  # 144 made-up names
PERSONS = ("tom", "ann", "bob", "eve", "max", "sue", "joe", "kim", "lee", "ray")
PROPERTIES = ("red", "blue", "green", "small", "large", "hot", "cold", "sour", "sweet", "bright", "dull", "shy",
              "loud", "quiet", "fast", "slow", "wooden", "metallic", "liquid", "feisty", "happy", "sad", "kind",
              "mean")
WORDS = ("is", "a", "or", "every", "not", ".", "?", "yes", "no")
MASKING_MODES = ("none", "mask_steps", "mask_answer")


def reasoning_tokenizer() -> Tokenizer:
    """The word vocabulary of `graph` and `rules`: specials (ids 0..5), words, persons,
    properties, concepts. Identical for every option, so checkpoints share ids."""
    return word_tokenizer(list(WORDS) + list(PERSONS) + list(PROPERTIES) + list(CONCEPTS),
                          specials=REASONING_SPECIALS)


def _range(task: str, option: str, value: Any, minimum: int) -> tuple[int, int]:
    if isinstance(value, (list, tuple)):
        if len(value) != 2:
            raise TaskConfigError(f"{task}: {option} must be an integer or [min, max], got {value!r}")
        lo, hi = value
    else:
        lo = hi = value
    check_int(task, option, lo, minimum)
    check_int(task, option, hi, minimum)
    if lo > hi:
        raise TaskConfigError(f"{task}: {option}={list(value)} has min > max")
    return int(lo), int(hi)


def build_facts_example(tok: Tokenizer, step_masking_mode: str, prompt: Sequence[str], steps: Sequence[Sequence[str]],
                        answer: Sequence[str], meta: dict) -> Example:
    """`<bos> prompt <bot> steps <eot> answer <eos>` from word lists, the span of every step in
    `meta["step_spans"]`, targets as `step_masking_mode` says (shared by `graph`, `rules`, `prosqa`).
    The text is the words joined by spaces, which is what a word tokenizer's `decode` gives
    (the tasks' tests check it), without decode's per-id checks (most of the build time of
    100,000 graphs)."""
    train_steps = step_masking_mode in ("none", "mask_answer")
    train_answer = step_masking_mode in ("none", "mask_steps")
    name = tok.id_to_token
    pieces: list = [([name(tok.bos_token_id)], PROMPT, False), (prompt, PROMPT, False),
                    ([name(tok.bot_token_id)], STEP, train_steps)]
    pieces += [(step, STEP, train_steps) for step in steps]
    pieces += [([name(tok.eot_token_id)], STEP, train_steps), (answer, ANSWER, train_answer),
               ([name(tok.eos_token_id)], ANSWER, train_answer)]
    vocab = tok.get_vocab()
    words: list[str] = []
    ids: list[int] = []
    labels: list[int] = []
    segments: list[int] = []
    spans, at = [], 1 + len(prompt) + 1
    for j, (piece, seg, trained) in enumerate(pieces):
        try:
            p = [vocab[w] for w in piece]
        except KeyError as e:
            raise ValueError(f"word {e.args[0]!r} is not in the task's vocabulary") from None
        if 3 <= j < 3 + len(steps):
            spans.append([at, at + len(p)])
            at += len(p)
        words.extend(piece)
        ids.extend(p)
        labels.extend(p if trained else [IGNORE_INDEX] * len(p))
        segments.extend([seg] * len(p))
    return Example(ids, labels, segments, " ".join(words), {**meta, "step_spans": spans, "answer": " ".join(answer)})


class FactsTask(Task):
    """What `graph` and `rules` share: the tokenizer, the masking modes and building an Example
    from word lists with the span of every step recorded."""

    def __init__(self, step_masking_mode: str, **config: Any):
        check_choice(self.name, "step_masking_mode", step_masking_mode, MASKING_MODES)
        for opt in ("n_train", "n_val", "n_test", "seed"):
            check_int(self.name, opt, config[opt], 0)
        super().__init__(step_masking_mode=step_masking_mode, **config)
        self.step_masking_mode = step_masking_mode
        self.tokenizer = reasoning_tokenizer()
        self._sizes = {s: config[f"n_{s}"] for s in ("train", "val", "test")}
        self._seed = config["seed"]

    def build(self, prompt: Sequence[str], steps: Sequence[Sequence[str]], answer: Sequence[str], meta: dict
              ) -> Example:
        return build_facts_example(self.tokenizer, self.step_masking_mode, prompt, steps, answer, meta)

    def _build_splits(self) -> dict[str, Sequence[Example]]:
        rng = random.Random(self._seed)
        sizes = [self._sizes["test"], self._sizes["val"], self._sizes["train"]]
        test, val, train = draw_unique(self.name, sizes, self._draw, rng)
        return {name: [self.example_for(p) for p in items]
                for name, items in (("train", train), ("val", val), ("test", test))}

    def _draw(self, rng: random.Random):  # pragma: no cover - abstract
        raise NotImplementedError

    def example_for(self, problem) -> Example:  # pragma: no cover - abstract
        raise NotImplementedError


@dataclass(frozen=True)
class GraphProblem:
    root: str
    target: str
    distractor: str
    path: tuple[str, ...]  # root, v1, ..., target
    edges: tuple[tuple[str, str], ...]  # in the order the facts are stated
    candidates: tuple[str, str]  # as the question lists them


class GraphTask(FactsTask):
    name = "graph"

    def __init__(
        self,
        path_length: Union[int, list[int]] = (3, 6),
        branching: int = 2,
        dead_end_length: int = 2,
        n_concepts: int = 80,
        step_masking_mode: str = "none",
        n_train: int = 10000,
        n_val: int = 500,
        n_test: int = 500,
        seed: int = 0,
    ):
        t = self.name
        lo, hi = _range(t, "path_length", path_length, 1)
        check_int(t, "branching", branching, 0)
        check_int(t, "dead_end_length", dead_end_length, 1)
        check_int(t, "n_concepts", n_concepts, 4)
        if n_concepts > len(CONCEPTS):
            raise TaskConfigError(f"{t}: n_concepts={n_concepts} exceeds the {len(CONCEPTS)} concept names")
        self.path_range = (lo, hi)
        self.branching, self.dead_end_length = branching, dead_end_length
        self.concepts = CONCEPTS[:n_concepts]
        # the most concepts one graph can use: path, both sides' dead ends, the distractor chain
        worst = hi + (hi + 2) + (2 * hi + 1) * branching * dead_end_length
        if worst > n_concepts:
            raise TaskConfigError(
                f"{t}: a graph may need up to {worst} distinct concepts (path_length max {hi}, branching "
                f"{branching}, dead_end_length {dead_end_length}) but n_concepts={n_concepts}; raise n_concepts "
                f"(at most {len(CONCEPTS)}) or shrink the graph")
        super().__init__(
            step_masking_mode, path_length=list(path_length) if isinstance(path_length, (list, tuple)) else path_length,
            branching=branching, dead_end_length=dead_end_length, n_concepts=n_concepts,
            n_train=n_train, n_val=n_val, n_test=n_test, seed=seed)

    # ------------------------------------------------------------------ graphs
    def _draw(self, rng: random.Random) -> GraphProblem:
        L = rng.randint(*self.path_range)
        names = iter(rng.sample(self.concepts, len(self.concepts)))
        root = rng.choice(PERSONS)
        path = [root] + [next(names) for _ in range(L)]
        edges = list(zip(path, path[1:]))
        dead: list[str] = []

        def dead_ends(parents: Sequence[str], most: int) -> list[str]:
            made = []
            for parent in parents:
                for _ in range(rng.randint(0, most)):
                    prev = parent
                    for _ in range(rng.randint(1, self.dead_end_length)):
                        node = next(names)
                        edges.append((prev, node))
                        made.append(node)
                        prev = node
            return made

        dead += dead_ends(path[:-1], self.branching)
        Ld = rng.randint(max(1, L - 1), L + 1)
        chain = [next(names) for _ in range(Ld + 1)]
        edges += list(zip(chain, chain[1:]))
        other = dead_ends(chain[:-1], self.branching)
        for _ in range(rng.randint(0, 2) if dead else 0):  # distractor side -> root side only
            edges.append((rng.choice(chain[:-1] + other), rng.choice(dead)))
        edges = list(dict.fromkeys(edges))
        rng.shuffle(edges)
        candidates = [path[-1], chain[-1]]
        rng.shuffle(candidates)
        return GraphProblem(root, path[-1], chain[-1], tuple(path), tuple(edges), tuple(candidates))

    def example_for(self, problem: GraphProblem) -> Example:
        """The Example of one problem (facts in the problem's order)."""
        facts: list[str] = []
        for parent, child in problem.edges:
            facts += [parent, "is", "a", child, "."]
        question = ["is", problem.root, "a", problem.candidates[0], "or", "a", problem.candidates[1], "?"]
        steps = [[p, "is", "a", c, "."] for p, c in zip(problem.path, problem.path[1:])]
        meta = dict(root=problem.root, target=problem.target, distractor=problem.distractor,
                    path=list(problem.path), edges=[list(e) for e in problem.edges],
                    depth=bfs_depths(problem.edges, problem.root), n_steps=len(steps))
        return self.build(facts + question, steps, [problem.target], meta)


def bfs_depths(edges: Sequence[Sequence[str]], root: str) -> dict[str, int]:
    """Shortest number of edges from `root` to every node it reaches (root: 0)."""
    children: dict[str, list[str]] = {}
    for p, c in edges:
        children.setdefault(p, []).append(c)
    depth, frontier = {root: 0}, [root]
    while frontier:
        nxt = []
        for node in frontier:
            for c in children.get(node, ()):
                if c not in depth:
                    depth[c] = depth[node] + 1
                    nxt.append(c)
        frontier = nxt
    return depth
