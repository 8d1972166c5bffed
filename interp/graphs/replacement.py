"""The local replacement model of one prompt (Anthropic's "Circuit Tracing", 2025, §2).

Take the model on a prompt, then

* freeze every normalisation scale and attention pattern at its value on that prompt (and, in
  `factored_value="modulated"` models, the value modulator `v_mod(ln1(x))`): what is left of
  attention is the linear OV path, of a norm the linear centring and scaling;
* replace each MLP by a transcoder: the MLP output becomes the transcoder's reconstruction from
  its (frozen) feature activations, plus its linear skip (if any) of the live input, plus an
  **error** term = true MLP output - reconstruction, a constant per (layer, position);
* optionally cut the stream with residual SAEs (`hook_resid_*`, `hook_attn_out`, or per stream
  `hook_xt_*` / `hook_xe_*`): the value there becomes features + error, so every path passes
  through them (the replacement attention-only models use).

The result is linear in its inputs (token embeddings, feature activations, error vectors) plus
constants (the biases), and it reproduces the model's logits exactly on this prompt (the error
terms see to that). `Replacement` holds everything that defines it; `frozen(...)` runs the
real model *as* the replacement (hooks return the frozen values; used as the reference the
fast batched backward in `linear.py` is checked against, and for interventions).

What a dictionary may attach to, and the messages for what may not: `attach.py`. With no
dictionary on an attention-only model the graph is tokens -> logits through frozen attention,
complete by construction.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

import torch
from jaxtyping import Float, Int
from torch import Tensor

from interp.features import SparseDictionary

from .attach import GraphError, bindings_spec, stream_of

__all__ = ["Binding", "FrozenNorm", "FrozenAttention", "Replacement", "build", "frozen"]


# ============================================================================ frozen pieces
@dataclass
class FrozenNorm:
    """A norm with its scale frozen: y = center?(x) * c + b, c = w / scale per position."""

    c: Float[Tensor, "pos d"]
    center: bool  # LayerNorm subtracts the mean; RMSNorm does not
    b: Optional[Float[Tensor, "d"]]
    scale: Float[Tensor, "pos 1"]  # the frozen hook_scale


@dataclass
class FrozenAttention:
    """One attention layer with its pattern frozen (and, when modulated, its value gate).

    kind: "standard" (v = ln1(x) W_V + b_V, per kv head), "shaped" (v = ln1(x), identity),
    "factored" (v = xt per head: identity, `W_mix` channel mix, or `xt * M`).
    The output is z (concatenated heads) @ W_O.T + b_O, or z itself when `W_O` is None.
    """

    kind: str
    pattern: Float[Tensor, "head q k"]
    n_heads: int
    n_kv_heads: int
    d_head: int
    W_V: Optional[Float[Tensor, "kv_dh d"]] = None  # rows of qkv.weight for the values
    b_V: Optional[Float[Tensor, "kv_dh"]] = None
    W_O: Optional[Float[Tensor, "d h_dh"]] = None  # out.weight
    b_O: Optional[Float[Tensor, "d"]] = None
    W_mix: Optional[Float[Tensor, "head dh dh"]] = None
    M: Optional[Float[Tensor, "pos h_dh"]] = None


@dataclass
class Binding:
    """One dictionary in the replacement: where it reads and writes, and what it did on the prompt.

    kind "transcoder": reads `read`, replaces `write` (= blocks.L.hook_mlp_out).
    kind "sae": reads and replaces `read` (== `write`), a cut of the stream.
    acts: (pos, d_sae) activations on the prompt; error: (pos, d_out) true - reconstruction.
    enc: (d_sae, d_in) encoder direction of each latent in model units (pre = x . enc + enc_bias);
    dec: (d_sae, d_out) what one unit of a latent writes; dec_bias: (d_out,) b_dec in model
    units; skip: (d_in, d_out) the linear skip in model units, or None.
    """

    index: int
    name: str
    sae: SparseDictionary
    kind: str
    layer: int
    read: str
    write: str
    stream: str
    acts: Tensor
    error: Tensor
    enc: Tensor
    enc_bias: Tensor
    dec: Tensor
    dec_bias: Tensor
    skip: Optional[Tensor]
    slot: int = 0  # its place among the dictionaries of its layer (0 for the first)

    def describe(self) -> dict:
        c = self.sae.cfg
        return dict(index=self.index, name=self.name, kind=self.kind, layer=self.layer, stream=self.stream,
                    hook_name=c.hook_name, out_hook_name=c.out_hook_name, read=self.read, write=self.write,
                    arch=c.arch, d_in=c.d_in, d_sae=c.d_sae, d_out=c.d_out, k=c.k, skip=c.skip,
                    path=getattr(self.sae, "_graph_path", None))


@dataclass
class Replacement:
    """Everything that defines the local replacement model of `tokens` (see the module doc)."""

    model: Any
    tokens: Int[Tensor, "pos"]
    bindings: list[Binding]
    embed: Float[Tensor, "pos d"]  # token (+ learned position) embedding: what the token node writes
    norms: dict[str, Optional[FrozenNorm]]  # "blocks.L.ln1" / "blocks.L.ln2" / "ln_final" -> frozen (None: no norm)
    attns: list[FrozenAttention]
    logits: Float[Tensor, "pos vocab"]  # the model's own logits on the prompt
    values: dict[str, Tensor] = field(default_factory=dict)  # point -> (pos, d) clean value (reads, writes)

    @property
    def cfg(self):
        return self.model.cfg

    @property
    def n_pos(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def factored(self) -> bool:
        return self.cfg.stream == "factored"

    def binding_at(self, point: str) -> Optional[Binding]:
        """The binding whose sources are written at `point` (its write point)."""
        for b in self.bindings:
            if b.write == point:
                return b
        return None


# ============================================================================ building
def _norm(module, cache, name: str, T: int) -> Optional[FrozenNorm]:
    if not hasattr(module, "w"):  # nn.Identity (norm="none")
        return None
    scale = cache[f"{name}.hook_scale"][0, :T].float()  # (pos, 1)
    c = (module.w.detach().float()[None, :] / scale)
    b = module.b.detach().float() if module.b is not None else None
    return FrozenNorm(c=c, center=module.kind == "layernorm", b=b, scale=scale)


def _attention(attn, cache, layer: int, T: int, mods: dict) -> FrozenAttention:
    cfg = attn.cfg
    h, hkv, dh = attn.n_heads, attn.n_kv_heads, attn.d_head
    pattern = cache[f"blocks.{layer}.attn.hook_pattern"][0].float()
    fa = FrozenAttention(kind=attn.kind, pattern=pattern, n_heads=h, n_kv_heads=hkv, d_head=dh)
    if attn.out is not None:
        fa.W_O = attn.out.weight.detach().float()
        fa.b_O = attn.out.bias.detach().float() if attn.out.bias is not None else None
    if attn.kind == "standard":
        fa.W_V = attn.qkv.weight[(h + hkv) * dh:].detach().float()
        fa.b_V = attn.qkv.bias[(h + hkv) * dh:].detach().float() if attn.qkv.bias is not None else None
    elif attn.kind == "factored":
        if cfg.factored_value == "channel_mix":
            fa.W_mix = attn.W_mix.detach().float()
        elif cfg.factored_value == "modulated":
            fa.M = mods[layer][0, :T].float()
    return fa


@torch.no_grad()
def build(model, tokens: Int[Tensor, "pos"], dicts: list[SparseDictionary], checkpoint: Optional[str] = None,
          check_model: bool = True) -> Replacement:
    """Run the model once on `tokens` (1-d) and freeze everything the replacement needs."""
    cfg = model.cfg
    if cfg.use_split_qkv_input or cfg.use_attn_in:
        raise GraphError("turn off the per-head attention inputs (set_use_split_qkv_input / set_use_attn_in) "
                         "before building an attribution graph")
    specs = bindings_spec(model, dicts, checkpoint, check_model)
    T = int(tokens.shape[0])
    device = next(model.parameters()).device
    tokens = tokens.to(device)
    mods: dict[int, Tensor] = {}
    handles = []
    if cfg.stream == "factored" and cfg.factored_value == "modulated":
        for l, block in enumerate(model.blocks):
            handles.append(block.attn.v_mod.register_forward_hook(
                lambda m, i, o, l=l: mods.__setitem__(l, o.detach())))
    was = model.training
    model.eval()
    try:
        logits, cache = model.run_with_cache(tokens[None])
    finally:
        model.train(was)
        for hd in handles:
            hd.remove()
    embed = cache["hook_embed"][0].float()
    if cfg.uses_learned_positions:
        embed = embed + cache["hook_pos_embed"][0].float()
    norms: dict[str, Optional[FrozenNorm]] = {"ln_final": _norm(model.ln_final, cache, "ln_final", T)}
    attns = []
    for l, block in enumerate(model.blocks):
        norms[f"blocks.{l}.ln1"] = _norm(block.ln1, cache, f"blocks.{l}.ln1", T)
        norms[f"blocks.{l}.ln2"] = _norm(block.ln2, cache, f"blocks.{l}.ln2", T) if block.ln2 is not None else None
        attns.append(_attention(block.attn, cache, l, T, mods))

    def value(point: str) -> Tensor:
        if point in cache:
            return cache[point][0].float()
        raise GraphError(f"{point} did not fire in the model's forward")  # pragma: no cover - validated above

    bindings = []
    values: dict[str, Tensor] = {}
    for i, (d, kind, read, write, layer) in enumerate(specs):
        d = d.to(device=device, dtype=torch.float32).eval()
        x = value(read)
        target = value(write)
        acts = d.encode(x).float()
        recon = d.decode(acts).float()
        if d.W_skip is not None:
            recon = recon + d.skip_out(x).float()
        si, so = float(d.scale_in), float(d.scale_out)
        enc = (d.W_enc.detach().float() * si).T.contiguous()  # (d_sae, d_in)
        enc_bias = d.b_enc.detach().float().clone()
        if not d.cfg.is_transcoder:  # an SAE subtracts b_dec from its (scaled) input
            enc_bias = enc_bias - d.b_dec.detach().float() @ d.W_enc.detach().float()
        skip = (d.W_skip.detach().float() * (si / so)) if d.W_skip is not None else None
        name = Path(getattr(d, "_graph_path", "") or "").name or d.cfg.hook_name
        bindings.append(Binding(
            index=i, name=name, sae=d, kind=kind, layer=layer, read=read, write=write,
            stream=stream_of(cfg, write), acts=acts, error=target - recon, enc=enc, enc_bias=enc_bias,
            dec=d.W_dec.detach().float() / so, dec_bias=d.b_dec.detach().float() / so, skip=skip))
        values[read], values[write] = x, target
    return Replacement(model=model, tokens=tokens, bindings=bindings, embed=embed, norms=norms, attns=attns,
                       logits=logits[0].float(), values=values)


# ============================================================================ the real model as the replacement
def _final_point(cfg) -> str:
    return "ln_final.hook_normalized" if cfg.norm != "none" else f"blocks.{cfg.n_layers - 1}.hook_resid_post"


@contextlib.contextmanager
def frozen(rep: Replacement, n_pos: Optional[int] = None, sources: bool = True) -> Iterator[dict]:
    """Run the real model as the local replacement of `rep` (on its first `n_pos` tokens).

    Inside the context, a forward of `rep.tokens[:n_pos]` computes the replacement: norm scales,
    patterns (and value gates) return their frozen values; each binding's write point returns
    features + error (+ b_dec, + skip of the live input); the embedding is one leaf. Yields a
    dict that the forward fills: "taps" {"hook_embed" or write point: (1, pos, d) leaf whose
    gradient is the gradient there}, "reads" {read point: (1, pos, d_in) live value} and
    "final" (the unembedding's input). With `sources=False` the embedding, features and errors
    are zero: the forward then computes only the constant (bias) part of every node.
    """
    model, cfg = rep.model, rep.cfg
    T = rep.n_pos if n_pos is None else n_pos
    state: dict[str, Any] = {"taps": {}, "reads": {}, "final": None}
    hooks = []

    def const(v):
        return lambda act, hook: v

    for name, norm in rep.norms.items():
        if norm is not None:
            hooks.append((f"{name}.hook_scale", const(norm.scale[None, :T].to(model.cfg.dtype))))
    for l, fa in enumerate(rep.attns):
        hooks.append((f"blocks.{l}.attn.hook_pattern", const(fa.pattern[None, :, :T, :T].to(model.cfg.dtype))))

    def embed_hook(act, hook):
        leaf = (rep.embed[:T] if sources else torch.zeros_like(rep.embed[:T]))[None].clone().requires_grad_(True)
        state["taps"]["hook_embed"] = leaf
        return leaf.to(act.dtype)

    hooks.append(("hook_embed", embed_hook))
    if cfg.uses_learned_positions:
        hooks.append(("hook_pos_embed", lambda act, hook: torch.zeros_like(act)))
    for b in rep.bindings:
        def read_hook(act, hook, b=b):
            state["reads"][b.read] = act
            return act

        def write_hook(act, hook, b=b):
            if b.kind == "sae":
                state["reads"][b.read] = act
            value = (b.acts[:T] @ b.dec + b.error[:T]) if sources else torch.zeros_like(b.error[:T])
            leaf = value[None].clone().requires_grad_(True)
            state["taps"][b.write] = leaf
            out = leaf + b.dec_bias
            if b.skip is not None:
                out = out + state["reads"][b.read] @ b.skip
            return out.to(act.dtype)

        if b.kind == "transcoder":
            hooks.append((b.read, read_hook))
        hooks.append((b.write, write_hook))
    hooks.append((_final_point(cfg), lambda act, hook: state.__setitem__("final", act) or act))
    mod_handles = []
    if cfg.stream == "factored" and cfg.factored_value == "modulated":
        for l, block in enumerate(model.blocks):
            M = rep.attns[l].M[None, :T]
            mod_handles.append(block.attn.v_mod.register_forward_hook(lambda m, i, o, M=M: M.to(o.dtype)))
    was = model.training
    model.eval()
    try:
        with model.hooks(fwd_hooks=hooks):
            yield state
    finally:
        model.train(was)
        for hd in mod_handles:
            hd.remove()
