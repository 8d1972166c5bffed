"""The explorer under Streamlit's AppTest: every page and widget on tiny fixture checkpoints,
figures checked against independent forward passes, the URL state round-trips, and bad
input is an `st.error` / `st.warning`, never an exception. (The browser side, i.e. clicks,
hovering and client-side head switching, is tests/test_browser.py.)"""

from __future__ import annotations

import base64
import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from streamlit.testing.v1 import AppTest

import interp
from app_fixtures import make_checkpoints, make_run  # tests/ is on sys.path (rootdir conftest)

REPO = Path(__file__).resolve().parents[1]
APP = str(REPO / "app" / "explorer.py")


@pytest.fixture(scope="session")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpts")
    out = make_checkpoints(root)
    out["add3_run"] = make_run(root, "add3_run")
    return out


@pytest.fixture
def app(ckpts, monkeypatch):
    monkeypatch.setenv("INTERP_CHECKPOINT_ROOT", str(ckpts["add3_none"].parent))

    def start(argv=(), url: dict | None = None, check: bool = True):
        monkeypatch.setattr(sys, "argv", ["explorer.py", *argv])
        at = AppTest.from_file(APP, default_timeout=90)
        at.query_params.update(url or {})
        at.run()
        if check:
            ok(at)
        return at

    return start


# ------------------------------------------------------------------ helpers
def ok(at):
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def _arrays(x):
    """Plotly >= 6 writes numpy arrays as {"dtype", "bdata" (base64), "shape"}: decode to lists."""
    if isinstance(x, dict):
        if "bdata" in x and "dtype" in x:
            a = np.frombuffer(base64.b64decode(x["bdata"]), dtype=np.dtype(x["dtype"]))
            if "shape" in x:
                a = a.reshape([int(n) for n in str(x["shape"]).split(",")])
            return a.tolist()
        return {k: _arrays(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_arrays(v) for v in x]
    return x


def charts(at) -> dict[str, dict]:
    """key -> plotly figure dict, for every chart on the page."""
    out = {}
    for c in at.get("plotly_chart"):
        key = c.proto.id.rsplit("-", 1)[-1] if "-" in c.proto.id else c.proto.id
        out[key] = _arrays(json.loads(c.proto.spec))
    return out


def components(at, name: str) -> list[dict]:
    """The data passed to each mounted instance of our component `name`."""
    return [json.loads(c.proto.json) for c in at.get("bidi_component")
            if c.proto.component_name == f"interp_explorer.{name}"]


def attention_data(at) -> dict:
    found = components(at, "attention")
    assert len(found) == 1, found
    return found[0]


def layer_patterns(d: dict) -> np.ndarray:
    """The (head, T, T) float16 patterns the attention component got."""
    raw = np.frombuffer(base64.b64decode(d["pat"]), dtype=np.float16).astype(np.float32)
    return raw.reshape(d["H"], d["T"], d["T"])


def goto(at, page: str):
    at.radio(key="w.page").set_value(page).run()
    ok(at)
    return at


def pick(at, name: str):
    at.selectbox(key="w.ckpt").set_value(name).run()
    return at


def exports(at) -> dict:
    """Call every export builder of the last run; returns key -> (csv bytes, npz arrays)."""
    from app.views.common import csv_bytes, npz_bytes

    out = {}
    for key, e in at.session_state["_exports"].items():
        csv = csv_bytes(e["csv"]()) if e["csv"] else None
        npz = dict(np.load(io.BytesIO(npz_bytes(e["npz"]())), allow_pickle=False)) if e["npz"] else None
        out[key] = (csv, npz)
    return out


def prompt_ids(model, text: str) -> torch.Tensor:
    return model.to_tokens(text)  # <bos> + chars, as the app encodes


def patterns(path, text):
    model, _ = interp.load(path)
    _, cache = model.run_with_cache(prompt_ids(model, text))
    return model, cache


# ------------------------------------------------------------------ Attention + URL state
def test_default_view_writes_the_url_and_draws_real_patterns(app, ckpts):
    at = app()
    assert at.selectbox(key="w.ckpt").value == "shakespeare_factored_alibi"
    assert at.query_params["ckpt"] == "shakespeare_factored_alibi" and at.query_params["page"] == "attention"
    d = attention_data(at)
    text = at.text_area(key="w.prompt").value
    model, cache = patterns(ckpts["shakespeare_factored_alibi"], text)
    T = prompt_ids(model, text).shape[1]
    assert (d["layer"], d["head"], d["mode"], d["dir"], d["scale"], d["pos"]) == (0, 0, "head", "from", "auto", -1)
    assert d["T"] == T and len(d["labels"]) == T and d["labels"][0] == "<bos>" and "".join(d["pieces"][1:]) == text
    np.testing.assert_allclose(layer_patterns(d), cache["blocks.0.attn.hook_pattern"][0].numpy(), atol=1e-3)
    # thumbnails: every head, max-pooled; their maxima are the heads' own maxima
    assert len(d["thumbs"]["max"]) == model.cfg.n_layers * model.cfg.n_heads
    want_max = torch.stack([cache["pattern", l][0] for l in range(model.cfg.n_layers)]).amax((-1, -2)).flatten()
    np.testing.assert_allclose(d["thumbs"]["max"], want_max.numpy(), atol=1e-3)
    # head scores: a map with the selected head outlined, a full table
    scoremap = charts(at)["attn_scoremap"]
    assert scoremap["layout"]["shapes"][0]["x0"] == -0.5 and scoremap["layout"]["shapes"][0]["y0"] == -0.5
    tables = [t.value for t in at.dataframe if "prev_token" in t.value.columns]
    assert tables and len(tables[0]) == model.cfg.n_layers * model.cfg.n_heads
    assert {"induction", "duplicate_token", "entropy", "mean_distance", "alibi_slope"} <= set(tables[0].columns)
    # exports: every head's patterns (.npz) and the selected head as CSV; head scores CSV
    ex = exports(at)
    assert ex["attn_patterns"][1]["patterns"].shape == (model.cfg.n_layers, model.cfg.n_heads, T, T)
    assert ex["attn_patterns"][0].decode().count("\n") == T + 1 and b"0:<bos>" in ex["attn_patterns"][0]
    assert b"prev_token" in ex["head_scores"][0]


def test_url_round_trip(app, ckpts):
    url = dict(ckpt="shakespeare_factored_alibi", page="attention", layer="1", head="2", mode="mean", dir="to",
               scale="shared", pos="3", prompt="To be, or not to be", score="entropy")
    at = app(url=url)
    d = attention_data(at)
    assert (d["layer"], d["head"], d["mode"], d["dir"], d["scale"], d["pos"]) == (1, 2, "mean", "to", "shared", 3)
    assert d["T"] == 20 and d["labels"][1] == "T" and d["labels"][3] == "␣"
    assert at.text_area(key="w.prompt").value == "To be, or not to be"
    assert at.selectbox(key="w.score").value == "entropy"
    assert at.button_group(key="w.layer").value == 1
    model, cache = patterns(ckpts["shakespeare_factored_alibi"], "To be, or not to be")
    np.testing.assert_allclose(layer_patterns(d), cache["blocks.1.attn.hook_pattern"][0].numpy(), atol=1e-3)
    # the URL kept every value; loading it again shows the same view
    assert all(at.query_params[k] == v for k, v in url.items()), at.query_params
    again = app(url=dict(at.query_params))
    assert attention_data(again) == d
    # a widget change rewrites the URL
    at.button_group(key="w.layer").set_value(0).run()
    ok(at)
    assert "layer" not in at.query_params and attention_data(at)["layer"] == 0  # the default is left out
    np.testing.assert_allclose(layer_patterns(attention_data(at)), cache["blocks.0.attn.hook_pattern"][0].numpy(),
                               atol=1e-3)
    at.selectbox(key="w.score").set_value("first_token").run()
    ok(at)
    assert at.query_params["score"] == "first_token" and "first_token" in charts(at)["attn_scoremap"]["layout"]["title"]["text"]
    # defaults leave the URL
    at.selectbox(key="w.score").set_value("prev_token").run()
    assert "score" not in at.query_params


def test_the_prompt_is_shared_by_every_page(app):
    at = app()
    at.text_area(key="w.prompt").set_value("To be, or not to be").run()
    ok(at)
    assert at.query_params["prompt"] == "To be, or not to be"
    for page in ("streams", "lens", "steps"):
        goto(at, page)
        assert at.text_area(key="w.prompt").value == "To be, or not to be", page
    at.text_area(key="w.prompt").set_value(at.text_area(key="w.prompt").value + "!").run()
    goto(at, "attention")
    assert attention_data(at)["T"] == 21


def test_bad_url_values_are_warnings_and_leave_the_url(app):
    at = app(url=dict(layer="9", head="x", page="nope", bogus="1", scale="tiny"), check=False)
    assert not at.exception and not at.error
    text = " ".join(w.value for w in at.warning)
    assert "`layer=9` is not available" in text and "`head=x` is not a valid int" in text
    assert "no page `nope`" in text and "unknown URL parameter `bogus`" in text and "`scale=tiny`" in text
    d = attention_data(at)
    assert (d["layer"], d["head"], d["scale"]) == (0, 0, "auto")
    assert not {"layer", "head", "bogus", "scale"} & set(at.query_params) and at.query_params["page"] == "attention"


def test_selection_callbacks_write_the_url():
    """What a click in the attention component, a score-map cell or a token strip does."""
    def script():
        import streamlit as st

        from app import components
        from app.views import attention, common

        attention.apply_selection({"layer": 2, "head": 1, "mode": "all", "dir": "to", "scale": "shared", "pos": 7,
                                   "seq": 3})
        rc = common.grid_point(6)({"point_index": 15, "x": "H3", "y": "L2"})
        st.session_state["rc"] = rc
        attention.apply_selection({"pos": -1})
        st.session_state["ack"] = components.ack("attn")

    at = AppTest.from_function(script).run()
    assert not at.exception, at.exception
    assert at.query_params == {"layer": "2", "head": "1", "mode": "all", "dir": "to", "scale": "shared"}
    assert at.session_state["rc"] == (2, 3) and at.session_state["ack"] == 0


# ------------------------------------------------------------------ Streams
def test_streams_page(app, ckpts):
    at = goto(app(), "streams")
    figs = charts(at)
    assert set(figs) >= {"streams_resid", "streams_factored", "streams_xtxe", "streams_neurons"}
    model, cache = patterns(ckpts["shakespeare_factored_alibi"], at.text_area(key="w.prompt").value)
    want = cache["blocks.1.hook_resid_post"][0].norm(dim=-1).numpy()
    resid = figs["streams_resid"]["data"][0]
    np.testing.assert_allclose(np.array(resid["customdata"])[-1], want, rtol=1e-4)  # hover: the norm itself
    np.testing.assert_allclose(np.array(resid["z"])[-1], want / want.max(), rtol=1e-4)  # per-layer colours
    at.radio(key="w.norm").set_value("log").run()
    ok(at)
    np.testing.assert_allclose(np.array(charts(at)["streams_resid"]["data"][0]["z"])[-1], np.log10(want), rtol=1e-4)
    assert at.query_params["norm"] == "log"
    xt_map = charts(at)["streams_xtxe"]["data"][0]["z"]
    at.radio(key="w.stream").set_value("xe").run()
    ok(at)
    assert charts(at)["streams_xtxe"]["data"][0]["z"] != xt_map
    # top neurons: the largest |mlp.hook_post| at the selected position
    bars = charts(at)["streams_neurons"]["data"][0]
    T = len(at.selectbox(key="w.pos").options)
    act = cache["blocks.0.mlp.hook_post"][0, T - 1]
    top = act.abs().argsort(descending=True)[:20]
    assert bars["y"] == [f"n{i}" for i in top.tolist()]
    np.testing.assert_allclose(bars["x"], act[top].numpy(), rtol=1e-4)
    at.button_group(key="w.layer").set_value(1).run()
    at.selectbox(key="w.pos").set_value(3).run()
    at.slider(key="w.k").set_value(5).run()
    ok(at)
    bars = charts(at)["streams_neurons"]["data"][0]
    act = cache["blocks.1.mlp.hook_post"][0, 3]
    assert bars["y"] == [f"n{i}" for i in act.abs().argsort(descending=True)[:5].tolist()]
    assert (at.query_params["layer"], at.query_params["pos"], at.query_params["k"]) == ("1", "3", "5")
    ex = exports(at)
    assert set(ex["streams_norms"][1]) == {"resid", "xt", "xe", "tokens"}
    assert b"activation" in ex["streams_neurons_export"][0]


# ------------------------------------------------------------------ Logit lens
def test_logit_lens_page(app, ckpts):
    at = goto(app(), "lens")
    assert list(at.radio(key="w.lens").options) == ["resid", "xt", "xe"]
    fig = charts(at)["lens_heatmap"]
    model, _ = interp.load(ckpts["shakespeare_factored_alibi"])
    text = at.text_area(key="w.prompt").value
    tokens = prompt_ids(model, text)
    T = tokens.shape[1]
    probs = model(tokens)[0].softmax(-1)
    # last lens layer == the model's own p(next token); the last position has no target
    want = probs[torch.arange(T - 1), tokens[0, 1:]].detach().numpy()
    z = np.array(fig["data"][0]["z"], dtype=float)
    np.testing.assert_allclose(z[-1][:-1], want, rtol=1e-4, atol=1e-6)
    assert np.isnan(z[-1][-1])
    # each cell shows its top-1 token; the default position is the last one with a target
    texts = [t for tr in fig["data"][1:] if tr.get("mode") == "text" for t in tr["text"]]
    assert len(texts) == len(z) * T
    assert at.selectbox(key="w.pos").value == T - 2
    assert fig["layout"]["shapes"][0]["x0"] == T - 2 - 0.5
    top1 = model.tokenizer.decode([int(probs[T - 2].argmax())])
    table = [d.value for d in at.dataframe if "p(target)" in d.value.columns][0]
    assert table["#1"].iloc[-1].startswith(top1.replace(" ", "␣").replace("\n", "⏎"))
    # track one token everywhere
    at.text_input(key="w.target").set_value("e").run()
    ok(at)
    e_id = model.tokenizer.encode("e")[0]
    z = np.array(charts(at)["lens_heatmap"]["data"][0]["z"], dtype=float)
    np.testing.assert_allclose(z[-1], probs[:, e_id].detach().numpy(), rtol=1e-4, atol=1e-6)
    assert at.selectbox(key="w.pos").value == T - 1  # every position has a target now
    at.text_input(key="w.target").set_value("ee").run()
    assert not at.exception and "is 2 tokens" in at.error[0].value
    at.text_input(key="w.target").set_value("").run()
    at.radio(key="w.lens").set_value("xt").run()
    at.slider(key="w.topk").set_value(3).run()
    at.selectbox(key="w.pos").set_value(2).run()
    ok(at)
    assert charts(at)["lens_heatmap"]["data"][0]["z"] != z.tolist()
    assert [c for c in [d.value for d in at.dataframe if "p(target)" in d.value.columns][0].columns] == \
        ["#1", "#2", "#3", "p(target)"]
    assert exports(at)["lens_export"][1]["top_tokens"].shape == (model.cfg.n_layers + 1, T, 3)
    # a standard-stream model offers resid only; an xt URL value falls back with a note
    pick(at, "add3_none")
    assert list(at.radio(key="w.lens").options) == ["resid"] and "`lens=xt` is not available" in at.warning[0].value


# ------------------------------------------------------------------ Step-by-step
def test_step_by_step_page(app, ckpts):
    from models.generation import generate

    at = goto(pick(app(), "add3_none"), "steps")
    ok(at)
    model, tok = interp.load(ckpts["add3_none"])
    text = at.text_area(key="w.prompt").value
    ids = prompt_ids(model, text)[0].tolist()
    cut = ids.index(tok.token_to_id("=")) + 1  # generation starts after the task's prompt
    assert at.select_slider(key="w.cut").value == cut
    assert at.toggle(key="w.eos").value is True and at.toggle(key="w.greedy").value is True
    want = generate(model, [ids[:cut]], max_new_tokens=128, greedy=True, return_output=True).new_tokens[0]
    out, target = components(at, "strip")
    vocab = [tok.decode([i]) for i in want]
    assert out["tokens"] == [v.replace(" ", "␣") for v in vocab]
    assert target["tokens"][0] == "<bot>" and len(target["tokens"]) == len(ids) - cut
    probs = model(torch.tensor([ids[:cut]]))[0, -1].softmax(-1).detach()
    assert out["values"][0] == pytest.approx(float(probs[want[0]]), abs=1e-4)
    figs = charts(at)
    L, H = model.cfg.n_layers, model.cfg.n_heads
    assert len(figs["steps_attn"]["data"][0]["y"]) == L * H and len(figs["steps_attn"]["data"][0]["x"]) == cut
    # another step: its query saw the generated tokens before it
    at.session_state  # noqa: B018 (keeps the run's state)
    at2 = app(url=dict(at.query_params, gstep="3"))
    assert len(charts(at2)["steps_attn"]["data"][0]["x"]) == cut + 3
    # every control
    at.number_input(key="w.n").set_value(5).run()
    ok(at)
    assert len(components(at, "strip")[0]["tokens"]) <= 5 and at.query_params["n"] == "5"
    at.toggle(key="w.eos").set_value(False).run()
    at.select_slider(key="w.cut").set_value(4).run()
    at.toggle(key="w.greedy").set_value(False).run()
    at.slider(key="w.temp").set_value(1.5).run()
    at.number_input(key="w.seed").set_value(7).run()
    ok(at)
    assert len(components(at, "strip")[0]["tokens"]) == 5
    assert {k: at.query_params[k] for k in ("eos", "cut", "greedy", "temp", "seed")} == \
        {"eos": "0", "cut": "4", "greedy": "0", "temp": "1.5", "seed": "7"}
    ex = exports(at)["steps_export"]
    assert ex[1]["generated"].shape == (5,) and ex[1]["attention"].shape[:3] == (5, L, H)


@pytest.mark.parametrize("greedy", [True, False])
def test_generate_steps_matches_a_step_by_step_loop(ckpts, greedy):
    """interp.explore.generate_steps (generate + one cached pass) against a naive loop that
    runs the model on the growing sequence and reads the last query's patterns."""
    from interp import explore
    from interp.cache import cached

    model, tok = interp.load(ckpts["add3_none"])
    prompt = torch.tensor(tok.encode("<bos>123+456="))
    trace = explore.generate_steps(model, prompt, n_steps=12, k=3, greedy=greedy, temperature=1.3, seed=5,
                                   stop_tokens=[])
    assert len(trace) == 12
    seq = prompt[None]
    for i, step in enumerate(trace):
        logits, cache = cached(model, seq, names="pattern", batch=0, pos=-1, return_logits=True)
        probs = logits[-1].float().softmax(-1)
        if greedy:
            assert step.token == int(probs.argmax())
        assert step.position == seq.shape[1] - 1
        torch.testing.assert_close(step.probs, probs, atol=1e-5, rtol=1e-4)
        want = torch.stack([cache["pattern", l][:, -1] for l in range(model.cfg.n_layers)])
        torch.testing.assert_close(step.attention, want, atol=1e-5, rtol=1e-4)
        assert step.top_ids.tolist() == probs.topk(3).indices.tolist()
        seq = torch.cat([seq, torch.tensor([[step.token]])], dim=1)


def test_text_checkpoints_generate_after_the_whole_prompt(app):
    at = goto(app(), "steps")
    T = len(at.select_slider(key="w.cut").options)
    assert at.select_slider(key="w.cut").value == T and at.toggle(key="w.eos").value is False
    assert len(components(at, "strip")) == 1  # no target: the prompt ends where generation starts
    assert len(components(at, "strip")[0]["tokens"]) == 32


# ------------------------------------------------------------------ Compare
def test_compare_page(app, ckpts):
    at = goto(pick(app(), "add3_none"), "compare")
    assert at.multiselect(key="w.cmp").value == ["add3_none", "add3_mask_steps", "add3_mask_answer"]
    assert len(at.metric) == 3
    rows = [d.value for d in at.dataframe if "loss/step" in d.value.columns][0]
    assert list(rows.index) == ["add3_none", "add3_mask_steps", "add3_mask_answer"]
    assert (rows["loss/answer"] > 0).all()
    from interp import steps

    models = {n: interp.load(ckpts[n])[0] for n in ("add3_none", "add3_mask_steps")}
    from interp.tasks import make_task

    examples = make_task(**dict(json.loads((ckpts["add3_none"] / "config.json").read_text())["task"],
                                step_masking_mode="none", n_train=0)).split("test")[:32]
    want = steps.compare_checkpoints(models, examples, generate=True)
    assert rows.loc["add3_mask_steps", "loss/step"] == pytest.approx(want[1]["loss/step"], rel=1e-4)
    assert rows.loc["add3_none", "answer_match"] == pytest.approx(want[0]["answer_match"])
    figs = charts(at)
    # one colour scale for the three attention panels, one for the answer->step maps
    tops = {figs[f"compare_attn_{i}"]["data"][0]["zmax"] for i in range(3)}
    assert len(tops) == 1
    assert len({(figs[f"compare_a2s_{i}"]["data"][0]["zmin"], figs[f"compare_a2s_{i}"]["data"][0]["zmax"])
                for i in range(3)}) == 1
    # full completions, checked against the target
    strips = components(at, "strip")
    assert len(strips) == 3 and all(s["colors"] for s in strips)
    before = figs["compare_attn_0"]["data"][0]["z"]
    at.button_group(key="w.head").set_value(1).run()
    at.button_group(key="w.layer").set_value(1).run()
    ok(at)
    assert charts(at)["compare_attn_0"]["data"][0]["z"] != before
    at.slider(key="w.nex").set_value(8).run()
    at.toggle(key="w.acc").set_value(False).run()
    ok(at)
    assert len(at.metric) == 0 and "exact_match" not in [d.value for d in at.dataframe if "loss/step" in d.value.columns][0]
    at.multiselect(key="w.cmp").set_value(["add3_none", "add3_mask_answer"]).run()
    ok(at)
    assert at.query_params["cmp"] == ["add3_none", "add3_mask_answer"]
    assert len(components(at, "strip")) == 2
    assert set(exports(at)["compare_attn_export"][1]) == {"attention_add3_none", "attention_add3_mask_answer", "tokens",
                                                          "answer_to_step_add3_none", "answer_to_step_add3_mask_answer"}


def test_compare_refuses_a_different_tokenizer_and_compares_text_models(app):
    at = app(url=dict(page="compare", cmp=["shakespeare_factored_alibi", "add3_none"]), check=False)
    assert not at.exception and "share a tokenizer" in at.error[0].value and "add3_none" in at.error[0].value
    at = app(url=dict(page="compare"), check=False)
    assert at.multiselect(key="w.cmp").value == ["shakespeare_factored_alibi", "shakespeare_vanilla"]
    assert "does not suit shakespeare_vanilla" in at.error[0].value and "n_ctx=48" in at.error[0].value
    at.text_area(key="w.prompt").set_value("To be, or not to be").run()
    ok(at)
    assert "compare_token_loss" in charts(at) and len(at.metric) == 2
    at.multiselect(key="w.cmp").set_value(["shakespeare_factored_alibi"]).run()
    assert not at.exception and any("two or three" in i.value for i in at.info)


def test_compare_needs_a_second_checkpoint(ckpts, tmp_path, monkeypatch):
    root = tmp_path / "only_one"
    root.mkdir()
    (root / "shakespeare_vanilla").symlink_to(ckpts["shakespeare_vanilla"])
    monkeypatch.setenv("INTERP_CHECKPOINT_ROOT", str(root))
    monkeypatch.setattr(sys, "argv", ["explorer.py"])
    at = AppTest.from_file(APP, default_timeout=60)
    at.query_params["page"] = "compare"
    at.run()
    ok(at)
    assert at.selectbox(key="w.ckpt").value == "shakespeare_vanilla"  # first when no preferred
    assert at.warning and "second checkpoint with the same tokenizer" in at.warning[0].value


# ------------------------------------------------------------------ Training
def test_training_page_and_step_slider(app, ckpts):
    run = ckpts["add3_run"]
    at = app(url=dict(ckpt="add3_run"))
    assert "Training" in at.radio(key="w.page").options
    assert at.select_slider(key="w.step").value == 300 and at.query_params["step"] == "300"
    assert "step_000300" in at.caption[0].value
    goto(at, "training")
    figs = charts(at)
    titles = {f["layout"]["title"]["text"]: f for f in figs.values()}
    assert {"loss", "token_acc", "induction", "restricted_loss", "grad_norm"} <= set(titles)
    loss = titles["loss"]
    names = [t["name"] for t in loss["data"] if t.get("mode") == "lines+markers"]
    assert names == ["train/loss", "eval:val/loss"] and loss["layout"]["yaxis"]["type"] == "log"
    assert loss["data"][0]["y"] == pytest.approx([3.0, 1.5, 1.0])
    induction = [t["name"] for t in titles["induction"]["data"] if t.get("mode") == "lines+markers"]
    assert induction == ["progress/induction[0][0]", "progress/induction[0][1]", "progress/induction[1][0]",
                         "progress/induction[1][1]"]
    assert loss["layout"]["shapes"][0]["x0"] == 300  # the step on show
    assert not any("note" in t or "/ok" in t for t in titles)  # text and booleans are not series
    at.toggle(key="w.logy").set_value(False).run()
    ok(at)
    assert "type" not in {f["layout"]["title"]["text"]: f for f in charts(at).values()}["loss"]["layout"].get("yaxis", {})
    # the step slider loads that checkpoint for every page
    at.select_slider(key="w.step").set_value(100).run()
    ok(at)
    assert at.query_params["step"] == "100" and "step_000100" in at.caption[0].value
    goto(at, "attention")
    model, _ = interp.load(run / "step_000100")
    text = at.text_area(key="w.prompt").value
    _, cache = model.run_with_cache(prompt_ids(model, text))
    np.testing.assert_allclose(layer_patterns(attention_data(at)), cache["blocks.0.attn.hook_pattern"][0].numpy(),
                               atol=1e-3)
    csv = exports(goto(at, "training"))["training_export"][0].decode()
    assert "progress/induction[1][1]" in csv and "eval:val/token_acc" in csv


def test_compare_checkpoints_of_one_run(app, ckpts):
    run = ckpts["add3_run"]
    at = app(url=dict(ckpt="add3_run", step="300", page="compare"))
    options = at.multiselect(key="w.cmp").options
    assert "add3_run/step_000100" in options and "add3_none" in options  # formatted labels
    assert at.multiselect(key="w.cmp").value == [str(run / "step_000100"), str(run / "step_000300")]  # default
    at.multiselect(key="w.cmp").set_value([str(run / "step_000100"), str(run / "step_000300")]).run()
    ok(at)
    rows = [d.value for d in at.dataframe if "loss/step" in d.value.columns][0]
    assert list(rows.index) == ["add3_run/step_000100", "add3_run/step_000300"]
    assert rows["loss/step"].iloc[0] != rows["loss/step"].iloc[1]


def test_long_logs_are_thinned_for_drawing():
    from app.views.training import thin

    xs, ys = thin(list(range(10_001)), [float(i) for i in range(10_001)], n=2000)
    assert len(xs) <= 2002 and xs[0] == 0 and xs[-1] == 10_000 and ys == [float(x) for x in xs]
    assert thin([1, 2], [3.0, 4.0]) == ([1, 2], [3.0, 4.0])


def test_a_step_directory_opens_as_run_plus_step(app, ckpts):
    at = app(url=dict(ckpt=str(ckpts["add3_run"] / "step_000200")))
    assert at.query_params["ckpt"] == "add3_run" and at.query_params["step"] == "200"  # the run is found by name
    assert at.selectbox(key="w.ckpt").value == "add3_run" and at.text_input(key="w.ckpt_path").value == ""
    assert "step_000200" in at.caption[0].value


def test_training_page_is_only_for_runs(app):
    at = app(url=dict(page="training"), check=False)
    assert not at.exception and "Training page is not available" in at.warning[0].value
    assert "Training" not in at.radio(key="w.page").options and at.query_params["page"] == "attention"


# ------------------------------------------------------------------ every page, errors
def test_every_page_on_every_checkpoint(app):
    at = app()
    for name in ("add3_mask_answer", "induction_attn_only", "shakespeare_vanilla"):
        pick(at, name)
        ok(at)
        for page in ("attention", "streams", "lens", "steps", "compare"):
            goto(at, page)
            lonely = page == "compare" and any("second checkpoint" in w.value for w in at.warning)
            assert at.get("plotly_chart") or components(at, "attention") or lonely, (name, page)
        goto(at, "attention")
    goto(pick(at, "induction_attn_only"), "streams")
    assert any("attention-only" in i.value for i in at.info)


@pytest.mark.parametrize(
    "ckpt,text,needle",
    [
        ("shakespeare_factored_alibi", "   ", "empty"),
        ("shakespeare_factored_alibi", "price: 5€", "€"),
        ("shakespeare_vanilla", "x" * 60, "n_ctx=48"),
        ("add3_none", "12+ab", "cannot read"),
    ],
)
def test_bad_prompts_are_errors(app, ckpt, text, needle):
    at = pick(app(), ckpt)
    ok(at)
    at.text_area(key="w.prompt").set_value(text).run()
    assert not at.exception
    assert at.error and needle in at.error[0].value, [e.value for e in at.error]
    for page in ("steps", "lens", "streams"):
        assert not goto_err(at, page).exception
    at.button(key="reset_prompt").click().run()
    ok(at)
    assert "prompt" not in at.query_params


def goto_err(at, page):
    return at.radio(key="w.page").set_value(page).run()


def test_a_prompt_that_another_tokenizer_cannot_read_offers_a_reset(app):
    at = app(url=dict(prompt="ROMEO: hello"))
    pick(at, "add3_none")
    assert not at.exception and "cannot read" in at.error[0].value
    at.button(key="reset_prompt").click().run()
    ok(at)
    assert "<bot>" in at.text_area(key="w.prompt").value  # the add3 default: a scratchpad test example


def test_broken_and_missing_checkpoints(app, ckpts):
    at = pick(app(), "broken")
    assert not at.exception
    assert any("malformed JSON" in e.value for e in at.error)
    at.text_input(key="w.ckpt_path").set_value("/no/such/dir").run()
    assert not at.exception and any("No such checkpoint directory" in e.value for e in at.error)
    at.text_input(key="w.ckpt_path").set_value(str(ckpts["add3_none"] / "config.json")).run()
    assert not at.exception and any("is a file" in e.value for e in at.error)
    at.text_input(key="w.ckpt_path").set_value(str(ckpts["add3_mask_steps"])).run()
    ok(at)
    assert "mask_steps" in at.caption[0].value and at.query_params["ckpt"] == str(ckpts["add3_mask_steps"])
    assert at.selectbox(key="w.ckpt").value == "(a directory: type it below)"
    pick(at, "shakespeare_vanilla")
    ok(at)
    assert at.query_params["ckpt"] == "shakespeare_vanilla" and at.text_input(key="w.ckpt_path").value == ""


def test_cli_ckpt_argument(app, ckpts):
    at = app(["--ckpt", str(ckpts["induction_attn_only"])])
    assert "induction_attn_only" in at.caption[0].value
    at = app(["--ckpt", "add3_none"])
    assert at.selectbox(key="w.ckpt").value == "add3_none"
    assert "<bot>" in at.text_area(key="w.prompt").value  # default prompt: a scratchpad test example


SHIPPED = REPO / "data" / "checkpoints"


@pytest.mark.parametrize("name", sorted(p.name for p in SHIPPED.iterdir() if (p / "config.json").exists()))
def test_every_page_on_every_shipped_checkpoint(name, monkeypatch):
    """The GPU-trained checkpoints in data/checkpoints: each page renders figures, no errors."""
    monkeypatch.setenv("INTERP_CHECKPOINT_ROOT", str(SHIPPED))
    monkeypatch.setattr(sys, "argv", ["explorer.py", "--ckpt", name])
    at = AppTest.from_file(APP, default_timeout=120).run()
    ok(at)
    for page in ("attention", "streams", "lens", "steps", "compare"):
        goto(at, page)
        lonely = page == "compare" and any("second checkpoint" in w.value for w in at.warning)
        assert charts(at) or components(at, "attention") or lonely, f"{name}: page {page} drew no figure"


RUNS = REPO / "data" / "runs"


@pytest.mark.parametrize("name", sorted(p.name for p in RUNS.iterdir() if p.is_dir()) if RUNS.is_dir() else [])
def test_training_page_on_every_shipped_run(name, monkeypatch):
    """The shipped runs (data/runs): the Training page draws every series, per-head progress
    measures as a heads x steps map, and every page renders on the run's last checkpoint."""
    monkeypatch.setenv("INTERP_CHECKPOINT_ROOT", f"{SHIPPED}:{RUNS}")
    monkeypatch.setattr(sys, "argv", ["explorer.py"])
    at = AppTest.from_file(APP, default_timeout=120)
    at.query_params.update(ckpt=name, page="training")
    at.run()
    ok(at)
    figs = {f["layout"]["title"]["text"]: f for f in charts(at).values()}
    assert "loss" in figs and figs["loss"]["data"][0]["type"] == "scatter"
    for title, f in figs.items():
        if title.endswith("per head"):  # e.g. "induction per head": heads x steps
            assert f["data"][0]["type"] == "heatmap" and all(y.startswith("L") for y in f["data"][0]["y"])
    for page in ("attention", "streams", "lens", "steps", "compare"):
        goto(at, page)


# ------------------------------------------------------------------ Attribution
def _nan_close(got, want, atol=1e-4):
    np.testing.assert_allclose(np.asarray(got, dtype=float), np.asarray(want, dtype=float), atol=atol, equal_nan=True)


def _texts(at) -> str:
    return "\n".join(m.value for m in at.markdown) + "\n".join(c.value for c in at.caption)


def test_attribution_page(app, ckpts):
    """Stacked contributions, top components, xt / xe streams and the component x position map
    against `direct_logit_attribution`, the components' sum against the model's own logits, and
    every control (target mode, typed target, contrast token, position)."""
    from interp.attribution import direct_logit_attribution

    text = "To be, or not to be"
    at = app(url=dict(page="attribution", prompt=text))
    model, tok = interp.load(ckpts["shakespeare_factored_alibi"])
    tokens = prompt_ids(model, text)
    T = tokens.shape[1]
    with torch.no_grad():
        logits = model(tokens)[0]
    want = direct_logit_attribution(model, tokens)
    pos = T - 2  # text: the last position that has a next token
    assert at.selectbox(key="w.pos").value == pos
    figs = charts(at)
    col = want.values[:, 0, pos]
    assert sum(sum(t["y"]) for t in figs["attr_stacked"]["data"]) == pytest.approx(float(col.sum()), abs=1e-3)
    top = figs["attr_top"]["data"][0]
    assert top["y"] == [n for n, _ in want.top(15, 0, pos)]
    _nan_close(top["x"], [v for _, v in want.top(15, 0, pos)])
    # the components and the constant add up to the model's logit of the next token
    nxt = int(tokens[0, pos + 1])
    assert float(col.sum() + want.constant[0, pos]) == pytest.approx(float(logits[pos, nxt]), abs=1e-3)
    assert f"= **{float(logits[pos, nxt]):.3f}**" in _texts(at)
    lines = {t["name"]: t["y"] for t in figs["attr_streams"]["data"]}  # factored model: xt and xe
    _nan_close(lines["xt"], want.per_stream()["xt"][0])
    _nan_close(lines["xe"], want.per_stream()["xe"][0])
    _nan_close(figs["attr_map"]["data"][0]["z"], want.values[:, 0])
    assert figs["attr_map"]["layout"]["shapes"][0]["x0"] == pos - 0.5  # the position on show is outlined
    ex = exports(at)
    assert ex["attr_export"][1]["values"].shape == (len(want.labels),) and b"L0H0" in ex["attr_export"][0]
    assert ex["attr_map_export"][1]["values"].shape == (len(want.labels), T)

    # the model's top-1 at every position (default position: the last)
    at.radio(key="w.tmode").set_value("top1").run()
    ok(at)
    assert at.query_params["tmode"] == "top1" and at.selectbox(key="w.pos").value == T - 1
    top1 = direct_logit_attribution(model, tokens, target=logits.argmax(-1)[None])
    assert charts(at)["attr_top"]["data"][0]["y"][0] == top1.top(1, 0, T - 1)[0][0]
    _nan_close(charts(at)["attr_map"]["data"][0]["z"], top1.values[:, 0])
    # a typed target against a contrast token, at a chosen position: a logit difference
    at.radio(key="w.tmode").set_value("token").run()
    assert not at.exception and "Type the target token" in at.error[0].value
    at.text_input(key="w.target").set_value("e").run()
    at.text_input(key="w.wrong").set_value("a").run()
    at.selectbox(key="w.pos").set_value(5).run()
    ok(at)
    assert {k: at.query_params[k] for k in ("target", "wrong", "pos")} == {"target": "e", "wrong": "a", "pos": "5"}
    e, a = tok.encode("e")[0], tok.encode("a")[0]
    diff = direct_logit_attribution(model, tokens, target=e, wrong=a)
    assert float(diff.values[:, 0, 5].sum() + diff.constant[0, 5]) == pytest.approx(float(logits[5, e] - logits[5, a]),
                                                                                   abs=1e-3)
    assert sum(sum(t["y"]) for t in charts(at)["attr_stacked"]["data"]) == \
        pytest.approx(float(diff.values[:, 0, 5].sum()), abs=1e-3)
    assert "logit(e) − logit(a)" in _texts(at)
    # bad input is a message
    at.text_input(key="w.wrong").set_value("ab").run()
    assert not at.exception and "is 2 tokens" in at.error[0].value
    at.text_input(key="w.wrong").set_value("").run()
    at.radio(key="w.tmode").set_value("next").run()
    at.selectbox(key="w.pos").set_value(T - 1).run()
    ok(at)
    assert any("has no next token" in i.value for i in at.info)


def test_attribution_refuses_shaped_attention(tmp_path, monkeypatch):
    from app_fixtures import make_checkpoint

    make_checkpoint(tmp_path, "induction_sasp")
    monkeypatch.setenv("INTERP_CHECKPOINT_ROOT", str(tmp_path))
    monkeypatch.setattr(sys, "argv", ["explorer.py"])
    at = AppTest.from_file(APP, default_timeout=60)
    at.query_params.update(page="attribution")
    at.run()
    ok(at)
    assert any("SAS-P" in w.value and "does not apply" in w.value for w in at.warning), [w.value for w in at.warning]
    goto(at, "patching")  # patching has no such limit
    assert "patch_resid_pre" in charts(at)


# ------------------------------------------------------------------ Patching
def _hook_patch(model, clean, corrupt, name: str, pos: int, metric):
    """One denoising patch by hand: the corrupted run with `name` at `pos` taken from the clean run."""
    _, cache = model.run_with_cache(clean)

    def put(x, hook):
        x = x.clone()
        x[:, pos] = cache[name][:, pos]
        return x

    with torch.no_grad(), model.hooks(fwd_hooks=[(name, put)]):
        return float(metric(model(corrupt)))


def test_patching_page(app, ckpts):
    """add3: the default corruption changes one operand digit (same carries), the metric reads
    the answer digit that differs; the maps equal `activation_patching` and, cell by cell, a
    hand-made hook patch; every control; bad corrupted prompts are messages."""
    from interp import patching

    at = app(url=dict(ckpt="add3_none", page="patching"))
    model, tok = interp.load(ckpts["add3_none"])
    text, cor_text = at.text_area(key="w.prompt").value, at.text_area(key="w.corrupt").value
    clean = torch.tensor([[model.cfg.bos_token_id] + tok.encode(text)])
    cor = torch.tensor([[model.cfg.bos_token_id] + tok.encode(cor_text)])
    assert cor.shape == clean.shape
    differ = (clean != cor)[0].nonzero()[:, 0].tolist()
    assert differ[0] == 3 and text[:2] == cor_text[:2] and text[2] != cor_text[2]  # the first operand's units digit
    assert text[3:text.index("<bot>")] == cor_text[3:cor_text.index("<bot>")]  # the rest of the problem is the same
    eot = clean[0].tolist().index(model.cfg.eot_token_id)
    first = next(i for i in differ if i > eot)  # the first answer digit that differs
    p = first - 1
    metric = patching.logit_diff(clean[0, first], cor[0, first], pos=p)
    figs = charts(at)
    assert set(figs) >= {"patch_resid_pre", "patch_attn_out", "patch_mlp_out", "patch_z"}
    resid = patching.activation_patching(model, clean, cor, metric, "resid_pre", positions=range(p + 1))
    _nan_close(figs["patch_resid_pre"]["data"][0]["z"], resid.normalized(), atol=1e-4)
    heads = patching.activation_patching(model, clean, cor, metric, "z")
    _nan_close(figs["patch_z"]["data"][0]["z"], heads.normalized(), atol=1e-4)
    # one cell by hand: the changed operand digit entering block 1
    by_hand = _hook_patch(model, clean, cor, "blocks.1.hook_resid_pre", 3, metric)
    assert float(resid.values[1, 3]) == pytest.approx(by_hand, abs=1e-4)
    assert f"Clean run **{float(resid.source):.3f}**" in _texts(at)
    assert len(figs["patch_resid_pre"]["data"][0]["x"]) == p + 1  # later positions cannot change the metric
    ex = exports(at)["patch_export"]
    assert ex[1]["resid_pre_values"].shape == (model.cfg.n_layers, p + 1) and b"resid_pre" in ex[0]

    # controls: probability, noising, only the heads, raw effects
    at.selectbox(key="w.metric").set_value("prob").run()
    at.radio(key="w.pdir").set_value("noise").run()
    at.button_group(key="w.acts").set_value(["z"]).run()
    at.toggle(key="w.pnorm").set_value(False).run()
    ok(at)
    assert {k: at.query_params[k] for k in ("metric", "pdir", "pnorm")} == {"metric": "prob", "pdir": "noise", "pnorm": "0"}
    assert at.query_params["acts"] in ("z", ["z"])  # a one-item list reads back as its item
    assert set(charts(at)) == {"patch_z"}
    want = patching.activation_patching(model, clean, cor, patching.prob(clean[0, first], pos=p), "z", direction="noise")
    _nan_close(charts(at)["patch_z"]["data"][0]["z"], want.effect, atol=1e-5)
    # a chosen metric position where both runs agree: a logit difference would be 0 everywhere
    at.selectbox(key="w.metric").set_value("logit_diff").run()
    at.selectbox(key="w.mpos").set_value(1).run()
    assert not at.exception and "the logit difference is 0" in at.warning[0].value
    at.selectbox(key="w.mpos").set_value(-1).run()  # back to auto
    ok(at)
    assert "mpos" not in at.query_params and charts(at)
    # a corrupted prompt of another length, or the clean one itself: messages, and a way back
    at.text_area(key="w.corrupt").set_value("12+3=").run()
    assert not at.exception and "same length" in at.error[0].value
    at.text_area(key="w.corrupt").set_value(text).run()
    assert not at.exception and "are the same" in at.error[0].value
    at.button(key="reset_corrupt").click().run()
    ok(at)
    assert "corrupt" not in at.query_params and at.text_area(key="w.corrupt").value == cor_text


def test_patching_defaults_per_task_and_streams(app, ckpts):
    """induction: another repeated block, the metric averaged over the repeat; text: one token
    changed, the two runs' top-1 answers differ; factored models sweep xt and xe too."""
    from interp import patching

    at = app(url=dict(ckpt="induction_attn_only", page="patching"))
    model, _ = interp.load(ckpts["induction_attn_only"])
    clean = prompt_ids(model, at.text_area(key="w.prompt").value)
    cor = prompt_ids(model, at.text_area(key="w.corrupt").value)
    body, n = cor[0, 1:-1].tolist(), (cor.shape[1] - 2) // 2
    assert body[:n] == body[n:] and not set(body) & set(clean[0, 1:-1].tolist())  # B B with fresh symbols
    assert set(charts(at)) == {"patch_resid_pre", "patch_attn_out", "patch_z"}  # attention-only: no MLP
    pos = torch.arange(n + 1, 2 * n + 1)[None]  # every repeated token after the first
    metric = patching.logit_diff(clean[:, pos[0] + 1], cor[:, pos[0] + 1], pos)
    heads = patching.activation_patching(model, clean, cor, metric, "z")
    _nan_close(charts(at)["patch_z"]["data"][0]["z"], heads.normalized(), atol=1e-4)

    at = app(url=dict(page="patching", prompt="To be, or not to be"))
    model, _ = interp.load(ckpts["shakespeare_factored_alibi"])
    clean = prompt_ids(model, "To be, or not to be")
    cor = prompt_ids(model, at.text_area(key="w.corrupt").value)
    changed = (clean != cor)[0].nonzero()[:, 0].tolist()
    p = int(at.selectbox(key="w.mpos").options[0].split(": ")[1])  # "auto: 19": where the change is read
    assert len(changed) == 1 and p >= changed[0] + 2  # one token, whose effect travels to a later position
    assert f"changes the prediction at position {p}" in _texts(at)
    with torch.no_grad():
        a, b = int(model(clean)[0, p].argmax()), int(model(cor)[0, p].argmax())
    assert a != b
    figs = charts(at)
    assert {"patch_xt_pre", "patch_xe_pre"} <= set(figs)
    xe = patching.activation_patching(model, clean, cor, patching.logit_diff(a, b, p), "xe_pre", positions=range(p + 1))
    _nan_close(figs["patch_xe_pre"]["data"][0]["z"], xe.normalized(), atol=1e-4)


def test_patch_sweep_reports_progress_and_is_cached(ckpts):
    from app import data

    ck = data.load(ckpts["induction_attn_only"])
    ids = tuple(range(1, 9))
    cor = (1,) + tuple(range(10, 17))
    seen = []
    args = (ck.key, ids, cor, "resid_pre", "logit_diff", (6,), (8,), (16,), "denoise", tuple(map(str, ids)))
    res = data.patch_sweep(*args, progress=lambda done, total: seen.append((done, total)))
    assert seen and seen[-1][0] == seen[-1][1] == res.values.numel()
    again = []
    assert data.patch_sweep(*args, progress=lambda d, t: again.append(d)) is res and again == []  # cached


# ------------------------------------------------------------------ Latent thoughts
def _shipped(monkeypatch, **url):
    monkeypatch.setenv("INTERP_CHECKPOINT_ROOT", str(SHIPPED))
    monkeypatch.setattr(sys, "argv", ["explorer.py"])
    at = AppTest.from_file(APP, default_timeout=120)
    at.query_params.update(url)
    return at.run()


@pytest.fixture(scope="module")
def coconut_add3():
    from interp import thoughts

    return thoughts.load(SHIPPED / "coconut_add3_coconut", task_overrides={"n_train": 0})


def test_latent_thoughts_page(monkeypatch, coconut_add3):
    """The timeline, lens, attention and patching of a shipped Coconut checkpoint against direct
    `interp.thoughts` calls; the answer check against `evaluate_coconut`; every control."""
    from interp import thoughts
    from interp.training.coconut import evaluate_coconut

    reasoner, _, staged = coconut_add3
    at = _shipped(monkeypatch, ckpt="coconut_add3_coconut", page="thoughts")
    ok(at)
    want = thoughts.timeline(reasoner, staged, "test", 0, 5)
    fig = charts(at)["thought_timeline"]
    assert fig["data"][0]["text"] == [[want["top_tokens"][s][i] for s in range(len(want["top_tokens"]))] for i in range(5)]
    _nan_close(fig["data"][2]["y"], want["answer_prob"], atol=1e-5)
    _nan_close(fig["data"][1]["z"], want["attention"], atol=1e-5)
    row = evaluate_coconut(reasoner.model, staged, "test", n=1, return_rows=True)["rows"][0]
    verdict = "correct" if row["correct"] else "wrong"
    assert f"**{verdict}**" in _texts(at) and "`1017`" in _texts(at)  # the first test problem: 876+141
    batch = thoughts.latent_batch(staged, "test", 1)
    lens = thoughts.thought_lens(reasoner, batch.input_ids, 5)
    _nan_close(charts(at)["thought_lens"]["data"][0]["z"], lens.top_probs[0, :, :, 0].T, atol=1e-5)
    att = thoughts.answer_attention(reasoner, batch)[0]
    _nan_close(charts(at)["thought_attention"]["data"][0]["z"], att.reshape(-1, att.shape[-1]), atol=1e-5)
    # the patch tracks the answer token the thoughts decide, with the donor that moves it most
    # (the page's defaults; tests/test_coconut_app.py checks how they are chosen)
    off = thoughts.deciding_answer_offset(reasoner, staged, "test", 0)
    best = thoughts.best_donor(reasoner, staged, "test", 0, 0, list(range(1, 33)), answer_offset=off)
    donor_off = thoughts.deciding_answer_offset(reasoner, staged, "test", best["donor"])
    patched = thoughts.patch_thought(reasoner, thoughts.latent_batch(staged, "test", 1, answer_offset=off),
                                     thoughts.latent_batch(staged, "test", 1, start=best["donor"], answer_offset=donor_off), 0)
    assert at.metric[0].value == f"{float(patched['p_answer_patched'][0]):.3f}"
    assert at.metric[1].value == f"{float(patched['p_source_answer_patched'][0]):.3f}"
    assert "thought_frontier" not in charts(at)  # arithmetic: no search frontier

    # controls: example, top-k, split, donor, slot (all in the URL)
    at.number_input(key="w.index").set_value(3).run()
    at.slider(key="w.topk").set_value(3).run()
    at.radio(key="w.split").set_value("val").run()
    at.number_input(key="w.donor").set_value(7).run()
    at.selectbox(key="w.slot").set_value(2).run()
    ok(at)
    assert {k: at.query_params[k] for k in ("index", "topk", "split", "donor", "slot")} == \
        {"index": "3", "topk": "3", "split": "val", "donor": "7", "slot": "2"}
    want = thoughts.timeline(reasoner, staged, "val", 3, 3)
    fig = charts(at)["thought_timeline"]
    assert len(fig["data"][0]["text"]) == 3 and fig["data"][0]["text"][0] == [t[0] for t in want["top_tokens"]]
    _nan_close(fig["data"][2]["y"], want["answer_prob"], atol=1e-5)
    off, donor_off = (thoughts.deciding_answer_offset(reasoner, staged, "val", i) for i in (3, 7))
    patched = thoughts.patch_thought(reasoner, thoughts.latent_batch(staged, "val", 1, start=3, answer_offset=off),
                                     thoughts.latent_batch(staged, "val", 1, start=7, answer_offset=donor_off), 2)
    assert at.metric[0].value == f"{float(patched['p_answer_patched'][0]):.3f}"
    ex = exports(at)
    assert ex["thought_timeline_export"][1]["answer_prob"].shape == (len(want["answer_prob"]),)
    # an index past the split is clamped, not an error
    at = _shipped(monkeypatch, ckpt="coconut_add3_coconut", page="thoughts", index="100000")
    ok(at)
    last = thoughts_split_size(staged, "test") - 1
    assert at.number_input(key="w.index").value == last and at.query_params["index"] == str(last)
    assert any("outside the test split" in w.value for w in at.warning)


def thoughts_split_size(staged, split):
    return len(staged.parts(split))


def test_latent_thoughts_frontier_on_the_graph_task(monkeypatch):
    from interp import thoughts

    at = _shipped(monkeypatch, ckpt="coconut_graph_coconut", page="thoughts", nex="4")
    ok(at)
    reasoner, tok, staged = thoughts.load(SHIPPED / "coconut_graph_coconut", task_overrides={"n_train": 0})
    batch = thoughts.latent_batch(staged, "test", 4)
    lens = thoughts.thought_lens(reasoner, batch.input_ids, 5)
    mass = np.array(thoughts.frontier_mass(lens.probs[:, :, -1], batch.examples, tok)["mass"])
    bars = charts(at)["thought_frontier"]["data"]
    _nan_close(np.array([b["y"] for b in bars]).T, mass, atol=1e-5)


@pytest.mark.parametrize("name,mode", [("coconut_add3_cot", "cot"), ("coconut_graph_pause", "pause"),
                                       ("add3_none", None)])
def test_latent_thoughts_only_for_coconut_mode(monkeypatch, name, mode):
    at = _shipped(monkeypatch, ckpt=name, page="thoughts")
    assert not at.exception and "thoughts" not in at.radio(key="w.page").options
    note = at.warning[0].value
    assert "Latent thoughts page is not available" in note
    assert (f"mode={mode!r}" in note) if mode else "Coconut checkpoints" in note


@pytest.mark.parametrize("name", sorted(p.name for p in SHIPPED.iterdir() if (p / "config.json").exists()))
def test_new_pages_on_every_shipped_checkpoint(name, monkeypatch):
    """Attribution, Patching (heads only, to stay fast; add3_none sweeps every default site) and,
    for Coconut checkpoints, Latent thoughts draw on every shipped checkpoint without errors."""
    at = _shipped(monkeypatch, ckpt=name, page="patching", **({} if name == "add3_none" else {"acts": "z"}))
    ok(at)
    assert "patch_z" in charts(at), name
    goto(at, "attribution")
    assert {"attr_stacked", "attr_top", "attr_map"} <= set(charts(at)), name
    if "thoughts" in at.radio(key="w.page").options:
        goto(at, "thoughts")
        assert "thought_timeline" in charts(at), name
