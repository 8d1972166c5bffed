"""Do attribution graphs say what the model does? Graph influence vs ablation, per feature.

    python -m analyses.graph_validation --ckpt data/checkpoints/shakespeare_vanilla \
        --transcoders data/dictionaries/shakespeare_vanilla --out out/graph_validation

For a few prompts (the first `--len` tokens of the first `--prompts` test examples of the
checkpoint's task, or each `--prompt` given), build the attribution graph of the top
prediction and take its `--k` most influential feature nodes. For each, zero that feature at
its position in the real model (every dictionary spliced in with its error term, so the
spliced model is the model) and measure the change of the target logit (minus the mean
logit). Anthropic report Spearman rho ~ 0.72 between influence and ablation effect.

Writes `summary.json`: per prompt the graph's size, completeness and replacement scores and
the rows (influence, the graph's linear prediction of the ablation = -total effect, the
ablation effect); pooled over prompts `spearman_influence_vs_ablation` (influence against
|effect|), `spearman_predicted_vs_ablation` (signed) and `pearson_predicted_vs_ablation`; the
mean of the per-prompt rhos. Figure: `influence_vs_ablation.html`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from interp import graphs, plots
from interp.graphs import validate

from .common import inputs, load_with_task, write


def prompts_from(args, model, tokenizer, task) -> list:
    if args.prompt:
        return list(args.prompt)
    batch = inputs(task, tokenizer, args.prompts, args.split)
    out = []
    for row, mask in zip(batch.input_ids, batch.attention_mask):
        ids = row[mask.bool()][: args.len]
        out.append(ids)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ckpt", required=True, type=Path, help="checkpoint directory")
    p.add_argument("--transcoders", required=True, type=Path,
                   help="folder of dictionaries (transcoders per MLP; SAEs on attention-only models)")
    p.add_argument("--out", required=True, type=Path, help="output directory (created)")
    p.add_argument("--prompts", type=int, default=4, help="test examples to draw prompts from")
    p.add_argument("--len", type=int, default=48, help="prompt length in tokens (task prompts)")
    p.add_argument("--prompt", action="append", help="a prompt text (repeatable; replaces the task prompts)")
    p.add_argument("--split", default="test", choices=("train", "val", "test"))
    p.add_argument("--k", type=int, default=20, help="top-influence features per graph")
    p.add_argument("--kind", default="auto", help="which dictionaries of the folder: auto, transcoders, saes, all")
    args = p.parse_args(argv)

    model, tokenizer, task = load_with_task(args.ckpt)
    if tokenizer is not None:
        model.set_tokenizer(tokenizer)
    dicts = graphs.load_dictionaries(args.transcoders, kind=args.kind, attn_only=model.cfg.attn_only)
    per_prompt, all_rows = [], []
    for j, prompt in enumerate(prompts_from(args, model, tokenizer, task)):
        g = graphs.attribute(model, dicts, prompt, progress=False)
        rows = validate.ablation_check(g, model, dicts, k=args.k)
        replacement, completeness = g.scores()
        target = next(n for n in g.nodes if n.is_target)
        infl, abl, pred = ([r[key] for r in rows] for key in ("influence", "ablation", "predicted"))
        per_prompt.append(dict(
            prompt=g.prompt, n_tokens=len(g.tokens), target=target.token, target_prob=target.prob,
            counts=g.counts, completeness=completeness, replacement=replacement,
            spearman_influence_vs_ablation=validate.spearman(infl, np.abs(abl)),
            spearman_predicted_vs_ablation=validate.spearman(pred, abl), rows=rows))
        for r in rows:
            all_rows.append(dict(r, prompt=j))
    infl = np.array([r["influence"] for r in all_rows])
    abl = np.array([r["ablation"] for r in all_rows])
    pred = np.array([r["predicted"] for r in all_rows])
    pearson = float(np.corrcoef(pred, abl)[0, 1]) if len(all_rows) > 2 and pred.std() > 0 and abl.std() > 0 else float("nan")
    summary = dict(
        checkpoint=str(args.ckpt), dictionaries=[str(getattr(d, "_graph_path", d.cfg.hook_name)) for d in dicts],
        k=args.k, n_prompts=len(per_prompt), n_features=len(all_rows),
        spearman_influence_vs_ablation=validate.spearman(infl, np.abs(abl)),
        spearman_predicted_vs_ablation=validate.spearman(pred, abl),
        pearson_predicted_vs_ablation=pearson,
        mean_spearman_per_prompt=float(np.nanmean([p["spearman_influence_vs_ablation"] for p in per_prompt])),
        mean_completeness=float(np.mean([p["completeness"] for p in per_prompt])),
        mean_replacement=float(np.mean([p["replacement"] for p in per_prompt])),
        prompts=per_prompt)
    fig = plots.influence_vs_ablation(infl, abl, labels=[r["node"] for r in all_rows],
                                      groups=[f"prompt {r['prompt']}" for r in all_rows],
                                      rho=summary["spearman_influence_vs_ablation"])
    return write(args.out, summary, {"influence_vs_ablation": fig})


if __name__ == "__main__":
    main()
