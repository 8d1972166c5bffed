"""What a newcomer hit on the explorer (issue 22), each pinned by a test: out-of-range URL
values are said on the page, not clamped silently; the attention colour scale's "each
panel's max" leaves out the first token's row and column (row 0 is always 1, so a plain max
made "auto" the same as "shared"); the Training page labels a Fourier spectrum by its 1-based
frequencies with the key frequencies marked, and leaves out series on never-trained prompt
tokens; Compare's cut-off prompt reads as a whole. (Colour scale, tick labels and Compare's
titles in a real browser: tests/test_browser.py.)"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from streamlit.testing.v1 import AppTest

import interp
from app_fixtures import make_checkpoints  # tests/ is on sys.path (rootdir conftest)

REPO = Path(__file__).resolve().parents[1]
APP = str(REPO / "app" / "explorer.py")
GROKKING = REPO / "data" / "runs" / "grokking"


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    r = tmp_path_factory.mktemp("edges")
    make_checkpoints(r, names=("shakespeare_factored_alibi", "add3_none", "add3_mask_steps", "add3_mask_answer"),
                     broken=False)
    return r


def _run(monkeypatch, root, url: dict) -> AppTest:
    monkeypatch.setenv("INTERP_CHECKPOINT_ROOT", str(root))
    monkeypatch.setattr(sys, "argv", ["explorer.py"])
    at = AppTest.from_file(APP, default_timeout=120)
    at.query_params.update(url)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    return at


def _warned(at, name: str) -> str:
    found = [w.value for w in at.warning if f"`{name}=" in w.value or f"`{name}`" in w.value]
    assert found, (name, [w.value for w in at.warning])
    return found[0]


@pytest.mark.parametrize("page,url,said", [
    ("lens", dict(topk="50"), {"topk": "showing 10"}),
    ("lens", dict(pos="999"), {"pos": "outside this prompt"}),
    ("streams", dict(k="999"), {"k": "showing"}),
    ("steps", dict(temp="9", greedy="0", n="0"), {"temp": "showing 2", "n": "showing 1"}),  # 1 token: fast
    ("compare", dict(ckpt="add3_none", nex="100000"), {"nex": "showing 40"}),
    ("patching", dict(mpos="999", acts=["resid_pre", "bogus_site"]), {"mpos": "outside", "acts": "bogus_site"}),
])
def test_out_of_range_url_values_are_said_on_the_page(monkeypatch, root, page, url, said):
    at = _run(monkeypatch, root, dict(url, page=page))
    for name, text in said.items():
        assert text in _warned(at, name)
    fixed = {k: v if isinstance(v, list) else [v] for k, v in dict(at.query_params).items()}
    assert fixed.get("topk", ["10"]) == ["10"] and "pos" not in fixed and "mpos" not in fixed
    assert fixed.get("acts") in (None, ["resid_pre"])
    at.run()  # said once: the URL now holds what is shown
    assert not [w.value for w in at.warning if any(f"`{n}=" in w.value for n in said)]


def test_thumbnails_scale_by_each_heads_max_off_the_first_token(monkeypatch, root):
    text = "To be, or not to be"
    at = _run(monkeypatch, root, dict(page="attention", prompt=text))
    d = next(json.loads(c.proto.json) for c in at.get("bidi_component")
             if c.proto.component_name == "interp_explorer.attention")
    model, tok = interp.load(root / "shakespeare_factored_alibi")
    _, cache = model.run_with_cache(torch.tensor([[model.cfg.bos_token_id] + tok.encode(text)]))
    pats = torch.stack([cache[f"blocks.{l}.attn.hook_pattern"][0] for l in range(model.cfg.n_layers)]).numpy()
    want = np.array([[pats[l, h, 1:, 1:].max() for h in range(pats.shape[1])] for l in range(pats.shape[0])])
    assert np.allclose(d["thumbs"]["auto"], want.reshape(-1), atol=1e-3)
    assert np.allclose(d["thumbs"]["max"], 1.0, atol=1e-3)  # query 0 -> itself: why a plain max says nothing
    assert (want < 0.999).any()


@pytest.mark.skipif(not GROKKING.is_dir(), reason="data/runs/grokking is not in this checkout")
def test_training_spectrum_rows_are_frequencies_with_the_key_ones_marked(monkeypatch):
    at = _run(monkeypatch, GROKKING.parent, dict(ckpt="grokking", page="training"))
    figs = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    spectrum = next(f for f in figs if "spectrum" in str(f["layout"].get("title", {}).get("text", "")))
    assert spectrum["layout"]["yaxis"]["title"]["text"] == "frequency k"
    heat = next(t for t in spectrum["data"] if t["type"] == "heatmap")
    assert heat["y"][0] == "k=1" and len(heat["y"]) == 56
    marks = next(t for t in spectrum["data"] if t.get("name") == "key frequencies")
    rows = [json.loads(line) for line in (GROKKING / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in rows if r.get("event") == "progress"][-1]
    at_last = [y for x, y in zip(marks["x"], marks["y"]) if x == last["step"]]
    assert at_last == [f"k={k}" for k in last["fourier/key_freqs"]]  # 1-based, like the rows
    titles = [str(f["layout"].get("title", {}).get("text", "")) for f in figs]
    assert not any("key_freqs" in t for t in titles)  # drawn on the spectrum, not as 16 lines
    assert not any(t.endswith("_prompt") for t in titles)  # prompt tokens are never trained
    assert any("loss_prompt" in c.value for c in at.caption)
    heads = [f for f in figs if f["layout"]["yaxis"].get("title", {}).get("text") == "head"]
    assert all("per head" in str(f["layout"]["title"]["text"]) for f in heads)


def test_compare_quotes_the_whole_prompt_it_generates_after(monkeypatch, root):
    at = _run(monkeypatch, root, dict(ckpt="add3_none", page="compare", nex="4"))
    cap = next(c.value for c in at.caption if c.value.startswith("Greedy completion after"))
    prompt = at.text_area(key="w.prompt").value
    head = prompt[: prompt.index("=") + 1]
    assert f"“<bos>{head}”" in cap, cap  # the whole "123+456=", not its last 8 tokens
