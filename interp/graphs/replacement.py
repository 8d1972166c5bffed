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

What a dictionary may attach to (validated with one message each):

| model | transcoder reads (writes `blocks.L.hook_mlp_out`) | SAE cut points |
|---|---|---|
| sequential block | `hook_resid_mid`, `ln2.hook_normalized`, `hook_mlp_in` | `hook_resid_pre/mid/post`, `hook_attn_out` |
| parallel / shaped | `hook_resid_pre`, `ln1.hook_normalized`, `hook_mlp_in` | `hook_resid_pre/post`, `hook_attn_out` |
| factored stream | the above, plus `hook_xt_*` / `hook_xe_*` of that stage | `hook_xt_*`, `hook_xe_*`, `hook_attn_out` |

Every MLP needs exactly one transcoder; attention-only models take SAEs (or nothing: the graph
is then tokens -> logits through frozen attention, complete by construction).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence, Union

import torch
from jaxtyping import Float, Int
from torch import Tensor

from interp.features import SparseDictionary, model_identity
from interp.features import load as load_dictionary

__all__ = ["GraphError", "Binding", "FrozenNorm", "FrozenAttention", "Replacement", "build", "frozen",
           "load_dictionaries"]

# the config fields that say two models compute different things (features.splicing compares the same)
from interp.features.splicing import IDENTITY_FIELDS  # noqa: E402


class GraphError(ValueError):
    """Bad input to an attribution graph (prompt, target, dictionaries); the message names it."""


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


# ============================================================================ points
def block_kind(cfg) -> str:
    return "factored" if cfg.stream == "factored" else "standard"


def mlp_reads(cfg, layer: int) -> list[str]:
    """Points a transcoder replacing MLP `layer` may read, in forward order."""
    p = f"blocks.{layer}."
    seq = cfg.block == "sequential"
    stage = "mid" if seq else "pre"
    out = [p + f"hook_resid_{stage}"]
    if cfg.stream == "factored":
        out = [p + f"hook_xt_{stage}", p + f"hook_xe_{stage}"] + out
    if cfg.norm != "none":
        out.append(p + ("ln2" if seq else "ln1") + ".hook_normalized")
    return out


def cut_points(cfg, layer: int) -> list[str]:
    """Points an SAE may cut in block `layer` (the residual views of a factored model are read-only)."""
    p = f"blocks.{layer}."
    if cfg.stream == "factored":
        return [p + f"hook_{s}_{st}" for st in ("pre", "mid", "post") for s in ("xt", "xe")] + [p + "hook_attn_out"]
    has_mid = cfg.block == "sequential" and not cfg.attn_only
    stages = ("pre", "mid", "post") if has_mid else ("pre", "post")
    return [p + f"hook_resid_{st}" for st in stages] + [p + "hook_attn_out"]


def stream_of(cfg, point: str) -> str:
    """Which stream a value written at `point` joins: "xt" / "xe" in factored models, else "resid"."""
    if cfg.stream != "factored":
        return "resid"
    if ".hook_xe_" in point or point.endswith("hook_mlp_out"):
        return "xe"
    if ".hook_xt_" in point or point.endswith("hook_attn_out") or point == "hook_embed":
        return "xt"
    return "xt+xe"


def canonical_read(cfg, name: str) -> str:
    """`hook_mlp_in` is a copy of the residual the MLP reads: the same point."""
    if name.endswith(".hook_mlp_in"):
        layer = name.split(".")[1]
        return f"blocks.{layer}.hook_resid_{'mid' if cfg.block == 'sequential' else 'pre'}"
    return name


POINT_ORDER = ("hook_resid_pre", "hook_xt_pre", "hook_xe_pre", "ln1.hook_normalized", "hook_attn_out",
               "hook_resid_mid", "hook_xt_mid", "hook_xe_mid", "ln2.hook_normalized", "hook_mlp_out",
               "hook_resid_post", "hook_xt_post", "hook_xe_post")


def _rank(point: str) -> int:
    """A point's place in its block's forward order."""
    tail = point.split(".", 2)[-1]
    return POINT_ORDER.index(tail) if tail in POINT_ORDER else len(POINT_ORDER)


def _layer_of(name: str) -> Optional[int]:
    parts = name.split(".")
    if len(parts) >= 3 and parts[0] == "blocks" and parts[1].isdigit():
        return int(parts[1])
    return None


# ============================================================================ dictionaries
DictLike = Union[str, Path, SparseDictionary]


def load_dictionaries(source: Union[DictLike, Sequence[DictLike]], kind: str = "auto",
                      attn_only: bool = False) -> list[SparseDictionary]:
    """Dictionaries from a directory (one dictionary: cfg.json inside; or a folder of them), a
    path, a `SparseDictionary`, or a list of those. From a folder, `kind` picks: "transcoders",
    "saes", "all", or "auto" (transcoders, or on attention-only models the SAEs). Each keeps
    the path it came from as `_graph_path` (reported in the graph's metadata)."""
    if isinstance(source, (str, Path, SparseDictionary)):
        items = [source]
    else:
        items = list(source)
    out: list[SparseDictionary] = []
    for item in items:
        if isinstance(item, SparseDictionary):
            out.append(item)
            continue
        path = Path(item)
        if not path.exists():
            raise GraphError(f"dictionaries: {path} does not exist")
        if (path / "cfg.json").exists():
            out.append(_load_one(path))
            continue
        subs = sorted(p for p in path.iterdir() if (p / "cfg.json").exists()) if path.is_dir() else []
        if not subs:
            raise GraphError(f"dictionaries: {path} holds no dictionary (no cfg.json in it or its sub-folders)")
        found = [_load_one(p) for p in subs]
        want = kind if kind != "auto" else ("saes" if attn_only else "transcoders")
        if want not in ("transcoders", "saes", "all"):
            raise GraphError(f"dictionaries: kind={kind!r}; choose auto, transcoders, saes or all")
        picked = [d for d in found if want == "all" or (d.cfg.is_transcoder == (want == "transcoders"))]
        if not picked:
            have = ", ".join(f"{p.name} ({'transcoder' if d.cfg.is_transcoder else 'SAE'})" for p, d in zip(subs, found))
            raise GraphError(f"dictionaries: {path} has no {want} (it has: {have})")
        out.extend(picked)
    return out


def _load_one(path: Path) -> SparseDictionary:
    from interp.features import DictionaryError

    try:
        d = load_dictionary(path)
    except DictionaryError as e:
        raise GraphError(str(e)) from None
    d._graph_path = str(path)
    return d


def _check_identity(model, sae: SparseDictionary, checkpoint: Optional[str], where: str) -> None:
    rec = sae.cfg.model or {}
    ours = model_identity(model)
    diff = {f: (rec[f], ours[f]) for f in IDENTITY_FIELDS if f in rec and f in ours and rec[f] != ours[f]}
    if diff:
        shown = ", ".join(f"{f}: dictionary {a!r} vs model {b!r}" for f, (a, b) in diff.items())
        src = f" (trained on {rec['checkpoint']})" if rec.get("checkpoint") else ""
        raise GraphError(f"{where} was trained for another model{src}: {shown}; pass check_model=False to use it anyway")
    if checkpoint and rec.get("checkpoint") and Path(str(rec["checkpoint"])).name != Path(checkpoint).name:
        raise GraphError(f"{where} was trained on checkpoint {rec['checkpoint']!r}, not {checkpoint!r} "
                         "(same architecture, other weights?); pass check_model=False to use it anyway")


def _bindings_spec(model, dicts: list[SparseDictionary], checkpoint: Optional[str], check_model: bool
                   ) -> list[tuple[SparseDictionary, str, str, str, int]]:
    """(dictionary, kind, read point, write point, layer) for each dictionary, validated."""
    cfg = model.cfg
    hooks = set(model.hook_dict)
    specs = []
    for i, d in enumerate(dicts):
        c = d.cfg
        where = f"dictionary {i} ({getattr(d, '_graph_path', None) or c.hook_name})"
        if check_model:
            _check_identity(model, d, checkpoint, where)
        layer = _layer_of(c.hook_name)
        if c.is_transcoder:
            out_layer = _layer_of(c.out_hook_name)
            if layer is None or out_layer is None or out_layer != layer or not c.out_hook_name.endswith(".hook_mlp_out"):
                raise GraphError(f"{where}: a transcoder in an attribution graph replaces one MLP: it must write "
                                 f"blocks.L.hook_mlp_out and read a hook of that block before the MLP; got "
                                 f"{c.hook_name} -> {c.out_hook_name}")
            if cfg.attn_only:
                raise GraphError(f"{where}: this attention-only model has no MLP for a transcoder to replace")
            if layer >= cfg.n_layers:
                raise GraphError(f"{where}: layer {layer} does not exist (the model has {cfg.n_layers})")
            read = canonical_read(cfg, c.hook_name)
            allowed = mlp_reads(cfg, layer)
            if read not in allowed:
                raise GraphError(f"{where}: a transcoder for MLP {layer} may read {', '.join(allowed)} "
                                 f"(or blocks.{layer}.hook_mlp_in), not {c.hook_name}")
            write = c.out_hook_name
            kind = "transcoder"
        else:
            if layer is None or layer >= cfg.n_layers or c.hook_name not in cut_points(cfg, layer):
                allowed = [p for l in range(cfg.n_layers) for p in cut_points(cfg, l)][:8]
                why = (" (an SAE on an MLP's output leaves the MLP's nonlinearity in the graph: use a transcoder)"
                       if c.hook_name.endswith("hook_mlp_out") else "")
                raise GraphError(f"{where}: an SAE in an attribution graph cuts the stream at one of "
                                 f"{', '.join(allowed)}, ... (see interp.graphs.replacement); not {c.hook_name}{why}")
            read = write = c.hook_name
            kind = "sae"
        if c.hook_name not in hooks and not c.hook_name.endswith(".hook_mlp_in") and read not in hooks:
            raise GraphError(f"{where}: {c.hook_name} is not a hook of this model")
        d_model = cfg.d_model
        if c.d_in != d_model:
            raise GraphError(f"{where}: d_in={c.d_in}, but {c.hook_name} is {d_model} wide in this model")
        if c.d_out != d_model:
            raise GraphError(f"{where}: d_out={c.d_out}, but {write} is {d_model} wide in this model")
        specs.append((d, kind, read, write, layer))
    specs.sort(key=lambda s: (s[4], _rank(s[3]), _rank(s[2])))
    writes = [s[3] for s in specs]
    dup = sorted({w for w in writes if writes.count(w) > 1})
    if dup:
        raise GraphError(f"several dictionaries write {dup}; give one per MLP / cut point")
    cut_reads = {s[2] for s in specs if s[1] == "sae"}
    both = sorted(cut_reads & {s[2] for s in specs if s[1] == "transcoder"})
    if both:
        raise GraphError(f"{both}: a transcoder reads a point an SAE cuts; read the stream beside it instead")
    if not cfg.attn_only:
        have = sorted(s[4] for s in specs if s[1] == "transcoder")
        missing = [l for l in range(cfg.n_layers) if l not in have]
        if missing:
            raise GraphError(f"transcoders missing for MLP layer(s) {missing} (given for {have or 'none'}): every MLP "
                             f"must be replaced by a transcoder (blocks.L.ln2.hook_normalized -> blocks.L.hook_mlp_out)")
    return specs


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
    specs = _bindings_spec(model, dicts, checkpoint, check_model)
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
