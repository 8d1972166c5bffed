"""Attribution graphs (`interp.graphs.attribute`): time for one graph of a 64-token prompt, and
the batched edges against one autograd backward per node. Prints one JSON document.

    python benchmarks/bench_graphs.py --out benchmarks/results/cpu_bench_graphs.json   # CPU, both configs
    python benchmarks/bench_graphs.py --device cuda --out gpu.json                     # the same on a GPU
    python benchmarks/bench_graphs.py --small                                          # smoke run, seconds
    python benchmarks/bench_graphs.py --transcoders data/dictionaries/shakespeare_vanilla   # trained ones

Configs (shipped checkpoints, the first `--tokens` tokens of a test example of their task):
`shakespeare_vanilla` (4 layers x 192) and `coconut_graph_cot` (the shipped 6-layer model, 6 x
128), each with one TopK transcoder per MLP of the shipped shape (d_sae 512, k 16; random
weights unless `--transcoders`: the number of active features, and so the work, is the same,
k per position and layer). Per config, `--repeats` graphs after a warm-up, median and min
kept: `attribute_s` (everything: the forward, the node table, every row, the constants),
`rows_s` (the batched backward alone), `prune_s` (`prune(0.8, 0.98)`). `naive_row_ms` is
one backward per node through the real model run as the replacement (`naive_rows`, on
`--naive-rows` rows), `speedup_vs_naive` = naive per row / batched per row. CPU rows also give
the process CPU time (`*_cpu_s`): with one thread (the default) a busy shared machine disturbs
it far less than wall time (two OpenMP threads spin while they wait for a core, which counts
as CPU time too); the JSON records the load average and thread count.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import interp  # noqa: E402
from interp import features, graphs  # noqa: E402
from interp.checkpoint import load_config  # noqa: E402
from interp.graphs.tracing import constants  # noqa: E402
from interp.graphs.linear import LinearReplacement  # noqa: E402
from interp.tasks import make_task  # noqa: E402

CONFIGS = ("shakespeare_vanilla", "coconut_graph_cot")


def prompt_of(ckpt: Path, n_tokens: int) -> torch.Tensor:
    _, meta = load_config(ckpt)
    task = make_task(**meta["task"])
    for ex in task.split("test"):
        ids = torch.as_tensor(ex.input_ids if hasattr(ex, "input_ids") else ex["input_ids"]).reshape(-1)
        if len(ids) >= n_tokens:
            return ids[:n_tokens]
    raise SystemExit(f"{ckpt}: no test example of {n_tokens} tokens")


def random_transcoders(model, d_sae: int, k: int, seed: int = 0) -> list:
    cfg = model.cfg
    out = []
    for layer in range(cfg.n_layers):
        torch.manual_seed(seed + layer)
        out.append(features.make(dict(arch="topk", d_in=cfg.d_model, d_sae=d_sae, k=k, normalize="none",
                                      hook_name=f"blocks.{layer}.ln2.hook_normalized",
                                      out_hook_name=f"blocks.{layer}.hook_mlp_out",
                                      model=features.model_identity(model))).eval())
    return out


def timed(fn, device):
    if device.type == "cuda":
        torch.cuda.synchronize()
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return out, time.perf_counter() - w, time.process_time() - c


def bench(name: str, args, device) -> dict:
    ckpt = ROOT / "data" / "checkpoints" / name
    model, tok = interp.load(ckpt)
    model.set_tokenizer(tok)
    model.to(device).eval()
    tokens = prompt_of(ckpt, args.tokens).to(device)
    if args.transcoders and name == "shakespeare_vanilla":
        dicts = graphs.load_dictionaries(args.transcoders)
        kind = f"trained ({args.transcoders})"
    else:
        dicts = random_transcoders(model, args.d_sae, args.k)
        kind = f"random topk d_sae={args.d_sae} k={args.k}"
    run = lambda: graphs.attribute(model, dicts, tokens, progress=False)  # noqa: E731
    run()  # warm-up
    totals, totals_cpu, rows_t, rows_cpu, prunes = [], [], [], [], []
    for _ in range(args.repeats):
        g, w, c = timed(run, device)
        totals.append(w)
        totals_cpu.append(c)
        _, pw, _ = timed(lambda: g.prune(0.8, 0.98), device)
        prunes.append(pw)
    # the batched rows alone, and the naive loop on a sample of rows
    prep = graphs.prepare(model, dicts, tokens)
    n = len(prep.nodes)
    lin = LinearReplacement(prep.rep, prep.sources, n)
    n_rows = len(prep.target_rows)

    def all_rows():
        A_T = torch.zeros(n, n, device=device)
        bs = 256
        for s in range(0, n_rows, bs):
            e = min(s + bs, n_rows)
            r0 = prep.target_rows[s]
            if prep.target_rows[e - 1] - r0 == e - 1 - s:
                lin.rows(prep.target_points[s:e], prep.target_pos[s:e], prep.target_vecs[s:e], out=A_T.T[r0:r0 + e - s])
            else:  # the chunk straddles features and logits
                lin.rows(prep.target_points[s:e], prep.target_pos[s:e], prep.target_vecs[s:e])
        return A_T

    for _ in range(args.repeats):
        _, w, c = timed(all_rows, device)
        rows_t.append(w)
        rows_cpu.append(c)
    _, cw, _ = timed(lambda: constants(prep), device)
    sample = torch.linspace(0, n_rows - 1, min(args.naive_rows, n_rows)).long().tolist()
    _, nw, ncpu = timed(lambda: graphs.naive_rows(prep, sample), device)
    naive_row = nw / len(sample)
    batched_row = min(rows_t) / n_rows
    return dict(
        config=name, model=f"{model.cfg.n_layers} layers x d_model {model.cfg.d_model}, {model.cfg.n_heads} heads",
        transcoders=kind, tokens=len(tokens), nodes=g.counts, rows=n_rows,
        attribute_s=statistics.median(totals), attribute_min_s=min(totals),
        attribute_cpu_s=statistics.median(totals_cpu), rows_s=statistics.median(rows_t), rows_min_s=min(rows_t),
        rows_cpu_s=statistics.median(rows_cpu), constants_s=cw, prune_s=statistics.median(prunes),
        naive_row_ms=1000 * naive_row, naive_rows_timed=len(sample), naive_cpu_s=ncpu,
        batched_row_ms=1000 * batched_row, speedup_vs_naive=naive_row / batched_row,
        naive_all_rows_estimate_s=naive_row * n_rows)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=CONFIGS)
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--d-sae", type=int, default=512)
    p.add_argument("--k", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--naive-rows", type=int, default=64)
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1: on a shared CPU a second "
                   "OpenMP thread mostly waits; 0 = torch's default)")
    p.add_argument("--transcoders", type=Path, default=None, help="trained transcoders for shakespeare_vanilla")
    p.add_argument("--small", action="store_true", help="smoke run: 16 tokens, 1 repeat, 8 naive rows")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    if args.small:
        args.tokens, args.repeats, args.naive_rows = 16, 1, 8
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    results = [bench(name, args, device) for name in args.configs]
    doc = dict(benchmark="bench_graphs", device=str(device),
               cpu=platform.processor() or platform.machine(), torch=torch.__version__,
               threads=torch.get_num_threads(), load_average=os.getloadavg() if hasattr(os, "getloadavg") else None,
               gpu=torch.cuda.get_device_name() if device.type == "cuda" else None,
               command="python benchmarks/bench_graphs.py " + " ".join(argv if argv is not None else sys.argv[1:]),
               results=results)
    text = json.dumps(doc, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return doc


if __name__ == "__main__":
    main()
