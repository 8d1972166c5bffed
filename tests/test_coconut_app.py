"""The explorer's Latent thoughts page defaults to something the thoughts change: the tracked
answer token is the one they raise most, the donor the one whose thought moves it most, the
examples where the thoughts matter most are one click away, and graph checkpoints show the
nodes each thought holds; every number against direct `interp` calls (AppTest, as
tests/test_app.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from streamlit.testing.v1 import AppTest

from test_app import APP, _nan_close, _texts, charts, ok  # tests/ is on sys.path (rootdir conftest)

from interp import superposition, thoughts

ROOT = Path(__file__).resolve().parents[1] / "data" / "checkpoints"
GRAPH = "coconut_prosqa_coconut" if (ROOT / "coconut_prosqa_coconut").exists() else "coconut_graph_coconut"


def page(monkeypatch, **url):
    monkeypatch.setenv("INTERP_CHECKPOINT_ROOT", str(ROOT))
    monkeypatch.setattr(sys, "argv", ["explorer.py"])
    at = AppTest.from_file(APP, default_timeout=300)
    at.query_params.update(dict(page="thoughts", **url))
    return at.run()


@pytest.fixture(scope="module")
def add3():
    return thoughts.load(ROOT / "coconut_add3_coconut", task_overrides={"n_train": 0})


@torch.no_grad()
def test_defaults_track_what_the_thoughts_change(monkeypatch, add3):
    """Issue 22: add3's first test answer starts with the carry "1", which the question settles
    (0.98 with or without thoughts); the page tracks the digit the thoughts decide instead."""
    reasoner, tok, staged = add3
    at = page(monkeypatch, ckpt="coconut_add3_coconut")
    ok(at)
    off = thoughts.deciding_answer_offset(reasoner, staged, "test", 0)
    tl = thoughts.timeline(reasoner, staged, "test", 0, 5)
    assert off != 0 and tl["answer_offset"] == off
    fig = charts(at)["thought_timeline"]
    _nan_close(fig["data"][2]["y"], tl["answer_prob"], atol=1e-5)
    assert tl["answer_prob"][-1] - tl["answer_prob"][0] > 0.5 and f"answer token {off + 1}" in fig["layout"]["title"]["text"]
    # the suggestions: the examples (of the first 32) the thoughts matter most for
    ranked = [r for r in thoughts.showcase(reasoner, staged, "test", n=32) if r["gain"] > 0.05][:6]
    assert [b.label for b in at.button if b.key.startswith("showcase_")] == \
        [f"#{r['index']}: {r['p_none']:.2f}→{r['p_all']:.2f}" for r in ranked]
    # the patch: the donor whose thought moves the tracked token most
    best = thoughts.best_donor(reasoner, staged, "test", 0, 0, list(range(1, 33)), answer_offset=off)
    assert at.number_input(key="w.donor").value == best["donor"] and "donor" not in at.query_params
    donor_off = thoughts.deciding_answer_offset(reasoner, staged, "test", best["donor"])
    r = thoughts.patch_thought(reasoner, thoughts.latent_batch(staged, "test", 1, answer_offset=off),
                               thoughts.latent_batch(staged, "test", 1, start=best["donor"], answer_offset=donor_off), 0)
    assert at.metric[0].value == f"{float(r['p_answer_patched'][0]):.3f}"
    assert at.metric[1].value == f"{float(r['p_source_answer_patched'][0]):.3f}"
    assert ("**flips**" in _texts(at)) == bool(r["top_patched"][0] != r["top"][0])
    # one click to the example the thoughts matter most for
    at.button(key=f"showcase_{ranked[0]['index']}").click().run()
    ok(at)
    assert at.query_params["index"] == str(ranked[0]["index"])
    want = thoughts.timeline(reasoner, staged, "test", ranked[0]["index"], 5)
    _nan_close(charts(at)["thought_timeline"]["data"][2]["y"], want["answer_prob"], atol=1e-5)


@torch.no_grad()
def test_graph_checkpoints_show_the_nodes_each_thought_holds(monkeypatch):
    at = page(monkeypatch, ckpt=GRAPH, index="2")
    ok(at)
    reasoner, _, staged = thoughts.load(ROOT / GRAPH, task_overrides={"n_train": 0})
    want = superposition.thought_node_scores(reasoner, staged, "test", n=1, start=2)
    fig = charts(at)["thought_frontier_nodes"]
    z = np.array(fig["data"][0]["z"], dtype=float)
    rows = fig["data"][0]["y"]
    ks = sorted({r["k"] for r in want["rows"]})
    assert fig["data"][0]["x"] == [f"thought {k}" for k in ks]
    for r in want["rows"]:
        i = next(j for j, y in enumerate(rows) if y.split(" (")[0] == r["node"])
        assert z[i, ks.index(r["k"])] == pytest.approx(r["prob"], abs=1e-5)
        mark = fig["data"][0]["text"][i][ks.index(r["k"])]
        assert mark == ("★" if "optimal" in r["groups"] else "•" if "frontier" in r["groups"] else "")
