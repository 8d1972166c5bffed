"""`interp.superposition` and `analyses/thought_superposition.py`: node groups against a brute
force BFS, thoughts' inner products and lens probabilities against the naive one-full-forward-
per-thought reference, edge attention and edge-copying heads against plain TransformerLens
caches of the filled-in sequence; the analysis end to end on a tiny CPU-trained model and on
the shipped Coconut graph checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from interp import superposition, thoughts
from interp.training import train
from models.thoughts import latent_forward_naive

ROOT = Path(__file__).resolve().parents[1] / "data" / "checkpoints"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A 2-layer Coconut model trained a few steps on small symbolic ProsQA graphs (normed thoughts)."""
    out = tmp_path_factory.mktemp("sp") / "run"
    cfg = {"name": "sp",
           "model": {"preset": "math-compact", "size": "tiny", "n_layers": 2, "d_model": 32, "n_heads": 2},
           "task": {"name": "prosqa", "n_nodes": [8, 10], "n_persons": [2, 2], "edges_per_node": 1.3,
                    "path_length": [2, 3], "n_symbols": 12, "n_train": 64, "n_val": 8, "n_test": 12},
           "train": {"trainer": "coconut", "steps": 6, "batch_size": 16, "lr": 3e-3, "warmup": 1, "eval_every": 6,
                     "eval_generate": 4, "eval_batches": 1, "save_every": 6, "log_every": 3, "out_dir": str(out),
                     "progress": False, "device": "cpu",
                     "coconut": {"mode": "coconut", "epochs_per_stage": 0.25, "max_latent_stage": 3,
                                 "pad_latent_to_max": False, "thought": "normed", "uniform_prob": 0.1}}}
    last = train(cfg)
    reasoner, tok, staged = thoughts.load(last, task_overrides={"n_train": 0})
    return last, reasoner, tok, staged


def test_node_groups_against_a_brute_force_bfs(tiny):
    _, _, _, staged = tiny
    for p in staged.parts("test"):
        meta = p.example.meta
        edges = [tuple(e) for e in meta["edges"]]
        nodes = {v for e in edges for v in e}
        for k in range(1, meta["n_steps"] + 1):
            reach, frontier = {meta["root"]}, {meta["root"]}
            for _ in range(k):
                frontier = {t for s, t in edges if s in frontier}
                reach |= frontier
            exact = {v for v in frontier if all(v not in f for f in _frontiers(edges, meta["root"], k - 1))}
            g = superposition.node_groups(meta, k)
            assert set(g["reachable"]) == reach and set(g["not_reachable"]) == nodes - reach
            assert set(g["frontier"]) == exact and set(g["optimal"]) <= set(g["frontier"])
            assert meta["path"][k] in g["optimal"]


def _frontiers(edges, root, k):
    out, f = [{root}], {root}
    for _ in range(k):
        f = {t for s, t in edges if s in f}
        out.append(f)
    return out


@torch.no_grad()
def test_inner_products_and_lens_against_the_naive_reference(tiny):
    _, reasoner, tok, staged = tiny
    scores = superposition.thought_node_scores(reasoner, staged, "test", n=4)
    vocab = tok.get_vocab()
    emb = reasoner.model.embed.weight
    for i in range(4):
        batch = thoughts.latent_batch(staged, "test", 1, start=i)
        _, want = latent_forward_naive(reasoner.model, batch.input_ids, staged.latent_id, thought="normed")
        probs = reasoner.model.unembed_resid(want[0]).softmax(-1)  # normed thought: its own logits
        rows = [r for r in scores["rows"] if r["example"] == i]
        assert {r["k"] for r in rows} == set(range(1, batch.n_latents + 1))
        for r in rows:
            t = vocab[r["node"]]
            inner = float(want[0, r["k"] - 1] @ emb[t])
            assert r["inner"] == pytest.approx(inner, rel=1e-4, abs=1e-4)
            assert r["prob"] == pytest.approx(float(probs[r["k"] - 1, t]), rel=1e-4, abs=1e-6)
    # the group means are the means of the rows
    for k_i, k in enumerate(scores["thoughts"]):
        per_ex = {}
        for r in scores["rows"]:
            if r["k"] == k and "frontier" in r["groups"]:
                per_ex.setdefault(r["example"], []).append(r["inner"])
        mean = sum(sum(v) / len(v) for v in per_ex.values()) / len(per_ex)
        assert scores["inner"]["frontier"][k_i] == pytest.approx(mean, rel=1e-5, abs=1e-6)  # fp32 vs fp64 means
        assert scores["count"]["frontier"][k_i] == len(per_ex)


@torch.no_grad()
def _filled_cache(reasoner, staged, batch):
    """A TransformerLens cache of one full forward over the sequence with its thoughts filled in
    (the naive reference's embeddings)."""
    model = reasoner.model
    _, fed = latent_forward_naive(model, batch.input_ids, staged.latent_id, thought="normed")
    embeds = model.embed(batch.input_ids).clone()
    slots = (batch.input_ids[0] == staged.latent_id).nonzero().flatten()
    embeds[0, slots] = fed[0]
    return model.run_with_cache(inputs_embeds=embeds)[1]


def test_edge_attention_against_a_plain_cache(tiny):
    _, reasoner, _, staged = tiny
    got = superposition.edge_attention(reasoner, staged, "test", n=1, layer=-1)
    batch = thoughts.latent_batch(staged, "test", 1)
    cache = _filled_cache(reasoner, staged, batch)
    pattern = cache["blocks.1.attn.hook_pattern"][0].sum(0)  # (query, key), summed over heads
    ids = batch.input_ids[0].tolist()
    pos = superposition.edge_positions(staged, ids)
    meta = batch.examples[0].meta
    bot = int(batch.bot[0])
    for k in got["thoughts"]:
        row = pattern[bot + k - 1]  # the position producing thought k
        groups = superposition._edge_groups(meta, k)
        for g in got["groups"]:
            vals = [float(row[list(p)].sum()) for p, gg in zip(pos, groups) if gg == g]
            want = sum(vals) / len(vals) if vals else None
            assert got["mean"][g][k - 1] == (pytest.approx(want, rel=1e-4, abs=1e-6) if vals else None)
    row = pattern[int(batch.eot[0])]
    groups = superposition._edge_groups(meta, batch.n_latents + 1)
    vals = [float(row[list(p)].sum()) for p, gg in zip(pos, groups) if gg == "reachable"]
    assert got["answer_mean"]["reachable"] == pytest.approx(sum(vals) / len(vals), rel=1e-4, abs=1e-6)


def test_edge_copy_heads_against_a_plain_cache(tiny):
    _, reasoner, _, staged = tiny
    got = superposition.edge_copy_heads(reasoner, staged, "test", n=2)
    sep = torch.zeros(reasoner.model.cfg.n_heads)
    tgt = torch.zeros_like(sep)
    count = 0
    for i in range(2):
        batch = thoughts.latent_batch(staged, "test", 1, start=i)
        pattern = _filled_cache(reasoner, staged, batch)["blocks.0.attn.hook_pattern"][0]  # (head, query, key)
        for s, t, e in superposition.edge_positions(staged, batch.input_ids[0].tolist()):
            sep += pattern[:, e, s] + pattern[:, e, t]
            tgt += pattern[:, t, s]
            count += 1
    assert got["n_edges"] == count
    assert got["separator_to_edge"] == pytest.approx((sep / count).tolist(), rel=1e-4, abs=1e-6)
    assert got["target_to_source"] == pytest.approx((tgt / count).tolist(), rel=1e-4, abs=1e-6)


def test_edge_positions_refuse_other_vocabularies():
    from interp.tasks import make_task
    from interp.training.coconut import StagedTask, coconut_options

    staged = StagedTask(make_task("prosqa", vocabulary="words", n_train=0, n_val=0, n_test=2), coconut_options({}))
    with pytest.raises(ValueError, match="symbolic vocabulary"):
        superposition.edge_positions(staged, staged.parts("test")[0].example.input_ids)


def test_the_analysis_end_to_end(tiny, tmp_path):
    from analyses import thought_superposition

    last, *_ = tiny
    thought_superposition.main(["--ckpt", str(last), "--out", str(tmp_path), "--n", "3"])
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["n_examples"] == 3 and 0 <= s["accuracy"] <= 1
    assert set(s["nodes"]["inner"]) == set(superposition.NODE_GROUPS) and s["copy_heads"]["layer"] == 0
    assert set(s["checks"]) >= {"inner_frontier_gt_not_reachable", "edges_frontier_gt_not_reachable"}
    for name in ("thought_node_inner", "thought_node_prob", "edge_attention", "edge_copy_heads"):
        assert (tmp_path / f"{name}.html").exists()


# ------------------------------------------------------------------ the shipped checkpoint
# Today's shipped Coconut graph model (coconut_graph_coconut: 6 x 128, words, at chance) shows
# only a weak trace of the frontier. When the symbolic reproduction ships
# (coconut_prosqa_coconut), this test reads it instead; the assertions for it are in
# the report of issue 25 (every thought: reachable and frontier above not-reachable).
SHIPPED = ROOT / "coconut_prosqa_coconut" if (ROOT / "coconut_prosqa_coconut").exists() else ROOT / "coconut_graph_coconut"


def test_shipped_coconut_thoughts(tmp_path):
    from analyses import thought_superposition

    thought_superposition.main(["--ckpt", str(SHIPPED), "--out", str(tmp_path), "--n", "8"])
    s = json.loads((tmp_path / "summary.json").read_text())
    inner = s["nodes"]["inner"]
    if SHIPPED.name == "coconut_graph_coconut":
        assert s["nodes"]["thoughts"] == [1, 2, 3, 4, 5, 6] and s["edges"].startswith("skipped")  # words vocabulary
        # the weak trace: the first two thoughts sit closer to the frontier's nodes than to the rest
        assert inner["frontier"][0] > inner["not_reachable"][0] and inner["frontier"][1] > inner["not_reachable"][1]
        assert inner["optimal"][1] > inner["frontier"][1]
    else:
        assert all(s["checks"]["inner_frontier_gt_not_reachable"])
        assert all(s["checks"]["inner_reachable_gt_not_reachable"])
