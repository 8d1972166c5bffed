"""Greedy decoding speed: `models.generation.generate` (static KV cache, compiled prefill and
CUDA-graph decode step) against `transformers`' `generate` on the exported twin, for each
positional scheme. Prints one JSON document.

    python benchmarks/bench_generate.py --out result.json   # GPU: GPT-2-small shape, bf16, prompt 512, 128 new
    python benchmarks/bench_generate.py --small             # CPU smoke run (tests use this)

Per scheme -- learned positions (exported as GPT-2), RoPE (Llama), ALiBi (MPT) -- a random
model of GPT-2-small shape (12 layers, d_model 768, vocabulary 50,257) is exported with
`models.hf.to_hf`, and both generate `--new` tokens greedily after a `--prompt`-token prompt
(no early stop) at each batch size, in one process, interleaved round by round. Reported:
tokens/s (batch x new tokens / wall time of the whole call, prefill included), the ratio to
transformers, our step-by-step dynamic-cache loop (`fast=False`, what `generate` did before),
the first call's time (compilation), and whether the outputs agree.

Two transformers baselines: `hf` is `generate` as it comes (dynamic cache, eager forward);
`hf_best` is transformers at its best: `cache_implementation="static"`, with which
`generate` compiles the decode step itself (`mode="reduce-overhead"`, CUDA graphs) -- and,
for MPT, which has no static cache in transformers, the forward compiled with dynamic shapes.
The ratios are against both.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models import decoding, hf, presets  # noqa: E402
from models.generation import generate  # noqa: E402

SCHEMES = {  # positional -> (exported as, preset, overrides)
    "learned": ("GPT-2", "vanilla", {}),
    "rope": ("Llama", "llama-like", {}),
    "alibi": ("MPT", "vanilla", dict(positional="alibi", norm_bias=False, attn_bias=False, mlp_bias=False)),
}


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device):
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - t0, out


def build(positional: str, args, device, dtype):
    _, preset, overrides = SCHEMES[positional]
    size = "tiny" if args.small else "large"
    if args.small and preset == "llama-like":  # transformers' Llama needs d_model % n_heads == 0
        overrides = dict(overrides, n_heads=4, n_kv_heads=2, d_head=16)
    if positional == "alibi" and not args.small:
        # transformers' MPT derives its slopes from the next power of two of n_heads, which equals
        # Press et al.'s rule (ours) only for a power of two: 16 heads of 48 at d_model 768
        overrides = dict(overrides, n_heads=16)
    torch.manual_seed(0)
    model = presets.make(preset, size, d_vocab=args.vocab, n_ctx=max(1024, args.prompt + args.new), **overrides)
    hf_model = hf.to_hf(model.eval())  # convert in fp32: bf16-rounded ALiBi slopes are no longer MPT's exactly
    return model.to(device=device, dtype=dtype), hf_model.to(device=device, dtype=dtype).eval()


def profile_call(fn) -> dict:
    """Where one call's time goes: wall time, summed GPU kernel time, launches and the top kernels."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        wall = time.perf_counter() - t0
    events = [e for e in prof.key_averages() if e.device_time_total > 0 and e.device_type.name == "CUDA"]
    gpu_us = sum(e.device_time_total for e in events)
    top = sorted(events, key=lambda e: -e.device_time_total)[:12]
    return {
        "wall_ms": round(wall * 1e3, 2),
        "gpu_kernel_ms": round(gpu_us / 1e3, 2),
        "kernel_launches": sum(e.count for e in events),
        "top_kernels": [{"name": e.key[:90], "ms": round(e.device_time_total / 1e3, 3), "count": e.count} for e in top],
    }


def run_config(model, hf_model, positional, batch, args, device) -> dict:
    g = torch.Generator().manual_seed(batch)
    prompt = torch.randint(1, args.vocab, (batch, args.prompt), generator=g).to(device)
    mask = torch.ones_like(prompt)
    new = args.new
    hf_model.generation_config.eos_token_id = None
    hf_model.generation_config.pad_token_id = 0

    fast = None if device.type == "cuda" else True  # the default on CUDA; forced (eager) on CPU

    path = []

    def ours():
        out = generate(model, prompt, max_new_tokens=new, greedy=True, stop_tokens=[], return_output=True, fast=fast)
        path.append(model.blocks[0].attn.last_path)  # "static": the last forward was a static-cache step
        return out

    def ours_argmax_outside():  # the previous greedy path: logits leave the graph, argmax after it
        stop = torch.zeros(0, dtype=torch.long, device=device)
        return decoding.fast_generate(model, prompt, mask.bool(), new, stop, 0, lambda logits: logits.argmax(-1),
                                      compile=device.type == "cuda")

    def ours_step_by_step():
        return generate(model, prompt, max_new_tokens=new, greedy=True, stop_tokens=[], return_output=True, fast=False)

    def theirs(**kw):
        return hf_model.generate(input_ids=prompt, attention_mask=mask, max_new_tokens=new, min_new_tokens=new,
                                 do_sample=False, num_beams=1, pad_token_id=0, **kw)

    static_ok = getattr(hf_model, "_supports_static_cache", True) and positional != "alibi"
    compiled_forward = None

    def theirs_best():
        nonlocal compiled_forward
        if static_ok:  # transformers compiles the decode step itself for a static cache
            return theirs(cache_implementation="static")
        if compiled_forward is None:
            # on CPU (the --small smoke run) the "eager" backend: the same code path, no C++ build
            compiled_forward = torch.compile(hf_model.forward, dynamic=True,
                                             backend="inductor" if device.type == "cuda" else "eager")
        eager_forward, hf_model.forward = hf_model.forward, compiled_forward
        try:
            return theirs()
        finally:
            hf_model.forward = eager_forward

    with torch.no_grad():
        first_s, _ = timed(ours, device)  # compiles prefill + decode, records the CUDA graph
        timed(ours, device)
        timed(theirs, device)
        contenders = {"ours": ours, "hf": theirs}
        if args.hf_best:
            best_first_s, _ = timed(theirs_best, device)  # compiles
            timed(theirs_best, device)
            contenders["hf_best"] = theirs_best
        if args.step_by_step:
            contenders["ours_step_by_step"] = ours_step_by_step
        if args.argmax_outside:
            timed(ours_argmax_outside, device)  # compiles the logits-returning graphs
            contenders["ours_argmax_outside"] = ours_argmax_outside
        times: dict[str, list[float]] = {k: [] for k in contenders}
        outs = {}
        for r in range(args.rounds):
            for k, fn in contenders.items():
                if k == "ours_step_by_step" and r > 0:
                    continue  # slow and only for reference: one timing
                t, outs[k] = timed(fn, device)
                times[k].append(t)
        if args.profile and device.type == "cuda":
            profile = profile_call(ours)
    tok = {k: batch * new / statistics.median(t) for k, t in times.items()}
    ours_new = outs["ours"].tokens[:, args.prompt:]
    hf_new = outs["hf"][:, args.prompt:]
    row = {
        "positional": positional,
        "exported_as": SCHEMES[positional][0],
        "batch": batch,
        "ours_tokens_per_s": round(tok["ours"], 1),
        "hf_tokens_per_s": round(tok["hf"], 1),
        "ratio_vs_hf": round(tok["ours"] / tok["hf"], 3),
        "ours_path": path[-1],
        "ours_compiled": device.type == "cuda" and model not in decoding._COMPILE_FAILED,
        "ours_first_call_s": round(first_s, 2),
        "rows_equal_to_hf": float((ours_new == hf_new).all(-1).float().mean()),
        "hf_best": None if "hf_best" not in tok else {
            "how": "static cache, decode step compiled by generate (reduce-overhead)" if static_ok
            else "dynamic cache, forward compiled (dynamic=True): no static cache for this architecture",
            "tokens_per_s": round(tok["hf_best"], 1),
            "ratio": round(tok["ours"] / tok["hf_best"], 3),
            "first_call_s": round(best_first_s, 2),
            "rows_equal_to_hf": float((outs["hf_best"][:, args.prompt:] == hf_new).all(-1).float().mean()),
        },
        "spread": {k: round((max(t) - min(t)) / statistics.median(t), 4) for k, t in times.items() if len(t) > 1},
    }
    if args.profile and device.type == "cuda":
        row["profile"] = profile
    if "ours_argmax_outside" in outs:
        row["ours_argmax_outside_tokens_per_s"] = round(tok["ours_argmax_outside"], 1)
        row["ours_equals_argmax_outside"] = bool((outs["ours_argmax_outside"][0][:, args.prompt:] == ours_new).all())
    if "ours_step_by_step" in outs:
        row["ours_step_by_step_tokens_per_s"] = round(tok["ours_step_by_step"], 1)
        row["ours_equals_step_by_step"] = outs["ours_step_by_step"].new_tokens == outs["ours"].new_tokens
    return row


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--small", action="store_true", help="tiny models, short prompts, CPU fp32 (smoke test)")
    p.add_argument("--prompt", type=int, default=512)
    p.add_argument("--new", type=int, default=128)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    p.add_argument("--vocab", type=int, default=50257)
    p.add_argument("--schemes", nargs="+", default=list(SCHEMES), choices=list(SCHEMES))
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--no-hf-best", dest="hf_best", action="store_false",
                   help="skip transformers at its best (static cache + compiled decode step)")
    p.add_argument("--argmax-outside", action="store_true",
                   help="also time greedy decoding with the argmax outside the compiled step (the previous path)")
    p.add_argument("--profile", action="store_true", help="CUDA: profile one call of ours (kernel time vs wall)")
    p.add_argument("--no-step-by-step", dest="step_by_step", action="store_false",
                   help="skip timing our dynamic-cache loop")
    p.add_argument("--deadline-s", type=float, default=None, help="skip configurations not started by then")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    t_start = time.perf_counter()
    if args.small:
        args.prompt, args.new, args.vocab = min(args.prompt, 12), min(args.new, 6), min(args.vocab, 64)
        args.batches, args.rounds = [1, 3], 1
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    import transformers

    result = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "dtype": str(dtype),
        "command": "python benchmarks/bench_generate.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "shape": {"prompt": args.prompt, "new_tokens": args.new, "vocab": args.vocab,
                  "size": "tiny" if args.small else "large (12 x 768)"},
        "rows": [],
        "skipped": [],
    }
    for positional in args.schemes:
        model, hf_model = build(positional, args, device, dtype)
        for batch in args.batches:
            if args.deadline_s and time.perf_counter() - t_start > args.deadline_s:
                result["skipped"].append(f"{positional} batch {batch}")
                continue
            try:
                result["rows"].append(run_config(model, hf_model, positional, batch, args, device))
            except Exception as e:  # keep the other configurations' numbers
                traceback.print_exc()
                result["rows"].append({"positional": positional, "batch": batch, "error": f"{type(e).__name__}: {e}"[:500]})
            if args.out:
                args.out.write_text(json.dumps(result, indent=2))
        del model, hf_model
    from torch._dynamo.utils import counters

    result["compile_counters"] = {f"{group}.{k}": v for group in ("inductor", "stats") for k, v in counters[group].items()
                                  if "cudagraph" in k or "unique_graphs" in k or "calls_captured" in k}
    result["wall_s"] = round(time.perf_counter() - t_start, 1)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text)
    return result


if __name__ == "__main__":
    main()
