"""The Coconut comparison: No-CoT, CoT, Coconut and pause-as-thought on the ProsQA-like graph task
and on 3-digit addition, trained side by side, evaluated, and packed as small checkpoints.

    python scripts/coconut_comparison.py --out out/coconut              # GPU: the eight runs at once
    python scripts/coconut_comparison.py --out /tmp/cc --small          # CPU: same code path, seconds

1. every `configs/coconut/*.yaml` (or `--only a,b`) trains in its own process, all at once;
2. each final model is rounded to fp16 (what ships), then evaluated in fp32 on the whole test
   split with `interp.training.coconut.evaluate_coconut` (greedy, the way its mode answers), and
   once more on the first `--check` test examples, whose per-example results let
   `tests/test_coconut_checkpoints.py` re-check the numbers on CPU;
3. `OUT/ship/coconut_<task>_<mode>/` gets the checkpoint (fp16 weights, tokenizer, config,
   metrics.jsonl, card.md), `OUT/comparison.json` the table, `OUT/coconut.tgz` both.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# Hao et al. 2024, "Training Large Language Models to Reason in a Continuous Latent Space", on ProsQA
PAPER_ANCHORS = {"prosqa": {"cot": {"accuracy": 0.775}, "coconut": {"accuracy": 0.970},
                            "note": "GPT-2 fine-tuned; Coconut answers with far fewer generated tokens than CoT"}}
SMALL = ["model.n_layers=1", "model.d_model=32", "model.n_heads=2", "train.steps=24", "train.batch_size=16",
         "train.eval_every=12", "train.eval_generate=8", "train.eval_batches=1", "train.save_every=24",
         "train.log_every=4", "task.n_train=96", "task.n_val=16", "task.n_test=16", "train.device=cpu",
         "train.coconut.epochs_per_stage=0.5", "train.init_from=null"]
SMALL_TASK = {"graph": ["task.path_length=[1, 2]", "task.branching=1", "task.dead_end_length=1", "task.n_concepts=16",
                        "train.coconut.max_latent_stage=2"]}


def train_one(config: Path, out: Path, small: bool, extra: list[str]) -> None:
    from interp.training import train

    overrides = [f"train.out_dir={out}", "train.overwrite=true", "train.progress=false"] + extra
    if small:
        overrides += SMALL + SMALL_TASK.get(config.stem.split("_")[0], [])
    t0 = time.time()
    last = train(config, overrides)
    (out / "done.json").write_text(json.dumps({"checkpoint": str(last), "seconds": time.time() - t0}))


_TASKS: dict = {}


def evaluate_and_pack(name: str, run: Path, ship: Path, check: int, sharing: int = 1) -> dict:
    import torch

    from interp import checkpoint as ckpt_lib
    from interp.tasks import make_task
    from interp.training.coconut import StagedTask, coconut_options, evaluate_coconut

    done = json.loads((run / "done.json").read_text()) if (run / "done.json").exists() else {"seconds": None}
    model, tokenizer = ckpt_lib.load(run, device="cpu")
    _, meta = ckpt_lib.load_config(run)
    run_config = meta["training"]["run_config"]
    o = coconut_options(run_config["train"]["coconut"])
    model = model.half().float()  # exactly the weights that ship
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    key = json.dumps(meta["task"], sort_keys=True)
    if key not in _TASKS:  # the runs of one task share it (100k graph examples take ~25 s to draw)
        _TASKS[key] = make_task(**meta["task"])
    staged = StagedTask(_TASKS[key], o)
    test = evaluate_coconut(model, staged, "test", device=device)
    first = evaluate_coconut(model, staged, "test", n=check, device=device, return_rows=True)
    params = sum(p.numel() for p in model.parameters())
    row = {"name": name, "task": meta["task"]["name"], "mode": o["mode"], "accuracy": test["accuracy"],
           "mean_generated_tokens": test["mean_generated_tokens"], "mean_language_tokens": test["mean_language_tokens"],
           "n_test": test["n_examples"], "stage": test["stage"], "steps": meta["training"]["step"],
           "train_seconds": done["seconds"], "params": params, "finished": "checkpoint" in done,
           "check": {"n": check, "accuracy": first["accuracy"],
                     "mean_generated_tokens": first["mean_generated_tokens"],
                     "correct": [r["correct"] for r in first["rows"]]}}
    card = CARD.format(name=name, mode=o["mode"], task=json.dumps(meta["task"]), acc=test["accuracy"],
                       gen=test["mean_generated_tokens"], lang=test["mean_language_tokens"], n=test["n_examples"],
                       steps=meta["training"]["step"], params=params, options=json.dumps(o),
                       cfg=model.cfg, stem=name.removeprefix("coconut_"),
                       trained=(f"trained {meta['training']['step']} steps in {done['seconds']:.0f} s ({sharing} runs "
                                "sharing one GPU)" if "checkpoint" in done else
                                f"stopped by the time limit at step {meta['training']['step']} of {run_config['train']['steps']}"))
    training = {"step": meta["training"]["step"], "run_config": run_config, "eval": meta["training"].get("eval"),
                "test": {k: v for k, v in row.items() if k != "check"}}
    model.cpu()
    ckpt_lib.save(model, ship / name, tokenizer, task=meta["task"], training=training,
                  metrics=run / ckpt_lib.METRICS_FILE, card=card, weights_dtype=torch.float16)
    return row


CARD = """# {name}

Coconut comparison run (`scripts/coconut_comparison.py`), mode **{mode}**.

- task: `{task}`
- model: {cfg.n_layers} layers, d_model {cfg.d_model}, {cfg.n_heads} heads, positional={cfg.positional},
  vocab {cfg.d_vocab}; {params:,} parameters (weights stored in fp16)
- curriculum (`train.coconut`): `{options}`
- {trained}

## Test split (greedy, fp32 on the fp16 weights, the way this mode answers)

| accuracy | mean generated tokens (thoughts included) | mean language tokens | examples |
|---|---|---|---|
| {acc:.4f} | {gen:.2f} | {lang:.2f} | {n} |

## Use

```python
from interp import thoughts                       # Coconut / pause / CoT / No-CoT alike
reasoner, tokenizer, staged = thoughts.load("data/checkpoints/{name}")
from interp.training.coconut import evaluate_coconut
evaluate_coconut(reasoner.model, staged, "test", n=64)
```

Retrain: `interp train --config configs/coconut/{stem}.yaml`.
"""


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--small", action="store_true", help="tiny CPU runs of the same code path")
    p.add_argument("--only", default="", help="comma-separated config stems (default: all)")
    p.add_argument("--check", type=int, default=64, help="test examples whose per-example results are stored")
    p.add_argument("--deadline", type=float, default=None,
                   help="seconds: then stop the runs still training (each saves its last step) and pack what exists")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override for every run (repeatable), e.g. train.init_from=DIR")
    p.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker is not None:
        return train_one(a.worker, a.out, a.small, a.set)
    configs = sorted((REPO / "configs" / "coconut").glob("*.yaml"))
    if a.only:
        keep = set(a.only.split(","))
        configs = [c for c in configs if c.stem in keep]
    runs, ship = a.out / "runs", a.out / "ship"
    runs.mkdir(parents=True, exist_ok=True)
    procs = {}
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    for cfg in configs:
        out = runs / cfg.stem
        out.mkdir(parents=True, exist_ok=True)
        log = open(a.out / f"{cfg.stem}.log", "w")
        cmd = [sys.executable, __file__, "--worker", str(cfg), "--out", str(out)] + (["--small"] if a.small else [])
        cmd += [f"--set={kv}" for kv in a.set]
        procs[cfg.stem] = (subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO), log)
    t0 = time.time()
    failed = []
    for stem, (proc, log) in procs.items():
        left = None if a.deadline is None else max(1.0, a.deadline - (time.time() - t0))
        try:
            proc.wait(timeout=left)
        except subprocess.TimeoutExpired:  # the trainer saves a checkpoint on SIGTERM, then exits
            print(f"{stem}: deadline, stopping it", file=sys.stderr)
            proc.terminate()
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
        if not (runs / stem / "last").exists():
            failed.append(stem)
        log.close()
    print(f"trained {len(procs) - len(failed)}/{len(procs)} runs in {time.time() - t0:.0f} s; failed: {failed}",
          file=sys.stderr)
    rows = []
    for stem in procs:
        if stem in failed:
            continue
        try:
            rows.append(evaluate_and_pack(f"coconut_{stem}", runs / stem, ship, a.check, sharing=len(procs)))
        except Exception as e:  # pack what worked; say what did not
            failed.append(f"{stem} (evaluation: {type(e).__name__}: {e})")
    doc = {"rows": rows, "failed": failed, "paper": PAPER_ANCHORS, "small": a.small}
    (a.out / "comparison.json").write_text(json.dumps(doc, indent=2) + "\n")
    with tarfile.open(a.out / "coconut.tgz", "w:gz") as tar:
        if ship.exists():
            tar.add(ship, arcname="ship")
        tar.add(a.out / "comparison.json", arcname="comparison.json")
        for stem in procs:
            tar.add(a.out / f"{stem}.log", arcname=f"logs/{stem}.log")
    summary = [{k: r[k] for k in ("name", "accuracy", "mean_generated_tokens", "train_seconds")} for r in rows]
    print(json.dumps({"rows": summary, "failed": failed}))
    return doc


if __name__ == "__main__":
    main()
