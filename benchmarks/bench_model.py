"""Training-step throughput of `HookedTransformer` against two plain GPT-2s, and peak memory
of factored-alibi vs RoPE at long context. Prints one JSON document.

    python benchmarks/bench_model.py --out result.json     # GPU: GPT-2-small shape, bf16, 16x1024
    python benchmarks/bench_model.py --small --steps 3     # CPU smoke run

Contenders, in one process, interleaved round by round, each eager and `torch.compile`d:

* `ours`: preset `vanilla` at GPT-2-small shape (vocabulary 50,257), no hooks;
* `anchor` (`anchor_gpt.py`): an independent nanoGPT-style GPT-2 at its best -- vocabulary
  padded to 50,304, loss from fp32 logits, fused AdamW with decay groups;
* `reference` (`reference_gpt.py`): a plain GPT-2 with our choices (vocabulary 50,257, the
  autocast loss path);
* `ours_run_with_cache`: every hook cached (explicit attention), eager;
* `ours_step`: our trainer's real step (`interp.training.loop.StepRunner`: compiled forward,
  the whole step -- forward, backward, fused AdamW -- replayed as one CUDA graph; `train.compile`
  and `train.cuda_graphs` on), and `anchor_graph`: the anchor's compiled step captured whole
  in a CUDA graph the same way (written here, independently of the trainer), so the graph's
  saving is credited to both.

`--variants` adds a diagnostic: `ours_unpadded` (our loss-path vocabulary padding off), also
`_compiled`. `--loss-kernel` times the loss alone on (batch x seq, padded vocabulary) bf16
logits: our fused kernel (`models.loss.xent_grad`: loss and logit gradient in one pass) against
the anchor's compiled `F.cross_entropy(logits.float())` forward + backward;
`--loss-kernel-sweep` also tries launch shapes and keeps the fastest for the training steps.
MFU uses the nanoGPT / PaLM count, 6 N + 12 L d T FLOPs per token with N the parameters
without the position table at the true vocabulary (the same work for every contender), over
the GPU's dense bf16 peak. `--profile NAME,...` adds a per-kernel breakdown of a few steps.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
import types
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from anchor_gpt import AnchorConfig, AnchorGPT  # noqa: E402
from models import loss as our_loss  # noqa: E402
from models import presets  # noqa: E402
from reference_gpt import GPT  # noqa: E402

DEFAULT_VARIANTS = (
    "ours,anchor,reference,ours_compiled,anchor_compiled,reference_compiled,ours_run_with_cache,"
    "ours_step,anchor_graph"
)
PEAK_BF16_TFLOPS = {"H100 PCIe": 756.0, "H100": 989.4, "H200": 989.4, "GH200": 989.4, "A100": 312.0, "L4": 121.0}


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def autocast(device, dtype):
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def peak_flops(device, override) -> float | None:
    if override:
        return override * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name()
    for key, tflops in PEAK_BF16_TFLOPS.items():  # most specific first
        if key in name:
            return tflops * 1e12
    return None


def model_flops_per_token(size: str, vocab: int, seq: int) -> int:
    """nanoGPT / PaLM count: 6 N + 12 L d T, N = parameters without the position table (tied
    unembedding counted once) at the true vocabulary -- the same work for every contender."""
    model = presets.make("vanilla", size, d_vocab=vocab, n_ctx=seq)
    c = model.cfg
    n_params = sum(p.numel() for p in model.parameters()) - c.n_ctx * c.d_model
    return 6 * n_params + 12 * c.n_layers * c.d_model * seq


def fresh(fn, tag: str):
    """`fn` with its own code object, so torch.compile keeps a separate cache (and traces
    under that variant's settings) instead of reusing another variant's graph."""
    code = fn.__code__.replace(co_name=f"{fn.__name__}_{tag}")
    return types.FunctionType(code, fn.__globals__, code.co_name, fn.__defaults__, fn.__closure__)


@contextlib.contextmanager
def settings(unembed_align=None):
    """Model-level knobs for one variant (read at trace time; guarded by torch.compile)."""
    saved = our_loss.VOCAB_ALIGN
    if unembed_align is not None:
        our_loss.VOCAB_ALIGN = unembed_align
    try:
        yield
    finally:
        our_loss.VOCAB_ALIGN = saved


class Variant:
    def __init__(self, name, model, loss, opt, compiled, knobs):
        self.name, self.model, self.knobs = name, model, knobs
        self.loss = torch.compile(fresh(loss, name)) if compiled else loss
        self.opt = opt

    def step(self, tokens, targets, device, dtype):
        with settings(**self.knobs), autocast(device, dtype):
            loss = self.loss(tokens, targets)
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return loss


class TrainerStep:
    """`ours_step`: the trainer's `StepRunner` (compiled forward, whole step as a CUDA graph)."""

    def __init__(self, name, model, device, dtype):
        from interp.training.loop import StepRunner

        self.name, self.model = name, model
        graphs = device.type == "cuda"
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=graphs, **({"capturable": True} if graphs else {}))
        amp = dtype if dtype != torch.float32 else None
        self.runner = StepRunner(model, torch.compile(model), opt, 0.0, device, amp, graphs)  # as Trainer.make_forward

    def step(self, tokens, targets, device, dtype):
        return self.runner([(tokens, tokens)], 1e-4)[0]  # labels = tokens: shifted inside


class GraphedStep:
    """`anchor_graph`: a compiled loss, its backward and the optimizer step captured as one CUDA
    graph (PyTorch's whole-network capture recipe: warm up on a side stream, capture, replay)."""

    def __init__(self, name, loss, opt):
        self.name, self.loss, self.opt = name, torch.compile(fresh(loss, name)), opt
        self.graph = None

    def _once(self, tokens, targets, dtype):
        with autocast(tokens.device, dtype):
            loss = self.loss(tokens, targets)
        loss.backward()
        self.opt.step()
        return loss.detach()

    def step(self, tokens, targets, device, dtype):
        if device.type != "cuda":
            out = self._once(tokens, targets, dtype)
            self.opt.zero_grad(set_to_none=True)
            return out
        if self.graph is None:
            self.static = (tokens.clone(), targets.clone())
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(3):
                    self.opt.zero_grad(set_to_none=True)
                    self._once(*self.static, dtype)
            torch.cuda.current_stream().wait_stream(side)
            self.opt.zero_grad(set_to_none=True)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.out = self._once(*self.static, dtype)
        self.static[0].copy_(tokens)
        self.static[1].copy_(targets)
        self.graph.replay()
        return self.out


def build_variants(names, args, device, size):
    cfg_kw = dict(d_vocab=args.vocab, n_ctx=args.seq)
    fused = device.type == "cuda"
    models, variants = {}, []

    def ours():
        if "ours" not in models:
            torch.manual_seed(0)
            models["ours"] = presets.make("vanilla", size, **cfg_kw).to(device)
        return models["ours"]

    def anchor(tag):
        if tag not in models:
            c = ours().cfg
            torch.manual_seed(0)
            models[tag] = AnchorGPT(AnchorConfig(c.n_layers, c.n_heads, c.d_model, c.n_ctx, c.d_vocab)).to(device)
        return models[tag]

    def reference():
        if "reference" not in models:
            c = ours().cfg
            torch.manual_seed(0)
            models["reference"] = GPT(c.n_layers, c.d_model, c.n_heads, c.d_vocab, c.n_ctx, c.d_mlp).to(device)
        return models["reference"]

    for name in names:
        base, compiled = name.removesuffix("_compiled"), name.endswith("_compiled")
        knobs = {}
        if name == "ours_step":
            variants.append(TrainerStep(name, ours(), device, torch.bfloat16 if fused else torch.float32))
            continue
        if name == "anchor_graph":
            model = anchor(name)

            def loss(tok, tgt, model=model):
                return model(tok, tgt.masked_fill(tgt == -100, -1))
            graphs = {"capturable": True} if fused else {}
            variants.append(GraphedStep(name, loss, model.configure_optimizer(lr=1e-4, fused=fused, **graphs)))
            continue
        if base in ("ours", "ours_unpadded", "ours_run_with_cache"):
            model = ours()
            if base == "ours_run_with_cache":

                def loss(tok, tgt, model=model):
                    out, _ = model.run_with_cache(tok, return_type="loss", return_cache_object=False)
                    return out
            else:

                def loss(tok, tgt, model=model):
                    return model(tok, return_type="loss")
            knobs = dict(unembed_align=1) if base == "ours_unpadded" else {}
            opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=fused)
        elif base == "anchor":
            model = anchor(base)

            def loss(tok, tgt, model=model):
                return model(tok, tgt.masked_fill(tgt == -100, -1))
            opt = model.configure_optimizer(lr=1e-4, fused=fused)
        elif base == "reference":
            model = reference()

            def loss(tok, tgt, model=model):
                return model(tok, tgt)
            opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=fused)
        else:
            raise SystemExit(f"unknown variant {name!r}")
        variants.append(Variant(name, model, loss, opt, compiled, knobs))
    return variants, models


def time_steps(v: Variant, tokens, targets, device, dtype, n):
    sync(device)
    t0 = time.perf_counter()
    for _ in range(n):
        v.step(tokens, targets, device, dtype)
    sync(device)
    return time.perf_counter() - t0


def profile_variant(v: Variant, tokens, targets, device, dtype, steps=3, top=30) -> dict:
    """Per-kernel device time over `steps` steps (after warm-up), grouped by kind."""
    from torch.profiler import ProfilerActivity, profile

    sync(device)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            v.step(tokens, targets, device, dtype)
        sync(device)
    rows = []
    for e in prof.key_averages():
        t = getattr(e, "self_device_time_total", None)
        if t is None:
            t = getattr(e, "self_cuda_time_total", 0)
        if t > 0:
            rows.append((e.key, t / steps / 1000.0, e.count // steps))
    rows.sort(key=lambda r: -r[1])

    def kind(name: str) -> str:
        n = name.lower()
        if any(s in n for s in ("xent", "log_softmax", "nll_loss")):
            return "loss (softmax cross-entropy, forward + backward)"
        if any(s in n for s in ("flash", "fmha", "cudnn", "attention", "sdpa")):
            return "attention"
        if any(s in n for s in ("gemm", "cutlass", "nvjet", "xmma", "sm90", "sm80", "matmul", "splitk")):
            return "matmul"
        if any(s in n for s in ("adam", "multi_tensor", "foreach")):
            return "optimizer"
        if n.startswith("triton") or "triton" in n:
            return "triton (fused elementwise / norms / loss)"
        if "memcpy" in n or "memset" in n:
            return "memcpy/memset"
        return "other aten"

    kinds: dict[str, float] = {}
    for name, ms, _ in rows:
        kinds[kind(name)] = kinds.get(kind(name), 0.0) + ms
    return {
        "ms_per_step_on_device": round(sum(r[1] for r in rows), 3),
        "by_kind_ms": {k: round(t, 3) for k, t in sorted(kinds.items(), key=lambda kv: -kv[1])},
        "top_kernels": [{"name": n[:160], "ms": round(ms, 3), "calls": c} for n, ms, c in rows[:top]],
    }


def throughput(args, device, dtype, result) -> dict:
    size = "tiny" if args.small else "large"
    names = [n for n in args.variants.split(",") if n]
    variants, models = build_variants(names, args, device, size)
    c = models["ours"].cfg if "ours" in models else presets.config("vanilla", size, d_vocab=args.vocab, n_ctx=args.seq)
    B, T = args.batch, args.seq
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, c.d_vocab, (B, T), generator=g).to(device)
    targets = torch.cat([tokens[:, 1:], tokens.new_full((B, 1), -100)], dim=1)

    out: dict = {"variants": names, "compile_s": {}, "skipped": []}
    t_start = time.perf_counter()
    live = []
    for v in variants:  # warm-up (and compile), each within the time budget
        if args.deadline_s and time.perf_counter() - args.t0 > args.deadline_s:
            out["skipped"].append(v.name)
            continue
        t0 = time.perf_counter()
        time_steps(v, tokens, targets, device, dtype, args.warmup)
        out["compile_s"][v.name] = round(time.perf_counter() - t0, 1)
        print(f"[bench_model] {v.name}: warm after {out['compile_s'][v.name]} s", file=sys.stderr, flush=True)
        live.append(v)
    times: dict[str, list[float]] = {v.name: [] for v in live}
    for _ in range(args.rounds):
        for v in live:
            times[v.name].append(time_steps(v, tokens, targets, device, dtype, args.steps))
    tok_s = {k: B * T * args.steps / statistics.median(t) for k, t in times.items()}
    out["tokens_per_s"] = {k: round(v) for k, v in tok_s.items()}
    flops_per_token = model_flops_per_token(size, args.vocab, T)
    out["flops_per_token"] = flops_per_token
    peak = peak_flops(device, args.peak_tflops)
    if peak:
        out["peak_flops"] = peak
        out["mfu"] = {k: round(v * flops_per_token / peak, 4) for k, v in tok_s.items()}

    def ratio(a, b):
        return tok_s[a] / tok_s[b] if a in tok_s and b in tok_s else None

    out["ratios"] = {
        k: r for k, r in {
            "ours_vs_anchor_eager": ratio("ours", "anchor"),
            "ours_vs_anchor_compiled": ratio("ours_compiled", "anchor_compiled"),
            "ours_vs_reference_eager": ratio("ours", "reference"),
            "ours_vs_reference_compiled": ratio("ours_compiled", "reference_compiled"),
            "run_with_cache_vs_ours_eager": ratio("ours_run_with_cache", "ours"),
            "ours_unpadded_vs_ours_compiled": ratio("ours_unpadded_compiled", "ours_compiled"),
            "ours_step_vs_anchor_graph": ratio("ours_step", "anchor_graph"),
            "ours_step_vs_anchor_compiled": ratio("ours_step", "anchor_compiled"),
        }.items() if r is not None
    }
    out["spread"] = {k: round((max(t) - min(t)) / statistics.median(t), 4) for k, t in times.items()}
    out["timing_s"] = round(time.perf_counter() - t_start, 1)
    result["throughput"] = out
    if args.profile and device.type == "cuda":
        result["profile"] = {v.name: profile_variant(v, tokens, targets, device, dtype)
                             for v in live if v.name in args.profile.split(",")}
    if "ours" in models:
        result["padded_loss_check"] = padded_loss_check(models["ours"], tokens, device, dtype)
    return out


def loss_kernel(args, device, dtype) -> dict:
    """The loss alone on (batch x seq, padded vocabulary) logits: our fused kernel (loss and
    logit gradient in one pass) vs the anchor's compiled `F.cross_entropy(logits.float())`
    forward + backward (which reads the logits twice and writes their gradient once)."""
    import torch.nn.functional as F

    n, vocab = args.batch * args.seq, args.vocab
    width = vocab + (-vocab % our_loss.VOCAB_ALIGN)
    g = torch.Generator(device=device).manual_seed(0)
    logits = (torch.randn(n, width, device=device, generator=g) * 2).to(dtype)
    targets = torch.randint(0, vocab, (n,), device=device, generator=g)

    def ours():
        return torch.ops.models.xent_grad(logits, targets, vocab)

    @torch.compile
    def anchor_loss(x):
        return F.cross_entropy(x.float(), targets, ignore_index=-1)

    def anchor():
        x = logits.detach().requires_grad_()
        anchor_loss(x).backward()
        return x.grad

    def ms(fn):
        for _ in range(3):
            fn()
        sync(device)
        t0 = time.perf_counter()
        for _ in range(args.steps):
            fn()
        sync(device)
        return round((time.perf_counter() - t0) / args.steps * 1000, 3)

    out = {"shape": [n, width], "dtype": str(dtype), "kernel_config": dict(our_loss.KERNEL_CONFIG)}
    out["ours_fused_ms"], out["anchor_compiled_fwd_bwd_ms"] = ms(ours), ms(anchor)
    if device.type == "cuda" and args.loss_kernel_sweep:  # launch shapes of our kernel
        default, sweep = dict(our_loss.KERNEL_CONFIG), {}
        for block in (2048, 4096, 8192):
            for warps in (4, 8, 16):
                config = dict(block=block, num_warps=warps)
                our_loss.KERNEL_CONFIG.update(config)
                sweep[json.dumps(config)] = ms(ours)
        out["sweep_ms"] = dict(sorted(sweep.items(), key=lambda kv: kv[1]))
        our_loss.KERNEL_CONFIG.update(json.loads(min(sweep, key=sweep.get)))
        out["kept_for_the_run"] = dict(our_loss.KERNEL_CONFIG)  # the training steps below use it
        out["ours_fused_ms_best"] = ms(ours)
        out["default_config"] = default
    loss, grad = ours()
    ref_x = logits[:64].detach().float().requires_grad_()
    ref = F.cross_entropy(ref_x[:, :vocab], targets[:64], reduction="none")
    ref.sum().backward()
    out["max_abs_loss_diff"] = float((loss[:64] - ref.detach()).abs().max())
    out["max_abs_grad_diff"] = float((grad[:64].float() - ref_x.grad).abs().max())
    out["ratio"] = out["anchor_compiled_fwd_bwd_ms"] / out["ours_fused_ms"]
    return out


def padded_loss_check(model, tokens, device, dtype) -> dict:
    """The loss-path vocabulary padding changes nothing but speed: same loss and gradients."""
    res = {}
    for align in (1, 64):
        model.zero_grad(set_to_none=True)
        with settings(unembed_align=align), autocast(device, dtype):
            loss = model(tokens[:2], return_type="loss")
        loss.backward()
        res[align] = (loss.detach().float(), model.embed.weight.grad.detach().float().clone())
    model.zero_grad(set_to_none=True)
    (l1, g1), (l64, g64) = res[1], res[64]
    return {"loss_abs_diff": float((l1 - l64).abs()), "grad_rel_diff": float((g1 - g64).norm() / g1.norm())}


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


def step_timing_parser(doc: str, steps: int, rounds: int, warmup: int) -> argparse.ArgumentParser:
    """The arguments every training-step benchmark shares: shape and timing."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--small", action="store_true", help="tiny model and shapes (CPU smoke test)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq", type=int, default=1024)
    p.add_argument("--vocab", type=int, default=50257)
    p.add_argument("--steps", type=int, default=steps, help="timed steps per round")
    p.add_argument("--rounds", type=int, default=rounds)
    p.add_argument("--warmup", type=int, default=warmup)
    return p


def main(argv=None) -> dict:
    p = step_timing_parser(__doc__, steps=10, rounds=5, warmup=3)
    p.add_argument("--variants", default=DEFAULT_VARIANTS, help="comma-separated contenders (see the docstring)")
    p.add_argument("--no-compile", dest="compile", action="store_false", help="drop the *_compiled variants")
    p.add_argument("--profile", default="", help="comma-separated variants to profile per kernel (CUDA)")
    p.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak for MFU (default: by GPU name)")
    p.add_argument("--deadline-s", type=float, default=None, help="skip variants not warmed up by then")
    p.add_argument("--long-seqs", type=int, nargs="*", default=[4096, 16384])
    p.add_argument("--skip-memory", action="store_true")
    p.add_argument("--inductor", action="append", default=[], metavar="KEY=VALUE",
                   help="set torch._inductor.config KEY (Python literal) for every compiled variant")
    p.add_argument("--loss-kernel", action="store_true", help="also time the loss kernel alone (see the docstring)")
    p.add_argument("--loss-kernel-sweep", action="store_true", help="with --loss-kernel: try launch shapes (CUDA)")
    p.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = p.parse_args(argv)
    args.t0 = time.perf_counter()
    if not args.compile:
        args.variants = ",".join(v for v in args.variants.split(",") if not v.endswith("_compiled"))
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
        "command": "python benchmarks/bench_model.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "shape": {"batch": args.batch, "seq": args.seq, "vocab": args.vocab,
                  "preset": "vanilla-" + ("tiny" if args.small else "large")},
    }
    if args.inductor:
        import ast

        import torch._inductor.config as inductor_config

        for item in args.inductor:
            key, _, value = item.partition("=")
            setattr(inductor_config, key, ast.literal_eval(value))
    result["inductor"] = args.inductor
    if args.loss_kernel:
        result["loss_kernel"] = loss_kernel(args, device, dtype)
    throughput(args, device, dtype, result)
    if args.out:  # keep the throughput if the memory section dies
        args.out.write_text(json.dumps(result, indent=2))
    if not args.skip_memory:
        result["memory"] = peak_memory(args, device, dtype)
    return emit(result, args.out)


def emit(result: dict, out: Path | None) -> dict:
    """Print the result as JSON and also write it to `out` when given."""
    text = json.dumps(result, indent=2)
    print(text)
    if out:
        out.write_text(text)
    return result


if __name__ == "__main__":
    main()
