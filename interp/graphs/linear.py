"""The batched backward of the local replacement model: the edges into many nodes at once.

The replacement (`replacement.py`) is linear, so the gradient of a node's value with respect
to every point of the stream is a fixed vector field, and the direct effect of a source node
s on a target node t is that gradient at the point where s writes, dotted with what s writes
(Circuit Tracing §3.2: A[t, s] = a_s w_dec(s) . grad_t). Here the transposed model is written
out layer by layer, for a chunk of targets at once:

* gradients are (pos, batch, d) tensors, one batch row per target node; a target injects its
  read direction (a feature's encoder row, a logit's demeaned unembedding column) at the point
  it reads, at its position;
* the walk starts at the highest point any row injects (layers above are never touched) and
  runs on the prefix up to the last position any row reads (the model is causal); until the
  first attention on the way down, only the chunk's own positions carry gradient;
* frozen norms cost no pass of their own: a norm is y = (center?(x) * w + b') / s_pos with a
  scalar s per position, so for attention's input norm the 1/s of each key position goes into
  the frozen pattern and w and the centring into W_V; a target reading a norm's output (ln2,
  ln_final) injects center?(w * v) / s_pos at the norm's input instead;
* attention's transpose is z-grad = g W_O per head (one broadcast batched matmul that lands
  head-major), pattern^T per head as one (H, k, q) @ (H, q, batch * d_head) matmul, then W_V;
* at each source point the gradient is contracted with the vectors written there (active
  features' a_f * W_dec rows and the error vector per position; the token embeddings at the
  bottom) into the chunk's rows of the adjacency matrix;
* a node's constant (what the biases contribute: b_V, b_O, norm biases, b_dec, b_enc, b_U) is
  not part of the pass: `attribute` reads it off one forward of the replacement with every
  source zeroed; value = sum of incoming edges + constant, exactly.

`frozen()` in `replacement.py` runs the real model as the same linear function; the tests check
that one autograd backward per node through it gives the same rows (`tracing.naive_rows`).
"""

from __future__ import annotations

from typing import Optional

import torch
from jaxtyping import Float, Int
from torch import Tensor

from .replacement import FrozenAttention, FrozenNorm, Replacement

__all__ = ["LinearReplacement", "LOGITS", "EMBED"]

LOGITS = "logits"  # what logit targets read: the unembedding's input (ln_final's output)
EMBED = "hook_embed"  # where token nodes write


def _add(a: Optional[Tensor], b: Optional[Tensor]) -> Optional[Tensor]:
    if a is None:
        return b
    return a if b is None else a + b


def _acc(fresh: Optional[Tensor], other: Optional[Tensor]) -> Optional[Tensor]:
    """fresh + other, in place in `fresh` (a tensor this pass just made and nothing else holds)."""
    if fresh is None:
        return other
    return fresh if other is None else fresh.add_(other)


def _norm_T(norm: Optional[FrozenNorm], g: Tensor) -> Tensor:
    """Gradient at a frozen norm's output -> at its input: center?(g * w / s)."""
    if norm is None:
        return g
    g = g * (norm.c if g.ndim == 2 else norm.c[: g.shape[0], None, :])
    return g - g.mean(-1, keepdim=True) if norm.center else g


class _Attention:
    """One frozen attention layer's transpose, with its input norm folded in where it can be."""

    def __init__(self, fa: FrozenAttention, norm: Optional[FrozenNorm], d: int):
        self.fa = fa
        H, dh = fa.n_heads, fa.d_head
        self.W_O = None if fa.W_O is None else fa.W_O.reshape(d, H, dh).permute(1, 0, 2).contiguous()  # (H, d, dh)
        self.pattern_T = fa.pattern.transpose(1, 2)  # (H, k, q)
        self.norm = norm  # applied explicitly (shaped values read ln1(x) itself); None once folded
        self.W_V = fa.W_V
        if fa.kind == "standard" and norm is not None:
            W = fa.W_V * norm.c[0] * norm.scale[0]  # W_V diag(w), as c = w / s
            self.W_V = W - W.mean(1, keepdim=True) if norm.center else W
            self.pattern_T = (fa.pattern / norm.scale[None, None, :, 0]).transpose(1, 2)  # 1 / s of each key
            self.norm = None
        self.W_V_heads = None if self.W_V is None else self.W_V.view(-1, dh, d)  # (kv heads, dh, d)


class LinearReplacement:
    """Rows of the adjacency matrix (edges into target nodes) from batched transposed passes.

    sources: {point: (vectors (pos, K, d), columns (pos, K) long, -1 = padding)} for every
    point where source nodes write (binding write points and `hook_embed`); `n_cols` the
    number of columns of a row.
    """

    def __init__(self, rep: Replacement, sources: dict[str, tuple[Tensor, Tensor]], n_cols: int):
        self.rep = rep
        self.cfg = cfg = rep.cfg
        self.n_cols = n_cols
        self.writes = {b.write: b for b in rep.bindings}
        L = cfg.n_layers
        self.attn = [_Attention(fa, rep.norms[f"blocks.{l}.ln1"], cfg.d_model) for l, fa in enumerate(rep.attns)]
        # a point read right after a norm -> (the norm, the point whose output the norm reads)
        self.after_norm: dict[str, tuple[Optional[FrozenNorm], str]] = {
            LOGITS: (rep.norms["ln_final"], f"blocks.{L - 1}.hook_resid_post")}
        for l in range(L):
            p = f"blocks.{l}."
            self.after_norm[p + "ln2.hook_normalized"] = (rep.norms.get(p + "ln2"), p + "hook_resid_mid")
            self.after_norm[p + "ln1.hook_normalized"] = (rep.norms.get(p + "ln1"), p + "hook_resid_pre")
        # sources, flattened: for a prefix of P positions the entries [:ends[P]] are the valid ones
        self.sources = {}
        for name, (V, cols) in sources.items():
            T, K = cols.shape
            flat = cols.reshape(-1)
            valid = (flat >= 0).nonzero().flatten()
            ends = torch.searchsorted(valid // K, torch.arange(T + 1, device=valid.device))
            dense = None
            if len(valid) == T * K and K > 1:  # no padding: features and errors each fill one column range
                f, e = cols[:, : K - 1].reshape(-1), cols[:, K - 1]
                if torch.equal(f, f[0] + torch.arange(len(f), device=f.device)) and \
                        torch.equal(e, e[0] + torch.arange(T, device=e.device)):
                    dense = (int(f[0]), int(e[0]), V[:, : K - 1].contiguous(), V[:, K - 1:].contiguous())
            self.sources[name] = (V, valid, flat[valid], ends.tolist(), dense)

    # ------------------------------------------------------------------ one chunk
    @torch.no_grad()
    def rows(self, points: list[str], pos: Int[Tensor, "n"], vecs: Float[Tensor, "n d"],
             out: Optional[Float[Tensor, "n cols"]] = None) -> Float[Tensor, "n cols"]:
        """Edges into n target nodes: row i is the node reading `points[i]` at `pos[i]` along
        `vecs[i]`. Written into `out` (zeros, e.g. a column-major view) when given."""
        B = len(points)
        dev = vecs.device
        self._P, self._B = int(pos.max()) + 1, B
        # built as (cols, batch): the readouts then write whole rows
        self._out = torch.zeros(self.n_cols, B, device=dev) if out is None else out.T
        self._pending: dict[str, Tensor] = {}
        self._inject_out: dict[str, list] = {}  # added to the gradient at a point's output (reads of its value)
        self._inject_in: dict[str, list] = {}  # added below a cut (an SAE's targets read its input)
        groups: dict[str, list[int]] = {}
        for i, name in enumerate(points):
            groups.setdefault(name, []).append(i)
        for name, rows in groups.items():
            sel = torch.tensor(rows, device=dev)
            v, ps = vecs[sel], pos[sel]
            if name in self.after_norm:
                norm, at = self.after_norm[name]
                if norm is not None:
                    v = v * norm.c[ps]
                    if norm.center:
                        v = v - v.mean(-1, keepdim=True)
                self._inject_out.setdefault(at, []).append((sel, ps, v))
            elif name in self.writes and self.writes[name].kind == "sae":
                self._inject_in.setdefault(name, []).append((sel, ps, v))
            else:
                self._inject_out.setdefault(name, []).append((sel, ps, v))
        self._lo = int(pos.min())  # positions below this carry no gradient until the first attention
        if self.cfg.stream == "factored":
            gt = ge = None
            for layer in reversed(range(self.cfg.n_layers)):
                gt, ge = self._block_factored(layer, gt, ge)
            g = gt
        else:
            g = None
            for layer in reversed(range(self.cfg.n_layers)):
                g = self._block_standard(layer, g)
        self._point(EMBED, g)
        left = sorted(set(self._inject_out) | set(self._inject_in))
        if left:
            raise ValueError(f"targets at points the walk never met: {left}")  # pragma: no cover
        return self._out.T

    # ------------------------------------------------------------------ points
    def _inject(self, g: Optional[Tensor], items: list) -> Optional[Tensor]:
        for idx, ps, v in items:
            if g is None:  # a fresh tensor: safe to fill in place
                g = torch.zeros(self._P, self._B, v.shape[-1], device=v.device).index_put_((ps, idx), v, accumulate=True)
            else:
                g = g.index_put((ps, idx), v, accumulate=True)
        return g

    def _point(self, name: str, g: Optional[Tensor]) -> Optional[Tensor]:
        """Gradient at a point's output -> gradient at its input: add the reads of its value,
        read out the sources written here, send a transcoder's skip share towards its read
        point, stop at a cut, add the injections of targets reading below the cut."""
        g = self._inject(g, self._inject_out.pop(name, []))
        g = _acc(self._pending.pop(name, None), g)
        b = self.writes.get(name)
        if g is not None and name in self.sources:
            self._readout(name, g)
        if b is not None and g is not None and b.skip is not None:
            norm, at = self.after_norm.get(b.read, (None, b.read))
            self._pending[at] = _add(self._pending.get(at), _norm_T(norm, g @ b.skip.T))
        if b is not None:
            g = None  # every binding replaces the value at its write point
        return self._inject(g, self._inject_in.pop(name, []))

    def _view(self, name: str) -> Optional[Tensor]:
        """Reads of a factored model's read-only `hook_resid_*` view (it feeds xt and xe alike)."""
        return _add(self._inject(None, self._inject_out.pop(name, [])), self._pending.pop(name, None))

    def _readout(self, name: str, g: Tensor) -> None:
        V, valid, cols, ends, dense = self.sources[name]
        P, B = g.shape[0], self._B
        gT = g.transpose(1, 2)  # (pos, d, batch)
        if dense is not None:  # every position has K - 1 features then the error: bmm straight into the rows
            feat0, err0, V_feat, V_err = dense
            K = V.shape[1]
            torch.bmm(V_feat[:P], gT, out=self._out[feat0: feat0 + P * (K - 1)].view(P, K - 1, B))
            torch.bmm(V_err[:P], gT, out=self._out[err0: err0 + P].view(P, 1, B))
            return
        E = torch.bmm(V[:P], gT)  # (pos, K, batch)
        n = ends[P]
        self._out[cols[:n]] = E.reshape(-1, B)[valid[:n]]

    # ------------------------------------------------------------------ attention
    def _attn_T(self, layer: int, g: Optional[Tensor]) -> Optional[Tensor]:
        """Gradient at attention's output -> gradient at its input: resid (standard: through
        the folded ln1; shaped: ln1 explicitly) or xt (factored values)."""
        if g is None:
            return None
        a = self.attn[layer]
        fa = a.fa
        P, B, d = g.shape
        H, dh = fa.n_heads, fa.d_head
        lo, self._lo = self._lo, 0  # the first attention on the way down spreads over all earlier positions
        if a.W_O is not None:
            gz = torch.matmul(g[lo:].reshape(1, -1, d), a.W_O)  # (H, (P - lo) * B, dh): head-major
        else:
            gz = g[lo:].reshape(P - lo, B, H, dh).permute(2, 0, 1, 3)
        gv = a.pattern_T[:, :P, lo:P] @ gz.reshape(H, P - lo, B * dh)  # (H, k, batch * dh)
        if fa.kind == "standard" and fa.n_kv_heads != H:  # GQA: a kv head serves a run of query heads
            gv = gv.view(fa.n_kv_heads, H // fa.n_kv_heads, P, B * dh).sum(1)
        nh = gv.shape[0]
        gv = gv.view(nh, P, B, dh)
        if fa.kind == "factored":
            if fa.W_mix is not None:
                gv = (gv.view(nh, P * B, dh) @ fa.W_mix.transpose(1, 2)).view(nh, P, B, dh)
            gx = gv.permute(1, 2, 0, 3).reshape(P, B, nh * dh)
            return gx * fa.M[:P, None, :] if fa.M is not None else gx
        if fa.kind == "shaped":
            g_n = gv.permute(1, 2, 0, 3).reshape(P, B, d)
        else:  # sum over heads of gv_h @ W_V_h, accumulated in place (no head-to-feature transpose copy)
            g_n = torch.empty(P * B, d, device=g.device)
            for h in range(nh):
                torch.addmm(g_n, gv[h].view(P * B, dh), a.W_V_heads[h], beta=0 if h == 0 else 1, out=g_n)
            g_n = g_n.view(P, B, d)
        return _norm_T(a.norm, g_n) if a.norm is not None else g_n

    # ------------------------------------------------------------------ blocks
    def _block_standard(self, layer: int, g: Optional[Tensor]) -> Optional[Tensor]:
        cfg, p = self.cfg, f"blocks.{layer}."
        g = self._point(p + "hook_resid_post", g)
        if cfg.attn_only:  # resid_post = x + attn(ln1(x)), whatever the block layout
            return self._point(p + "hook_resid_pre", _acc(self._attn_T(layer, self._point(p + "hook_attn_out", g)), g))
        self._point(p + "hook_mlp_out", g)  # the transcoder's write: the MLP itself carries no gradient
        if cfg.block == "sequential":
            g = self._point(p + "hook_resid_mid", g)
            g_x = _acc(self._attn_T(layer, self._point(p + "hook_attn_out", g)), g)
        else:  # parallel: x + attn(ln1 x) + mlp(ln1 x); shaped: attn(ln1 x) + mlp(ln1 x), no skip
            g_x = self._attn_T(layer, self._point(p + "hook_attn_out", g))
            if cfg.block == "parallel":
                g_x = _acc(g_x, g)
        return self._point(p + "hook_resid_pre", g_x)

    def _block_factored(self, layer: int, gt: Optional[Tensor], ge: Optional[Tensor]
                        ) -> tuple[Optional[Tensor], Optional[Tensor]]:
        """xt_mid = xt + attn(ln1(xt + xe); values from xt); xe_post = xe + mlp(ln2(xt_mid + xe))."""
        cfg, p = self.cfg, f"blocks.{layer}."
        v = self._view(p + "hook_resid_post")
        gt = self._point(p + "hook_xt_post", _add(gt, v))
        ge = self._point(p + "hook_xe_post", _add(ge, v))
        if not cfg.attn_only:
            self._point(p + "hook_mlp_out", ge)  # the MLP writes xe; replaced by its transcoder
        v = self._view(p + "hook_resid_mid")
        gt = self._point(p + "hook_xt_mid", _add(gt, v))
        ge = self._point(p + "hook_xe_mid", _add(ge, v))
        g_attn = self._attn_T(layer, self._point(p + "hook_attn_out", gt))
        v = self._view(p + "hook_resid_pre")
        if self.attn[layer].fa.kind == "shaped":  # values read ln1(xt + xe): the gradient goes to both
            v = _acc(g_attn, v)
        else:
            gt = _acc(g_attn, gt)
        return self._point(p + "hook_xt_pre", _add(gt, v)), self._point(p + "hook_xe_pre", _add(ge, v))
