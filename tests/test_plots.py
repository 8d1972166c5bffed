import plotly.graph_objects as go
import torch

from interp import heads, lens, plots
from models import presets


def unique(axis_values):
    vals = list(axis_values)
    return len(vals) == len(set(vals))


def test_unique_labels():
    assert plots.unique_labels(["a", "b", "a"]) == ["0:a", "1:b", "2:a"]


def test_attention_plots():
    T = 5
    labels = ["a", "b", "a", "a", "c"]
    fig = plots.attention_heatmap(torch.rand(T, T), labels, labels, "t")
    assert isinstance(fig, go.Figure) and len(fig.data) == 1
    assert unique(fig.data[0].x) and unique(fig.data[0].y) and len(fig.data[0].x) == T
    grid = plots.attention_grid(torch.rand(2, 3, T, T), labels)
    assert len(grid.data) == 6 and all(unique(t.x) for t in grid.data)
    assert len(plots.attention_grid(torch.rand(3, T, T)).data) == 3


def test_model_based_plots():
    torch.manual_seed(0)
    model = presets.make("factored", "tiny").eval()
    tokens = torch.tensor([[1, 2, 1, 2, 1, 2]])
    res = lens.logit_lens(model, tokens)
    vocab = [chr(97 + i % 26) for i in range(128)]
    fig = plots.logit_lens_heatmap(res, decode=vocab)
    assert len(fig.data) == 1 and unique(fig.data[0].x) and list(fig.data[0].y) == res.layer_names
    assert "target" in fig.data[0].text[1][0] and "no target" in fig.data[0].text[1][-1]
    _, c = model.run_with_cache(tokens)
    f = plots.resid_norms(c, labels=[vocab[t] for t in tokens[0]])
    assert len(f.data) == 1 and f.data[0].z.shape == (3, 6) and unique(f.data[0].x)
    xt = torch.stack([c[f"blocks.{i}.hook_xt_post"][0].norm(dim=-1) for i in range(2)])
    xe = torch.stack([c[f"blocks.{i}.hook_xe_post"][0].norm(dim=-1) for i in range(2)])
    assert len(plots.stream_norms_factored(xt, xe).data) == 2
    table = heads.head_scores(model, tokens)
    hf = plots.head_score_heatmap(table.prev_token, "prev_token")
    assert hf.data[0].z.shape == (2, 4)


def test_bar_plots():
    rows = [{"name": "a", "accuracy/prompt": 0.1, "accuracy/step": 0.5, "accuracy/answer": 0.9},
            {"name": "b", "accuracy/prompt": 0.2, "accuracy/step": 0.4, "accuracy/answer": 0.3}]
    fig = plots.segment_bars(rows)
    assert len(fig.data) == 2 and list(fig.data[1].y) == [0.2, 0.4, 0.3]
    nb = plots.top_neurons_bar(torch.tensor([0.1, -3.0, 2.0, 0.5]), k=2)
    assert list(nb.data[0].y) == ["n1", "n2"]
    gs = plots.generation_steps(torch.tensor([2.0, 1.0, 2.0, 0.0]), k=3, decode=["x", "y", "x", "z"], chosen=2)
    assert len(gs.data) == 1 and unique(gs.data[0].x) and len(gs.data[0].x) == 3
    err = abs(sum(gs.data[0].y) - (1 - torch.tensor([2.0, 1.0, 2.0, 0.0]).softmax(0)[3].item()))
    assert err < 1e-6
