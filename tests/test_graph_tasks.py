"""The ProsQA-like `graph` and ProntoQA-like `rules` tasks: the base conventions, the graph facts
(the CoT is the root's only path to the target, the distractor is unreachable), step spans,
balance, determinism, disjoint splits, option errors."""

from __future__ import annotations

import collections

import pytest

from interp.tasks import ANSWER, IGNORE_INDEX, PROMPT, STEP, TaskConfigError, make_task
from interp.tasks.graph import bfs_depths


def small(name, **kw):
    opts = dict(n_train=300, n_val=50, n_test=50, seed=3)
    opts.update(kw)
    return make_task(name, **opts)


@pytest.mark.parametrize("name", ["graph", "rules"])
def test_base_conventions_and_step_spans(name):
    task = small(name)
    tok = task.tokenizer
    assert tok.token_to_id("<latent>") is not None and tok.bot_token_id is not None
    for ex in task.split("train")[:100]:
        ids, labels, seg = ex.input_ids, ex.labels, ex.segments
        assert ex.text == tok.decode(ids)
        assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
        assert all(y in (IGNORE_INDEX, t) for y, t in zip(labels, ids))
        assert all(y == IGNORE_INDEX for y, s in zip(labels, seg) if s == PROMPT)
        b, e = ids.index(tok.bot_token_id), ids.index(tok.eot_token_id)
        assert seg[b : e + 1] == [STEP] * (e - b + 1) and set(seg[e + 1 :]) == {ANSWER}
        spans = ex.meta["step_spans"]
        assert spans[0][0] == b + 1 and spans[-1][1] == e and len(spans) == ex.meta["n_steps"]
        assert all(s1 == s0_end for (_, s0_end), (s1, _) in zip(spans, spans[1:]))  # back to back
        assert tok.decode(ids[e + 1 : -1]) == ex.meta["answer"]
        prompt, target = task.answer_spans(ex)
        assert prompt == ids[:b] and target == ids[b:]


def test_graph_cot_is_the_only_path_and_the_distractor_is_unreachable():
    task = small("graph", path_length=[2, 5], branching=2)
    tok = task.tokenizer
    lengths = collections.Counter()
    for ex in task.split("train"):
        m = ex.meta
        edges = [tuple(e) for e in m["edges"]]
        path = m["path"]
        assert all((a, b) in edges for a, b in zip(path, path[1:]))
        depth = bfs_depths(edges, m["root"])
        assert depth[m["target"]] == len(path) - 1 and m["distractor"] not in depth
        # no other route to the target: removing any path edge disconnects it
        for cut in zip(path, path[1:]):
            assert m["target"] not in bfs_depths([e for e in edges if e != cut], m["root"])
        steps = [tok.decode(ex.input_ids[s:t]) for s, t in m["step_spans"]]
        assert steps == [f"{a} is a {b} ." for a, b in zip(path, path[1:])]
        question = tok.decode(ex.input_ids[: ex.input_ids.index(tok.bot_token_id)]).split(" . ")[-1]
        assert question in (f"is {m['root']} a {m['target']} or a {m['distractor']} ?",
                            f"is {m['root']} a {m['distractor']} or a {m['target']} ?")
        lengths[len(path) - 1] += 1
        assert m["answer"] == m["target"]
    assert set(lengths) == {2, 3, 4, 5}
    firsts = collections.Counter(ex.text.split(" ? ")[0].split(" a ")[-2].split(" or")[0] == ex.meta["target"]
                                 for ex in task.split("train"))
    assert 0.4 < firsts[True] / 300 < 0.6  # the target is listed first about half the time


def test_rules_answers_follow_the_chain_and_are_balanced():
    task = small("rules", hops=[2, 4])
    answers = collections.Counter()
    for ex in task.split("train"):
        m = ex.meta
        facts = ex.text.split(" ? ")[0]
        chain = m["chain"]
        assert f"{m['person']} is a {chain[0]} ." in facts
        assert all(f"every {a} is a {b} ." in facts for a, b in zip(chain, chain[1:]))
        rule = f"every {chain[-1]} is {'' if m['holds'] else 'not '}{m['property']} ."
        opposite = f"is {'not ' if m['holds'] else ''}{m['property']} ."
        assert rule in facts and opposite in facts.replace(rule, "")  # the distractor rule
        answers[m["answer"]] += 1
        assert m["answer"] == ("yes" if m["holds"] else "no")
    assert 0.4 < answers["yes"] / 300 < 0.6


@pytest.mark.parametrize("name", ["graph", "rules"])
def test_splits_disjoint_and_deterministic(name):
    a, b = small(name), small(name)
    texts = {s: [e.text for e in a.split(s)] for s in ("train", "val", "test")}
    assert texts["train"] == [e.text for e in b.split("train")]
    assert not set(texts["train"]) & set(texts["test"]) and not set(texts["val"]) & set(texts["test"])
    assert texts["train"] != [e.text for e in small(name, seed=4).split("train")]


def test_masking_modes():
    for mode, steps, answer in (("mask_steps", False, True), ("mask_answer", True, False)):
        ex = small("graph", step_masking_mode=mode).split("train")[0]
        assert any(y != IGNORE_INDEX for y, s in zip(ex.labels, ex.segments) if s == STEP) == steps
        assert any(y != IGNORE_INDEX for y, s in zip(ex.labels, ex.segments) if s == ANSWER) == answer


@pytest.mark.parametrize("name,opts,match", [
    ("graph", {"path_length": [4, 2]}, "min > max"),
    ("graph", {"path_length": 6, "branching": 3, "n_concepts": 20}, "n_concepts"),
    ("graph", {"n_concepts": 500}, "exceeds"),
    ("rules", {"hops": 0}, "hops"),
    ("graph", {"step_masking_mode": "mask_all"}, "step_masking_mode"),
    ("graph", {"colour": "red"}, "no option"),
])
def test_bad_options_name_the_option(name, opts, match):
    with pytest.raises(TaskConfigError, match=match):
        small(name, **opts)
