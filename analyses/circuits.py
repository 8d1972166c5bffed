"""Which components carry the answer? Activation patching, path patching and direct logit
attribution on a shipped checkpoint.

    python -m analyses.circuits --ckpt data/checkpoints/induction_attn_only --out out/circuits
    python -m analyses.circuits --ckpt data/checkpoints/add3_none --out out/circuits_add3

* **induction** (repeated random blocks): clean `<bos> A A`, corrupted `<bos> A' A'` (another
  block); metric: logit of the clean next token minus that of the corrupted one over the
  second copy. Noising every head's output (z) finds the heads the prediction needs; path
  patching from every layer-0 head into the layer-1 heads' keys, queries and values finds the
  previous-token head that the induction heads' keys read (K-composition).
* **3-digit addition with a scratchpad**: for each answer digit and each carry, pairs of
  problems that differ in one operand digit (keeping every other carry, or flipping exactly
  the carry studied); metric: logit of the clean token minus the corrupted one where it is
  predicted. Denoising the residual stream at every (layer, position) shows where the digit
  is read from (the scratchpad or the operands) and when it moves to the prediction
  position; denoising every head finds the heads that move it; direct logit attribution
  names the heads that write it.

Writes `summary.json` (every number the findings rest on) and one heatmap per sweep.
"""

from __future__ import annotations

import json
import random

import torch

from interp import plots
from interp.attribution import attribution_patching, direct_logit_attribution
from interp.patching import activation_patching, logit_diff, path_patching

from .common import load_with_task, parser, write


# ============================================================================ induction
def induction_prompts(model, n: int, block_len: int = 10, seed: int = 0):
    """(clean, corrupted, metric): `<bos> A A` vs `<bos> A' A'` with A, A' random blocks of
    distinct symbols; the metric is the clean-minus-corrupted next-token logit over the second
    copy (positions whose next token a previous copy predicts)."""
    vocab = model.cfg.d_vocab - 3  # symbols t0..; then <pad> <bos> <eos>
    g = torch.Generator().manual_seed(seed)
    block = lambda: torch.stack([torch.randperm(vocab, generator=g)[:block_len] for _ in range(n)])
    bos = torch.full((n, 1), model.cfg.bos_token_id)
    a, b = block(), block()
    clean, corrupted = torch.cat([bos, a, a], 1), torch.cat([bos, b, b], 1)
    pos = torch.arange(block_len + 1, 2 * block_len)[None]  # predicts tokens block_len + 2 .. 2 * block_len
    metric = logit_diff(clean[:, pos[0] + 1], corrupted[:, pos[0] + 1], pos)
    return clean, corrupted, metric


def _cells(result, threshold: float) -> list[dict]:
    norm = result.normalized()
    out = [{"head": f"L{l}H{h}", "normalized": float(norm[l, h])}
           for l in range(norm.shape[0]) for h in range(norm.shape[1])
           if torch.isfinite(norm[l, h]) and norm[l, h] > threshold]
    return sorted(out, key=lambda c: -c["normalized"])


def induction(model, n: int, block_len: int, progress=None):
    clean, corrupted, metric = induction_prompts(model, n, block_len)
    heads = activation_patching(model, clean, corrupted, metric, "z", direction="noise", progress=progress)
    L = model.cfg.n_layers
    receivers = [(L - 1, h) for h in range(model.cfg.n_heads)]
    paths = {c: path_patching(model, clean, corrupted, metric, receivers, c, direction="noise", progress=progress)
             for c in ("q", "k", "v")}
    estimate = attribution_patching(model, clean, corrupted, metric, acts=("z",), direction="noise")["z"]
    corr = torch.corrcoef(torch.stack([estimate.effect.flatten(), heads.effect.flatten()]))[0, 1]
    k_norm = paths["k"].normalized()
    top_l, top_h = divmod(int(k_norm.nan_to_num(-1).argmax()), k_norm.shape[1])
    sender = f"L{top_l}H{top_h}"
    summary = {
        "n_prompts": n, "block_len": block_len,
        "metric_clean": float(heads.baseline), "metric_corrupted": float(heads.source),
        "heads_needed": _cells(heads, 0.05),
        "heads_noising_normalized": heads.normalized().tolist(),
        "path_to_last_layer": {c: _cells(p, 0.02) for c, p in paths.items()},
        "path_normalized": {c: p.normalized().tolist() for c, p in paths.items()},
        "k_composition_sender": sender,
        "k_composition_sender_effect": {c: float(p.normalized()[top_l, top_h]) for c, p in paths.items()},
        "attribution_patching_correlation_z": float(corr),
        "confirms_induction_circuit": bool(
            top_l == 0 and float(k_norm[top_l, top_h]) > 0.2
            and all(float(p.normalized()[top_l, top_h]) < 0.05 for c, p in paths.items() if c != "k")
            and any(c["head"].startswith(f"L{L - 1}") for c in _cells(heads, 0.05))
        ),
    }
    figures = {"induction_heads_noising": plots.patching_heatmap(heads, title="noising each head (z), normalized")}
    for c, p in paths.items():
        figures[f"induction_path_to_{c}"] = plots.patching_heatmap(
            p, title=f"path patching: sender -> layer-{L - 1} heads' {c}, normalized")
    figures["induction_attribution_vs_patching"] = plots.attribution_scatter(estimate, heads)
    return summary, figures


# ============================================================================ addition
def _roles(n_steps: int) -> list[str]:
    """Names of the positions of `<bos>aaa+bbb=<bot>x+y+c=d,k;...<eot>rrrr` (3-digit operands)."""
    names = ["bos", "a2", "a1", "a0", "+", "b2", "b1", "b0", "=", "bot"]
    for i in range(n_steps):
        names += [f"s{i}.{r}" for r in ("x", "+", "y", "+", "c", "=", "d", ",", "k")]
        names += [f"s{i}.;"] if i < n_steps - 1 else []
    return names + ["eot", "r3", "r2", "r1", "r0", "eos"]


def _digits(x: int) -> list[int]:
    return [x // 10**i % 10 for i in range(3)]  # units first


def _carries(a: int, b: int) -> list[int]:
    """Carry out of each digit position, units first."""
    out, c = [], 0
    for i in range(3):
        c = (_digits(a)[i] + _digits(b)[i] + c) // 10
        out.append(c)
    return out


def addition_pairs(task, n: int, experiment: str, place: int, seed: int = 0, problems=None):
    """Clean/corrupted token pairs for one experiment, truncated after the position where the
    studied token is predicted, and its (clean, corrupted) target tokens.

    experiment "answer": change a's digit `place` keeping every carry (so only that step's
        digit d and answer digit r_place differ); the target is r_place.
    experiment "carry_out": change a's digit `place` flipping its carry; target: that step's k.
    experiment "carry_in": the same pairs; target: the next step's carry-in c (a copy of k).
    Pairs start from `problems` ((a, b) operands; default the test split's); only problems
    with 4-digit sums (the positions then line up) are used.
    """
    rng = random.Random(seed)
    problems = problems if problems is not None else test_problems(task)
    problems = [(a, b) for a, b in problems if a + b >= 1000]
    roles = _roles(3)
    target_role = {"answer": f"r{place}", "carry_out": f"s{place}.k", "carry_in": f"s{place + 1}.c"}[experiment]
    at = roles.index(target_role)
    clean, corrupted, want, other = [], [], [], []
    for a, b in problems:
        base_carry = _carries(a, b)
        choices = []
        for d in range(10):
            if d == _digits(a)[place] or (place == 2 and d == 0):
                continue
            a2 = a + (d - _digits(a)[place]) * 10**place
            flips = [i for i in range(3) if _carries(a2, b)[i] != base_carry[i]]
            keep = a2 + b >= 1000 and (flips == [] if experiment == "answer" else place in flips)
            if keep:
                choices.append(a2)
        if not choices:
            continue
        a2 = rng.choice(choices)
        x, y = task.example_for("+", [a, b]).input_ids, task.example_for("+", [a2, b]).input_ids
        clean.append(x[:at])
        corrupted.append(y[:at])
        want.append(x[at])
        other.append(y[at])
        if len(clean) == n:
            break
    clean, corrupted = torch.tensor(clean), torch.tensor(corrupted)
    return clean, corrupted, torch.tensor(want), torch.tensor(other), roles[:at]


_PROBLEMS: dict[str, list[tuple[int, int]]] = {}


def test_problems(task) -> list[tuple[int, int]]:
    """The operands of the task's test split, built once per task config (drawing the splits
    of a 50k-problem task takes seconds)."""
    key = json.dumps(task.config(), sort_keys=True)
    if key not in _PROBLEMS:
        _PROBLEMS[key] = [tuple(ex.meta["operands"]) for ex in task.split("test")]
    return _PROBLEMS[key]


def addition_experiment(model, task, n: int, experiment: str, place: int, problems=None, progress=None):
    clean, corrupted, want, other, roles = addition_pairs(task, n, experiment, place, problems=problems)
    metric = logit_diff(want, other, pos=-1)
    resid = activation_patching(model, clean, corrupted, metric, "resid_pre", pos_labels=roles, progress=progress)
    heads = activation_patching(model, clean, corrupted, metric, "z", progress=progress)
    attn = activation_patching(model, clean, corrupted, metric, "attn_out", "layer")
    mlp = activation_patching(model, clean, corrupted, metric, "mlp_out", "layer")
    dla = direct_logit_attribution(model, clean, target=want, wrong=other, pos=-1)
    norm = resid.normalized()
    differ = (clean != corrupted).any(0)
    per_layer = []
    for l in range(norm.shape[0]):
        p = int(norm[l].argmax())
        per_layer.append({"layer": l, "pos": p, "role": roles[p], "normalized": float(norm[l, p])})
    top_heads = [{"head": label, "normalized": v} for label, v in _top_cells(heads)]
    summary = {
        "n_pairs": int(clean.shape[0]), "predicted_at": roles[-1], "target": _target_name(experiment, place),
        "metric_clean": float(resid.source), "metric_corrupted": float(resid.baseline),
        "positions_that_differ": [roles[i] for i in differ.nonzero()[:, 0].tolist()],
        "layer0_restoring_positions": sorted(
            ({"role": roles[p], "normalized": float(norm[0, p])} for p in range(norm.shape[1]) if norm[0, p] > 0.1),
            key=lambda c: -c["normalized"]),
        "top_position_per_layer": per_layer,
        "top_heads": top_heads[:4],
        "attn_out_by_layer": attn.normalized().tolist(),
        "mlp_out_by_layer": mlp.normalized().tolist(),
        "dla_top": [{"component": c, "logit_diff": v} for c, v in _dla_mean_top(dla, 5)],
    }
    name = f"{experiment}_{place}"
    figures = {
        f"add_{name}_resid": plots.patching_heatmap(resid, title=f"{summary['target']}: denoising resid_pre, normalized"),
        f"add_{name}_heads": plots.patching_heatmap(heads, title=f"{summary['target']}: denoising each head, normalized"),
    }
    return summary, figures


def _target_name(experiment: str, place: int) -> str:
    return {"answer": f"answer digit r{place}", "carry_out": f"carry out of step {place}",
            "carry_in": f"carry into step {place + 1}"}[experiment]


def _top_cells(result, k: int = 4) -> list[tuple[str, float]]:
    """The k heads of a (layer, head) result with the largest |normalized| effect, as "L1H2"."""
    return [(label.replace(" ", ""), v) for label, v in result.top(k, by="normalized")]


def _dla_mean_top(dla, k: int) -> list[tuple[str, float]]:
    mean = dla.values[:, :, 0].mean(1)
    order = mean.abs().argsort(descending=True)[:k]
    return [(dla.labels[i], float(mean[i])) for i in order.tolist()]


EXPERIMENTS = [("answer", 0), ("answer", 1), ("answer", 2), ("carry_out", 0), ("carry_in", 0), ("carry_out", 1),
               ("carry_in", 1)]


def addition(model, task, n: int, progress=None):
    summary, figures = {}, {}
    problems = test_problems(task)
    for experiment, place in EXPERIMENTS:
        s, f = addition_experiment(model, task, n, experiment, place, problems, progress)
        summary[f"{experiment}_{place}"] = s
        figures.update(f)
    findings = {}
    for key, s in summary.items():
        source = s["layer0_restoring_positions"][0]["role"] if s["layer0_restoring_positions"] else None
        findings[s["target"]] = {"read_from": source, "moved_by": s["top_heads"][0]["head"],
                                 "written_by": s["dla_top"][0]["component"]}
    return {"experiments": summary, "findings": findings}, figures


def main(argv=None):
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--block-len", type=int, default=10, help="induction: length of the repeated block")
    args = p.parse_args(argv)
    model, tokenizer, task = load_with_task(args.ckpt)
    if task is None or task.name not in ("induction", "arithmetic"):
        raise SystemExit(f"{args.ckpt}: circuits knows the induction and arithmetic (addition) tasks, "
                         f"this checkpoint's task is {task and task.name}")
    if task.name == "induction":
        body, figures = induction(model, args.n, args.block_len)
    else:
        if task.config().get("format") != "scratchpad" or task.config().get("ops") != ["+"] or task.config().get("digits") != 3:
            raise SystemExit(f"{args.ckpt}: circuits analyses 3-digit '+' with format=scratchpad; got {task.config()}")
        body, figures = addition(model, task, args.n)
    summary = {"checkpoint": str(args.ckpt), "task": task.name, **body}
    return write(args.out, summary, figures)


if __name__ == "__main__":
    main()
