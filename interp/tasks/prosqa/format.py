"""The Coconut JSON format for ProsQA (facebookresearch/coconut `data/prosqa_*.json`), read and
written with every field checked.

A file is a JSON list of examples:

    {"question": "Every gerpus is a terpus. ... Is Sally a hilpus or sterpus?",
     "answer": "Sally is a sterpus.",
     "steps": ["Sally is a scrompus.", "Every scrompus is a rempus.", "Every rempus is a sterpus."],
     "idx_to_symbol": ["Bob", "Sally", "lempus", ...],     # node index -> its name
     "edges": [[0, 2], [1, 3], ...],                       # [parent, child] node indices
     "root": 1, "target": 21, "neg_target": 25,
     "neighbor_k": {"0": [1], "1": [9, 5], ...}}           # optional (Reasoning by Superposition)

`neighbor_k[k]` (written by Ber666/reasoning-by-superposition and by our generator) lists the
nodes at distance k from the root that lie on some shortest path to the target. `edges` may
also be a JSON string of that list. A target or root may be given by name (an entry of
`idx_to_symbol`) instead of by index.

Checked, each failure naming the file, the example index and the field: every field present
and of its type; symbols unique, non-empty, without whitespace; every index inside
`idx_to_symbol`; the target reachable from the root and `neg_target` not (else the question
has no single answer); the steps a path of edges from the root to the target, one edge per
step, whose last word names the child ("Every scrompus is a rempus." -> rempus).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence, Union

from ..base import TaskConfigError

__all__ = ["REQUIRED_FIELDS", "CoconutFormatError", "GraphRecord", "parse_record", "read_coconut_json",
           "write_coconut_json", "bfs_distances", "words_of"]

REQUIRED_FIELDS = ("question", "answer", "steps", "idx_to_symbol", "edges", "root", "target", "neg_target")
PUNCTUATION = ".,?!"


class CoconutFormatError(TaskConfigError):
    """A Coconut-format example cannot be used; the message names the file, the example and the field."""


def words_of(text: str) -> list[str]:
    """ProsQA text as words: whitespace-separated, with `.,?!` split off as their own words."""
    out: list[str] = []
    for chunk in text.split():
        tail: list[str] = []
        while chunk and chunk[-1] in PUNCTUATION:
            tail.insert(0, chunk[-1])
            chunk = chunk[:-1]
        if chunk:
            out.append(chunk)
        out += tail
    return out


def bfs_distances(children: Sequence[Sequence[int]], start: int) -> dict[int, int]:
    """Shortest edge count from `start` to every node it reaches (`children[u]`: u's children)."""
    dist, frontier = {start: 0}, [start]
    while frontier:
        nxt = []
        for u in frontier:
            for v in children[u]:
                if v not in dist:
                    dist[v] = dist[u] + 1
                    nxt.append(v)
        frontier = nxt
    return dist


@dataclass(frozen=True)
class GraphRecord:
    """One validated example. `path` is the steps' route, root first, target last (node indices)."""

    question: str
    answer: str
    steps: tuple[str, ...]
    idx_to_symbol: tuple[str, ...]
    edges: tuple[tuple[int, int], ...]
    root: int
    target: int
    neg_target: int
    path: tuple[int, ...]
    neighbor_k: Optional[dict[int, tuple[int, ...]]] = field(default=None, compare=False, hash=False)

    @property
    def n_nodes(self) -> int:
        return len(self.idx_to_symbol)

    def children(self) -> list[list[int]]:
        out: list[list[int]] = [[] for _ in range(self.n_nodes)]
        for a, b in self.edges:
            out[a].append(b)
        return out

    def depths(self) -> dict[int, int]:
        """BFS distance from the root of every node the root reaches."""
        return bfs_distances(self.children(), self.root)

    def candidates(self) -> tuple[int, int]:
        """(first, second) candidate as the question names them ("... a hilpus or sterpus?"), or,
        when the question names neither, target/neg_target in an order fixed by the graph."""
        words = words_of(self.question.rsplit(".", 1)[-1])
        target, neg = self.idx_to_symbol[self.target], self.idx_to_symbol[self.neg_target]
        if target in words and neg in words:
            first = words.index(target) < words.index(neg)
        else:
            import zlib

            first = zlib.crc32(repr((self.edges, self.root)).encode()) % 2 == 0
        return (self.target, self.neg_target) if first else (self.neg_target, self.target)

    def stated_edges(self) -> tuple[tuple[int, int], ...]:
        """The edges in the order the question states them as facts ("Every A is a B." / "A is a
        B."), or in the `edges` order when the question does not state exactly those edges. (The
        official files list `edges` sorted by node, which would leak the graph's order.)"""
        index = {s: i for i, s in enumerate(self.idx_to_symbol)}
        stated = []
        for sentence in self.question.split(".")[:-1]:
            w = sentence.split()
            if w and w[0] == "Every":
                w = w[1:]
            if len(w) != 4 or w[1:3] != ["is", "a"] or w[0] not in index or w[3] not in index:
                return self.edges
            stated.append((index[w[0]], index[w[3]]))
        return tuple(stated) if sorted(stated) == sorted(self.edges) else self.edges

    def to_json(self) -> dict:
        out: dict[str, Any] = {"question": self.question, "answer": self.answer, "steps": list(self.steps),
                               "idx_to_symbol": list(self.idx_to_symbol), "edges": [list(e) for e in self.edges],
                               "root": self.root, "target": self.target, "neg_target": self.neg_target}
        if self.neighbor_k is not None:
            out["neighbor_k"] = {str(k): list(v) for k, v in sorted(self.neighbor_k.items())}
        return out


def _index(raw: Any, key: str, names: Sequence[str], where: str) -> int:
    """A node given by index (int, or a numeric string) or by its name in idx_to_symbol."""
    n = len(names)
    if isinstance(raw, bool):
        raise CoconutFormatError(f"{where}: field {key!r}: expected a node index, got {raw!r}")
    if isinstance(raw, str):
        if raw in names:
            return names.index(raw)
        if raw.strip().lstrip("-").isdigit():
            raw = int(raw.strip())
        else:
            raise CoconutFormatError(f"{where}: field {key!r}: {raw!r} is not in idx_to_symbol ({n} symbols)")
    if not isinstance(raw, int):
        raise CoconutFormatError(f"{where}: field {key!r}: expected a node index, got {raw!r}")
    if not 0 <= raw < n:
        raise CoconutFormatError(f"{where}: field {key!r}: {raw} is not an index into idx_to_symbol "
                                 f"(0..{n - 1}, {n} symbols)")
    return raw


def _edges(raw: Any, n: int, where: str) -> tuple[tuple[int, int], ...]:
    shown = raw if not isinstance(raw, str) or len(raw) <= 60 else raw[:60] + "..."
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError:
            raise CoconutFormatError(f"{where}: field 'edges': cannot parse {shown!r} as a JSON list of "
                                     "[parent, child] index pairs") from None
    if not isinstance(raw, list):
        raise CoconutFormatError(f"{where}: field 'edges': expected a list of [parent, child] index pairs, "
                                 f"got {type(raw).__name__}")
    out = []
    for j, e in enumerate(raw):
        if not (isinstance(e, (list, tuple)) and len(e) == 2 and all(isinstance(i, int) and not isinstance(i, bool)
                                                                      for i in e)):
            raise CoconutFormatError(f"{where}: field 'edges': entry {j} is {e!r}, not a [parent, child] index pair")
        a, b = int(e[0]), int(e[1])
        if not (0 <= a < n and 0 <= b < n):
            raise CoconutFormatError(f"{where}: field 'edges': entry {j} {[a, b]} is outside idx_to_symbol "
                                     f"(0..{n - 1})")
        if a == b:
            raise CoconutFormatError(f"{where}: field 'edges': entry {j} {[a, b]} is a self-loop")
        out.append((a, b))
    return tuple(out)


def _path(steps: Sequence[str], names: Sequence[str], root: int, target: int, children: list[list[int]],
          where: str) -> tuple[int, ...]:
    """The route the steps take: each step's last word names the child of the previous node."""
    path = [root]
    for j, step in enumerate(steps):
        words = [w for w in words_of(step) if w not in PUNCTUATION]
        if not words or words[-1] not in names:
            raise CoconutFormatError(f"{where}: field 'steps': step {j} {step!r} does not end with a node name "
                                     "from idx_to_symbol")
        child = names.index(words[-1])
        if child not in children[path[-1]]:
            raise CoconutFormatError(f"{where}: field 'steps': step {j} {step!r} goes from {names[path[-1]]!r} to "
                                     f"{words[-1]!r}, which is not an edge")
        path.append(child)
    if path[-1] != target:
        raise CoconutFormatError(f"{where}: field 'steps': the steps end at {names[path[-1]]!r}, not at the "
                                 f"target {names[target]!r}")
    return tuple(path)


def parse_record(raw: Any, index: int, source: str = "examples") -> GraphRecord:
    """Validate one JSON example (see the module docstring for what is checked)."""
    where = f"{source}: example {index}"
    if not isinstance(raw, dict):
        raise CoconutFormatError(f"{where}: expected a JSON object, got {type(raw).__name__}")
    missing = [k for k in REQUIRED_FIELDS if k not in raw]
    if missing:
        raise CoconutFormatError(f"{where}: missing field(s) {missing} (a Coconut example has {list(REQUIRED_FIELDS)})")
    for key in ("question", "answer"):
        if not isinstance(raw[key], str):
            raise CoconutFormatError(f"{where}: field {key!r}: expected a string, got {type(raw[key]).__name__}")
    steps = raw["steps"]
    if not isinstance(steps, list) or not all(isinstance(s, str) for s in steps):
        raise CoconutFormatError(f"{where}: field 'steps': expected a list of strings")
    if not steps:
        raise CoconutFormatError(f"{where}: field 'steps': empty (the target must be at least one edge away)")
    names = raw["idx_to_symbol"]
    if not isinstance(names, list) or not all(isinstance(s, str) and s and not any(c.isspace() for c in s)
                                              for s in names):
        raise CoconutFormatError(f"{where}: field 'idx_to_symbol': expected a list of non-empty names without spaces")
    if len(set(names)) != len(names):
        dup = sorted({s for s in names if names.count(s) > 1})
        raise CoconutFormatError(f"{where}: field 'idx_to_symbol': repeated name(s) {dup}")
    edges = _edges(raw["edges"], len(names), where)
    root, target, neg = (_index(raw[k], k, names, where) for k in ("root", "target", "neg_target"))
    children: list[list[int]] = [[] for _ in names]
    for a, b in edges:
        children[a].append(b)
    reach = bfs_distances(children, root)
    if target not in reach:
        raise CoconutFormatError(f"{where}: field 'target': {names[target]!r} is not reachable from the root "
                                 f"{names[root]!r}")
    if neg in reach:
        raise CoconutFormatError(f"{where}: field 'neg_target': {names[neg]!r} is reachable from the root "
                                 f"{names[root]!r}, so the question has two right answers")
    path = _path(steps, names, root, target, children, where)
    neighbor_k = None
    if raw.get("neighbor_k") is not None:
        nk = raw["neighbor_k"]
        if not isinstance(nk, dict):
            raise CoconutFormatError(f"{where}: field 'neighbor_k': expected an object {{k: [node, ...]}}")
        neighbor_k = {}
        for k, nodes in nk.items():
            if not str(k).isdigit() or not isinstance(nodes, list):
                raise CoconutFormatError(f"{where}: field 'neighbor_k': entry {k!r} is not k: [node, ...]")
            neighbor_k[int(k)] = tuple(_index(v, f"neighbor_k[{k}]", names, where) for v in nodes)
    return GraphRecord(raw["question"], raw["answer"], tuple(steps), tuple(names), edges, root, target, neg, path,
                       neighbor_k)


def read_coconut_json(path: Union[str, os.PathLike]) -> list[GraphRecord]:
    """Every example of a Coconut-format file, validated."""
    path = Path(path)
    if not path.is_file():
        raise CoconutFormatError(f"{path}: no such file (a Coconut-format JSON list of examples)")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CoconutFormatError(f"{path}: not JSON ({e})") from None
    if not isinstance(data, list):
        raise CoconutFormatError(f"{path}: expected a JSON list of examples, got {type(data).__name__}")
    return [parse_record(raw, i, str(path)) for i, raw in enumerate(data)]


def write_coconut_json(records: Sequence[GraphRecord], path: Union[str, os.PathLike]) -> Path:
    """Write `records` as a Coconut-format file (what `read_coconut_json` reads back)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([r.to_json() for r in records]) + "\n")
    return path
