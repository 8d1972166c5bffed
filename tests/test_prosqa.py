"""The `prosqa` task: the Coconut JSON format read from the official files (a sample of
facebookresearch/coconut's and Ber666/reasoning-by-superposition's test files, unchanged, in
tests/data), written by our generator and read back, in both vocabularies; the generator's
difficulty controls and OOD splits; bad files refused naming the example and the field."""

from __future__ import annotations

import collections
import copy
import json
import statistics
from pathlib import Path

import pytest

from interp.tasks import ANSWER, IGNORE_INDEX, PROMPT, STEP, TaskConfigError, make_task
from interp.tasks.prosqa import CoconutFormatError, GraphSpec, generate_record, parse_record, read_coconut_json
from interp.tasks.prosqa.format import bfs_distances, words_of
from interp.tasks.prosqa.generate import graph_diameter

SAMPLE = json.loads((Path(__file__).parent / "data" / "prosqa_official_sample.json").read_text())


def write(tmp_path, name, examples):
    path = tmp_path / name
    path.write_text(json.dumps(examples))
    return path


def small(**kw):
    return make_task("prosqa", **{"n_train": 200, "n_val": 30, "n_test": 30, **kw})


# ------------------------------------------------------------------ the official files
def test_official_examples_read_as_coconut_reads_them(tmp_path):
    """The question, steps and answer of ProsQA as words (one CoT step per sentence); the
    steps' route is an edge path from the root to the target."""
    path = write(tmp_path, "prosqa_test.json", SAMPLE["coconut"])
    task = make_task("prosqa", vocabulary="words", files={"test": str(path)})
    assert task.n_train == 0 and task.n_test == 3
    raw = SAMPLE["coconut"][0]
    ex = task.split("test")[0]
    tok = task.tokenizer
    words = lambda s: tok.decode(tok.convert_tokens_to_ids(words_of(s)))  # noqa: E731
    assert ex.text == (f"<bos> {words(raw['question'])} <bot> " + " ".join(words(s) for s in raw["steps"])
                       + f" <eot> {words(raw['answer'])} <eos>")
    assert ex.meta["path"] == ["Sally", "scrompus", "rempus", "sterpus"] and ex.meta["n_steps"] == 3
    assert ex.meta["target"] == "sterpus" and ex.meta["distractor"] == "hilpus"
    assert [tok.decode(ex.input_ids[a:b]) for a, b in ex.meta["step_spans"]] == [words(s) for s in raw["steps"]]
    assert ex.meta["depth"]["sterpus"] == 3 and "hilpus" not in ex.meta["depth"]


def test_official_superposition_examples_in_the_symbolic_vocabulary(tmp_path):
    """As reasoning-by-superposition lays them out: `a b | c d ... [Q] x y [R] root`, the path's
    nodes as the CoT; edges in the order the question states them (the files list them sorted)."""
    path = write(tmp_path, "graph4.json", SAMPLE["superposition"])
    task = make_task("prosqa", vocabulary="symbolic", files={"test": str(path), "val": str(path)})
    raw = SAMPLE["superposition"][0]
    rec = task.records("test")[0]
    assert sorted(rec.stated_edges()) == sorted(map(tuple, raw["edges"])) and rec.stated_edges() != rec.edges
    ex = task.split("test")[0]
    edges = " | ".join(f"{a} {b}" for a, b in rec.stated_edges())
    first, second = rec.candidates()
    names = raw["idx_to_symbol"]
    assert raw["question"].rstrip("?").endswith(f"a {names[first]} or {names[second]}")  # the question's order
    steps = " ".join(str(v) for v in rec.path[1:])
    assert ex.text == (f"<bos> {edges} [Q] {first} {second} [R] {raw['root']} <bot> {steps} <eot> "
                       f"{raw['target']} <eos>")
    assert rec.neighbor_k == {int(k): tuple(v) for k, v in raw["neighbor_k"].items()}
    assert [int(v) for v in ex.meta["path"][1:]] == list(rec.path[1:])


def test_every_official_example_parses_and_is_consistent():
    for i, raw in enumerate(SAMPLE["coconut"] + SAMPLE["superposition"]):
        rec = parse_record(raw, i)
        depth = rec.depths()
        assert depth[rec.target] == len(rec.steps) and rec.neg_target not in depth
        assert rec.path[0] == rec.root and rec.path[-1] == rec.target
        assert all((a, b) in set(rec.edges) for a, b in zip(rec.path, rec.path[1:]))
        assert rec.to_json() == {**{k: raw[k] for k in raw if k != "neighbor_k"},
                                 **({"neighbor_k": raw["neighbor_k"]} if "neighbor_k" in raw else {})}


# ------------------------------------------------------------------ bad input
def bad(tmp_path, change, field):
    examples = copy.deepcopy(SAMPLE["coconut"])
    change(examples[2])
    path = write(tmp_path, "bad.json", examples)
    with pytest.raises(CoconutFormatError) as e:
        make_task("prosqa", vocabulary="words", files={"train": str(path)})
    msg = str(e.value)
    assert str(path) in msg and "example 2" in msg and field in msg, msg
    return msg


def test_missing_field_is_refused_naming_it(tmp_path):
    assert "'edges'" in bad(tmp_path, lambda ex: ex.pop("edges"), "missing field")
    bad(tmp_path, lambda ex: ex.pop("neg_target"), "neg_target")


@pytest.mark.parametrize("edges", ["[[0, 2], [1, 3", "0 2 | 1 3", "{}", "[[0, 1, 2]]", "[[0, 999]]"])
def test_unparseable_edges_are_refused(tmp_path, edges):
    bad(tmp_path, lambda ex: ex.__setitem__("edges", edges), "field 'edges'")


def test_edges_as_a_json_string_are_read():
    raw = dict(SAMPLE["coconut"][0], edges=json.dumps(SAMPLE["coconut"][0]["edges"]))
    assert parse_record(raw, 0).edges == parse_record(SAMPLE["coconut"][0], 0).edges


@pytest.mark.parametrize("target", [9999, -1, "nosuchpus", True])
def test_target_not_in_idx_to_symbol_is_refused(tmp_path, target):
    bad(tmp_path, lambda ex: ex.__setitem__("target", target), "field 'target'")


def test_target_by_name_is_read_and_inconsistent_graphs_refused(tmp_path):
    raw = SAMPLE["coconut"][0]
    assert parse_record(dict(raw, target="sterpus"), 0).target == raw["target"]
    # the negative target reachable from the root: two right answers
    bad(tmp_path, lambda ex: ex.__setitem__("neg_target", ex["steps"] and ex["target"]), "field 'neg_target'")
    bad(tmp_path, lambda ex: ex.__setitem__("steps", ex["steps"][:-1]), "field 'steps'")
    bad(tmp_path, lambda ex: ex["idx_to_symbol"].__setitem__(3, ex["idx_to_symbol"][4]), "field 'idx_to_symbol'")
    msg = bad(tmp_path, lambda ex: ex.__setitem__("steps", "Sally is a rempus."), "field 'steps'")
    assert "list of strings" in msg


def test_symbolic_vocabulary_too_small_for_a_file(tmp_path):
    path = write(tmp_path, "t.json", SAMPLE["coconut"])
    with pytest.raises(CoconutFormatError, match=r"example 0: field 'idx_to_symbol'.*n_symbols=8"):
        make_task("prosqa", files={"test": str(path)}, n_symbols=8)


def test_bad_task_options_name_the_option(tmp_path):
    for opts, match in [(dict(vocabulary="letters"), "vocabulary"), (dict(files={"dev": "x.json"}), "dev"),
                        (dict(files={"test": str(tmp_path / "none.json")}, n_train=None, n_val=None, n_test=None), "no such file"),
                        (dict(files={"test": str(tmp_path / "none.json")}), "n_train=200 but files has no 'train' file"),
                        (dict(test_overrides={"depth": 3}), "test_overrides"),
                        (dict(n_nodes=[30, 40]), "n_symbols"), (dict(path_length=[4, 2]), "path_length"),
                        (dict(edges_per_node=9), "edges_per_node"), (dict(n_persons=[0, 2]), "n_persons")]:
        with pytest.raises(TaskConfigError, match=match):
            small(**opts).split("test")
    path = write(tmp_path, "t.json", SAMPLE["coconut"])
    with pytest.raises(TaskConfigError, match="n_test=5 but .* has 3"):
        make_task("prosqa", files={"test": str(path)}, n_test=5)


# ------------------------------------------------------------------ the generator
@pytest.mark.parametrize("vocabulary", ["symbolic", "words"])
def test_generated_files_read_back_unchanged(tmp_path, vocabulary):
    task = small(vocabulary=vocabulary)
    paths = task.write(tmp_path)
    assert [p.name for p in paths] == ["prosqa_train.json", "prosqa_valid.json", "prosqa_test.json"]
    back = make_task("prosqa", vocabulary=vocabulary, files={s: str(p) for s, p in zip(("train", "val", "test"), paths)})
    for split in ("train", "val", "test"):
        assert back.records(split) == task.records(split)
        assert [e.input_ids for e in back.split(split)] == [e.input_ids for e in task.split(split)]
    if vocabulary == "words":
        assert back.tokenizer.get_vocab() == task.tokenizer.get_vocab()  # no word outside the fixed vocabulary


def test_generated_graphs_meet_their_controls():
    spec = GraphSpec(n_nodes=(12, 16), n_persons=(2, 3), edges_per_node=1.4, path_length=(2, 5), diameter=(4, 6))
    import random

    rng = random.Random(0)
    lengths = collections.Counter()
    for _ in range(150):
        r = generate_record(rng, spec)
        children = r.children()
        dist = bfs_distances(children, r.root)
        assert 12 <= r.n_nodes <= 16 and 4 <= graph_diameter(children) <= 6
        assert dist[r.target] == len(r.path) - 1 == len(r.steps) and r.neg_target not in dist
        assert not children[r.target] and not children[r.neg_target]  # both candidates are sinks
        assert all(b in children[a] for a, b in zip(r.path, r.path[1:]))
        # neighbor_k: exactly the nodes at distance k on some shortest path to the target
        reverse = [[a for a in range(r.n_nodes) if b in children[a]] for b in range(r.n_nodes)]
        to_t = bfs_distances(reverse, r.target)
        L = dist[r.target]
        assert r.neighbor_k == {k: tuple(sorted(u for u, d in dist.items() if d == k and to_t.get(u) == L - k))
                                for k in range(L + 1)}
        assert all(r.path[k] in r.neighbor_k[k] for k in range(L + 1))
        lengths[L] += 1
    assert set(lengths) == {2, 3, 4, 5}
    assert collections.Counter(generate_record(rng, spec).root for _ in range(60)).most_common(1)[0][1] < 20  # shuffled


def test_defaults_look_like_the_official_prosqa_graphs():
    recs = small(n_train=0, n_val=0, n_test=300).records("test")
    official = [parse_record(r, i) for i, r in enumerate(SAMPLE["coconut"])]
    nodes = statistics.mean(r.n_nodes for r in recs)
    edges = statistics.mean(len(r.edges) for r in recs)
    reach = statistics.mean(len(r.depths()) for r in recs)
    assert 21 <= nodes <= 25 and 26 <= edges <= 40 and 11 <= reach <= 19  # ProsQA test: 22.8, 35.8, 13.4
    assert {len(r.steps) for r in recs} == {3, 4}
    assert all(20 <= r.n_nodes <= 28 for r in official)


def test_ood_test_splits_longer_and_denser_and_training_data_unchanged():
    base = small()
    longer = small(test_overrides={"path_length": [5, 6]})
    denser = small(test_overrides={"edges_per_node": 2.4})
    assert {len(r.steps) for r in longer.records("test")} == {5, 6}
    assert all(len(r.steps) in (3, 4) for r in longer.records("train") + longer.records("val"))
    density = lambda t: statistics.mean(len(r.edges) / r.n_nodes for r in t.records("test"))  # noqa: E731
    assert density(denser) > density(base) + 0.4
    for t in (longer, denser):
        assert t.records("train") == base.records("train") and t.records("val") == base.records("val")
    # the test split does not depend on the training split's size
    assert small(n_train=0).records("test") == base.records("test")


def test_splits_disjoint_deterministic_and_seeded():
    a, b = small(), small()
    assert a.records("train") == b.records("train")
    seen = [set(a.records(s)) for s in ("train", "val", "test")]
    assert not (seen[0] & seen[1]) and not (seen[0] & seen[2]) and not (seen[1] & seen[2])
    assert small(seed=1).records("test") != a.records("test")


@pytest.mark.parametrize("vocabulary", ["symbolic", "words"])
def test_base_conventions(vocabulary):
    task = small(vocabulary=vocabulary, step_masking_mode="mask_steps")
    tok = task.tokenizer
    for ex in task.split("train")[:50]:
        ids, labels, seg = ex.input_ids, ex.labels, ex.segments
        assert ex.text == tok.decode(ids) and ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
        assert all(y in (IGNORE_INDEX, t) for y, t in zip(labels, ids))
        b, e = ids.index(tok.bot_token_id), ids.index(tok.eot_token_id)
        assert seg[:b] == [PROMPT] * b and seg[b : e + 1] == [STEP] * (e - b + 1) and set(seg[e + 1 :]) == {ANSWER}
        assert all(y == IGNORE_INDEX for y in labels[: e + 1])  # mask_steps: the answer is the only target
        assert ex.meta["path"][-1] == ex.meta["target"] and ex.meta["target"] in ex.meta["candidates"]
        assert ex.meta["distractor"] in ex.meta["candidates"] and ex.meta["depth"][ex.meta["target"]] == ex.meta["n_steps"]
        spans = ex.meta["step_spans"]
        assert spans[0][0] == b + 1 and spans[-1][1] == e
        if vocabulary == "symbolic":
            assert [tok.decode(ids[s:t]) for s, t in spans] == ex.meta["path"][1:]
    answers = collections.Counter(e.meta["candidates"].index(e.meta["target"]) for e in task.split("train"))
    assert 0.35 < answers[0] / sum(answers.values()) < 0.65  # the first candidate is right half the time


def test_the_data_script_writes_readable_files(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("coconut_data", Path(__file__).parents[1] / "scripts" / "coconut_data.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    paths = script.main(["--out", str(tmp_path), "--set", "n_train=5", "--set", "n_val=2", "--set", "n_test=3",
                         "--set", "test_overrides={path_length: [5, 5]}"])
    assert [len(read_coconut_json(p)) for p in paths] == [5, 2, 3]
    assert {len(r.steps) for r in read_coconut_json(paths[2])} == {5}
    with pytest.raises(SystemExit, match="no option"):
        script.main(["--out", str(tmp_path), "--set", "bogus=1"])
