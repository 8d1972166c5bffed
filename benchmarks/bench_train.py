"""Training speed of the real trainer against the practical limit, on one GPU, in one run.

    python benchmarks/bench_train.py --out result.json            # CUDA
    python benchmarks/bench_train.py --small --out result.json    # the same code path on CPU, seconds

Workloads (the shipped reference configs):

* `grokking`: configs/reference/grokking.yaml, full batch (3,830 x 4 tokens), steps/s;
* `add3`: configs/reference/add3_none.yaml (math-compact 4 x 128, 45-token sequences), tokens/s
  at the reference batch (128) and at 1,024;
* `shakespeare`: configs/reference/shakespeare_factored_alibi.yaml (4 x 192, char-level, 256
  tokens, dropout 0.1), tokens/s.

"ours" is `interp.training.Trainer.run()` itself (evaluation and checkpoints pushed past the
end), read from its metrics.jsonl: the median of the logged windows after the first two
(compilation and graph capture happen there). The limit is `benchmarks/minimal_train.py`,
a minimal loop over the same model with the same data tensors already on the GPU: eager,
`torch.compile`d, and compiled with CUDA graphs (`mode="reduce-overhead"`); the ratio is
against the fastest of the three. `--full-grokking` also times
the whole 25,000-step grokking run with eval every 100 steps, progress measures and its
checkpoint series (target <= 120 s), and keeps it in `--runs`.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]

from interp.checkpoint import read_metrics  # noqa: E402
from interp.training import Trainer, load_run_config  # noqa: E402
from minimal_train import minimal_loop  # noqa: E402

WORKLOADS = {
    "grokking": ("configs/reference/grokking.yaml", {}),
    "add3_b128": ("configs/reference/add3_none.yaml", {"train.batch_size": 128}),
    "add3_b1024": ("configs/reference/add3_none.yaml", {"train.batch_size": 1024}),
    "shakespeare": ("configs/reference/shakespeare_factored_alibi.yaml", {}),
}


def config(name: str, steps: int, out_dir: Path, device: str, extra: dict) -> dict:
    path, fixed = WORKLOADS[name]
    over = {**fixed, "train.steps": steps, "train.warmup": 10, "train.eval_every": 10 * steps,
            "train.save_every": 10 * steps, "train.log_every": max(1, steps // 20), "train.metrics": [],
            "train.progress": False, "train.out_dir": str(out_dir), "train.overwrite": True,
            "train.device": device, "train.stop_at": steps, **extra}
    cfg = load_run_config(REPO / path, [f"{k}={json.dumps(v)}" for k, v in over.items()])
    return cfg


def fresh_compiler() -> None:
    """Each contender compiles from scratch: dynamo's per-function recompile limit is shared by
    every model instance in the process, and one backend's cache must not serve another."""
    torch._dynamo.reset()


def run_ours(name: str, steps: int, device: str, extra: dict) -> dict:
    fresh_compiler()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = config(name, steps, Path(tmp), device, extra)
        trainer = Trainer(cfg)
        t0 = time.perf_counter()
        try:
            trainer.run()
        except Exception as e:  # an ablation that cannot run (e.g. graphs + a kernel that refuses capture)
            return {"error": f"{type(e).__name__}: {e}"}
        wall = time.perf_counter() - t0
        rows = [r for r in read_metrics(Path(tmp) / "metrics.jsonl") if r["event"] == "train"]
    steady = rows[2:] if len(rows) > 4 else rows
    tokens_per_step = statistics.median(r["tokens_per_s"] / r["steps_per_s"] for r in steady)
    return {"steps_per_s": statistics.median(r["steps_per_s"] for r in steady),
            "tokens_per_s": statistics.median(r["tokens_per_s"] for r in steady),
            "tokens_per_step": tokens_per_step, "wall_s": wall, "final_loss": rows[-1]["loss"],
            "graphs": trainer.graphs, "compiled": trainer._want_compile()}


def run_limit(name: str, steps: int, device: str, compile) -> dict:
    fresh_compiler()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = config(name, steps, Path(tmp), device, {"train.compile": False, "train.cuda_graphs": False})
        trainer = Trainer(cfg)  # builds the same model and the same data tensors, on the device
    model = copy.deepcopy(trainer.model).train()
    data = trainer.data.tensors
    rows = data.rows(torch.arange(len(data), device=trainer.device))  # text windows: every window, gathered
    t = cfg["train"]
    batch = len(data) if t["batch_size"] == "full" else int(t["batch_size"])
    out = minimal_loop(model, rows.input_ids, rows.labels, batch_size=batch, steps=steps,
                       warmup=min(30, steps), lr=float(t["lr"]), betas=tuple(t["betas"]),
                       weight_decay=float(t["weight_decay"]), amp=device == "cuda", compile=compile)
    real_per_row = float(rows.n_tokens) / len(data)
    out["tokens_per_s"] = out["steps_per_s"] * min(batch, len(data)) * real_per_row
    return out


def full_grokking(runs: Path, device: str) -> dict:
    """The whole reference run: 25k steps, eval every 100 (train + test), progress measures,
    checkpoint series. Wall time from Trainer construction to the last checkpoint."""
    out_dir = runs / "grokking"
    cfg = load_run_config(REPO / WORKLOADS["grokking"][0],
                          [f"train.out_dir={out_dir}", "train.overwrite=true", "train.progress=false",
                           f"train.device={device}"])
    t0 = time.perf_counter()
    last = Trainer(cfg).run()
    wall = time.perf_counter() - t0
    evals = [r for r in read_metrics(out_dir / "metrics.jsonl") if r["event"] == "eval"]
    return {"wall_s": wall, "steps": cfg["train"]["steps"], "final": {k: evals[-1][k] for k in
            ("token_acc", "loss", "train_token_acc", "train_loss")}, "checkpoint": str(last)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--small", action="store_true", help="CPU, few steps: exercise the code path")
    p.add_argument("--workloads", default=",".join(WORKLOADS))
    p.add_argument("--ablate", action="store_true", help="also ours without graphs / without compile")
    p.add_argument("--full-grokking", action="store_true")
    p.add_argument("--runs", type=Path, default=REPO / "runs" / "bench_train")
    args = p.parse_args()
    device = "cpu" if args.small or not torch.cuda.is_available() else "cuda"
    if device == "cpu":
        torch.set_num_threads(1)
    steps = {"grokking": 3000, "add3_b128": 1500, "add3_b1024": 800, "shakespeare": 600}
    if args.small:
        steps = {k: 6 for k in steps}
    result = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "torch": torch.__version__,
              "workloads": {}}
    for name in filter(None, args.workloads.split(",")):
        n = steps[name]
        row = {"ours": run_ours(name, n, device, {}),
               "limit_eager": run_limit(name, n, device, compile=False)}
        if device == "cuda":
            row["limit_compiled"] = run_limit(name, n, device, compile=True)
            row["limit_compiled_cudagraphs"] = run_limit(name, n, device, compile="reduce-overhead")
        if args.ablate and device == "cuda":
            row["ours_no_graphs"] = run_ours(name, n, device, {"train.cuda_graphs": False})
            row["ours_no_compile"] = run_ours(name, n, device, {"train.compile": False})
            row["ours_eager"] = run_ours(name, n, device, {"train.compile": False, "train.cuda_graphs": False})
        best = max(v["steps_per_s"] for k, v in row.items() if k.startswith("limit"))
        row["ratio_vs_limit"] = row["ours"]["steps_per_s"] / best
        result["workloads"][name] = row
        print(json.dumps({name: {k: (round(v["steps_per_s"], 1) if isinstance(v, dict) and "steps_per_s" in v
                                     else v) for k, v in row.items()}}), flush=True)
    if args.full_grokking:
        result["grokking_25k"] = full_grokking(args.runs, device)
        print(json.dumps({"grokking_25k": result["grokking_25k"]}), flush=True)
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
