"""The Features page under Streamlit's AppTest, on tiny fixture checkpoints with random
dictionaries saved next to them: dictionaries found by the discovery rule (and links out of
the allowed roots or dictionaries of another model left out), the dashboard store computed
once and then opened from disk, what the page shows equal to the store and to
interp.features called directly, the URL holding the view, clicks (table row, neighbour,
token) selecting, steering / ablation, and bad input as messages, never exceptions."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from streamlit.testing.v1 import AppTest

import interp
from app_fixtures import make_checkpoints  # tests/ is on sys.path (rootdir conftest)
from interp import features
from test_app import charts, components, ok

REPO = Path(__file__).resolve().parents[1]
APP = str(REPO / "app" / "explorer.py")
PROMPT = "To be, or not to be"


def save_dictionary(ckpt: Path, where: Path, name: str, hook: str = "blocks.0.hook_resid_post", d_sae: int = 48,
                    seed: int = 0, **kw) -> Path:
    model, _ = interp.load(ckpt)
    torch.manual_seed(seed)
    sae = features.make(dict(arch="topk", k=4, d_in=model.cfg.d_model, d_sae=d_sae, hook_name=hook,
                             model=features.model_identity(model, str(ckpt)), **kw))
    return sae.save(where / name)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("feat_ckpts")
    ck = make_checkpoints(root, names=("shakespeare_vanilla", "add3_none"), broken=False)
    sv = ck["shakespeare_vanilla"]
    save_dictionary(sv, sv / "dictionaries", "resid0")
    save_dictionary(sv, root / "shipped" / "shakespeare_vanilla", "resid1", hook="blocks.1.hook_resid_post", seed=1)
    outside = tmp_path_factory.mktemp("outside")  # not an allowed root: a link to it is left out
    save_dictionary(sv, outside, "elsewhere")
    (sv / "dictionaries" / "linked_out").symlink_to(outside / "elsewhere")
    save_dictionary(ck["add3_none"], sv / "dictionaries", "other_model")  # another model's: left out
    return root


@pytest.fixture
def app(root, monkeypatch):
    monkeypatch.setenv("INTERP_CHECKPOINT_ROOT", str(root))
    import app.data.features as fdata

    monkeypatch.setattr(fdata, "SHIPPED", root / "shipped")

    def start(url: dict | None = None, check: bool = True):
        monkeypatch.setattr(sys, "argv", ["explorer.py"])
        at = AppTest.from_file(APP, default_timeout=180)
        params = dict(dict(ckpt="shakespeare_vanilla", page="features", prompt=PROMPT), **(url or {}))
        at.query_params.update({k: v for k, v in params.items() if v is not None})
        at.run()
        if check:
            ok(at)
        return at

    return start


def dict_dir(root, name="resid0") -> Path:
    return root / "shipped" / "shakespeare_vanilla" / name if name == "resid1" else \
        root / "shakespeare_vanilla" / "dictionaries" / name


def store_of(root, name="resid0"):
    return features.open_dashboards(dict_dir(root, name) / "dashboard")


def texts(at) -> str:
    return "\n".join(m.value for m in at.markdown) + "\n".join(c.value for c in at.caption)


def htmls(at) -> str:
    return "\n".join(h.proto.body for h in at.get("html"))


def test_dictionaries_found_by_the_rule(app, root):
    at = app()
    box = at.selectbox(key="w.dict")
    assert box.options and [o.split(" · ")[0] for o in box.options] == ["resid0", "resid1"]
    assert at.query_params["page"] == "features" and "Features" in at.radio(key="w.page").options


def test_the_page_computes_the_store_once_then_opens_it(app, root):
    at = app(url=dict(latent="5"))
    store = store_of(root)
    first = (store.dir / "manifest.json").stat().st_mtime
    d = store.latent(5)
    assert "#### Latent 5" in texts(at)
    if not d.dead:  # the top contexts are on the page, shaded by activation
        body = htmls(at)
        for c in d.top[:3]:
            assert f'<span class="v">{c.value:.3g}</span>' in body
        assert charts(at)["feat_hist"]["data"][0]["y"] == d.hist_counts
    assert [t for t in charts(at)["feat_logits"]["data"][0]["y"]][-1].endswith(
        d.logit_top[0][1].replace(" ", "␣").replace("\n", "↵"))
    again = app(url=dict(latent="6"))
    assert (store.dir / "manifest.json").stat().st_mtime == first  # opened from disk, not recomputed
    assert "#### Latent 6" in texts(again)


def test_the_url_holds_the_view_and_clicks_select(app, root):
    at = app(url=dict(dict="resid1", latent="3", fmode="ablate", where="pos", pos="4", n="5"))
    assert at.selectbox(key="w.dict").value.startswith("resid1") and "#### Latent 3" in texts(at)
    assert at.radio(key="w.fmode").value == "ablate" and at.radio(key="w.where").value == "pos"
    assert at.number_input(key="w.n").value == 5
    assert {k: at.query_params[k] for k in ("dict", "latent", "fmode", "where", "pos", "n")} == \
        dict(dict="resid1", latent="3", fmode="ablate", where="pos", pos="4", n="5")
    nb = store_of(root, "resid1").latent(3).neighbours[0][0]
    at.button(key="feat_nb_0").click().run()
    ok(at)
    assert at.query_params["latent"] == str(nb) and f"#### Latent {nb}" in texts(at)
    strip = components(at, "strip")[0]
    assert strip["selected"] == 4 and len(strip["tokens"]) == len(PROMPT) + 1  # <bos> + characters


def test_active_features_at_the_selected_position(app, root):
    at = app(url=dict(pos="3"))
    model, _ = interp.load(root / "shakespeare_vanilla")
    sae = features.load(dict_dir(root))
    z = features.prompt_latents(model, sae, model.to_tokens(PROMPT)[0])
    want = [int(i) for i in z[3].argsort(descending=True)[:4] if z[3, i] > 0]  # k=4: at most 4 active
    got = [int(b.label.split(" · ")[0]) for b in at.button if b.key and b.key.startswith("feat_active_")]
    assert got == want
    at.button(key="feat_active_0").click().run()
    assert at.query_params["latent"] == str(want[0])


def test_steering_before_and_after(app, root):
    at = app(url=dict(latent="2", alpha="0", n="6"))
    assert "KL(before ‖ after) of the next token = **0.0000**" in texts(at)
    codes = [c.value for c in at.code]
    assert len(codes) == 2 and codes[0] == codes[1] and len(codes[0]) == 6
    fig = charts(at)["feat_steer"]
    assert fig["data"][0]["y"] == fig["data"][1]["y"]
    model, _ = interp.load(root / "shakespeare_vanilla")
    sae = features.load(dict_dir(root))
    r = features.steer(model, sae, 2, model.to_tokens(PROMPT)[0], alpha=30.0, max_new_tokens=6)
    at = app(url=dict(latent="2", alpha="30", n="6"))
    assert f"= **{r.kl:.4f}** nats" in texts(at)
    assert [c.value for c in at.code][1] == "".join(model.tokenizer.decode([t]) for t in r.after.continuation)


def test_bad_input_is_a_message(app, root):
    at = app(url=dict(latent="9999"))
    assert any("out of range" in w.value for w in at.warning) and "#### Latent 47" in texts(at)
    at = app(url=dict(dict="nope"))
    assert any("`dict=nope` is not available" in w.value for w in at.warning)
    at = app(url=dict(alpha="1e12"), check=False)
    assert not at.exception and any("more than 1000 times" in e.value for e in at.error)
    at = app(url=dict(ckpt="add3_none", prompt=None))  # no dictionaries: the page is not offered
    assert "Features" not in at.radio(key="w.page").options
    assert any("Features page is not available" in w.value and "no dictionaries" in w.value for w in at.warning)
