"""ProsQA-like graphs, generated here and written in the Coconut format (`format.GraphRecord`).

A graph is a random DAG drawn in topological order: the first `n_persons` nodes are people
(no parents; node 0 is the root), every later node takes 1 + Binomial(3, (edges_per_node - 1) / 3)
parents among the nodes before it, most often (80%) among the 6 just before it, which makes
chains deep enough for the path lengths asked for. A graph is kept when it has a sink at
distance exactly L from the root (L drawn from `path_length`; the target) and a sink the root
cannot reach (the negative target), and, if `diameter` is given, when its diameter (the longest
shortest path between any two nodes) is in that range; otherwise another is drawn. The CoT is a
shortest path to the target, drawn uniformly among the shortest ones. Node indices are then
shuffled (so in the symbolic vocabulary a node's symbol says nothing about its place in the
graph) and names drawn: people from `PERSON_NAMES`, concepts from `graph.CONCEPTS`.

With the defaults the graphs look like the official ProsQA test split (`tests/test_prosqa.py`
checks the statistics): 20-26 nodes, ~31 edges (ProsQA: 23 nodes, 36 edges), the root reaching
~15 nodes (13), targets and negative targets are sinks.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Iterable, Optional

from ..base import TaskConfigError
from ..graph import CONCEPTS
from .format import GraphRecord, bfs_distances

__all__ = ["GraphSpec", "PERSON_NAMES", "generate_record", "graph_diameter"]

PERSON_NAMES = ("Alex", "Bob", "Fae", "Jack", "Max", "Polly", "Rex", "Sally", "Sam", "Stella", "Tom", "Wren")
WINDOW = 6  # parents come mostly from the nodes just before: long chains, as ProsQA's


@dataclass(frozen=True)
class GraphSpec:
    """The difficulty controls of one split's graphs (ranges are inclusive)."""

    n_nodes: tuple[int, int] = (20, 26)
    n_persons: tuple[int, int] = (2, 4)
    edges_per_node: float = 1.6  # mean parents of a concept node (ProsQA: ~1.8)
    path_length: tuple[int, int] = (3, 4)  # root -> target distance: the CoT's steps
    diameter: Optional[tuple[int, int]] = None  # None: any

    def check(self, task: str) -> None:
        lo, hi = self.n_nodes
        plo, phi = self.n_persons
        if not 1 <= plo <= phi:
            raise TaskConfigError(f"{task}: n_persons={list(self.n_persons)} needs 1 <= min <= max")
        if phi > len(PERSON_NAMES):
            raise TaskConfigError(f"{task}: n_persons max {phi} exceeds the {len(PERSON_NAMES)} person names")
        if hi > len(CONCEPTS) + phi:
            raise TaskConfigError(f"{task}: n_nodes max {hi} exceeds the {len(CONCEPTS)} concept names + persons")
        if lo < phi + self.path_length[1] + 1:
            raise TaskConfigError(f"{task}: n_nodes min {lo} leaves no room for a path of {self.path_length[1]} "
                                  f"edges plus a negative target beside {phi} persons")
        if not 1.0 <= self.edges_per_node <= 4.0:
            raise TaskConfigError(f"{task}: edges_per_node={self.edges_per_node} must be in [1, 4]")
        if self.diameter is not None and self.diameter[1] < self.path_length[0]:
            raise TaskConfigError(f"{task}: diameter max {self.diameter[1]} < path_length min {self.path_length[0]}")


def graph_diameter(children: list[list[int]]) -> int:
    """The longest shortest path (edges) between any two nodes, one joined to the other."""
    return max(max(bfs_distances(children, u).values()) for u in range(len(children)))


def _dag(rng: random.Random, n: int, persons: int, edges_per_node: float) -> list[list[int]]:
    children: list[list[int]] = [[] for _ in range(n)]
    p_extra, rand = (edges_per_node - 1.0) / 3.0, rng.random
    for j in range(persons, n):
        k = 1 + (rand() < p_extra) + (rand() < p_extra) + (rand() < p_extra)
        lo = j - WINDOW if j > WINDOW and rand() < 0.8 else 0
        if k >= j - lo:
            parents: Iterable[int] = range(lo, j)
        else:
            picked: dict[int, None] = {}  # insertion-ordered: the draw fixes the order
            while len(picked) < k:
                picked[lo + int(rand() * (j - lo))] = None
            parents = picked
        for i in parents:
            children[i].append(j)
    return children


def _shortest_path(rng: random.Random, children: list[list[int]], dist: dict[int, int], target: int) -> list[int]:
    """A shortest root -> target path, uniform among the shortest ones."""
    parents: dict[int, list[int]] = {}
    for u, cs in enumerate(children):
        for v in cs:
            parents.setdefault(v, []).append(u)
    count = {u: 1 for u, d in dist.items() if d == 0}
    for u in sorted(dist, key=dist.get):
        if dist[u]:
            count[u] = sum(count[p] for p in parents.get(u, ()) if dist.get(p) == dist[u] - 1)
    path = [target]
    while dist[path[-1]]:
        v = path[-1]
        options = [p for p in parents[v] if dist.get(p) == dist[v] - 1]
        path.append(rng.choices(options, weights=[count[p] for p in options])[0])
    return path[::-1]


def _on_shortest_paths(children: list[list[int]], dist: dict[int, int], target: int) -> dict[int, tuple[int, ...]]:
    """neighbor_k: per distance k from the root, the nodes on some shortest path to the target."""
    reverse: list[list[int]] = [[] for _ in children]
    for u, cs in enumerate(children):
        for v in cs:
            reverse[v].append(u)
    to_target = bfs_distances(reverse, target)
    L = dist[target]
    out: dict[int, list[int]] = {k: [] for k in range(L + 1)}
    for u, d in dist.items():
        if to_target.get(u) == L - d:
            out[d].append(u)
    return {k: tuple(sorted(v)) for k, v in out.items()}


def generate_record(rng: random.Random, spec: GraphSpec, max_tries: int = 2000) -> GraphRecord:
    """One ProsQA-like example drawn from `spec` (see the module docstring)."""
    for _ in range(max_tries):
        n, persons = rng.randint(*spec.n_nodes), rng.randint(*spec.n_persons)
        L = rng.randint(*spec.path_length)
        children = _dag(rng, n, persons, spec.edges_per_node)
        dist = bfs_distances(children, 0)
        sinks = [v for v in range(persons, n) if not children[v]]  # concepts only: "Is Sally a Bob?" is no question
        targets = [v for v in sinks if dist.get(v) == L]
        negatives = [v for v in sinks if v not in dist]
        if not targets or not negatives:
            continue
        if spec.diameter is not None and not spec.diameter[0] <= graph_diameter(children) <= spec.diameter[1]:
            continue
        target, neg = rng.choice(targets), rng.choice(negatives)
        return _record(rng, children, persons, dist, target, neg)
    raise TaskConfigError(f"prosqa: no graph met {spec} in {max_tries} draws; widen path_length / diameter or "
                          "change n_nodes / edges_per_node")


def _record(rng: random.Random, children: list[list[int]], persons: int, dist: dict[int, int], target: int,
            neg: int) -> GraphRecord:
    n = len(children)
    path = _shortest_path(rng, children, dist, target)
    nk = _on_shortest_paths(children, dist, target)
    new = list(range(n))
    rng.shuffle(new)  # old index -> new index
    names: list[str] = [""] * n
    people = rng.sample(PERSON_NAMES, persons)
    concepts = iter(rng.sample(CONCEPTS, n - persons))
    for old in range(n):
        names[new[old]] = people[old] if old < persons else next(concepts)
    edges = [(new[u], new[v]) for u in range(n) for v in children[u]]
    rng.shuffle(edges)
    is_person = {new[i] for i in range(persons)}

    def fact(a: int, b: int) -> str:
        return f"{names[a]} is a {names[b]}." if a in is_person else f"Every {names[a]} is a {names[b]}."

    root, t, f = new[0], new[target], new[neg]
    first, second = (t, f) if rng.random() < 0.5 else (f, t)
    question = " ".join(fact(a, b) for a, b in edges) + f" Is {names[root]} a {names[first]} or {names[second]}?"
    route = [new[u] for u in path]
    steps = tuple(fact(a, b) for a, b in zip(route, route[1:]))
    return GraphRecord(question, f"{names[root]} is a {names[t]}.", steps, tuple(names), tuple(edges), root, t, f,
                       tuple(route), {k: tuple(sorted(new[u] for u in v)) for k, v in nk.items()})
