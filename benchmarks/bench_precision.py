"""How much MFU the numeric recipe leaves on the table at GPT-2-small shape. Prints one JSON document.

    python benchmarks/bench_precision.py --out result.json      # GPU: 16 x 1024, bf16
    python benchmarks/bench_precision.py --small --steps 2      # CPU smoke run

`bench_model.py` compares training steps under the recipe both we and the independent anchor use:
bf16 autocast over fp32 weights, so the residual stream, its gradient and every LayerNorm
input/output are fp32. This script asks what that costs. For our model and the anchor, each step
compiled and captured whole as one CUDA graph (`bench_model.GraphedStep`):

* `amp`: the recipe above (what `bench_model` measures);
* `pure`: weights and activations in bf16, fused AdamW on the bf16 weights. No master weights,
  so updates smaller than a bf16 ulp of the weight are lost: an upper bound on speed, not a
  recipe we would train with;
* `pure_master`: bf16 weights and activations, fp32 master weights updated by a fused AdamW,
  the gradients copied up and the weights copied down with `torch._foreach_copy_` (the plain way
  to do it; a fused kernel could save part of the copies).

`--sdpa-backends` also times `scaled_dot_product_attention` fwd / fwd+bwd at the model's attention
shape (q, k, v strided views of one packed projection, as in our model) for each SDPA backend.
MFU as in `bench_model.py`.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from anchor_gpt import AnchorConfig, AnchorGPT  # noqa: E402
from bench_model import (  # noqa: E402
    GraphedStep,
    emit,
    model_flops_per_token,
    peak_flops,
    step_timing_parser,
    sync,
    time_steps,
)
from models import presets  # noqa: E402

RECIPES = ("amp", "pure", "pure_master")


class MasterWeights:
    """fp32 master copies of bf16 parameters behind an optimizer-like `step` / `zero_grad`:
    bf16 grads -> fp32, fused AdamW on the masters, masters -> bf16 weights."""

    def __init__(self, params, fused: bool):
        self.params = list(params)
        self.master = [p.detach().float().clone() for p in self.params]
        self.master_grads = [torch.zeros_like(m) for m in self.master]
        for m, g in zip(self.master, self.master_grads):
            m.grad = g
        self.opt = torch.optim.AdamW(self.master, lr=1e-4, fused=fused, **({"capturable": True} if fused else {}))

    def step(self):
        torch._foreach_copy_(self.master_grads, [p.grad for p in self.params])
        self.opt.step()
        with torch.no_grad():
            torch._foreach_copy_(self.params, self.master)

    def zero_grad(self, set_to_none: bool = True):
        for p in self.params:
            p.grad = None


def build(who: str, recipe: str, args, device):
    """A captured training step for `who` ("ours" / "anchor") under `recipe`."""
    torch.manual_seed(0)
    if who == "ours":
        model = presets.make("vanilla", args.size, d_vocab=args.vocab, n_ctx=args.seq)
    else:
        c = presets.config("vanilla", args.size, d_vocab=args.vocab, n_ctx=args.seq)
        model = AnchorGPT(AnchorConfig(c.n_layers, c.n_heads, c.d_model, c.n_ctx, c.d_vocab))
    model = model.to(device, torch.float32 if recipe == "amp" else torch.bfloat16)
    fused = device.type == "cuda"
    if recipe == "pure_master":
        opt = MasterWeights(model.parameters(), fused)
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=fused, **({"capturable": True} if fused else {}))
    if who == "ours":
        def loss(tok, tgt, model=model):
            return model(tok, return_type="loss")
    else:
        def loss(tok, tgt, model=model):
            return model(tok, tgt)
    return GraphedStep(f"{who}_{recipe}", loss, opt)


def sdpa_backends(args, device) -> dict:
    """fwd and fwd+bwd ms of one attention call per SDPA backend, times the number of layers."""
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    c = presets.config("vanilla", args.size, d_vocab=args.vocab, n_ctx=args.seq)
    B, T, H, D = args.batch, args.seq, c.n_heads, c.d_model // c.n_heads
    qkv = torch.randn(B, T, 3, H, D, device=device, dtype=torch.bfloat16)
    q, k, v = (t.transpose(1, 2).detach().requires_grad_() for t in qkv.unbind(2))
    grad_out = torch.randn(B, H, T, D, device=device, dtype=torch.bfloat16)
    out = {"shape": [B, H, T, D], "layers": c.n_layers}
    for backend in (SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION):
        for label, backward in (("fwd", False), ("fwd_bwd", True)):
            def call(backward=backward):
                o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
                if backward:
                    o.backward(grad_out)
            try:
                with sdpa_kernel([backend]):
                    for _ in range(3):
                        call()
                    sync(device)
                    t0 = time.perf_counter()
                    for _ in range(args.steps * 4):
                        call()
                    sync(device)
                ms = (time.perf_counter() - t0) / (args.steps * 4) * 1000 * c.n_layers
                out[f"{backend.name.lower()}_{label}_ms_all_layers"] = round(ms, 3)
            except RuntimeError as e:  # backend not available for this shape / device
                out[f"{backend.name.lower()}_{label}_ms_all_layers"] = f"unavailable: {str(e).splitlines()[0][:160]}"
    return out


def main(argv=None) -> dict:
    p = step_timing_parser(__doc__, steps=5, rounds=3, warmup=2)
    p.add_argument("--recipes", default=",".join(RECIPES), help=f"comma-separated, from {RECIPES}")
    p.add_argument("--sdpa-backends", action="store_true", help="also time each SDPA backend (CUDA)")
    p.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = p.parse_args(argv)
    args.size = "tiny" if args.small else "large"
    if args.small:
        args.batch, args.seq, args.vocab = min(args.batch, 4), min(args.seq, 64), min(args.vocab, 128)
    recipes = [r for r in args.recipes.split(",") if r]
    if unknown := sorted(set(recipes) - set(RECIPES)):
        raise SystemExit(f"unknown recipe(s) {unknown}; choose from {RECIPES}")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    result = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "command": "python benchmarks/bench_precision.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "shape": {"batch": args.batch, "seq": args.seq, "vocab": args.vocab, "preset": f"vanilla-{args.size}"},
    }
    if args.sdpa_backends and device.type == "cuda":
        result["sdpa_backends"] = sdpa_backends(args, device)

    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, args.vocab, (args.batch, args.seq), generator=g).to(device)
    targets = torch.cat([tokens[:, 1:], tokens.new_full((args.batch, 1), -1)], dim=1)  # anchor's ignore index
    steps = [build(who, r, args, device) for who in ("ours", "anchor") for r in recipes]
    result["compile_s"] = {}
    for step in steps:
        t0 = time.perf_counter()
        time_steps(step, tokens, targets, device, torch.bfloat16, args.warmup)
        result["compile_s"][step.name] = round(time.perf_counter() - t0, 1)
        print(f"[bench_precision] {step.name}: warm after {result['compile_s'][step.name]} s", file=sys.stderr, flush=True)
    times: dict[str, list[float]] = {s.name: [] for s in steps}
    for _ in range(args.rounds):  # interleaved, so drift hits every contender alike
        for step in steps:
            times[step.name].append(time_steps(step, tokens, targets, device, torch.bfloat16, args.steps))
    tokens_per_step = args.batch * args.seq
    flops, peak = model_flops_per_token(args.size, args.vocab, args.seq), peak_flops(device, None)
    rows = {}
    for step in steps:
        sec = statistics.median(times[step.name]) / args.steps
        loss = float(step.step(tokens, targets, device, torch.bfloat16))  # one more step: finite, sane loss
        rows[step.name] = {"ms_per_step": round(sec * 1000, 2), "tokens_per_s": round(tokens_per_step / sec),
                           "loss": round(loss, 4)}
        if peak:
            rows[step.name]["mfu"] = round(tokens_per_step / sec * flops / peak, 4)
    result["steps"] = rows
    return emit(result, args.out)


if __name__ == "__main__":
    main()
