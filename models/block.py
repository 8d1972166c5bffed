"""Transformer blocks, composed from norm + attention + MLP.

* `sequential`: resid_mid = resid_pre + attn(ln1(resid_pre)); resid_post = resid_mid + mlp(ln2(resid_mid))
* `parallel` (GPT-J): both branches read ln1(resid_pre); resid_post = resid_pre + attn + mlp
* `shaped` (SAS-P, He & Hofmann 2023): shaped attention with identity values/projection in
  parallel with the MLP and no skip connection: resid_post = attn(ln1(x)) + mlp(ln1(x))

The factored stream (`stream="factored"`) carries `xt` (written only by attention) and `xe`
(written only by MLPs); norms read xt + xe, and `hook_resid_*` expose xt + xe so every
stream-level tool works unchanged.
"""

from __future__ import annotations

from typing import Optional

import torch
from jaxtyping import Float
from torch import nn

from .attention import Attention, AttnContext, LayerKV
from .config import ModelConfig
from .hooks import HookPoint, observed, sync_hook_point, toggled_hook
from .mlp import MLP
from .norm import make_norm

Stream = tuple[torch.Tensor, Optional[torch.Tensor]]  # (resid or xt, xe or None)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.cfg = cfg
        self.layer = layer
        self.factored = cfg.stream == "factored"
        self.ln1 = make_norm(cfg)
        self.attn = Attention(cfg, layer)
        has_mlp = not cfg.attn_only
        self.ln2 = make_norm(cfg) if has_mlp and cfg.block == "sequential" else None
        self.mlp = MLP(cfg) if has_mlp else None
        self.drop = nn.Dropout(cfg.dropout)

        self.hook_resid_pre = HookPoint()
        self.hook_attn_out = HookPoint()
        if cfg.block == "sequential" and has_mlp:
            self.hook_resid_mid = HookPoint()
        if has_mlp:
            self.hook_mlp_out = HookPoint()
        self.hook_resid_post = HookPoint()
        if self.factored:
            for name in ("xt_pre", "xt_mid", "xt_post", "xe_pre", "xe_mid", "xe_post"):
                setattr(self, f"hook_{name}", HookPoint())

    def sync_hook_points(self) -> None:
        """TransformerLens's optional hook points exist while their toggle is on:
        `hook_attn_in` (`cfg.use_attn_in`), `hook_q_input` / `hook_k_input` / `hook_v_input`
        (`cfg.use_split_qkv_input`), `hook_mlp_in` (`cfg.use_hook_mlp_in`), `attn.hook_result`
        (`cfg.use_attn_result`). Off (the default), the block runs exactly as without them."""
        cfg = self.cfg
        sync_hook_point(self, "hook_attn_in", cfg.use_attn_in)
        for name in ("hook_q_input", "hook_k_input", "hook_v_input"):
            sync_hook_point(self, name, cfg.use_split_qkv_input)
        sync_hook_point(self, "hook_mlp_in", cfg.use_hook_mlp_in and self.mlp is not None)
        self.attn.sync_hook_points()

    def _attention(self, x: torch.Tensor, ctx: AttnContext, kv: Optional[LayerKV], xt=None):
        """attn(ln1(x)) and ln1(x); with TL's per-head input hooks on, each head reads its own
        copy of x (`hook_q_input` / `hook_k_input` / `hook_v_input`, or `hook_attn_in`, each
        (batch, pos, head, d_model)) through ln1, and the shared ln1(x) is None."""
        cfg = self.cfg
        if not (cfg.use_split_qkv_input or cfg.use_attn_in):
            h = self.ln1(x)
            return self.attn(h, ctx, xt=xt, kv=kv), h
        # cloned copies, as TL's repeat_along_head_dimension: an edit of one head stays in that head
        heads = lambda n: x[:, :, None].expand(-1, -1, n, -1).clone()
        if cfg.use_split_qkv_input:
            hook = lambda name: toggled_hook(self, name, "set_use_split_qkv_input")
            n_kv = cfg.n_kv_heads
            q_in, k_in, v_in = (hook("hook_q_input")(heads(cfg.n_heads)), hook("hook_k_input")(heads(n_kv)),
                                hook("hook_v_input")(heads(n_kv)))
        else:
            q_in = k_in = v_in = toggled_hook(self, "hook_attn_in", "set_use_attn_in")(heads(cfg.n_heads))
        per_head = (self.ln1(q_in), self.ln1(k_in), self.ln1(v_in))
        return self.attn(None, ctx, xt=xt, kv=kv, per_head=per_head), None

    def _mlp_input(self, resid: torch.Tensor, norm: nn.Module, shared: Optional[torch.Tensor]) -> torch.Tensor:
        """What the MLP reads: norm(resid), or `shared` (parallel blocks' ln1(resid_pre)) when
        given; with `use_hook_mlp_in` the input goes through `hook_mlp_in` (batch, pos, d_model)
        first, a copy, so an edit there changes the MLP's input only."""
        if self.cfg.use_hook_mlp_in:
            return norm(toggled_hook(self, "hook_mlp_in", "set_use_hook_mlp_in")(resid.clone()))
        return shared if shared is not None else norm(resid)

    def forward(self, stream: Stream, ctx: AttnContext, kv: Optional[LayerKV] = None) -> Stream:
        if self.factored:
            return self._forward_factored(*stream, ctx, kv)
        return self._forward_standard(stream[0], ctx, kv), None

    def _forward_standard(
        self, x: Float[torch.Tensor, "batch pos d_model"], ctx: AttnContext, kv: Optional[LayerKV]
    ) -> Float[torch.Tensor, "batch pos d_model"]:
        block = self.cfg.block
        x = self.hook_resid_pre(x)
        attn_out, h = self._attention(x, ctx, kv)
        attn_out = self.hook_attn_out(self.drop(attn_out))
        if self.mlp is None:
            return self.hook_resid_post(x + attn_out)
        if block == "sequential":
            x = self.hook_resid_mid(x + attn_out)
            mlp_out = self.hook_mlp_out(self.drop(self.mlp(self._mlp_input(x, self.ln2, None))))
            return self.hook_resid_post(x + mlp_out)
        mlp_out = self.hook_mlp_out(self.drop(self.mlp(self._mlp_input(x, self.ln1, h))))
        if block == "parallel":
            return self.hook_resid_post(x + attn_out + mlp_out)
        return self.hook_resid_post(attn_out + mlp_out)  # shaped: no skip connection

    def _forward_factored(
        self,
        xt: Float[torch.Tensor, "batch pos d_model"],
        xe: Float[torch.Tensor, "batch pos d_model"],
        ctx: AttnContext,
        kv: Optional[LayerKV],
    ) -> Stream:
        xt, xe = self.hook_xt_pre(xt), self.hook_xe_pre(xe)
        resid = self._stream_view("resid_pre", xt + xe)
        h = self.ln1(resid)
        attn_out = self.hook_attn_out(self.drop(self.attn(h, ctx, xt=xt, kv=kv)))
        xt = self.hook_xt_mid(xt + attn_out)
        xe = self.hook_xe_mid(xe)
        if self.mlp is not None:
            if self.ln2 is not None:
                h = self._mlp_input(self._stream_view("resid_mid", xt + xe), self.ln2, None)
            else:
                h = self._mlp_input(resid, self.ln1, h)
            xe = xe + self.hook_mlp_out(self.drop(self.mlp(h)))
        xt, xe = self.hook_xt_post(xt), self.hook_xe_post(xe)
        if observed(self.hook_resid_post):
            self._stream_view("resid_post", xt + xe)
        return xt, xe

    def _stream_view(self, name: str, resid: torch.Tensor) -> torch.Tensor:
        """In the factored stream `hook_resid_*` is a read-only view of xt + xe: a hook that
        replaces it cannot say which stream the edit belongs to, so we refuse it (in-place
        edits too, as TL's patch setters make: caught by the tensor's version counter).

        Observing is allowed, gradients included. A backward hook wraps the output in an
        alias of `resid` (same storage, shape and strides), which is not an edit; the alias is
        what the norm reads, so the hook fires. The gradient it sees is the one through this
        block's norm (ln1 for resid_pre, ln2 for resid_mid), the only reader of the sum; the
        sum at resid_post is read by nothing, so a backward hook there never fires. The full
        per-stream gradients are at `hook_xt_*` / `hook_xe_*`. A backward hook that returns a
        different gradient is refused like a forward edit.
        """
        hook = getattr(self, f"hook_{name}")
        if not observed(hook):
            return resid
        version = resid._version
        out = hook(resid)
        if not (out is resid or _aliases(out, resid)) or resid._version != version:
            raise RuntimeError(self._read_only_message(name))
        if out is not resid and out.requires_grad:
            self._refuse_gradient_edits(name, resid, out)
        return out

    def _read_only_message(self, name: str) -> str:
        stage = name.split("_")[1]
        return (
            f"blocks.{self.layer}.hook_{name} is a read-only view of xt + xe in a factored-stream "
            f"model; patch blocks.{self.layer}.hook_xt_{stage} or "
            f"blocks.{self.layer}.hook_xe_{stage} instead"
        )

    def _refuse_gradient_edits(self, name: str, resid: torch.Tensor, out: torch.Tensor) -> None:
        """`resid` reaches the graph only through `out`, so its gradient must equal `out`'s
        unless a backward hook replaced it on the way."""
        seen: list[torch.Tensor] = []
        out.register_hook(lambda g: seen.append(g))

        def check(grad: torch.Tensor) -> None:
            if seen and not torch.equal(seen[0], grad):
                raise RuntimeError(
                    self._read_only_message(name) + " (a backward hook there may read the gradient, not replace it)"
                )

        resid.register_hook(check)


def _aliases(a: torch.Tensor, b: torch.Tensor) -> bool:
    """True when `a` is `b` under another name: same storage, offset, shape and strides."""
    return (
        a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()
        and a.storage_offset() == b.storage_offset()
        and a.shape == b.shape
        and a.stride() == b.stride()
    )
