"""Attribution graphs (`interp.graphs`) on tiny CPU models with random-init transcoders.

Exactness does not depend on how good a transcoder is (the error nodes take up what it misses),
so random dictionaries test everything: (a) each target logit equals the sum of its incoming
edges plus its constant, against a clean forward of the model; (b) the batched rows equal
one autograd backward per node through the real model run as the replacement; (c) each
feature's activation equals the sum of its inputs plus its constant; (d) pruning keeps the
stated fractions of influence; (e) the JSON passes a schema fixture written from
circuit-tracer's front-end models. Every preset, both stream layouts, SAE cuts, skips, GQA.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import PRESETS, build, tiny, tokens

from interp import features, graphs
from interp.features import DictionaryConfig
from interp.graphs import GraphError
from interp.graphs import prune as gprune

SCHEMA = json.loads((Path(__file__).parent / "data" / "circuit_tracer_graph_schema.json").read_text())
T = 10  # prompt length


def mlp_read(model) -> str:
    cfg = model.cfg
    if cfg.norm == "none":
        return "hook_resid_mid" if cfg.block == "sequential" else "hook_resid_pre"
    return "ln2.hook_normalized" if cfg.block == "sequential" else "ln1.hook_normalized"


def perturb_dictionary(d, seed: int) -> None:
    """Nonzero biases and skips, so every constant term is exercised."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in (d.b_dec, d.b_enc) + ((d.W_skip,) if d.W_skip is not None else ()):
            p.add_(torch.randn(p.shape, generator=g) * 0.1)


def transcoders(model, arch: str = "topk", d_sae: int = 48, k: int = 4, skip: bool = False, read: str = None,
                seed: int = 0) -> list:
    cfg = model.cfg
    out = []
    for layer in range(cfg.n_layers):
        torch.manual_seed(seed + layer)
        d = features.make(DictionaryConfig(
            arch=arch, d_in=cfg.d_model, d_sae=d_sae, k=k if arch in ("topk", "batchtopk") else None,
            hook_name=f"blocks.{layer}.{read or mlp_read(model)}", out_hook_name=f"blocks.{layer}.hook_mlp_out",
            skip=skip, normalize="none", model=features.model_identity(model)))
        perturb_dictionary(d, seed + layer)
        out.append(d.eval())
    return out


def sae(model, hook: str, d_sae: int = 40, k: int = 5, seed: int = 7):
    torch.manual_seed(seed)
    d = features.make(DictionaryConfig(arch="topk", d_in=model.cfg.d_model, d_sae=d_sae, k=k, hook_name=hook,
                                       normalize="none", model=features.model_identity(model)))
    perturb_dictionary(d, seed)
    return d.eval()


def check_exact(model, dicts, toks, **kw) -> graphs.AttributionGraph:
    """(a), (b), (c) on one graph; returns it."""
    prep = graphs.prepare(model, dicts, toks, **kw)
    g = graphs.attribute(model, dicts, toks, batch_size=5, progress=False, **kw)
    A = g.adjacency.double()
    # (a) each target logit (minus the mean logit) from a clean forward, no hooks
    with torch.no_grad():
        logits = model(toks[None])[0, -1].double()
    assert g.of_kind("logit"), "no logit node"
    for i in g.of_kind("logit"):
        n = g.nodes[i]
        value = float(logits[n.feature] - logits.mean())
        recon = float(A[i].sum()) + n.constant
        scale = float(A[i].abs().sum()) + abs(n.constant)
        assert abs(recon - value) <= 1e-4 * abs(value) + 1e-6 * scale, (n.id, recon, value)
    # (b) batched rows == one backward per node through the real model as the replacement
    naive = graphs.naive_rows(prep).double()
    rows = A[prep.target_rows]
    torch.testing.assert_close(rows, naive, rtol=1e-5, atol=1e-5 * float(naive.abs().max()))
    assert naive.abs().sum() > 0
    # (c) feature activation == sum of its inputs + constant
    feats = g.of_kind("feature")
    if feats:
        acts = torch.tensor([g.nodes[i].activation for i in feats], dtype=torch.float64)
        recon = A[feats].sum(1) + torch.tensor([g.nodes[i].constant for i in feats], dtype=torch.float64)
        scale = A[feats].abs().sum(1) + acts.abs()
        assert ((recon - acts).abs() <= 1e-4 * acts.abs() + 1e-6 * scale).all()
    # the node table: every active latent, one error per (dictionary, position), one token per position
    n_active = sum(int((d.encode(prep.rep.values[b.read]) != 0).sum()) for d, b in zip(
        [b.sae for b in prep.rep.bindings], prep.rep.bindings))
    assert g.counts["feature"] == n_active
    assert g.counts["error"] == len(dicts or []) * T and g.counts["embedding"] == T
    return g


# ============================================================================ (a) (b) (c)
@pytest.mark.parametrize("name", PRESETS)
def test_exact_every_preset(name):
    model = tiny(name)
    check_exact(model, transcoders(model), tokens(1, T)[0], logit_mass=0.5, max_logits=3)


@pytest.mark.parametrize("spec, saes", [
    (dict(stream="factored", factored_value="modulated", factored_out_proj=True), []),
    (dict(stream="factored", factored_value="identity", block="parallel"), ["blocks.0.hook_xt_post", "blocks.1.hook_xe_mid"]),
    (dict(stream="factored", factored_value="channel_mix", positional="alibi"), ["blocks.1.hook_xt_mid", "blocks.0.hook_attn_out"]),
    (dict(norm="none", positional="alibi"), ["blocks.0.hook_resid_pre", "blocks.1.hook_attn_out"]),
    (dict(norm="rmsnorm", n_kv_heads=2, ffn="swiglu", positional="rope"), ["blocks.1.hook_resid_mid", "blocks.0.hook_resid_post"]),
    (dict(block="parallel", positional="rope"), ["blocks.1.hook_resid_pre"]),
    (dict(block="shaped", norm="rmsnorm"), ["blocks.1.hook_resid_pre"]),
], ids=["modulated-outproj", "factored-parallel-cuts", "factored-alibi-cuts", "no-norm-cuts", "gqa-swiglu-cuts",
        "parallel", "shaped-rms"])
def test_exact_layouts_with_skips_and_cuts(spec, saes):
    model = build(**spec)
    dicts = transcoders(model, arch="relu", skip=True) + [sae(model, h, seed=i) for i, h in enumerate(saes)]
    g = check_exact(model, dicts, tokens(1, T)[0], logit_mass=0.5, max_logits=3)
    if model.cfg.stream == "factored":  # nodes carry their stream
        for n in g.nodes:
            if n.kind == "embedding":
                assert n.stream == "xt"
            elif n.kind in ("feature", "error"):
                hook = g.dictionaries[n.dictionary]["write"]
                assert n.stream == ("xe" if hook.endswith(("mlp_out",)) or "_xe_" in hook else "xt"), (hook, n.stream)


@pytest.mark.parametrize("arch", ["jumprelu", "batchtopk"])
def test_exact_other_architectures(arch):
    model = tiny("vanilla")
    dicts = transcoders(model, arch=arch, d_sae=40, k=6)
    if arch == "jumprelu":  # thresholds low enough that some latents fire on random weights
        with torch.no_grad():
            for d in dicts:
                d.log_threshold.fill_(-4.0)
    check_exact(model, dicts, tokens(1, T)[0])


def test_attention_only_without_and_with_saes():
    model = build(attn_only=True, n_kv_heads=2)
    toks = tokens(1, T)[0]
    g = check_exact(model, None, toks, logit_mass=0.5, max_logits=3)  # tokens -> logits, nothing unexplained
    assert g.counts["feature"] == g.counts["error"] == 0
    assert g.replacement() == pytest.approx(1.0) and g.completeness() == pytest.approx(1.0)
    cuts = [sae(model, "blocks.0.hook_resid_post"), sae(model, "blocks.1.hook_resid_post", seed=3)]
    g = check_exact(model, cuts, toks)
    # the last cut replaces the whole final residual: the logit's inputs are that SAE's nodes only
    logit = g.of_kind("logit")[0]
    sources = {g.nodes[j].dictionary for j in g.adjacency[logit].nonzero().flatten().tolist()}
    assert sources == {1}


def test_chunking_and_memory_budget_do_not_change_rows():
    model = tiny("llama-like")
    dicts, toks = transcoders(model), tokens(1, T)[0]
    a = graphs.attribute(model, dicts, toks, batch_size=1, progress=False).adjacency
    b = graphs.attribute(model, dicts, toks, batch_size=1000, progress=False).adjacency
    c = graphs.attribute(model, dicts, toks, memory_mb=0.01, progress=False).adjacency  # -> 1 row per chunk
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(a, c, rtol=1e-6, atol=1e-6)


# ============================================================================ (d) influence and pruning
def random_dag(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A graph like attribute's: 20 features, 4 errors, 4 tokens, 2 logits; A[t, s] only for s
    before t in the order tokens, errors, features (in index order), logits."""
    g = torch.Generator().manual_seed(seed)
    kinds = torch.tensor([0] * 20 + [1] * 4 + [2] * 4 + [3] * 2)
    rank = torch.cat([torch.arange(8, 28), torch.arange(4, 8), torch.arange(0, 4), torch.tensor([28, 29])])
    n = len(kinds)
    A = torch.randn(n, n, generator=g, dtype=torch.float64) * (torch.rand(n, n, generator=g) < 0.5)
    A = A * (rank[None, :] < rank[:, None]) * ((kinds == 0) | (kinds == 3))[:, None] * (kinds != 3)[None, :]
    w = torch.zeros(n, dtype=torch.float64)
    w[-2:] = torch.tensor([0.7, 0.2], dtype=torch.float64)
    return A, w, kinds


def test_influence_matches_the_closed_form():
    A, w, _ = random_dag()
    M = gprune.normalize(A)
    closed = w @ (torch.linalg.inv(torch.eye(len(w), dtype=M.dtype) - M) - torch.eye(len(w), dtype=M.dtype))
    torch.testing.assert_close(gprune.influence(A, w), closed)


def test_prune_keeps_the_stated_fractions():
    model = tiny("vanilla")
    g = graphs.attribute(model, transcoders(model, arch="relu", d_sae=32), tokens(1, T)[0], progress=False)
    inf = g.influence()
    kinds = g.kinds
    for node_t, edge_t in ((0.8, 0.98), (0.5, 0.9), (0.95, 0.99)):
        p = g.prune(node_threshold=node_t, edge_threshold=edge_t)
        kept = torch.tensor([g.index(n.id) for n in p.nodes])
        # the node pass keeps the smallest prefix (by influence) holding node_t of the total
        mask = inf >= gprune._threshold(inf, node_t)
        assert float(inf[mask].sum()) >= node_t * float(inf.sum()) - 1e-6
        order = inf.argsort(descending=True)
        assert float(inf[order[: int(mask.sum()) - 1]].sum()) < node_t * float(inf.sum())  # and no fewer
        assert set(kept.tolist()) <= set(mask.nonzero().flatten().tolist()) | set((kinds >= 2).nonzero().flatten().tolist())
        # tokens and logits always stay
        assert (kinds[kept] == 2).sum() == T and (kinds[kept] == 3).sum() == g.counts["logit"]
        # every kept feature has an input and an output edge; every kept error an output edge
        pk = p.kinds
        has_in, has_out = (p.adjacency != 0).any(1), (p.adjacency != 0).any(0)
        assert has_in[pk == 0].all() and has_out[pk == 0].all() and has_out[pk == 1].all()
        # the kept edges hold edge_t of the edge influence among the node-pruned nodes
        sub = g.adjacency[mask | (kinds >= 2)][:, mask | (kinds >= 2)]
        M = gprune.normalize(sub)
        ws = g.logit_weights[mask | (kinds >= 2)]
        scores = M * (gprune.influence(M, ws, normalized=True) + ws)[:, None]
        kept_edges = scores >= gprune._threshold(scores, edge_t)
        assert float(scores[kept_edges].sum()) >= edge_t * float(scores.sum()) - 1e-6
        # a pruned graph's scores count the pruned features as unexplained: never above the full graph's
        r, c = p.scores()
        R, C = g.scores()
        assert 0 <= r <= R + 1e-6 <= 1 + 1e-6 and 0 <= c <= C + 1e-6 <= 1 + 1e-6
    with pytest.raises(ValueError, match="node_threshold"):
        g.prune(node_threshold=1.5)


def test_total_effect_is_the_direct_effect_for_last_layer_features():
    model = tiny("vanilla")
    g = graphs.attribute(model, transcoders(model), tokens(1, T)[0], progress=False)
    logit = g.of_kind("logit")[0]
    w = g.nodes[logit].prob
    eff = g.total_effect()
    last = [i for i in g.of_kind("feature") if g.nodes[i].layer == model.cfg.n_layers - 1]
    # nothing downstream of the last MLP but the logits: total = direct, weighted by the logit's probability
    torch.testing.assert_close(eff[last], w * g.adjacency[logit, last], rtol=1e-5, atol=1e-7)


# ============================================================================ (e) export and io
def _types(names):
    table = {"str": str, "int": int, "float": float, "bool": bool, "list": list, "dict": dict, "null": type(None)}
    return tuple(table[n] for n in names)


def validate_against_fixture(doc: dict) -> None:
    def check(obj, part, where):
        assert isinstance(obj, dict), where
        for key, names in SCHEMA[part].items():
            assert key in obj, f"{where}: missing {key}"
            v, types = obj[key], _types(names)
            assert not (isinstance(v, bool) and bool not in types), f"{where}.{key}: bool"
            assert isinstance(v, types), f"{where}.{key}: {type(v).__name__} not in {names}"

    check(doc, "document", "graph")
    check(doc["metadata"], "metadata", "metadata")
    check(doc["qParams"], "qParams", "qParams")
    ids = set()
    for i, n in enumerate(doc["nodes"]):
        check(n, "node", f"nodes[{i}]")
        assert n["feature_type"] in SCHEMA["feature_types"]
        if n["feature_type"] == "logit":
            assert SCHEMA["logit_clerp_contains"] in n["clerp"]
        if n["feature_type"] == "embedding":
            assert n["layer"] == SCHEMA["embedding_layer"]
        else:
            assert n["layer"].isdigit()
        ids.add(n["node_id"])
    assert len(ids) == len(doc["nodes"]), "node ids must be unique"
    for link in doc["links"]:
        check(link, "link", "link")
        assert link["source"] in ids and link["target"] in ids
    assert all(isinstance(t, str) for t in doc["metadata"]["prompt_tokens"])
    assert sum(n["is_target_logit"] for n in doc["nodes"]) == 1


@pytest.mark.parametrize("name", ["vanilla", "llama-like", "factored-alibi"])
def test_json_follows_the_front_end_schema(name, tmp_path):
    model = tiny(name)
    saes = [sae(model, "blocks.0.hook_xt_post"), sae(model, "blocks.0.hook_xe_post", seed=2)] \
        if model.cfg.stream == "factored" else []
    g = graphs.attribute(model, transcoders(model) + saes, tokens(1, T)[0], logit_mass=0.6, max_logits=3,
                         progress=False)
    p = g.prune()
    doc = p.to_json(tmp_path / "graph.json", slug="test")
    validate_against_fixture(json.loads((tmp_path / "graph.json").read_text()))
    assert len(doc["links"]) == int((p.adjacency != 0).sum())
    validate_against_fixture(g.to_json())  # the unpruned graph too
    with pytest.raises(ValueError, match="prune it first"):
        g.to_json(max_links=3)


def test_save_and_load_round_trip(tmp_path):
    model = tiny("factored")
    g = graphs.attribute(model, transcoders(model), tokens(1, T)[0], progress=False)
    p = g.prune()
    p.save(tmp_path / "g")
    q = graphs.load(tmp_path / "g")
    torch.testing.assert_close(q.adjacency, p.adjacency.contiguous())
    assert [n.id for n in q.nodes] == [n.id for n in p.nodes] and q.nodes[3] == p.nodes[3]
    assert q.full is not None and q.scores() == pytest.approx(p.scores())
    assert q.inputs(q.nodes[-1].id, 3) == p.inputs(p.nodes[-1].id, 3)
    (tmp_path / "g" / "graph.json").write_text("{not json")
    with pytest.raises(GraphError, match="graph.json"):
        graphs.load(tmp_path / "g")


def test_dictionaries_from_a_folder(tmp_path):
    model = tiny("vanilla")
    for i, d in enumerate(transcoders(model)):
        d.save(tmp_path / f"mlp_{i}")
    sae(model, "blocks.0.hook_resid_post").save(tmp_path / "resid_0")
    g = graphs.attribute(model, tmp_path, tokens(1, T)[0], progress=False)  # auto: the transcoders only
    assert [d["name"] for d in g.dictionaries] == ["mlp_0", "mlp_1"]
    assert g.dictionaries[0]["path"] == str(tmp_path / "mlp_0")
    g2 = graphs.attribute(model, tmp_path, tokens(1, T)[0], kind="all", progress=False)
    assert len(g2.dictionaries) == 3


# ============================================================================ bad input
@pytest.fixture(scope="module")
def vanilla():
    return tiny("vanilla")


def test_bad_prompt_and_target(vanilla):
    dicts = transcoders(vanilla)
    with pytest.raises(GraphError, match=r"longer than the model's context \(128"):
        graphs.attribute(vanilla, dicts, torch.ones(129, dtype=torch.long), progress=False)
    with pytest.raises(GraphError, match="outside the vocabulary"):
        graphs.attribute(vanilla, dicts, [1, 2, 999], progress=False)
    with pytest.raises(GraphError, match="not a token id of this vocabulary"):
        graphs.attribute(vanilla, dicts, tokens(1, T)[0], target=50, progress=False)
    with pytest.raises(GraphError, match="needs the model's tokenizer"):
        graphs.attribute(vanilla, dicts, "hello", progress=False)


def test_text_target_not_in_the_vocabulary():
    from interp.tokenizers import char_tokenizer

    model = tiny("vanilla")
    model.set_tokenizer(char_tokenizer("abcdefgh "))
    dicts = transcoders(model)
    with pytest.raises(GraphError, match=r"target 'ab' is 2 tokens in this vocabulary"):
        graphs.attribute(model, dicts, "abc abc", target="ab", progress=False)
    with pytest.raises(GraphError, match=r"target 'z': the tokenizer cannot encode it"):
        graphs.attribute(model, dicts, "abc abc", target="z", progress=False)
    g = graphs.attribute(model, dicts, "abc ab", target="c", progress=False)
    assert g.nodes[g.of_kind("logit")[0]].token == "c"


def test_bad_dictionaries(vanilla):
    dicts = transcoders(vanilla)
    toks = tokens(1, T)[0]
    with pytest.raises(GraphError, match=r"transcoders missing for MLP layer\(s\) \[1\]"):
        graphs.attribute(vanilla, dicts[:1], toks, progress=False)
    other = tiny("llama-like")
    with pytest.raises(GraphError, match="trained for another model.*norm: dictionary 'rmsnorm' vs model 'layernorm'"):
        graphs.attribute(vanilla, [dicts[0], transcoders(other)[1]], toks, progress=False)
    wide = features.make(DictionaryConfig(arch="topk", d_in=32, d_sae=40, k=4, hook_name="blocks.1.ln2.hook_normalized",
                                          out_hook_name="blocks.1.hook_mlp_out", normalize="none"))
    with pytest.raises(GraphError, match="d_in=32, but blocks.1.ln2.hook_normalized is 64 wide"):
        graphs.attribute(vanilla, [dicts[0], wide], toks, progress=False)
    with pytest.raises(GraphError, match="use a transcoder"):
        graphs.attribute(vanilla, dicts + [sae(vanilla, "blocks.0.hook_mlp_out")], toks, progress=False)
    with pytest.raises(GraphError, match="several dictionaries write"):
        graphs.attribute(vanilla, dicts + dicts[:1], toks, progress=False)
    odd = features.make(DictionaryConfig(arch="topk", d_in=64, d_sae=40, k=4, hook_name="blocks.0.hook_resid_pre",
                                         out_hook_name="blocks.1.hook_mlp_out", normalize="none"))
    with pytest.raises(GraphError, match="replaces one MLP"):
        graphs.attribute(vanilla, [dicts[0], odd], toks, progress=False)
    with pytest.raises(GraphError, match="has no MLP"):
        graphs.attribute(build(attn_only=True), [transcoders(vanilla)[0]], toks, progress=False, check_model=False)
    with pytest.raises(GraphError, match="does not exist"):
        graphs.attribute(vanilla, "/nonexistent/dicts", toks, progress=False)
