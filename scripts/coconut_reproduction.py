"""Coconut, reproduced on ProsQA-like graphs in the symbolic vocabulary, from scratch (issue 25):
Coconut and CoT (two seeds each), No-CoT and pause-as-thought with Coconut's curriculum, all
trained at once on one GPU, evaluated, and packed as small checkpoints plus one table.

    python scripts/coconut_reproduction.py --out $OUT --deadline 440          # GPU, first call
    python scripts/coconut_reproduction.py --out $OUT --resume-from PREV      # a later call: PREV holds the
                                                                              # state_<run>.tar of the first
    python scripts/coconut_reproduction.py --install A/coconut_prosqa.tar [B/coconut_prosqa.tar]   # ship (CPU)
    python scripts/coconut_reproduction.py --out /tmp/repro --small           # CPU: the same code path, minutes

1. Every run of `RUNS` (a config of `configs/coconut/` and a seed) trains in its own process, all
   at once (`interp.training.train`; the Coconut step is one CUDA graph per stage). A run found
   under `--resume-from` (a `state_<run>.tar` an earlier call wrote) continues exactly where it
   stopped (optimizer, RNG and data order included); a finished one is not trained again.
2. At `--deadline` seconds the runs still training get SIGTERM: each saves its step and exits.
3. Each finished run is rounded to fp16 (what ships) and evaluated in fp32 the way its mode
   answers (`interp.training.coconut.evaluate_coconut`) on the test split and on two
   out-of-distribution test splits (longer paths: 5-6 steps; denser graphs: 2.4 parents per
   node); the first `--check` test examples' per-example results are stored so that
   `tests/test_coconut_reproduction.py` re-checks the numbers on CPU.
4. `OUT/coconut_prosqa.tar`: `ship/coconut_<run>/` checkpoints (fp16 weights, tokenizer, config,
   metrics.jsonl, card.md), `comparison.json` (the table, training seconds and steps/s per
   run, the paper anchors) and `logs/`. `OUT/state_<run>.tar` for every run not finished (its
   last checkpoint with the training state, ~5 MB): carry those into the next call and pass
   their folder to `--resume-from` (with that call's `coconut_prosqa.tar` too, or not: then
   `--install` merges the calls' tars). At most 8 files, each well under 16 MiB.
The last line printed is a JSON summary.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# (run, config stem, train.seed)
RUNS = [("prosqa_coconut", "prosqa_coconut", 0), ("prosqa_coconut_seed1", "prosqa_coconut", 1),
        ("prosqa_cot", "prosqa_cot", 0), ("prosqa_cot_seed1", "prosqa_cot", 1),
        ("prosqa_no_cot", "prosqa_no_cot", 0), ("prosqa_pause", "prosqa_pause", 0)]
# out-of-distribution test splits: the training graphs' generator with these changes
OOD = {"longer_paths": {"path_length": [5, 6]}, "denser_graphs": {"edges_per_node": 2.4}}
PAPER = {
    "coconut_prosqa_gpt2": {"cot": 0.775, "no_cot": 0.767, "coconut": 0.970, "pause": 0.966,
                            "source": "Hao et al. 2024 (arXiv 2412.06769), Table 1: GPT-2 fine-tuned on ProsQA"},
    "superposition": {"model": "2 layers, 8 heads, d 768, from scratch, symbolic ProsQA (paths <= 4)",
                      "recipe": "c_thought 1, 25 epochs per stage, max stage 4, 300 epochs, lr 1e-4, uniform_prob 0.1",
                      "source": "Zhu, Hao et al. 2025 (arXiv 2505.12514); Ber666/reasoning-by-superposition"},
}
# --small: CPU minutes. Small graphs (paths of 2, 8-10 nodes), a 2 x 64 model, 3 stages.
SMALL = ["model.d_model=64", "model.n_heads=4", "model.d_mlp=256", "model.n_ctx=128", "task.n_nodes=[8, 10]",
         "task.edges_per_node=1.3", "task.path_length=[2, 2]", "task.n_symbols=12", "task.n_train=4000",
         "task.n_val=64", "task.n_test=64", "train.coconut.max_latent_stage=2", "train.coconut.epochs_per_stage=0.8",
         "train.coconut.first_stage_epochs=0.8",
         "train.steps=150", "train.batch_size=64", "train.lr=3e-3", "train.warmup=20", "train.eval_every=150",
         "train.eval_generate=64", "train.save_every=50", "train.log_every=20", "train.device=cpu"]
SMALL_OOD = {"longer_paths": {"path_length": [3, 3]}, "denser_graphs": {"edges_per_node": 2.0}}


def ablation_runs(specs: list[str]) -> list[tuple[str, str, int, list[str]]]:
    """`--ablate KEY=VALUE` -> an extra Coconut run (seed 0) with that override, named after it."""
    out = []
    for spec in specs:
        key, sep, value = spec.partition("=")
        if not sep:
            raise SystemExit(f"--ablate {spec!r}: expected KEY=VALUE, e.g. train.coconut.thought=resid")
        tag = "".join(c if c.isalnum() else "_" for c in f"{key.split('.')[-1]}_{value}").strip("_")
        out.append((f"prosqa_coconut_ablate_{tag}", "prosqa_coconut", 0, [spec]))
    return out


def worker(name: str, stem: str, seed: int, work: Path, small: bool, extra: list[str]) -> None:
    """Train one run (or continue it), then evaluate and pack it."""
    from interp.training import train

    run_dir = work / "runs" / name
    clock = run_dir / "seconds.json"  # training seconds over every call (travels in state_<run>.tar)
    before = json.loads(clock.read_text())["seconds"] if clock.exists() else 0.0
    t0 = time.time()
    try:
        if (run_dir / "last").exists():
            last = train(resume=run_dir)
        else:
            overrides = [f"train.out_dir={run_dir}", "train.overwrite=true", "train.progress=false", f"train.seed={seed}",
                         f"name=coconut_{name}", "train.save_best=false"] + (SMALL if small else []) + extra
            last = train(REPO / "configs" / "coconut" / f"{stem}.yaml", overrides)
    finally:
        if run_dir.exists():
            clock.write_text(json.dumps({"seconds": before + time.time() - t0}))
    from interp import checkpoint as ckpt_lib

    _, meta = ckpt_lib.load_config(last)
    if meta["training"]["step"] < meta["training"]["run_config"]["train"]["steps"]:
        return  # stopped early (train.stop_at): packed as state_<run>.tar for a later call
    ship = work / ("ship" if "_ablate_" not in name else "ablations")  # ablations: rows only, not shipped
    row = evaluate_and_pack(name, stem, Path(last), ship, small, before + time.time() - t0)
    row["overrides"] = extra
    (work / "rows" / f"{name}.json").write_text(json.dumps(row))


def evaluate_and_pack(name: str, stem: str, ckpt: Path, ship: Path, small: bool, seconds: float, check: int = 64) -> dict:
    import torch

    from interp import checkpoint as ckpt_lib
    from interp.tasks import make_task
    from interp.training.coconut import StagedTask, coconut_run_options, evaluate_coconut

    model, tokenizer = ckpt_lib.load(ckpt, device="cpu")
    _, meta = ckpt_lib.load_config(ckpt)
    o = coconut_run_options(meta)
    model = model.half().float()  # exactly the weights that ship
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    task_cfg = {k: v for k, v in meta["task"].items() if k != "name"}
    test_only = dict(task_cfg, n_train=0, n_val=0)  # the test split does not depend on the others (prosqa)
    staged = StagedTask(make_task("prosqa", **test_only), o)
    test = evaluate_coconut(model, staged, "test", device=device)
    first = evaluate_coconut(model, staged, "test", n=check, device=device, return_rows=True)
    ood = {}
    for split_name, change in (SMALL_OOD if small else OOD).items():
        task = make_task("prosqa", **dict(test_only, test_overrides=change))
        most = max(len(r.steps) for r in task.records("test"))
        # one thought per step, also past the training curriculum's last stage
        got = evaluate_coconut(model, StagedTask(task, {**o, "max_latent_stage": max(o["max_latent_stage"], most)}),
                               "test", device=device)
        ood[split_name] = {"change": change, "accuracy": got["accuracy"],
                           "mean_generated_tokens": got["mean_generated_tokens"]}
    metrics = ckpt_lib.read_metrics(ckpt.parent / ckpt_lib.METRICS_FILE) if (ckpt.parent / ckpt_lib.METRICS_FILE).exists() \
        else ckpt_lib.read_metrics(ckpt / ckpt_lib.METRICS_FILE)
    rates = [r["steps_per_s"] for r in metrics if r.get("event") == "train" and r.get("steps_per_s")]
    params = sum(p.numel() for p in model.parameters())
    steps, planned = meta["training"]["step"], meta["training"]["run_config"]["train"]["steps"]
    row = {"name": f"coconut_{name}", "mode": o["mode"], "seed": meta["training"]["run_config"]["train"]["seed"],
           "accuracy": test["accuracy"], "mean_generated_tokens": test["mean_generated_tokens"],
           "mean_language_tokens": test["mean_language_tokens"], "n_test": test["n_examples"], "stage": test["stage"],
           "steps": steps, "planned_steps": planned, "finished": steps >= planned, "train_seconds": seconds,
           "median_steps_per_s": sorted(rates)[len(rates) // 2] if rates else None, "params": params, "ood": ood,
           "check": {"n": check, "accuracy": first["accuracy"], "mean_generated_tokens": first["mean_generated_tokens"],
                     "correct": [r["correct"] for r in first["rows"]]}}
    card = CARD.format(name=row["name"], mode=o["mode"], task=json.dumps(meta["task"]), acc=test["accuracy"],
                       gen=test["mean_generated_tokens"], lang=test["mean_language_tokens"], n=test["n_examples"],
                       steps=steps, params=params, options=json.dumps(o), cfg=model.cfg, seconds=seconds,
                       stem=stem, seed=row["seed"],
                       ood="; ".join(f"{k} ({json.dumps(v['change'])}): {v['accuracy']:.4f}" for k, v in ood.items()))
    training = {"step": steps, "run_config": meta["training"]["run_config"], "eval": meta["training"].get("eval"),
                "test": {k: v for k, v in row.items() if k != "check"}}
    model.cpu()
    ckpt_lib.save(model, ship / row["name"], tokenizer, task=meta["task"], training=training,
                  metrics=metrics, card=card, weights_dtype=torch.float16)
    return row


CARD = """# {name}

Coconut reproduction run (`scripts/coconut_reproduction.py`, issue 25), mode **{mode}**, seed {seed}.

- task: `{task}`
- model: {cfg.n_layers} layers, d_model {cfg.d_model}, {cfg.n_heads} heads, positional={cfg.positional},
  vocab {cfg.d_vocab}; {params:,} parameters (weights stored in fp16)
- curriculum (`train.coconut`): `{options}`
- trained {steps} steps in {seconds:.0f} s (all runs sharing one GPU)

## Test split (greedy, fp32 on the fp16 weights, the way this mode answers)

| accuracy | mean generated tokens (thoughts included) | mean language tokens | examples |
|---|---|---|---|
| {acc:.4f} | {gen:.2f} | {lang:.2f} | {n} |

Out of distribution (test split of the same generator with one change; one thought per step): {ood}.

## Use

```bash
interp eval data/checkpoints/{name} --split test --generate 500     # evaluates in mode {mode}
```
```python
from interp import thoughts
reasoner, tokenizer, staged = thoughts.load("data/checkpoints/{name}", task_overrides={{"n_train": 0}})
```

Retrain: `interp train --config configs/coconut/{stem}.yaml --set train.seed={seed}`.
"""


def unpack_previous(prev: Path, work: Path) -> None:
    """Runs a previous call packed: unfinished ones from `state_<run>.tar`, finished ones (their
    shipped checkpoint and row) from `coconut_prosqa.tar`."""
    for tar in sorted(prev.glob("state_*.tar")):
        with tarfile.open(tar) as t:
            t.extractall(work / "runs", filter="data")
    packed = prev / "coconut_prosqa.tar"
    if packed.exists():
        with tarfile.open(packed) as t:
            t.extractall(work / "previous", filter="data")
        table = json.loads((work / "previous" / "comparison.json").read_text())
        for row in table["rows"]:
            name = row["name"].removeprefix("coconut_")
            if (work / "runs" / name / "last").exists():
                continue  # continued from its state instead
            shipped = work / "previous" / "ship" / row["name"]
            if shipped.exists():
                shutil.copytree(shipped, work / "ship" / row["name"], dirs_exist_ok=True)
            (work / "rows" / f"{name}.json").write_text(json.dumps(row))


RETIRED = [f"coconut_graph_{m}" for m in ("coconut", "cot", "no_cot", "pause")]  # replaced by this set (12 MB budget)


def install(tars: list[Path], root: Path = REPO / "data" / "checkpoints") -> dict:
    """Ship the `coconut_prosqa.tar` of one call, or of several calls (later ones win for a run
    in both; a call made with only some `state_<run>.tar` carried holds only those runs): the
    checkpoints into `root`, the merged table as `root/coconut_prosqa_comparison.json`; the
    retired word-graph set (and its rows of `coconut_comparison.json`) removed, so every shipped
    Coconut checkpoint fits 12 MB. Refused unless every run of `RUNS` is finished."""
    rows: dict[str, dict] = {}
    table: dict = {}
    for tar_path in tars:
        with tarfile.open(tar_path) as t:
            table = json.loads(t.extractfile("comparison.json").read())
            if table.get("small"):
                raise SystemExit(f"{tar_path}: a --small run; not for shipping")
            rows.update({r["name"]: r for r in table["rows"]})
    missing = sorted({f"coconut_{n}" for n, _, _ in RUNS} - set(rows))
    if missing:
        raise SystemExit(f"not a finished full run: {missing} unfinished; continue them with --resume-from first")
    for row in rows.values():
        if "_ablate_" not in row["name"]:
            shutil.rmtree(root / row["name"], ignore_errors=True)
    for tar_path in tars:
        with tarfile.open(tar_path) as t:
            members = [m for m in t.getmembers() if m.name.startswith("ship/") and m.name != "ship"]
            for m in members:
                m.name = m.name.removeprefix("ship/")
            t.extractall(root, members=members, filter="data")
    order = {f"coconut_{n}": i for i, (n, _, _) in enumerate(RUNS)}
    table = dict(table, rows=sorted(rows.values(), key=lambda r: (order.get(r["name"], len(order)), r["name"])),
                 unfinished=[], calls=len(tars))
    (root / "coconut_prosqa_comparison.json").write_text(json.dumps(table, indent=2) + "\n")
    for name in RETIRED:
        shutil.rmtree(root / name, ignore_errors=True)
    old = root / "coconut_comparison.json"
    if old.exists():
        doc = json.loads(old.read_text())
        doc["rows"] = [r for r in doc["rows"] if r["name"] not in RETIRED]
        doc["retired"] = sorted(set(doc.get("retired", [])) | set(RETIRED))
        old.write_text(json.dumps(doc, indent=2) + "\n")
    size = sum(p.stat().st_size for d in root.glob("coconut_*") if d.is_dir() for p in d.iterdir())
    print(json.dumps({"installed": [r["name"] for r in table["rows"] if "_ablate_" not in r["name"]],
                      "removed": RETIRED, "coconut_checkpoints_mib": round(size / 2**20, 2)}))
    return table


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=None, help="where the packed files go ($OUT on the GPU machine)")
    p.add_argument("--work", type=Path, default=None, help="run directories (default: OUT/../coconut_work)")
    p.add_argument("--small", action="store_true", help="tiny CPU runs of the same code path")
    p.add_argument("--only", default="", help="comma-separated runs (default: all of RUNS)")
    p.add_argument("--deadline", type=float, default=None, help="seconds: then stop the runs still training")
    p.add_argument("--resume-from", type=Path, default=None, help="a folder holding an earlier call's files")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for every new run")
    p.add_argument("--ablate", action="append", default=[], metavar="KEY=VALUE",
                   help="also train a Coconut run (seed 0) with this one change (repeatable); its row goes into the "
                        "table, its checkpoint is not shipped")
    p.add_argument("--install", type=Path, nargs="+", default=None, metavar="TAR",
                   help="ship the coconut_prosqa.tar of the call(s) into data/checkpoints (and retire the graph set)")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--stem", default=None, help=argparse.SUPPRESS)
    p.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.install is not None:
        return install(a.install)
    if a.out is None:
        p.error("--out is required")
    work = a.work or a.out.parent / "coconut_work"
    if a.worker is not None:
        return worker(a.worker, a.stem, a.seed, work, a.small, a.set)
    t0 = time.time()
    runs = [(n, s, seed, []) for n, s, seed in RUNS if not a.only or n in a.only.split(",")] + ablation_runs(a.ablate)
    names = [r[0] for r in runs]
    for sub in ("runs", "ship", "rows", "ablations"):
        (work / sub).mkdir(parents=True, exist_ok=True)
    a.out.mkdir(parents=True, exist_ok=True)
    if a.resume_from is not None:
        unpack_previous(a.resume_from, work)
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    procs = {}
    for name, stem, seed, extra in runs:
        if (work / "rows" / f"{name}.json").exists():
            continue  # finished in an earlier call
        log = open(work / f"{name}.log", "a")
        cmd = [sys.executable, __file__, "--worker", name, "--stem", stem, "--seed", str(seed), "--out", str(a.out),
               "--work", str(work)]
        cmd += (["--small"] if a.small else []) + [f"--set={kv}" for kv in a.set + extra]
        procs[name] = (subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO), log)
    print(f"started {list(procs)}", file=sys.stderr)

    def stop(signum, frame):  # a SIGTERM to this process: stop the runs now, then pack what exists
        raise TimeoutError

    signal.signal(signal.SIGTERM, stop)
    try:
        for name, (proc, log) in procs.items():
            left = None if a.deadline is None else max(1.0, a.deadline - (time.time() - t0))
            proc.wait(timeout=left)
    except (subprocess.TimeoutExpired, TimeoutError):  # the trainer saves its step on SIGTERM, then exits
        for name, (proc, _) in procs.items():
            if proc.poll() is None:
                print(f"{name}: deadline, stopping it", file=sys.stderr)
                proc.send_signal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    for name, (proc, log) in procs.items():
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
    order = {n: i for i, n in enumerate(names)}
    found = sorted((p.stem for p in (work / "rows").glob("*.json")), key=lambda n: (order.get(n, len(order)), n))
    rows = [json.loads((work / "rows" / f"{n}.json").read_text()) for n in found]
    unfinished = [n for n in names if n not in found]
    table = {"rows": rows, "unfinished": unfinished, "paper": PAPER, "small": a.small, "ood": SMALL_OOD if a.small else OOD,
             "wall_seconds_this_call": time.time() - t0}
    (work / "comparison.json").write_text(json.dumps(table, indent=2) + "\n")
    with tarfile.open(a.out / "coconut_prosqa.tar", "w") as tar:
        tar.add(work / "ship", arcname="ship")
        tar.add(work / "comparison.json", arcname="comparison.json")
        for name in names:
            if (work / f"{name}.log").exists():
                tar.add(work / f"{name}.log", arcname=f"logs/{name}.log")
    for name in unfinished:  # what the next call needs to continue exactly
        run = work / "runs" / name
        if (run / "last").exists():
            with tarfile.open(a.out / f"state_{name}.tar", "w") as tar:
                step = (run / "last").read_text().strip()  # `last` names the newest step directory
                tar.add(run / step, arcname=f"{name}/{step}")
                tar.add(run / "last", arcname=f"{name}/last")
                tar.add(run / "metrics.jsonl", arcname=f"{name}/metrics.jsonl")
                if (run / "seconds.json").exists():
                    tar.add(run / "seconds.json", arcname=f"{name}/seconds.json")
    summary = {"rows": [{k: r[k] for k in ("name", "accuracy", "mean_generated_tokens", "steps", "train_seconds",
                                          "median_steps_per_s")} | {"ood": {k: v["accuracy"] for k, v in r["ood"].items()}}
                        for r in rows], "unfinished": unfinished, "wall_seconds": round(time.time() - t0, 1)}
    print(json.dumps(summary))
    return table


if __name__ == "__main__":
    main()
