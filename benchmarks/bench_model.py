"""Training-step throughput of `HookedTransformer` vs a plain nanoGPT reference, and
peak memory of factored-alibi vs RoPE at long context. Prints one JSON document.

    python benchmarks/bench_model.py                       # GPU: GPT-2-small shape, bf16, 16x1024
    python benchmarks/bench_model.py --small --steps 3     # CPU smoke run (tests use this)

All ratios come from one process, with the contenders interleaved round by round.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from models import presets  # noqa: E402
from reference_gpt import GPT  # noqa: E402


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def autocast(device, dtype):
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def make_step(loss_fn, params, device, dtype):
    opt = torch.optim.AdamW(params, lr=1e-4, fused=device.type == "cuda")

    def step(tokens, targets):
        with autocast(device, dtype):
            loss = loss_fn(tokens, targets)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    return step


def time_steps(step, tokens, targets, device, n):
    sync(device)
    t0 = time.perf_counter()
    for _ in range(n):
        step(tokens, targets)
    sync(device)
    return time.perf_counter() - t0


def throughput(args, device, dtype) -> dict:
    size = "tiny" if args.small else "large"
    cfg_kw = dict(d_vocab=args.vocab, n_ctx=args.seq)
    ours = presets.make("vanilla", size, **cfg_kw).to(device)
    c = ours.cfg
    ref = GPT(c.n_layers, c.d_model, c.n_heads, c.d_vocab, c.n_ctx, c.d_mlp).to(device)
    B, T = args.batch, args.seq
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, c.d_vocab, (B, T), generator=g).to(device)
    targets = torch.cat([tokens[:, 1:], tokens.new_full((B, 1), -100)], dim=1)

    def ours_loss(tok, tgt):
        return ours(tok, return_type="loss")

    def ref_loss(tok, tgt):
        return ref(tok, tgt)

    def ours_cached_loss(tok, tgt):
        loss, cache = ours.run_with_cache(tok, return_type="loss", return_cache_object=False)
        return loss

    variants = {"ours": ours_loss, "reference": ref_loss}
    if args.compile:
        variants["ours_compiled"] = torch.compile(ours_loss)
        variants["reference_compiled"] = torch.compile(ref_loss)
    variants["ours_run_with_cache"] = ours_cached_loss
    owner = {"ours": ours, "reference": ref, "ours_compiled": ours, "reference_compiled": ref, "ours_run_with_cache": ours}
    steps = {k: make_step(fn, owner[k].parameters(), device, dtype) for k, fn in variants.items()}
    for k, s in steps.items():  # warm-up (and compile)
        time_steps(s, tokens, targets, device, args.warmup)
    times: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(args.rounds):
        for k, s in steps.items():
            times[k].append(time_steps(s, tokens, targets, device, args.steps))
    tok_s = {k: B * T * args.steps / statistics.median(v) for k, v in times.items()}
    out = {f"{k}_tokens_per_s": round(v) for k, v in tok_s.items()}
    out["ratio_eager"] = tok_s["ours"] / tok_s["reference"]
    if args.compile:
        out["ratio_compiled"] = tok_s["ours_compiled"] / tok_s["reference_compiled"]
    out["ratio_run_with_cache_vs_ours"] = tok_s["ours_run_with_cache"] / tok_s["ours"]
    out["spread"] = {k: round((max(v) - min(v)) / statistics.median(v), 4) for k, v in times.items()}
    return out


def peak_memory(args, device, dtype) -> dict:
    """Training-step peak memory, factored-alibi vs the same model with RoPE (batch 1)."""
    if device.type != "cuda":
        return {"skipped": "peak memory is measured on CUDA only"}
    size = "tiny" if args.small else "large"
    rows = {}
    for T in args.long_seqs:
        for positional in ("alibi", "rope"):
            torch.manual_seed(0)
            model = presets.make("factored-alibi", size, positional=positional, n_ctx=T, d_vocab=args.vocab).to(device)
            tokens = torch.randint(0, args.vocab, (1, T), device=device)
            for i in range(2):  # first call compiles FlexAttention
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
                with autocast(device, dtype):
                    loss = model(tokens, return_type="loss")
                loss.backward()
                sync(device)
                peak = torch.cuda.max_memory_allocated() - base
                model.zero_grad(set_to_none=True)
            rows[f"T{T}_{positional}_peak_MiB"] = round(peak / 2**20, 1)
            rows[f"T{T}_{positional}_path"] = model.blocks[0].attn.last_path
            del model, tokens, loss
            torch.cuda.empty_cache()
        rows[f"T{T}_ratio_alibi_over_rope"] = rows[f"T{T}_alibi_peak_MiB"] / rows[f"T{T}_rope_peak_MiB"]
    return rows


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--small", action="store_true", help="tiny model and shapes (CPU smoke test)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq", type=int, default=1024)
    p.add_argument("--vocab", type=int, default=50257)
    p.add_argument("--steps", type=int, default=10, help="timed steps per round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--no-compile", dest="compile", action="store_false")
    p.add_argument("--long-seqs", type=int, nargs="*", default=[4096, 16384])
    p.add_argument("--skip-memory", action="store_true")
    p.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = p.parse_args(argv)
    if args.small:
        args.batch, args.seq, args.vocab = min(args.batch, 4), min(args.seq, 64), min(args.vocab, 128)
        args.long_seqs = [min(s, 256) for s in args.long_seqs]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    result = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "dtype": str(dtype),
        "shape": {"batch": args.batch, "seq": args.seq, "vocab": args.vocab, "preset": "vanilla-" + ("tiny" if args.small else "large")},
        "throughput": throughput(args, device, dtype),
    }
    if not args.skip_memory:
        result["memory"] = peak_memory(args, device, dtype)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text)
    return result


if __name__ == "__main__":
    main()
