"""Which dictionaries may attach where in a local replacement model, and loading them.

| model | transcoder reads (writes `blocks.L.hook_mlp_out`) | SAE cut points |
|---|---|---|
| sequential block | `hook_resid_mid`, `ln2.hook_normalized`, `hook_mlp_in` | `hook_resid_pre/mid/post`, `hook_attn_out` |
| parallel / shaped | `hook_resid_pre`, `ln1.hook_normalized`, `hook_mlp_in` | `hook_resid_pre/post`, `hook_attn_out` |
| factored stream | the above, plus `hook_xt_*` / `hook_xe_*` of that stage | `hook_xt_*`, `hook_xe_*`, `hook_attn_out` |

Every MLP needs exactly one transcoder; attention-only models take SAEs (or nothing). Each
rule has one error message naming the dictionary and what it should have been
(`bindings_spec`); a dictionary trained for another model (config fields, or the checkpoint's
name) is refused unless `check_model=False`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence, Union

from interp.features import SparseDictionary, model_identity
from interp.features import load as load_dictionary
from interp.features.splicing import IDENTITY_FIELDS  # the config fields features.splice compares too

__all__ = ["GraphError", "load_dictionaries", "bindings_spec", "mlp_reads", "cut_points", "stream_of",
           "canonical_read"]


class GraphError(ValueError):
    """Bad input to an attribution graph (prompt, target, dictionaries); the message names it."""


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


def bindings_spec(model, dicts: list[SparseDictionary], checkpoint: Optional[str], check_model: bool
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
