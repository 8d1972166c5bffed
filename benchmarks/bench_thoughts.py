"""Coconut training step: KV-cached multi-pass (`models.thoughts.LatentReasoner`) against the naive
full recompute (`models.thoughts.latent_forward_naive`, one full forward per thought). Prints
one JSON document.

    python benchmarks/bench_thoughts.py --out result.json     # GPU: 12 x 768, batch 64 x 256, 6 slots, bf16
    python benchmarks/bench_thoughts.py --small               # CPU smoke run of the same code path

A step is what the trainer runs (`interp.training.loop.StepRunner`): forward + backward of the
next-token loss of a batch whose rows hold `<bot>`, 6 latent slots and `<eot>` at different
offsets (prompts of different lengths, right-padded), gradients through every thought, then a
fused AdamW step (lr 0, so every contender sees the same weights). Contenders, in one process
on the same model and batch, interleaved round by round:

* `naive_recompute`: the naive forward, eager; `naive_recompute_compiled`: `torch.compile`d
  (the baseline is the faster of the two: the naive path at its best);
* `kv_multipass`: the latent forward planned per batch (one host read), eager;
* `kv_multipass_graph`: what `train.trainer: coconut` runs on CUDA: the stage's fixed
  `LatentLayout` (planned on the device) and the whole step captured as one CUDA graph;
  `kv_multipass_compiled_graph`: the same, `torch.compile`d first (`train.compile: true`).

Time is the median step, memory the peak allocated during a step above what is allocated
before it (weights, gradients, optimizer state). The losses must agree (bf16). `--shapes`
adds other (layers, d_model, batch) points, e.g. the tiny models Coconut runs here train.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models import presets  # noqa: E402
from models.thoughts import LatentReasoner, latent_forward_naive, latent_layout  # noqa: E402


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def make_batch(batch: int, seq: int, slots: int, vocab: int, latent: int, device, seed: int = 0):
    """Rows: random prompt of varying length, <bot>(=1), `slots` latents, <eot>(=2), random tail;
    right-padded with 0 to `seq`."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, vocab - 1, (batch, seq), generator=g)  # never the latent id (vocab - 1)
    for b in range(batch):
        p = seq // 2 + int(torch.randint(-seq // 8, seq // 8, (1,), generator=g))
        ids[b, p] = 1
        ids[b, p + 1 : p + 1 + slots] = latent
        ids[b, p + 1 + slots] = 2
        end = seq - int(torch.randint(0, seq // 16 + 1, (1,), generator=g))
        ids[b, end:] = 0
    labels = ids.masked_fill((ids == latent) | (ids == 0), -100)
    return ids.to(device), labels.to(device)


def step_runners(model, latent: int, ids, device, dtype, variants: list[str]) -> dict:
    """name -> StepRunner, each with its own fused AdamW at lr 0 (nothing moves)."""
    from interp.training.loop import StepRunner

    def naive(x, return_type="loss", labels=None, loss_per_token=True):
        logits, _ = latent_forward_naive(model, x, latent)
        return model.loss_fn(logits, labels, per_token=True)

    planned = LatentReasoner(model, latent)
    fixed = LatentReasoner(model, latent, layout=latent_layout(ids, latent))
    forwards = {"naive_recompute": (naive, False), "naive_recompute_compiled": (torch.compile(naive), False),
                "kv_multipass": (planned, False), "kv_multipass_graph": (fixed, device.type == "cuda"),
                "kv_multipass_compiled_graph": (torch.compile(fixed, dynamic=False), device.type == "cuda")}
    amp = dtype if dtype != torch.float32 else None
    runners = {}
    for name in variants:
        fn, graphs = forwards[name]
        opt = torch.optim.AdamW(model.parameters(), lr=0.0, **({"fused": True} if device.type == "cuda" else {}),
                                **({"capturable": True} if graphs else {}))
        runners[name] = StepRunner(model, fn, opt, 1.0, device, amp, graphs)
    return runners


def measure(runners, ids, labels, device, steps: int, warmup: int) -> dict:
    times = {k: [] for k in runners}
    peaks, losses = {}, {}

    def one(name):
        sync(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        t0 = time.perf_counter()
        loss, _ = runners[name]([(ids, labels)], 0.0)
        sync(device)
        dt = time.perf_counter() - t0
        if device.type == "cuda":
            peaks[name] = max(peaks.get(name, 0), torch.cuda.max_memory_allocated() - base)
        losses[name] = float(loss)
        return dt

    for _ in range(warmup):
        for name in runners:
            one(name)
    for _ in range(steps):
        for name in runners:  # interleaved: every contender sees the same clocks and thermals
            times[name].append(one(name))
    out = {}
    for name in runners:
        out[name] = {"median_ms": 1e3 * statistics.median(times[name]), "min_ms": 1e3 * min(times[name]),
                     "loss": losses[name]}
        if name in peaks:
            out[name]["peak_mib"] = peaks[name] / 2**20
    naive = [n for n in runners if n.startswith("naive")]
    kv = [n for n in runners if n.startswith("kv")]
    if naive and kv:
        best_naive = min(naive, key=lambda n: out[n]["median_ms"])
        best_kv = min(kv, key=lambda n: out[n]["median_ms"])
        out["baseline"], out["ours"] = best_naive, best_kv
        out["speedup"] = out[best_naive]["median_ms"] / out[best_kv]["median_ms"]
        out["speedup_eager"] = out[naive[0]]["median_ms"] / out[kv[0]]["median_ms"]
        if "peak_mib" in out[best_kv]:
            out["memory_ratio"] = out[best_kv]["peak_mib"] / min(out[n]["peak_mib"] for n in naive)
        out["loss_abs_diff"] = max(abs(out[a]["loss"] - out[b]["loss"]) for a in runners for b in runners)
    return out


def profile(runner, ids, labels, device, rows: int = 12) -> str:
    """The ops of one step that take the most time (self time, device or host)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch_profile(activities=acts) as prof:
        runner([(ids, labels)], 0.0)
        sync(device)
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    table = prof.key_averages().table(sort_by=key, row_limit=rows, max_name_column_width=48)
    print(table, file=sys.stderr)
    return table


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--small", action="store_true", help="tiny CPU run of the same code path")
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--d-model", type=int, default=768)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--slots", type=int, default=6)
    p.add_argument("--vocab", type=int, default=512, help="small, as in this toolkit's tasks")
    p.add_argument("--preset", default="math-compact")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--shapes", default="", help="extra points 'layers:d_model:batch,...'")
    p.add_argument("--variants", default="naive_recompute,naive_recompute_compiled,kv_multipass,kv_multipass_graph")
    p.add_argument("--profile", action="store_true", help="print the top ops of one eager KV-cached step per shape")
    p.add_argument("--out", type=Path)
    a = p.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() and not a.small else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if a.small:
        a.layers, a.d_model, a.batch, a.seq, a.steps, a.warmup = 2, 64, 4, 64, 2, 1
        a.variants = a.variants.replace("naive_recompute_compiled,", "")  # CPU compile: minutes, not the point
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    shapes = [(a.layers, a.d_model, a.batch)]
    for item in filter(None, a.shapes.split(",")):
        L, d, b = (int(v) for v in item.split(":"))
        shapes.append((L, d, b))
    results = []
    for L, d, B in shapes:
        heads = max(1, d // 64)
        model = presets.make(a.preset, "tiny", n_layers=L, d_model=d, n_heads=heads, d_vocab=a.vocab,
                             n_ctx=max(a.seq, 128), pad_token_id=0).to(device)
        latent = a.vocab - 1
        ids, labels = make_batch(B, a.seq, a.slots, a.vocab, latent, device)
        runners = step_runners(model, latent, ids, device, dtype, a.variants.split(","))
        res = measure(runners, ids, labels, device, a.steps, a.warmup)
        if a.profile and "kv_multipass" in runners:
            res["profile"] = profile(runners["kv_multipass"], ids, labels, device)
        res.update(layers=L, d_model=d, batch=B, seq=a.seq, slots=a.slots, vocab=a.vocab, preset=a.preset,
                   params=sum(p.numel() for p in model.parameters()))
        results.append(res)
        print(json.dumps(res), file=sys.stderr)
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    doc = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "torch": torch.__version__,
           "dtype": str(dtype), "results": results}
    if a.out:
        a.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(json.dumps(doc))
    return doc


if __name__ == "__main__":
    main()
