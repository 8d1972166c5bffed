"""Train every shipped dictionary (issue 23, item 5) on the GPU in one command, resumably, and
pack them (fp16, SAELens layout) with their cards for `data/dictionaries/`.

```bash
python scripts/train_dictionaries.py --out $OUT              # GPU: < 9 minutes on an H100; run again to continue
python scripts/train_dictionaries.py --small --out /tmp/dicts  # CPU smoke test (tiny token counts)
python scripts/train_dictionaries.py --only shakespeare_vanilla --out $OUT
```

Each `configs/features/NAME.yaml` trains in `--runs/NAME` (default `runs/features/NAME`, an
ignored folder that a warm GPU machine keeps between calls): a run that runs out of
`--budget-s` checkpoints and stops (`train.max_seconds`), and the next call resumes it. A
finished run's dictionaries are saved in fp16, loaded back and scored as shipped by
`interp.features.evaluate` on held-out tokens (FVE, L0, CE loss recovered, dead fraction),
and a card per model says so, with the command that retrains it. Everything goes into
`OUT/dictionaries.tar` (unpack it in `data/`: `tar -xf dictionaries.tar -C data/`) plus
`OUT/summary.json`, because a GPU call hands back only a few files.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tarfile
import time
import traceback
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CONFIGS = ("grokking", "induction_attn_only", "add3", "shakespeare_vanilla", "shakespeare_factored_alibi")
SMALL = ["train.tokens=8192", "train.batch_tokens=256", "train.buffer_tokens=2048", "train.log_every=8",
         "train.save_every=16", "data.batch_size=16", "train.device=cpu", "train.progress=false"]
BUDGET_MB = 8.0


def finished(run_dir: Path, names) -> bool:
    return all((run_dir / n / "cfg.json").is_file() for n in names)


def train_one(name: str, runs: Path, left_s: float, small: bool, extra: list[str] = ()) -> tuple[dict, bool]:
    """Train (or resume) configs/features/NAME.yaml for at most `left_s` seconds; returns
    ({dictionary: SparseDictionary or None}, finished)."""
    from interp import features
    from interp.features.training import load_config, run

    config = REPO / "configs" / "features" / f"{name}.yaml"
    run_dir = runs / name
    overrides = [f"train.out_dir={run_dir}", f"train.max_seconds={max(1.0, left_s)}"] + (SMALL if small else []) + list(extra)
    names = list(load_config(config, overrides)["dictionaries"])
    if finished(run_dir, names):
        return {n: features.load(run_dir / n) for n in names}, True
    if (run_dir / "last").is_file():
        run(resume=run_dir, overrides=overrides)  # the run's own config + this call's time box
    else:
        run(config, overrides + ["train.overwrite=true"])
    done = finished(run_dir, names)
    return ({n: features.load(run_dir / n) for n in names} if done else {}), done


def export(name: str, dictionaries: dict, runs: Path, tree: Path, eval_tokens: int, device: str) -> dict:
    """fp16 copies in SAELens layout, scored as shipped, and the model's card."""
    from interp import features
    from interp.features.training import load_config

    saved = runs / name / "run_config.json"  # what was trained (overrides included)
    cfg = json.loads(saved.read_text()) if saved.exists() else load_config(REPO / "configs" / "features" / f"{name}.yaml")
    out = tree / name
    out.mkdir(parents=True, exist_ok=True)
    rows = {}
    for dname, sae in dictionaries.items():
        sae.save(out / dname, dtype=torch.float16)
        shipped = features.load(out / dname)
        row = {"hook": shipped.cfg.hook_name, "out_hook": shipped.cfg.out_hook_name, "arch": shipped.cfg.arch,
               "d_in": shipped.cfg.d_in, "d_sae": shipped.cfg.d_sae, "k": shipped.cfg.k,
               "bytes": sum(f.stat().st_size for f in (out / dname).iterdir())}
        try:
            stats = features.evaluate(shipped, cfg["checkpoint"], tokens=eval_tokens, device=device)
            row.update({k: v for k, v in stats.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
        except Exception as e:  # the card says what failed rather than leaving a number out silently
            row["evaluate_error"] = f"{type(e).__name__}: {e}"[:500]
        rows[dname] = row
    metrics = runs / name / "metrics.jsonl"
    if metrics.exists():
        (out / "metrics.jsonl").write_text(metrics.read_text())
    (out / "card.md").write_text(card(name, cfg, rows, eval_tokens))
    return rows


def card(name: str, cfg: dict, rows: dict, eval_tokens: int) -> str:
    def fmt(v):
        return "n/a" if v is None or (isinstance(v, float) and not math.isfinite(v)) else (
            f"{v:.3f}" if isinstance(v, float) else str(v))

    t = cfg["train"]
    lines = [f"# Dictionaries: {name}", "", cfg.get("description", ""), "",
             f"- model: `{cfg['checkpoint']}`; activations from its task's train split; scored on "
             f"{eval_tokens:,} held-out tokens by `interp.features.evaluate`, from the fp16 files below",
             f"- training: {t['tokens']:,} tokens per dictionary, batches of {t['batch_tokens']:,}, all "
             "dictionaries of this card from one model forward (`interp.features.training`)",
             f"- retrain: `python scripts/train_dictionaries.py --only {name}` (GPU), or "
             f"`interp features train --config configs/features/{name}.yaml`",
             "- load: `features.load('data/dictionaries/" + name + "/NAME')` (SAELens layout: cfg.json + "
             "sae_weights.safetensors, fp16)", "",
             "| dictionary | hook | arch | d_sae | k | FVE | L0 | CE recovered | dead | dense |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for dname, r in rows.items():
        hook = r["hook"] + (f" -> {r['out_hook']}" if r["out_hook"] else "")
        lines.append(f"| {dname} | `{hook}` | {r['arch']} | {r['d_sae']} | {fmt(r['k'])} | {fmt(r.get('fve'))} | "
                     f"{fmt(r.get('l0'))} | {fmt(r.get('ce_recovered'))} | {fmt(r.get('dead_fraction'))} | "
                     f"{fmt(r.get('dense_fraction'))} |")
    errors = {d: r["evaluate_error"] for d, r in rows.items() if "evaluate_error" in r}
    if errors:
        lines += ["", "Evaluation failed for: " + "; ".join(f"{d}: {e}" for d, e in errors.items())]
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="where dictionaries.tar and summary.json go ($OUT)")
    p.add_argument("--runs", type=Path, default=REPO / "runs" / "features", help="resumable training state")
    p.add_argument("--only", default=None, help=f"comma-separated subset of {', '.join(CONFIGS)}")
    p.add_argument("--budget-s", type=float, default=480.0, help="training stops (checkpointed) after this")
    p.add_argument("--eval-tokens", type=int, default=50_000)
    p.add_argument("--small", action="store_true", help="CPU smoke test: tiny token counts")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override for every config (e.g. train.tokens=4e6 train.device=cpu); the cards say what ran")
    args = p.parse_args(argv)

    started = time.perf_counter()
    names = args.only.split(",") if args.only else list(CONFIGS)
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        p.error(f"--only: unknown {unknown}; choose from {list(CONFIGS)}")
    device = "cpu" if args.small or not torch.cuda.is_available() or "train.device=cpu" in args.overrides else "cuda"
    eval_tokens = 2048 if args.small else args.eval_tokens
    tree = args.runs / "_shipped" / "dictionaries"
    summary: dict = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "models": {},
                     "unfinished": [], "errors": {}}
    for name in names:
        left = args.budget_s - (time.perf_counter() - started)
        if left <= 5:
            summary["unfinished"].append(name)
            continue
        try:
            dictionaries, done = train_one(name, args.runs, left, args.small, args.overrides)
            if not done:
                summary["unfinished"].append(name)
                continue
            summary["models"][name] = export(name, dictionaries, args.runs, tree, eval_tokens, device)
        except Exception as e:
            summary["errors"][name] = f"{type(e).__name__}: {e}"[:2000]
            traceback.print_exc()
    sizes = [r["bytes"] for rows in summary["models"].values() for r in rows.values()]
    summary["total_mb"] = sum(sizes) / 2**20
    summary["within_budget"] = summary["total_mb"] <= BUDGET_MB
    summary["seconds"] = time.perf_counter() - started
    summary["resume"] = ("run the same command again to continue" if summary["unfinished"] else "all finished")
    args.out.mkdir(parents=True, exist_ok=True)
    if tree.exists():
        with tarfile.open(args.out / "dictionaries.tar", "w") as tar:
            tar.add(tree, arcname="dictionaries")
    text = json.dumps(summary, indent=2, default=str)
    (args.out / "summary.json").write_text(text)
    print(text)
    return summary


if __name__ == "__main__":
    main()
