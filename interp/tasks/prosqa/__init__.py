"""ProsQA (Hao et al. 2024, "Coconut") in its own JSON format: read from the official files or
generated here, in ProsQA's words or in the symbolic vocabulary of "Reasoning by Superposition"
(Zhu et al. 2025).

```python
from interp.tasks import make_task
task = make_task("prosqa", vocabulary="symbolic", path_length=[3, 4])                 # generated
task = make_task("prosqa", vocabulary="words", files={"train": "data/prosqa_train.json",
                 "val": "data/prosqa_valid.json", "test": "data/prosqa_test.json"})   # the official files
task.write("out/prosqa")      # prosqa_{train,valid,test}.json in the Coconut format
```

**Vocabularies.** `words`: the question, steps and answer texts as words (`.` and `?` split
off), one CoT step per sentence, as Coconut trains on them:

    <bos> Every gerpus is a terpus . ... Is Sally a hilpus or sterpus ?
    <bot> Sally is a scrompus . Every scrompus is a rempus . Every rempus is a sterpus . <eot> Sally is a sterpus . <eos>

`symbolic`: each node is its index's symbol (`0` .. `n_symbols - 1`), as in
Ber666/reasoning-by-superposition: the edges, `|`-separated, the two candidates after `[Q]`, the
root after `[R]`; the CoT is the path's nodes, one node per step; the answer the target:

    <bos> 3 7 | 0 3 | 7 12 | ... [Q] 12 9 [R] 0 <bot> 3 7 12 <eot> 12 <eos>

The candidates appear in the order the question names them. The vocabulary is fixed per
option (symbolic: specials, `| [Q] [R]`, the symbols; words: specials, ProsQA's structure
words, our generator's names, then every other word of the given files, sorted).

**Generated data** (`files` unset; `generate.py`): difficulty controls `n_nodes`, `n_persons`,
`edges_per_node` (density), `path_length` (the target's distance from the root: CoT steps)
and `diameter`; `test_overrides` changes them for the test split only, for out-of-distribution
tests: `{path_length: [5, 6]}` (longer paths), `{edges_per_node: 2.4}` (denser graphs). Each
split is drawn from its own seeded stream (test, val, train; none shares an example), so the
test split does not depend on `n_train` or the training data on `test_overrides`.

**Files** (`files: {train, val, test}`; any subset, missing splits are empty): every example is
validated (`format.py`); `n_train`/`n_val`/`n_test` take the first n (default: all).

`Example.meta` holds the graph by token: `edges`, `root`, `target`, `distractor` (the negative
target), `path`, `depth` (BFS distance of every node the root reaches), `neighbor_k`, plus
`step_spans` and `n_steps` (what `interp.training.coconut` and `interp.thoughts` read). Segments
and masking modes are those of `interp.tasks.graph`.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Optional, Sequence, Union

from ...tokenizers import Tokenizer, word_tokenizer
from ..base import Example, Task, TaskConfigError, check_choice, check_int
from ..graph import MASKING_MODES, REASONING_SPECIALS, _range, build_facts_example
from .format import CoconutFormatError, GraphRecord, parse_record, read_coconut_json, words_of, write_coconut_json
from .generate import PERSON_NAMES, GraphSpec, generate_record
from ..graph import CONCEPTS

__all__ = ["ProsQATask", "GraphRecord", "GraphSpec", "CoconutFormatError", "read_coconut_json", "write_coconut_json",
           "parse_record", "generate_record", "symbolic_tokenizer", "VOCABULARIES", "FILE_NAMES"]

VOCABULARIES = ("symbolic", "words")
STRUCTURE_WORDS = ("Every", "Is", "is", "a", "or", ".", "?")
SYMBOLIC_WORDS = ("|", "[Q]", "[R]")
FILE_NAMES = {"train": "prosqa_train.json", "val": "prosqa_valid.json", "test": "prosqa_test.json"}  # Coconut's
DEFAULT_SIZES = {"train": 20000, "val": 300, "test": 500}
SYMBOLS = tuple(str(i) for i in range(4096))
GENERATOR_OPTIONS = ("n_nodes", "n_persons", "edges_per_node", "path_length", "diameter")


def symbolic_tokenizer(n_symbols: int) -> Tokenizer:
    """Specials (ids 0..5), `| [Q] [R]`, then the node symbols `0` .. `n_symbols - 1`."""
    return word_tokenizer(list(SYMBOLIC_WORDS) + [str(i) for i in range(n_symbols)], specials=REASONING_SPECIALS)


def words_tokenizer(extra: Sequence[str] = ()) -> Tokenizer:
    base = list(STRUCTURE_WORDS) + list(PERSON_NAMES) + list(CONCEPTS)
    known = set(base)
    return word_tokenizer(base + sorted({w for w in extra if w not in known}), specials=REASONING_SPECIALS)


class ProsQATask(Task):
    name = "prosqa"

    def __init__(
        self,
        vocabulary: str = "symbolic",
        files: Optional[dict] = None,
        n_nodes: Union[int, list[int]] = (20, 26),
        n_persons: Union[int, list[int]] = (2, 4),
        edges_per_node: float = 1.6,
        path_length: Union[int, list[int]] = (3, 4),
        diameter: Union[None, int, list[int]] = None,
        test_overrides: Optional[dict] = None,
        n_symbols: int = 32,
        step_masking_mode: str = "none",
        n_train: Optional[int] = None,
        n_val: Optional[int] = None,
        n_test: Optional[int] = None,
        seed: int = 0,
    ):
        t = self.name
        check_choice(t, "vocabulary", vocabulary, VOCABULARIES)
        check_choice(t, "step_masking_mode", step_masking_mode, MASKING_MODES)
        check_int(t, "n_symbols", n_symbols, 2)
        check_int(t, "seed", seed, 0)
        for opt, value in (("n_train", n_train), ("n_val", n_val), ("n_test", n_test)):
            check_int(t, opt, value, 0, optional=True)
        self.vocabulary, self.step_masking_mode, self.n_symbols = vocabulary, step_masking_mode, n_symbols
        self._seed = seed
        self._n = {"train": n_train, "val": n_val, "test": n_test}
        self._records: dict[str, list[GraphRecord]] = {}
        lists = lambda v: list(v) if isinstance(v, (list, tuple)) else v  # noqa: E731  (JSON-able config)
        generator = dict(n_nodes=lists(n_nodes), n_persons=lists(n_persons), edges_per_node=edges_per_node,
                         path_length=lists(path_length), diameter=lists(diameter))
        if files is not None:
            self._read_files(files)
            self.specs = None
        else:
            self.specs = {s: self._spec(generator) for s in ("train", "val")}
            if test_overrides is not None and not isinstance(test_overrides, dict):
                raise TaskConfigError(f"{t}: test_overrides must be a mapping of generator options, got {test_overrides!r}")
            unknown = sorted(set(test_overrides or {}) - set(GENERATOR_OPTIONS))
            if unknown:
                raise TaskConfigError(f"{t}: test_overrides: unknown option(s) {unknown}; valid: {list(GENERATOR_OPTIONS)}")
            self.specs["test"] = self._spec({**generator, **(test_overrides or {})}, "test_overrides.")
            if vocabulary == "symbolic":
                most = max(s.n_nodes[1] for s in self.specs.values())
                if most > n_symbols:
                    raise TaskConfigError(f"{t}: n_nodes max {most} exceeds n_symbols={n_symbols} (one symbol per node)")
        if vocabulary == "symbolic":
            self.tokenizer = symbolic_tokenizer(n_symbols)
        else:
            extra = {w for rs in self._records.values() for r in rs for w in _record_words(r)}
            self.tokenizer = words_tokenizer(sorted(extra))
        super().__init__(vocabulary=vocabulary, files=files, **generator, test_overrides=test_overrides,
                         n_symbols=n_symbols, step_masking_mode=step_masking_mode, n_train=n_train, n_val=n_val,
                         n_test=n_test, seed=seed)

    # ------------------------------------------------------------------ data
    def _spec(self, options: dict, prefix: str = "") -> GraphSpec:
        t = self.name
        try:
            epn = options["edges_per_node"]
            if isinstance(epn, bool) or not isinstance(epn, (int, float)):
                raise TaskConfigError(f"{t}: {prefix}edges_per_node must be a number, got {epn!r}")
            spec = GraphSpec(n_nodes=_range(t, prefix + "n_nodes", options["n_nodes"], 2),
                             n_persons=_range(t, prefix + "n_persons", options["n_persons"], 1),
                             edges_per_node=float(epn),
                             path_length=_range(t, prefix + "path_length", options["path_length"], 1),
                             diameter=None if options["diameter"] is None else
                             _range(t, prefix + "diameter", options["diameter"], 1))
        except TypeError as e:
            raise TaskConfigError(f"{t}: bad generator option: {e}") from None
        spec.check(t)
        return spec

    def _read_files(self, files: Any) -> None:
        t = self.name
        if not isinstance(files, dict) or not files:
            raise TaskConfigError(f"{t}: files must map splits to Coconut JSON files, e.g. {{train: {FILE_NAMES['train']}, "
                                  f"val: {FILE_NAMES['val']}, test: {FILE_NAMES['test']}}}; got {files!r}")
        unknown = sorted(set(files) - set(FILE_NAMES))
        if unknown:
            raise TaskConfigError(f"{t}: files: unknown split(s) {unknown}; use {list(FILE_NAMES)}")
        for split in FILE_NAMES:
            records = read_coconut_json(files[split]) if split in files else []
            n = self._n[split]
            if n is not None and n > len(records):
                has = f"{files[split]} has {len(records)} examples" if split in files else f"files has no {split!r} file"
                raise TaskConfigError(f"{t}: n_{split}={n} but {has}")
            self._records[split] = records[:n] if n is not None else records
            if self.vocabulary == "symbolic":
                for i, r in enumerate(self._records[split]):
                    if r.n_nodes > self.n_symbols:
                        raise CoconutFormatError(f"{files[split]}: example {i}: field 'idx_to_symbol': {r.n_nodes} nodes "
                                                 f"but n_symbols={self.n_symbols} (one symbol per node)")

    def records(self, split: str) -> list[GraphRecord]:
        """The split's examples as Coconut-format records (drawn on first use)."""
        if split not in FILE_NAMES:
            raise ValueError(f"unknown split {split!r}; choose from {list(FILE_NAMES)}")
        if split not in self._records:
            self._generate()
        return self._records[split]

    def _generate(self) -> None:
        seen: set = set()
        for split in ("test", "val", "train"):  # the order of the streams' precedence on a (rare) repeat
            n = self._n[split] if self._n[split] is not None else DEFAULT_SIZES[split]
            rng = random.Random(f"prosqa:{self._seed}:{split}")
            out, tries = [], 0
            while len(out) < n:
                tries += 1
                if tries > 50 * n + 1000:
                    raise TaskConfigError(f"{self.name}: found only {len(out)} distinct {split} graphs of {n}")
                r = generate_record(rng, self.specs[split])
                if r not in seen:
                    seen.add(r)
                    out.append(r)
            self._records[split] = out

    def write(self, out_dir: Union[str, Path]) -> list[Path]:
        """Write every split as a Coconut-format file (`FILE_NAMES`) under `out_dir`."""
        return [write_coconut_json(self.records(s), Path(out_dir) / FILE_NAMES[s]) for s in FILE_NAMES]

    def _build_splits(self) -> dict[str, Sequence[Example]]:
        return {s: [self.example_for(r) for r in self.records(s)] for s in FILE_NAMES}

    # ------------------------------------------------------------------ examples
    def node_tokens(self, record: GraphRecord) -> Sequence[str]:
        """The token of every node (index order): its symbol, or its name."""
        return SYMBOLS[: record.n_nodes] if self.vocabulary == "symbolic" else record.idx_to_symbol

    def example_for(self, record: GraphRecord) -> Example:
        tok = self.node_tokens(record).__getitem__
        first, second = record.candidates()
        stated = record.stated_edges()  # the order the prompt gives them (meta["edges"] too)
        if self.vocabulary == "symbolic":
            prompt: list[str] = []
            for j, (a, b) in enumerate(stated):
                prompt += ([] if j == 0 else ["|"]) + [tok(a), tok(b)]
            prompt += ["[Q]", tok(first), tok(second), "[R]", tok(record.root)]
            steps = [[tok(v)] for v in record.path[1:]]
            answer = [tok(record.target)]
        else:
            prompt = words_of(record.question)
            steps = [words_of(s) for s in record.steps]
            answer = words_of(record.answer)
        depth = record.depths()
        meta = dict(root=tok(record.root), target=tok(record.target), distractor=tok(record.neg_target),
                    candidates=[tok(first), tok(second)], path=[tok(v) for v in record.path],
                    edges=[[tok(a), tok(b)] for a, b in stated], depth={tok(v): d for v, d in depth.items()},
                    n_steps=len(steps), vocabulary=self.vocabulary)
        if record.neighbor_k is not None:
            meta["neighbor_k"] = {k: [tok(v) for v in vs] for k, vs in record.neighbor_k.items()}
        return build_facts_example(self.tokenizer, self.step_masking_mode, prompt, steps, answer, meta)


def _record_words(r: GraphRecord) -> set[str]:
    return set(words_of(r.question)) | {w for s in r.steps for w in words_of(s)} | set(words_of(r.answer)) \
        | set(r.idx_to_symbol)
