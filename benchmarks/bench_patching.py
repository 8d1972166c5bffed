"""Batched activation patching (`interp.patching`) against TransformerLens's one-forward-per-site
`transformer_lens.patching`, on the same model, prompts and metric. Prints one JSON document.

    python benchmarks/bench_patching.py --out result.json             # CUDA if present: every config
    python benchmarks/bench_patching.py --device cpu --out cpu.json   # CPU: the shipped checkpoint
    python benchmarks/bench_patching.py --small                       # CPU smoke run, seconds

Per config and sweep, the two contenders run interleaved for `--repeats` rounds (after a
warm-up) and the best (minimum) time of each is kept. TL runs at its best: under
`torch.no_grad()` (its sweep otherwise records autograd graphs). Both return the metric of every
patched run; `max_abs_diff` is the largest difference between them (fp32). On CPU the rows also
give the process's CPU time (`*_cpu_s`, `cpu_speedup`; one thread), which a busy shared machine
disturbs less than wall-clock time.

Configs: `add3_none` (the shipped 4-layer d_model-128 arithmetic checkpoint, 8 problems of 45
tokens; the metric reads the first answer digit, 5 tokens before the end), `add3_none-1pair`
(the same with one clean/corrupted pair, as in the explorer); on CUDA also `vanilla-small` (4 x 256, random weights, 8 prompts of 64 tokens: the
shape of the sweep in issue 9) and `vanilla-medium` (8 x 512, 8 x 128 tokens; resid_pre and z by
head only: TL's (layer, pos, head) sweep there is 8,192 forwards, ~50 s a round on an H100).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import interp  # noqa: E402
from interp import patching  # noqa: E402
from interp.tasks import make_task  # noqa: E402
from models import presets  # noqa: E402

# (act, by, name of the TL function, permutation of TL's result onto ours)
SWEEPS = {
    "resid_pre": ("resid_pre", "pos", "get_act_patch_resid_pre", None),
    "attn_out": ("attn_out", "pos", "get_act_patch_attn_out", None),
    "mlp_out": ("mlp_out", "pos", "get_act_patch_mlp_out", None),
    "z_head": ("z", "head", "get_act_patch_attn_head_out_all_pos", None),
    "z_head_pos": ("z", "head_pos", "get_act_patch_attn_head_out_by_pos", None),
    "pattern_head": ("pattern", "head", "get_act_patch_attn_head_pattern_all_pos", None),
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def add3_prompts(model, n: int):
    """n clean and n corrupted 45-token problems (4-digit sums) of the shipped task; the metric
    is the logit difference of the clean vs corrupted first answer digit."""
    ckpt = ROOT / "data" / "checkpoints" / "add3_none"
    task = make_task(**json.loads((ckpt / "config.json").read_text())["task"])
    rows = [ex.input_ids for ex in task.split("test") if len(ex.input_ids) == 45][: 2 * n]
    toks = torch.tensor(rows, device=model.cfg.device)
    clean, corrupted = toks[:n], toks[n:]
    return clean, corrupted, patching.logit_diff(clean[:, -4], corrupted[:, -4], pos=-5)


def random_prompts(model, n: int, T: int):
    g = torch.Generator().manual_seed(0)
    clean = torch.randint(0, model.cfg.d_vocab, (n, T), generator=g).to(model.cfg.device)
    corrupted = torch.randint(0, model.cfg.d_vocab, (n, T), generator=g).to(model.cfg.device)
    return clean, corrupted, patching.logit_diff(clean[:, -1], corrupted[:, -1], pos=-1)


def configs(device: torch.device, small: bool):
    """(name, model, clean, corrupted, metric, sweeps) for this device."""
    if small:
        torch.manual_seed(0)
        model = presets.make("math-compact", "tiny", d_vocab=50).to(device).eval()
        yield ("math-compact-tiny", model, *random_prompts(model, 2, 8), ["resid_pre", "z_head", "z_head_pos"])
        return
    model, _ = interp.load(ROOT / "data" / "checkpoints" / "add3_none")
    model = model.to(device).eval()
    yield ("add3_none", model, *add3_prompts(model, 8), list(SWEEPS))
    yield ("add3_none-1pair", model, *add3_prompts(model, 1), list(SWEEPS))
    if device.type == "cuda":
        torch.manual_seed(0)
        model = presets.make("vanilla", "small", d_vocab=512).to(device).eval()
        yield ("vanilla-small", model, *random_prompts(model, 8, 64), list(SWEEPS))
        model = presets.make("vanilla", "medium", d_vocab=512).to(device).eval()
        yield ("vanilla-medium", model, *random_prompts(model, 8, 128), ["resid_pre", "z_head"])


def timed(fn, device):
    """(wall seconds, this process's CPU seconds, result)."""
    sync(device)
    t, c = time.perf_counter(), time.process_time()
    out = fn()
    sync(device)
    return time.perf_counter() - t, time.process_time() - c, out


def bench(name, model, clean, corrupted, metric, sweeps, repeats, device):
    import pandas as pd
    from transformer_lens import patching as tl

    tl_metric = lambda logits: metric(logits).mean()
    with torch.no_grad():
        _, clean_cache = model.run_with_cache(clean)
        # warm-up: kernels, allocator, cuBLAS handles (a two-site TL sweep and a forward)
        tl.generic_activation_patch(model, corrupted, clean_cache, tl_metric, tl.layer_pos_patch_setter, "resid_pre",
                                    index_df=pd.DataFrame({"layer": [0, 1], "pos": [0, 1]}))
        model(corrupted)
    rows = []
    for key in sweeps:
        act, by, tl_name, perm = SWEEPS[key]
        ours_fn = lambda: patching.activation_patching(model, clean, corrupted, metric, act, by).values
        tl_fn = getattr(tl, tl_name)

        def theirs_fn():
            with torch.no_grad():
                out = tl_fn(model, corrupted, clean_cache, tl_metric)
            return out.permute(*perm) if perm else out

        ours_fn()  # warm-up (this sweep's shapes)
        t_ours, t_tl, c_ours, c_tl = [], [], [], []
        for _ in range(repeats):
            dt, dc, ours = timed(ours_fn, device)
            t_ours.append(dt)
            c_ours.append(dc)
            dt, dc, theirs = timed(theirs_fn, device)
            t_tl.append(dt)
            c_tl.append(dc)
        row = dict(
            config=name, sweep=key, act=act, by=by, sites=int(ours.numel()), batch=int(clean.shape[0]),
            pos=int(clean.shape[1]), tl_s=min(t_tl), ours_s=min(t_ours), speedup=min(t_tl) / min(t_ours),
            max_abs_diff=float((ours.float().cpu() - theirs.float().cpu()).abs().max()),
        )
        if device.type == "cpu":  # CPU time of this (single-threaded) process: robust to a busy machine
            row.update(tl_cpu_s=min(c_tl), ours_cpu_s=min(c_ours), cpu_speedup=min(c_tl) / min(c_ours))
        rows.append(row)
        print(json.dumps(rows[-1]), file=sys.stderr)
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--repeats", type=int, help="rounds per sweep, best kept (default: 3 on CPU, 2 on CUDA)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads (torch.set_num_threads)")
    p.add_argument("--small", action="store_true", help="a tiny model on CPU: the same code path in seconds")
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    device = torch.device("cpu" if args.small else args.device)
    repeats = 1 if args.small else args.repeats or (2 if device.type == "cuda" else 3)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    rows = []
    for name, model, clean, corrupted, metric, sweeps in configs(device, args.small):
        rows += bench(name, model, clean, corrupted, metric, sweeps, repeats, device)
    total_tl, total_ours = sum(r["tl_s"] for r in rows), sum(r["ours_s"] for r in rows)
    total = dict(tl_s=total_tl, ours_s=total_ours, speedup=total_tl / total_ours)
    if device.type == "cpu":
        cpu_tl, cpu_ours = sum(r["tl_cpu_s"] for r in rows), sum(r["ours_cpu_s"] for r in rows)
        total.update(tl_cpu_s=cpu_tl, ours_cpu_s=cpu_ours, cpu_speedup=cpu_tl / cpu_ours)
    result = dict(
        device=torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        torch=torch.__version__, threads=torch.get_num_threads() if device.type == "cpu" else None,
        repeats=repeats, rows=rows,
        total=total,
        max_abs_diff=max(r["max_abs_diff"] for r in rows),
    )
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text)
    return result


if __name__ == "__main__":
    main()
