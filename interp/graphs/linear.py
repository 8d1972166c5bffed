"""The batched backward of the local replacement model: the edges into many nodes at once.

The replacement (`replacement.py`) is linear, so the gradient of a node's value with respect
to every point of the stream is a fixed vector field, and the direct effect of a source node
s on a target node t is that gradient at the point where s writes, dotted with what s writes
(Circuit Tracing §3.2: A[t, s] = a_s w_dec(s) . grad_t). Here the transposed model is written
out layer by layer, for a chunk of targets at once:

* gradients are (pos, batch, d) tensors, one batch row per target node; a target injects its
  read direction (a feature's encoder row, a logit's demeaned unembedding column) at its
  point and position;
* the walk starts at the highest point any row injects (layers above are never touched) and
  runs on the prefix up to the last position any row reads (the model is causal);
* attention's transpose is pattern^T per head as one (H, k, q) @ (H, q, batch * d_head)
  matmul; norms multiply by w / scale and re-centre (LayerNorm);
* at each source point the gradient is contracted with the vectors written there (active
  features' a_f * W_dec rows and the error vector per position; the token embeddings at
  the bottom) into the chunk's rows of the adjacency matrix;
* every bias met on the way (b_V, b_O, norm biases, b_dec) is dotted with the gradient there
  and summed into the row's constant, so value = sum of incoming edges + constant, exactly.

`frozen()` in `replacement.py` runs the real model as the same linear function; the tests check
that one backward per node through it gives the same rows (`attribute.naive_rows`).
"""

from __future__ import annotations

from typing import Optional

import torch
from jaxtyping import Float, Int
from torch import Tensor

from .replacement import FrozenAttention, FrozenNorm, Replacement

__all__ = ["LinearReplacement", "LOGITS"]

LOGITS = "logits"  # the point where logit targets inject: the unembedding's input (ln_final's output)
EMBED = "hook_embed"  # where token nodes write


def _add(a: Optional[Tensor], b: Optional[Tensor]) -> Optional[Tensor]:
    if a is None:
        return b
    return a if b is None else a + b


class LinearReplacement:
    """Rows of the adjacency matrix (edges into target nodes) from batched transposed passes.

    sources: {point: (vectors (pos, K, d), columns (pos, K) long, -1 = padding)} for every
    point where source nodes write (binding write points and `hook_embed`); `n_cols` the
    number of columns of a row.
    """

    def __init__(self, rep: Replacement, sources: dict[str, tuple[Tensor, Tensor]], n_cols: int):
        self.rep = rep
        self.cfg = rep.cfg
        self.sources = sources
        self.n_cols = n_cols
        self.writes = {b.write: b for b in rep.bindings}
        self.cuts = set(self.writes)  # every binding replaces the value at its write point

    # ------------------------------------------------------------------ one chunk
    @torch.no_grad()
    def rows(self, points: list[str], pos: Int[Tensor, "n"], vecs: Float[Tensor, "n d"]
             ) -> tuple[Float[Tensor, "n cols"], Float[Tensor, "n"]]:
        """Edges into n target nodes (row i: the node reading `points[i]` at `pos[i]` along
        `vecs[i]`) and each one's constant (the biases' share of its value)."""
        B = len(points)
        self._P = int(pos.max()) + 1
        self._B = B
        dev = vecs.device
        self._out = torch.zeros(B, self.n_cols, device=dev)
        self._bias = torch.zeros(B, device=dev)
        self._pending: dict[str, Tensor] = {}
        self._inject: dict[str, tuple[Tensor, Tensor, Tensor]] = {}
        for name in dict.fromkeys(points):
            idx = torch.tensor([i for i, p in enumerate(points) if p == name], device=dev)
            self._inject[name] = (idx, pos[idx], vecs[idx])
        self._lo = int(pos.min())  # positions below this carry no gradient until the first attention
        g = self._norm_T(self.rep.norms["ln_final"], self._point(LOGITS, None))
        if self.cfg.stream == "factored":
            gt, ge = g, g
            for layer in reversed(range(self.cfg.n_layers)):
                gt, ge = self._block_factored(layer, gt, ge)
            g = gt
        else:
            for layer in reversed(range(self.cfg.n_layers)):
                g = self._block_standard(layer, g)
        self._point(EMBED, g)
        if self._inject:
            raise ValueError(f"targets at unknown points: {sorted(self._inject)}")  # pragma: no cover
        return self._out, self._bias

    # ------------------------------------------------------------------ points
    def _point(self, name: str, g: Optional[Tensor]) -> Optional[Tensor]:
        """Gradient at a point's output -> gradient at its input: read out the sources written
        here, send a transcoder's skip share to its read point, stop at a cut, add the
        injections of targets reading here."""
        if g is not None and name in self.sources:
            self._readout(name, g)
        b = self.writes.get(name)
        if b is not None and g is not None:
            self._bias_dot(g, b.dec_bias)
            if b.skip is not None:
                self._pending[b.read] = _add(self._pending.get(b.read), g @ b.skip.T)
        if name in self.cuts:
            g = None
        g = _add(g, self._injection(name))
        return _add(g, self._pending.pop(name, None))

    def _injection(self, name: str) -> Optional[Tensor]:
        if name not in self._inject:
            return None
        idx, pos, vecs = self._inject.pop(name)
        g = torch.zeros(self._P, self._B, vecs.shape[-1], device=vecs.device)
        g[pos, idx] = vecs
        return g

    def _readout(self, name: str, g: Tensor) -> None:
        V, cols = self.sources[name]
        P = g.shape[0]
        E = torch.bmm(g, V[:P].transpose(1, 2))  # (pos, batch, K)
        c = cols[:P]
        keep = c >= 0
        self._out[:, c[keep]] = E.permute(1, 0, 2)[:, keep]

    def _bias_dot(self, g: Tensor, v: Optional[Tensor]) -> None:
        if v is not None:
            self._bias += (g.reshape(-1, g.shape[-1]) @ v).view(g.shape[0], -1).sum(0)

    # ------------------------------------------------------------------ pieces
    def _norm_T(self, norm: Optional[FrozenNorm], g: Optional[Tensor]) -> Optional[Tensor]:
        """Frozen norm y = center?(x) * c + b  ->  dx = center?(dy * c)."""
        if norm is None or g is None:
            return g
        self._bias_dot(g, norm.b)
        g = g * norm.c[: g.shape[0], None, :]
        return g - g.mean(-1, keepdim=True) if norm.center else g

    def _attn_T(self, layer: int, g: Optional[Tensor]) -> tuple[Optional[Tensor], Optional[Tensor]]:
        """Gradient at attention's output -> (gradient at its normalised input, gradient at xt).

        Only the value path carries gradient (the pattern is frozen): standard values read
        ln1(x) through W_V, shaped values are ln1(x) itself, factored values read xt."""
        if g is None:
            return None, None
        fa: FrozenAttention = self.rep.attns[layer]
        P, B, d = g.shape
        H, dh = fa.n_heads, fa.d_head
        lo, self._lo = self._lo, 0  # the first attention on the way down spreads over all earlier positions
        self._bias_dot(g, fa.b_O)
        gz = g[lo:].reshape(-1, d)
        if fa.W_O is not None:
            gz = gz @ fa.W_O
        gz = gz.view(P - lo, B, H, dh).permute(2, 0, 1, 3).reshape(H, P - lo, B * dh)
        gv = fa.pattern[:, lo:P, :P].transpose(1, 2) @ gz  # (H, k, batch * d_head)
        if fa.kind == "standard" and fa.n_kv_heads != H:  # GQA: a kv head serves a run of query heads
            gv = gv.view(fa.n_kv_heads, H // fa.n_kv_heads, P, B * dh).sum(1)
        nh = gv.shape[0]
        if fa.kind == "factored":
            gv = gv.view(nh, P * B, dh)
            if fa.W_mix is not None:
                gv = gv @ fa.W_mix.transpose(1, 2)
            gv = gv.view(nh, P, B, dh).permute(1, 2, 0, 3).reshape(P, B, nh * dh)
            if fa.M is not None:
                gv = gv * fa.M[:P, None, :]
            return None, gv
        gv = gv.view(nh, P, B, dh).permute(1, 2, 0, 3).reshape(P * B, nh * dh)
        if fa.kind == "shaped":
            return gv.view(P, B, d), None
        self._bias_dot(gv.view(P, B, -1), fa.b_V)
        return (gv @ fa.W_V).view(P, B, d), None

    # ------------------------------------------------------------------ blocks
    def _block_standard(self, layer: int, g: Optional[Tensor]) -> Optional[Tensor]:
        cfg, p = self.cfg, f"blocks.{layer}."
        norms = self.rep.norms
        g = self._point(p + "hook_resid_post", g)
        if cfg.attn_only:  # resid_post = x + attn(ln1(x)), whatever the block layout
            g_n1 = self._point(p + "ln1.hook_normalized", self._attn_T(layer, self._point(p + "hook_attn_out", g))[0])
            return self._point(p + "hook_resid_pre", _add(g, self._norm_T(norms[p + "ln1"], g_n1)))
        self._point(p + "hook_mlp_out", g)  # the transcoder's write: the MLP itself carries no gradient
        if cfg.block == "sequential":
            g_n2 = self._point(p + "ln2.hook_normalized", None)
            g_mid = self._point(p + "hook_resid_mid", _add(g, self._norm_T(norms[p + "ln2"], g_n2)))
            g_attn = self._point(p + "hook_attn_out", g_mid)
            g_n1 = self._point(p + "ln1.hook_normalized", self._attn_T(layer, g_attn)[0])
            g_x = _add(g_mid, self._norm_T(norms[p + "ln1"], g_n1))
        else:  # parallel: x + attn(ln1 x) + mlp(ln1 x); shaped: attn(ln1 x) + mlp(ln1 x), no skip
            g_attn = self._point(p + "hook_attn_out", g)
            g_n1 = self._point(p + "ln1.hook_normalized", self._attn_T(layer, g_attn)[0])
            g_x = self._norm_T(norms[p + "ln1"], g_n1)
            if cfg.block == "parallel":
                g_x = _add(g, g_x)
        return self._point(p + "hook_resid_pre", g_x)

    def _block_factored(self, layer: int, gt: Optional[Tensor], ge: Optional[Tensor]
                        ) -> tuple[Optional[Tensor], Optional[Tensor]]:
        """xt_mid = xt + attn(ln1(xt + xe); values from xt); xe_post = xe + mlp(ln2(xt_mid + xe))."""
        cfg, p = self.cfg, f"blocks.{layer}."
        norms = self.rep.norms
        gt = self._point(p + "hook_xt_post", gt)
        ge = self._point(p + "hook_xe_post", ge)
        if not cfg.attn_only:
            self._point(p + "hook_mlp_out", ge)  # the MLP writes xe; replaced by its transcoder
            if norms.get(p + "ln2") is not None or self.rep.model.blocks[layer].ln2 is not None:
                g_n2 = self._point(p + "ln2.hook_normalized", None)
                g_rm = self._point(p + "hook_resid_mid", self._norm_T(norms[p + "ln2"], g_n2))
                gt, ge = _add(gt, g_rm), _add(ge, g_rm)
        gt = self._point(p + "hook_xt_mid", gt)
        ge = self._point(p + "hook_xe_mid", ge)
        g_h, g_v = self._attn_T(layer, self._point(p + "hook_attn_out", gt))
        g_h = self._point(p + "ln1.hook_normalized", g_h)
        g_rp = self._point(p + "hook_resid_pre", self._norm_T(norms[p + "ln1"], g_h))
        gt = _add(_add(gt, g_v), g_rp)
        ge = _add(ge, g_rp)
        return self._point(p + "hook_xt_pre", gt), self._point(p + "hook_xe_pre", ge)
