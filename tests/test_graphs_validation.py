"""Attribution graphs against the real model (ablations), the `interp graph` command, the
graph_validation analysis and the graph figure."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import build, tokens
from test_graphs import T, transcoders, validate_against_fixture
from typer.testing import CliRunner

import interp
from interp import graphs, plots
from interp.cli import app
from interp.graphs import validate

ROOT = Path(__file__).resolve().parents[1]
VANILLA = ROOT / "data" / "checkpoints" / "shakespeare_vanilla"
SHIPPED = ROOT / "data" / "dictionaries" / "shakespeare_vanilla"
runner = CliRunner()


def test_spearman():
    assert validate.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert validate.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # ties take their average rank: ranks x (1, 2.5, 2.5, 4) vs y (1, 2, 3, 4)
    rx, ry = np.array([1, 2.5, 2.5, 4]), np.arange(1, 5)
    assert validate.spearman([0, 1, 1, 2], [5, 6, 7, 8]) == pytest.approx(np.corrcoef(rx, ry)[0, 1])
    assert np.isnan(validate.spearman([1, 1, 1], [1, 2, 3])) and np.isnan(validate.spearman([1, 2], [1, 2]))


def test_ablation_equals_the_graph_where_nothing_nonlinear_follows():
    """Last-layer features at the last position of a model without norms: only the (linear)
    unembedding follows them, so zeroing one in the real model moves the logit by exactly
    minus its edge to the logit, and the ablation machinery (splice with errors, zero through
    hook_sae_acts_post) must reproduce that."""
    model = build(norm="none")
    dicts = transcoders(model, arch="relu", d_sae=32)
    g = graphs.attribute(model, dicts, tokens(1, T)[0], progress=False)
    rows = validate.ablation_check(g, model, list(reversed(dicts)), k=len(g.of_kind("feature")))  # any order
    last = [r for r in rows if r["layer"] == model.cfg.n_layers - 1 and r["pos"] == T - 1]
    assert len(last) >= 3
    for r in last:
        assert r["ablation"] == pytest.approx(r["predicted"], rel=1e-4, abs=1e-6)
    earlier = [r for r in rows if r["layer"] == model.cfg.n_layers - 1 and r["pos"] < T - 1]
    assert all(abs(r["ablation"]) < 1e-6 and abs(r["predicted"]) < 1e-9 for r in earlier)
    # earlier layers: the real model's attention and features respond; the graph predicts the sign mostly
    assert validate.spearman([r["predicted"] for r in rows], [r["ablation"] for r in rows]) > 0.5


@pytest.fixture(scope="module")
def vanilla_dicts(tmp_path_factory):
    """Random transcoders of the shipped shape for the shipped shakespeare_vanilla, saved."""
    model, _ = interp.load(VANILLA)
    out = tmp_path_factory.mktemp("dicts")
    for i, d in enumerate(transcoders(model, d_sae=128, k=8)):
        d.cfg.model["checkpoint"] = str(VANILLA)
        d.save(out / f"mlp_{i}")
    return out


def test_graph_validation_analysis(vanilla_dicts, tmp_path):
    from analyses import graph_validation

    graph_validation.main(["--ckpt", str(VANILLA), "--transcoders", str(vanilla_dicts), "--out", str(tmp_path),
                           "--prompts", "2", "--len", "20", "--k", "6"])
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["n_prompts"] == 2 and s["n_features"] == 12 and len(s["prompts"][0]["rows"]) == 6
    for p in s["prompts"]:
        assert p["n_tokens"] == 20 and 0 <= p["completeness"] <= 1 and 0 <= p["replacement"] <= 1
        infl = [r["influence"] for r in p["rows"]]
        assert infl == sorted(infl, reverse=True)  # the top-influence features, in order
        assert all(np.isfinite(r["ablation"]) and np.isfinite(r["predicted"]) for r in p["rows"])
    assert -1 <= s["spearman_influence_vs_ablation"] <= 1
    assert (tmp_path / "influence_vs_ablation.html").exists()


@pytest.mark.skipif(not SHIPPED.exists(), reason="shipped shakespeare_vanilla transcoders not in data/ yet")
def test_shipped_graphs_follow_ablations(tmp_path):  # pragma: no cover - runs once the dictionaries ship
    from analyses import graph_validation

    graph_validation.main(["--ckpt", str(VANILLA), "--transcoders", str(SHIPPED), "--out", str(tmp_path)])
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["spearman_influence_vs_ablation"] > 0  # influence ranks real ablation effects (Anthropic: 0.72)


def test_cli_graph(vanilla_dicts, tmp_path):
    out = tmp_path / "g"
    r = runner.invoke(app, ["graph", "--ckpt", str(VANILLA), "--transcoders", str(vanilla_dicts),
                            "--prompt", "ROMEO:\\nBut soft, what li", "--out", str(out)])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert summary["prompt"].startswith("ROMEO:\nBut") and summary["full"]["counts"]["embedding"] == summary["n_tokens"]
    assert summary["targets"][0]["prob"] > 0 and summary["top_inputs"]
    validate_against_fixture(json.loads((out / "graph.json").read_text()))
    assert (out / "graph.html").exists()
    g = graphs.load(out / "graph")
    assert g.pruning["node_threshold"] == 0.8 and g.full is not None
    assert g.scores() == pytest.approx((summary["pruned"]["replacement"], summary["pruned"]["completeness"]))
    r = runner.invoke(app, ["graph", "--ckpt", str(VANILLA), "--transcoders", str(vanilla_dicts),
                            "--prompt", "x" * 300, "--out", str(out)])
    assert r.exit_code == 1 and "error: prompt is" in r.output and "context (256 tokens)" in r.output
    assert "Traceback" not in r.output
    r = runner.invoke(app, ["graph", "--ckpt", str(VANILLA), "--transcoders", str(vanilla_dicts),
                            "--prompt", "To be", "--target", "zz", "--out", str(out)])
    assert r.exit_code == 1 and "target 'zz' is 2 tokens" in r.output


def test_graph_figure():
    model = build()
    g = graphs.attribute(model, transcoders(model), tokens(1, T)[0], progress=False).prune()
    fig = plots.attribution_graph(g, max_edges=10, selected=g.nodes[-1].id)
    ids = [i for tr in fig.data if tr.customdata is not None for i in tr.customdata]
    assert sorted(ids) == sorted(n.id for n in g.nodes)
    x, y = plots.graph_layout(g)
    kinds = [n.kind for n in g.nodes]
    assert all(y[i] == 0 for i, k in enumerate(kinds) if k == "embedding")
    assert all(y[i] == model.cfg.n_layers + 1 for i, k in enumerate(kinds) if k == "logit")
    assert len({(round(a, 6), b) for a, b in zip(x, y)}) == len(g.nodes)  # no two nodes on one spot
    drawn = sum(np.isnan(np.asarray(tr.x, dtype=float)).sum() for tr in fig.data if tr.mode == "lines" and len(tr.x) > 2)
    assert drawn <= 10
    torch.manual_seed(0)
    x, y = [0.1, 0.2, 0.3, 0.4], [0.1, -0.3, 0.2, 0.4]
    f2 = plots.influence_vs_ablation(x, y, groups=["a", "a", "b", "b"], rho=validate.spearman(x, np.abs(y)))
    assert "rho = 0.800" in f2.layout.title.text and len(f2.data) == 2


def test_shipped_induction_graph_reads_the_earlier_occurrence():
    """The README's worked example, on the shipped induction_attn_only: in the middle of the
    repeat, the strongest input of the predicted token's logit is that token's embedding at its
    earlier occurrence (the induction head's OV path), carrying nearly all of the logit."""
    from analyses import graph_examples

    s, g = graph_examples.induction(30)
    assert s["n"] == 30 and s["top_is_earlier_occurrence"] == 1.0
    assert s["share_min"] > 0.9 and s["share_mean"] > 0.98  # measured: 0.924, 0.994
    assert g.scores() == pytest.approx((1.0, 1.0))  # no dictionaries: nothing unexplained
