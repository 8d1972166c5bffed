"""`attribute`: an attribution graph for one prompt, its edges from batched backward passes.

```python
from interp import graphs
g = graphs.attribute("data/checkpoints/shakespeare_vanilla", "data/dictionaries/shakespeare_vanilla",
                     "To be or not to", target=None)       # target: the top prediction
g = graphs.attribute(model, [tc0, tc1, tc2, tc3], tokens, target=" b", logit_mass=0.95)
```

Nodes: every active feature of every dictionary (layer, position, latent), one error node per
(dictionary, position), one token node per position (the token embedding plus, with learned
positions, the position embedding: one vector enters the stream there, so one node), and the
target logit(s): `target` (a token id or text, or a list of them), by default the top
prediction, or with `logit_mass` the most probable tokens up to that probability (at most
`max_logits`). A logit node's value is the logit minus the mean logit over the vocabulary
(softmax ignores the mean; circuit-tracer's choice), at the last position.

Edges: A[t, s] = the direct effect of s on t in the linear replacement model (`linear.py`):
rows for feature and logit nodes, in chunks of `batch_size` targets (chosen to fit
`memory_mb` when not given), with a progress bar. `naive_rows` computes the same rows with one
autograd backward per node through the real model run as the replacement (the test reference).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import torch
from jaxtyping import Float
from torch import Tensor

from .graph import AttributionGraph, Node
from .linear import EMBED, LOGITS, LinearReplacement
from .attach import GraphError, load_dictionaries
from .replacement import Replacement, build, frozen

__all__ = ["attribute", "constants", "naive_rows", "prepare", "Prepared"]

TargetLike = Union[None, int, str, Sequence[Union[int, str]]]


# ============================================================================ inputs
def _model(model_or_ckpt):
    """(model, checkpoint path or None)."""
    if isinstance(model_or_ckpt, (str, Path)):
        from interp.checkpoint import CheckpointError, load

        try:
            model, tok = load(model_or_ckpt)
        except CheckpointError as e:
            raise GraphError(str(e)) from None
        if tok is not None:
            model.set_tokenizer(tok)
        return model, str(model_or_ckpt)
    return model_or_ckpt, None


def _tokens(model, prompt) -> Tensor:
    cfg = model.cfg
    if isinstance(prompt, str):
        if model.tokenizer is None:
            raise GraphError("a text prompt needs the model's tokenizer: pass a checkpoint directory, attach one "
                             "with model.set_tokenizer(...), or give token ids")
        tokens = model.to_tokens(prompt)[0]
    else:
        tokens = torch.as_tensor(prompt)
        if tokens.ndim == 2 and tokens.shape[0] == 1:
            tokens = tokens[0]
        if tokens.ndim != 1 or tokens.dtype.is_floating_point:
            raise GraphError(f"prompt: give text or one sequence of token ids, got a tensor of shape {tuple(tokens.shape)}")
        tokens = tokens.long()
    n = int(tokens.shape[0])
    if n == 0:
        raise GraphError("prompt: empty")
    if n > cfg.n_ctx:
        raise GraphError(f"prompt is {n} tokens, longer than the model's context ({cfg.n_ctx} tokens)")
    bad = tokens[(tokens < 0) | (tokens >= cfg.d_vocab)]
    if len(bad):
        raise GraphError(f"prompt: token id(s) {bad.tolist()[:5]} outside the vocabulary [0, {cfg.d_vocab})")
    return tokens.to(next(model.parameters()).device)


def _token_text(model, t: int) -> str:
    try:
        return model.to_string([t]) if model.tokenizer is not None else str(t)
    except Exception:  # a tokenizer without a decode for this id
        return str(t)


def _target_id(model, t: Union[int, str]) -> int:
    V = model.cfg.d_vocab
    if isinstance(t, str):
        if model.tokenizer is None:
            raise GraphError(f"target {t!r}: text targets need the model's tokenizer (or give a token id)")
        try:
            ids = model.to_tokens(t, prepend_bos=False)[0].tolist()
        except Exception as e:
            raise GraphError(f"target {t!r}: the tokenizer cannot encode it ({e})") from None
        if len(ids) != 1:
            raise GraphError(f"target {t!r} is {len(ids)} tokens in this vocabulary, not one: the vocabulary "
                             f"has no such token")
        return int(ids[0])
    if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < V:
        raise GraphError(f"target {t!r}: not a token id of this vocabulary [0, {V})")
    return int(t)


def _targets(model, logits: Tensor, target: TargetLike, logit_mass: Optional[float], max_logits: int
             ) -> list[tuple[int, float]]:
    """[(token id, probability)] of the target logits, most probable first when chosen by mass."""
    probs = torch.softmax(logits.double(), -1)
    if target is not None:
        items = [target] if isinstance(target, (int, str)) else list(target)
        if not items:
            raise GraphError("target: an empty list")
        ids = list(dict.fromkeys(_target_id(model, t) for t in items))
        return [(i, float(probs[i])) for i in ids]
    if logit_mass is None:
        i = int(probs.argmax())
        return [(i, float(probs[i]))]
    if not 0 < logit_mass <= 1:
        raise GraphError(f"logit_mass={logit_mass}: must be in (0, 1]")
    p, idx = probs.sort(descending=True)
    n = int(torch.searchsorted(p.cumsum(0), torch.tensor(logit_mass, dtype=p.dtype, device=p.device))) + 1
    n = max(1, min(n, max_logits, len(p)))
    return [(int(i), float(q)) for q, i in zip(p[:n], idx[:n])]


# ============================================================================ the node table
@dataclass
class Prepared:
    """The replacement of a prompt with its node table: what `attribute` computes rows for."""

    rep: Replacement
    nodes: list[Node]
    sources: dict[str, tuple[Tensor, Tensor]]  # point -> (vectors (pos, K, d), columns (pos, K))
    target_rows: list[int]  # node indices that get rows (features, then logits)
    target_points: list[str]
    target_pos: Tensor
    target_vecs: Tensor  # (n_targets, d)
    target_const: Tensor  # (n_targets,) the part of each target's value no node writes (b_enc, b_U)
    unembed: Tensor  # (n_logits, d) demeaned unembedding columns of the target logits
    checkpoint: Optional[str] = None  # the checkpoint directory the model came from


def prepare(model, dictionaries, prompt, target: TargetLike = None, *, logit_mass: Optional[float] = None,
            max_logits: int = 10, check_model: bool = True, kind: str = "auto") -> Prepared:
    """Validate the inputs, run the model once, lay out the nodes. See `attribute`."""
    model, checkpoint = _model(model)
    tokens = _tokens(model, prompt)
    dicts = load_dictionaries(dictionaries, kind=kind, attn_only=model.cfg.attn_only) if dictionaries is not None else []
    rep = build(model, tokens, dicts, checkpoint=checkpoint, check_model=check_model)
    cfg = model.cfg
    T, L = rep.n_pos, cfg.n_layers
    nodes: list[Node] = []
    sources: dict[str, tuple[Tensor, Tensor]] = {}
    per_layer_offset: dict[int, int] = {}
    nz_of: dict[int, Tensor] = {}  # binding -> (n, 2) active (pos, latent), sorted
    first_node: dict[int, int] = {}
    slots: dict[int, int] = {}
    for b in rep.bindings:
        offset = per_layer_offset.get(b.layer, 0)
        per_layer_offset[b.layer] = offset + b.sae.cfg.d_sae
        b.slot = slots[b.layer] = slots.get(b.layer, -1) + 1
        nz = nz_of[b.index] = b.acts.nonzero()
        first_node[b.index] = len(nodes)
        values, biases = b.acts[nz[:, 0], nz[:, 1]].tolist(), b.enc_bias[nz[:, 1]].tolist()  # one device read each
        for (p, f), a, c in zip(nz.tolist(), values, biases):
            nodes.append(Node(id=f"{b.layer}_{offset + f}_{p}", kind="feature", layer=b.layer, pos=p, feature=offset + f,
                              latent=f, dictionary=b.index, stream=b.stream, activation=a, constant=c))
    error_start = len(nodes)
    for b in rep.bindings:
        tag = f"_{b.slot}" if slots[b.layer] > 0 else ""
        for p, norm in enumerate(b.error.norm(dim=-1).tolist()):
            nodes.append(Node(id=f"err_{b.layer}{tag}_{p}", kind="error", layer=b.layer, pos=p, feature=-1,
                              dictionary=b.index, stream=b.stream, activation=norm))
    token_start = len(nodes)
    stream0 = "xt" if rep.factored else "resid"
    for p, (t, norm) in enumerate(zip(rep.tokens.tolist(), rep.embed.norm(dim=-1).tolist())):
        nodes.append(Node(id=f"E_{t}_{p}", kind="embedding", layer=-1, pos=p, feature=t, stream=stream0,
                          activation=norm, token=_token_text(model, t)))
    targets = _targets(model, rep.logits[-1], target, logit_mass, max_logits)
    W_U = model.W_U.detach().float()
    b_U = model.b_U.detach().float() if getattr(model, "b_U", None) is not None else None
    unembed, logit_const = [], []
    logit_start = len(nodes)
    for j, (t, prob) in enumerate(targets):
        u = W_U[:, t] - W_U.mean(1)
        unembed.append(u)
        const = float(b_U[t] - b_U.mean()) if b_U is not None else 0.0
        logit_const.append(const)
        value = float(rep.logits[-1, t] - rep.logits[-1].mean())
        nodes.append(Node(id=f"{L + 1}_{t}_{T - 1}", kind="logit", layer=L, pos=T - 1, feature=t, stream="resid",
                          activation=value, constant=const, token=_token_text(model, t), prob=prob, is_target=j == 0))
    # sources: what each source node writes, per point and position (its features, then the error; padded)
    d, dev = cfg.d_model, rep.embed.device
    for b in rep.bindings:
        nz = nz_of[b.index]
        pos_, lat = nz[:, 0], nz[:, 1]
        count = torch.bincount(pos_, minlength=T)
        K = int(count.max()) + 1 if len(nz) else 1
        slot = torch.arange(len(nz), device=dev) - (count.cumsum(0) - count)[pos_]
        V = torch.zeros(T, K, d, device=dev)
        cols = torch.full((T, K), -1, dtype=torch.long, device=dev)
        V[pos_, slot] = b.acts[pos_, lat, None] * b.dec[lat]
        cols[pos_, slot] = first_node[b.index] + torch.arange(len(nz), device=dev)
        V[:, K - 1] = b.error
        cols[:, K - 1] = error_start + b.index * T + torch.arange(T, device=dev)
        sources[b.write] = (V, cols)
    sources[EMBED] = (rep.embed[:, None, :].clone(),
                      torch.arange(token_start, token_start + T, device=rep.embed.device)[:, None])
    feat_rows = [i for b in rep.bindings for i in range(first_node[b.index], first_node[b.index] + len(nz_of[b.index]))]
    rows = feat_rows + list(range(logit_start, len(nodes)))
    points = [b.read for b in rep.bindings for _ in range(len(nz_of[b.index]))] + [LOGITS] * len(targets)
    pos = torch.cat([nz_of[b.index][:, 0] for b in rep.bindings] + [torch.full((len(targets),), T - 1, device=dev)]).long()
    enc = [rep.bindings[i].enc[nz_of[i][:, 1]] for i in range(len(rep.bindings))]
    vecs = torch.cat(enc + [torch.stack(unembed)])
    const = torch.tensor([nodes[i].constant for i in rows], device=dev)
    return Prepared(rep=rep, nodes=nodes, sources=sources, target_rows=rows, target_points=points, target_pos=pos,
                    target_vecs=vecs, target_const=const, unembed=torch.stack(unembed), checkpoint=checkpoint)


def _metadata(prep: Prepared, checkpoint: Optional[str]) -> tuple[list[str], str, list[dict], dict]:
    from interp.features import model_identity

    rep, model = prep.rep, prep.rep.model
    strs = [_token_text(model, t) for t in rep.tokens.tolist()]
    try:
        text = model.to_string(rep.tokens.tolist()) if model.tokenizer is not None else " ".join(strs)
    except Exception:
        text = " ".join(strs)
    dicts = []
    for b in rep.bindings:
        info = b.describe()
        info["slot"] = getattr(b, "slot", 0)
        dicts.append(info)
    ident = model_identity(model, checkpoint)
    if checkpoint:
        ident["checkpoint_name"] = Path(checkpoint).name
    return strs, text, dicts, ident


# ============================================================================ attribute
def attribute(model, dictionaries, prompt, target: TargetLike = None, *, logit_mass: Optional[float] = None,
              max_logits: int = 10, batch_size: Optional[int] = None, memory_mb: float = 512,
              progress: bool = True, check_model: bool = True, kind: str = "auto") -> AttributionGraph:
    """The attribution graph of `prompt` (text or token ids) on `model` (a checkpoint directory
    or a `HookedTransformer`) with `dictionaries` (a folder of saved dictionaries, one path, a
    `SparseDictionary`, or a list; see `replacement.py` for what may attach where; None on an
    attention-only model).

    target: token id(s) or text(s) whose logit to explain (default: the top prediction; with
        `logit_mass`, the most probable tokens up to that mass, at most `max_logits`).
    batch_size: targets per backward pass (default: as many as fit `memory_mb`, at most 256).
    check_model: refuse dictionaries trained for another model (config fields or checkpoint name).
    kind: which dictionaries to take from a folder ("auto", "transcoders", "saes", "all").
    Dictionaries given as objects are moved to the model's device in float32 (in place). The
    graph is computed in float32 whatever the model's dtype (exact for a float32 model).
    """
    from tqdm.auto import tqdm

    prep = prepare(model, dictionaries, prompt, target, logit_mass=logit_mass, max_logits=max_logits,
                   check_model=check_model, kind=kind)
    rep = prep.rep
    n = len(prep.nodes)
    A_T = torch.zeros(n, n, device=rep.embed.device)  # (source, target): each chunk writes whole rows of it
    A = A_T.T
    lin = LinearReplacement(rep, prep.sources, n)
    n_rows = len(prep.target_rows)
    if batch_size is None:
        per_row = 4 * (n + 12 * rep.n_pos * rep.cfg.d_model)
        batch_size = int(max(1, min(256, memory_mb * 2**20 // per_row)))
    if batch_size < 1:
        raise GraphError(f"batch_size={batch_size}: must be >= 1")
    # feature rows, then logit rows: each a run of consecutive nodes, so a chunk's rows are a slice of A
    n_feat = sum(1 for p in prep.target_points if p != LOGITS)
    chunks = [(s, min(s + batch_size, end)) for start, end in ((0, n_feat), (n_feat, n_rows))
              for s in range(start, end, batch_size)]
    bar = tqdm(total=n_rows, desc="attribution rows", unit="node", disable=not progress, leave=False)
    for s, e in chunks:
        r0 = prep.target_rows[s]
        lin.rows(prep.target_points[s:e], prep.target_pos[s:e], prep.target_vecs[s:e], out=A[r0: r0 + e - s])
        bar.update(e - s)
    bar.close()
    for i, c in zip(prep.target_rows, constants(prep).tolist()):
        prep.nodes[i].constant = c
    strs, text, dicts, ident = _metadata(prep, prep.checkpoint)
    return AttributionGraph(nodes=prep.nodes, adjacency=A.cpu(), tokens=rep.tokens.tolist(), token_strs=strs,
                            prompt=text, dictionaries=dicts, model=ident)


# ============================================================================ constants and the reference
@torch.no_grad()
def constants(prep: Prepared) -> Float[Tensor, "k"]:
    """Each target's constant: its value in the replacement with every source (tokens,
    features, errors) zeroed, i.e. what the biases (b_V, b_O, norm biases, b_dec, b_enc, b_U)
    contribute. One forward of the real model run as the replacement."""
    rep = prep.rep
    with frozen(rep, sources=False) as zero:
        rep.model(rep.tokens[None])
    out = prep.target_const.clone()
    points = prep.target_points
    for name in dict.fromkeys(points):
        sel = torch.tensor([i for i, p in enumerate(points) if p == name], device=out.device)
        x = zero["final"] if name == LOGITS else zero["reads"][name]
        out[sel] += (x[0, prep.target_pos[sel]].float() * prep.target_vecs[sel]).sum(-1)
    return out


def naive_rows(prep: Prepared, which: Optional[Sequence[int]] = None) -> Float[Tensor, "k n"]:
    """Rows of the targets `which` (indices into `prep.target_rows`; default all), each from its
    own autograd backward through the real model run as the replacement (`replacement.frozen`)."""
    rep = prep.rep
    which = list(range(len(prep.target_rows))) if which is None else list(which)
    out = torch.zeros(len(which), len(prep.nodes))
    with torch.enable_grad():
        with frozen(rep) as state:
            rep.model(rep.tokens[None])
        taps = state["taps"]
        names = list(taps)
        for r, j in enumerate(which):
            point, p, vec = prep.target_points[j], int(prep.target_pos[j]), prep.target_vecs[j]
            x = state["final"] if point == LOGITS else state["reads"][point]
            grads = torch.autograd.grad(x[0, p].float() @ vec, [taps[k] for k in names], retain_graph=True,
                                        allow_unused=True)
            for k, g in zip(names, grads):
                if g is None:
                    continue
                V, cols = prep.sources[k]
                E = torch.einsum("pd,pkd->pk", g[0].float(), V)
                keep = cols >= 0
                out[r, cols[keep].cpu()] = E[keep].detach().cpu()
    return out
