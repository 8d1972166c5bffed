"""Dictionary-training throughput: our trainer vs a minimal GPU-resident loop vs SAELens, on the
same GPT-2-small-shaped model and the same tokens; held-out FVE after the same number of tokens.

```bash
python benchmarks/bench_features.py --out $OUT/bench_features.json \
    --saelens-wheels benchmarks/saelens_wheels        # GPU, one command (< 9 minutes on an H100)
python benchmarks/bench_features.py --small            # CPU, seconds: the same code on a tiny model
```

The task (issue 23, item 6): a TopK SAE with d_sae = 16 x 768 = 12,288, k = 32, batches of
4,096 tokens of context 128 on `blocks.6.hook_resid_pre`.

* **Model.** Our `vanilla` preset at GPT-2 small's shape (12 layers, d_model 768, 12 heads,
  d_mlp 3072, vocabulary 50,257, learned positions, LayerNorm, GELU, tied embeddings), random
  weights from its own init (seed 0): only the shape matters for speed, and every contender
  sees the same function. SAELens gets it as a TransformerLens `HookedTransformer` built by
  TransformerLens's own GPT-2 conversion from our HF GPT-2 export (`models.hf.export_hf`);
  the worker's activations at the hook are compared with ours (`tl_vs_ours_max_abs_diff`).
* **Data.** Random token ids (seed 0), sequences of 128, saved once as a safetensors file both
  sides read; a disjoint held-out set of 64 sequences scores every contender the same way:
  FVE = 1 - sum |x - x_hat|^2 / sum |x - mean x|^2 over its activations in fp32, with each
  dictionary loaded through `interp.features` (SAELens's through `features.load` of the
  directory SAELens saved; its own forward's FVE is reported beside it).
* **Contenders** (each trains `--tokens` tokens; all at lr 3e-4, SAELens's default):
  `ours` (`interp.features.training`: bf16 buffer and autocast, compiled step captured as a
  CUDA graph), `ours_fp32` (fp32 buffer, TF32 matmuls: is bf16 free? run last), `minimal` (written
  here: compiled forward to layer 6 + compiled TopK step + fused Adam, no buffer),
  `saelens_defaults` (n_batches_in_buffer=32, the smallest that runs), `saelens_speed`
  (autocast, autocast_lm, compile_llm, compile_sae, store_batch_size_prompts=512),
  `ours_multi4` (k = 16, 32, 64, 128 from one forward) vs `ours_separate4` (the same four as
  four runs; `ours` is the k = 32 one).
* **Budget.** Contenders run in the order ours, minimal, saelens_defaults, saelens_speed,
  ours_multi4, ours_separate4, ours_fp32; one that would start after `--budget-s` is skipped
  (and says so); `--only a,b` runs a subset (e.g. the rest, in a second call). The JSON is
  rewritten after every contender.
* **Throughput.** `tokens_per_s_steady`: after the first 10 % of steps (compilation, capture,
  the first buffer fill behind); `tokens_per_s_end_to_end`: the whole run including them.

SAELens needs transformer-lens < 4, so it runs in a subprocess (`benchmarks/saelens_worker.py`)
with its own PYTHONPATH: `--saelens-env DIR` (sae_lens + transformer_lens installed there) or
`--saelens-wheels DIR` (wheels from `benchmarks/saelens_wheels.sh`, installed into a temp dir
first), plus `benchmarks/saelens_shims` (see its README: import-time stand-ins for datasets /
wandb / pandas, which do not fit the 64 MiB the GPU box receives).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

BIG = dict(n_layers=12, d_model=768, n_heads=12, d_mlp=3072, d_vocab=50257, n_ctx=1024, hook_layer=6, d_sae=12288,
           k=32, context=128, batch_tokens=4096, tokens=2**21, buffer_tokens=2**18, heldout=64)
SMALL = dict(n_layers=2, d_model=64, n_heads=4, d_mlp=256, d_vocab=512, n_ctx=64, hook_layer=1, d_sae=256,
             k=8, context=32, batch_tokens=256, tokens=2**14, buffer_tokens=2**12, heldout=16)
MULTI_K = (16, 32, 64, 128)
SMALL_MULTI_K = (4, 8, 16, 32)
LR = 3e-4


# ============================================================================ model and data
def build_model(s: dict, device: torch.device):
    from models import presets

    torch.manual_seed(0)
    model = presets.make("vanilla", "small", n_layers=s["n_layers"], d_model=s["d_model"], n_heads=s["n_heads"],
                         d_head=s["d_model"] // s["n_heads"], d_mlp=s["d_mlp"], d_vocab=s["d_vocab"], n_ctx=s["n_ctx"])
    return model.to(device).eval()


def make_tokens(s: dict, path: Path) -> dict:
    """Random ids: enough training sequences for every contender (SAELens's buffer reads ahead)
    plus a disjoint held-out set."""
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(0)
    n_train = (s["tokens"] + 2 * s["buffer_tokens"] + 64 * s["batch_tokens"]) // s["context"] + 1
    train = torch.randint(0, s["d_vocab"], (n_train, s["context"]), generator=g, dtype=torch.int64)
    held = torch.randint(0, s["d_vocab"], (s["heldout"], s["context"]), generator=g, dtype=torch.int64)
    save_file({"train": train, "heldout": held}, str(path))
    return {"train": train, "heldout": held}


class _NoTokenizer:
    pad_token_id = None
    vocab_size = 0


class BenchTokens:
    """A task serving the saved token file (registered as "bench_tokens"): our trainer reads the
    same tokens SAELens does, through its ordinary task path."""

    name = "bench_tokens"

    def __init__(self, path: str):
        from safetensors.torch import load_file

        self.path = path
        self.train = load_file(path)["train"]
        self.tokenizer = _NoTokenizer()

    def config(self) -> dict:
        return {"path": self.path}

    def split(self, name: str):
        return range(self.train.shape[0] if name == "train" else 0)

    def token_windows(self, split: str):
        from interp.training.data import WindowTensors

        n, t = self.train.shape
        return WindowTensors(self.train.reshape(-1), torch.arange(n) * t, t, None)


def hook_name(s: dict) -> str:
    return f"blocks.{s['hook_layer']}.hook_resid_pre"


@torch.no_grad()
def heldout_acts(model, s: dict, held: torch.Tensor, device) -> torch.Tensor:
    """fp32 activations at the hook for the held-out tokens (our model; no autocast)."""
    out = []
    for i in range(0, held.shape[0], 16):
        out.append(model(held[i: i + 16].to(device), stop_at_layer=s["hook_layer"]).reshape(-1, s["d_model"]).float())
    return torch.cat(out)


@torch.no_grad()
def fve(recon, x: torch.Tensor) -> float:
    x_hat = torch.cat([recon(x[i: i + 4096]).float() for i in range(0, x.shape[0], 4096)])
    return float(1 - (x - x_hat).pow(2).sum() / (x - x.mean(0)).pow(2).sum())


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ============================================================================ ours
def run_ours(ckpt: Path, s: dict, ks, device, out_dir: Path, precision: str = "auto") -> dict:
    from interp.features.training import run

    steps = s["tokens"] // s["batch_tokens"]
    cfg = {"name": "bench", "checkpoint": str(ckpt),
           # forwards of up to 8 batches' tokens (fewer when the buffer is smaller); every position, like SAELens
           "data": {"batch_size": max(1, min(s["buffer_tokens"], 8 * s["batch_tokens"]) // s["context"]),
                    "exclude_bos": False},
           "train": {"tokens": s["tokens"], "batch_tokens": s["batch_tokens"], "buffer_tokens": s["buffer_tokens"],
                     "lr": LR, "log_every": max(1, steps // 10), "device": str(device), "progress": False,
                     "dtype": precision, "buffer_dtype": precision, "out_dir": str(out_dir), "overwrite": True},
           "defaults": {"arch": "topk", "d_sae": s["d_sae"], "hook_name": hook_name(s)},
           "dictionaries": {f"k{k}": {"k": k} for k in ks}}
    sync(device)
    t0 = time.perf_counter()
    dictionaries, run_dir = run(cfg)
    sync(device)
    wall = time.perf_counter() - t0
    from interp.checkpoint import read_metrics

    rows = [r for r in read_metrics(run_dir) if r["event"] == "train" and r["dictionary"] == f"k{ks[0]}"]
    later = rows[1:] or rows  # windows after the first (compile, capture, first fill)
    window_tokens = [r["tokens_seen"] - p["tokens_seen"] for p, r in zip(rows, rows[1:])] or [rows[0]["tokens_seen"]]
    seconds = sum(t / r["tokens_per_s"] for t, r in zip(window_tokens, later))
    return {"dictionaries": dictionaries, "wall_s": wall, "tokens": steps * s["batch_tokens"],
            "tokens_per_s_end_to_end": steps * s["batch_tokens"] / wall,
            "tokens_per_s_steady": sum(window_tokens) / seconds,
            "train_fve_last_window": {r["dictionary"]: r["fve"] for r in read_metrics(run_dir)
                                      if r["event"] == "train" and r["step"] == rows[-1]["step"]}}


# ============================================================================ the minimal loop
def run_minimal(model, s: dict, train_tokens: torch.Tensor, device, compile_: bool) -> dict:
    """LM forward to the hook layer + TopK SAE step, nothing else: batches straight from the
    forward (no shuffle buffer), compiled, fused Adam, bf16 autocast on CUDA."""
    torch.manual_seed(0)
    d, n, k = s["d_model"], s["d_sae"], s["k"]
    W_dec = torch.randn(n, d, device=device)
    W_dec /= W_dec.norm(dim=-1, keepdim=True)
    params = {"W_enc": W_dec.T.clone(), "b_enc": torch.zeros(n, device=device), "W_dec": W_dec,
              "b_dec": torch.zeros(d, device=device)}
    for p in params.values():
        p.requires_grad_(True)
    cuda = device.type == "cuda"
    opt = torch.optim.Adam(params.values(), lr=LR, **({"fused": True} if cuda else {}))
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else torch.autocast("cpu", enabled=False)
    rows = s["batch_tokens"] // s["context"]
    L = s["hook_layer"]

    def forward(ids):
        with torch.no_grad(), amp:
            return model(ids, stop_at_layer=L).reshape(-1, d)

    def sae_loss(x, W_enc, b_enc, W_dec, b_dec):
        with amp:
            pre = (x - b_dec) @ W_enc + b_enc
            vals, idx = pre.topk(k, dim=-1)
            z = torch.zeros_like(pre).scatter(-1, idx, vals.relu())
            x_hat = z @ W_dec + b_dec
        return (x_hat.float() - x.float()).pow(2).sum(-1).mean()

    fwd = torch.compile(forward) if compile_ else forward
    loss_fn = torch.compile(sae_loss) if compile_ else sae_loss
    steps = s["tokens"] // s["batch_tokens"]
    tokens = train_tokens.to(device)
    warm = max(1, steps // 10)
    sync(device)
    t0 = time.perf_counter()
    for step in range(steps):
        if step == warm:
            sync(device)
            t_warm = time.perf_counter()
        x = fwd(tokens[step * rows: (step + 1) * rows]).float()
        loss = loss_fn(x, *params.values())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            params["W_dec"].div_(params["W_dec"].norm(dim=-1, keepdim=True))
    sync(device)
    t1 = time.perf_counter()
    p = {k_: v.detach() for k_, v in params.items()}

    def recon(x):
        pre = (x - p["b_dec"]) @ p["W_enc"] + p["b_enc"]
        vals, idx = pre.topk(k, dim=-1)
        return torch.zeros_like(pre).scatter(-1, idx, vals.relu()) @ p["W_dec"] + p["b_dec"]

    return {"recon": recon, "wall_s": t1 - t0, "tokens": steps * s["batch_tokens"],
            "tokens_per_s_end_to_end": steps * s["batch_tokens"] / (t1 - t0),
            "tokens_per_s_steady": (steps - warm) * s["batch_tokens"] / (t1 - t_warm)}


# ============================================================================ SAELens
def saelens_env(args, work: Path) -> tuple[str | None, str]:
    """PYTHONPATH for the worker, or (None, why not)."""
    if args.saelens_env:
        env = str(Path(args.saelens_env).resolve())
    elif args.saelens_wheels:
        env = str(work / "saelens_env")
        wheels = sorted(Path(args.saelens_wheels).glob("*.whl"))
        if not wheels:
            return None, f"no wheels in {args.saelens_wheels} (run benchmarks/saelens_wheels.sh)"
        import zipfile

        for wheel in wheels:  # all pure-Python (py3-none-any): installing one is unpacking it
            with zipfile.ZipFile(wheel) as z:
                z.extractall(env)
    else:
        return None, "no --saelens-env / --saelens-wheels given"
    parts = [env] if args.saelens_no_shims else [str(REPO / "benchmarks" / "saelens_shims"), env]
    return os.pathsep.join(parts), ""


def run_saelens(variant: str, s: dict, hf_dir: Path, tokens_file: Path, device, work: Path, pythonpath: str,
                timeout: float) -> dict:
    out = work / f"saelens_{variant}"
    job = {"hf_dir": str(hf_dir), "tokens": str(tokens_file), "hook": hook_name(s), "d_sae": s["d_sae"], "k": s["k"],
           "batch_tokens": s["batch_tokens"], "training_tokens": s["tokens"], "lr": LR, "device": str(device),
           "variant": variant, "out": str(out),
           **({"store_batch_size_prompts": 64} if s is SMALL else {})}
    job_file = work / f"saelens_{variant}.json"
    job_file.write_text(json.dumps(job))
    env = {**os.environ, "PYTHONPATH": pythonpath, "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "saelens_worker.py"), str(job_file)], env=env,
                          capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"SAELens worker failed (rc {done.returncode}): {done.stderr[-3000:]}")
    return json.loads((out / "result.json").read_text()) | {"sae_dir": str(out / "sae"), "work": str(out)}


# ============================================================================ main
def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--small", action="store_true", help="tiny model on CPU, seconds (tests)")
    p.add_argument("--device", default=None)
    p.add_argument("--tokens", type=int, default=None, help="training tokens per contender")
    p.add_argument("--buffer-tokens", type=int, default=None, help="rows in our buffer (default 2^18)")
    p.add_argument("--only", default=None, help="comma-separated contenders (default: all)")
    p.add_argument("--saelens-env", default=None, help="a directory holding sae_lens + transformer_lens 3.x")
    p.add_argument("--saelens-wheels", default=None, help="wheels to install into a temp SAELens environment")
    p.add_argument("--saelens-no-shims", action="store_true", help="the SAELens env has datasets/wandb/pandas")
    p.add_argument("--budget-s", type=float, default=510.0, help="skip contenders that would start after this")
    p.add_argument("--out", type=Path, default=None, help="write the result JSON here too")
    args = p.parse_args(argv)

    started = time.perf_counter()
    s = dict(SMALL if args.small else BIG)
    if args.tokens:
        s["tokens"] = args.tokens
    if args.buffer_tokens:
        s["buffer_tokens"] = args.buffer_tokens
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() and not args.small else "cpu"))
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")
    compile_ = device.type == "cuda"
    wanted = set(args.only.split(",")) if args.only else None
    multi_k = SMALL_MULTI_K if args.small else MULTI_K
    result: dict = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                    "torch": torch.__version__, "shape": s, "lr": LR, "contenders": {}, "skipped": {}}

    import interp
    from interp import features
    from interp.training.config import register_task

    register_task("bench_tokens", BenchTokens)
    work = Path(tempfile.mkdtemp(prefix="bench_features_"))
    model = build_model(s, device)
    ckpt = work / "model"
    tokens_file = work / "tokens.safetensors"
    data = make_tokens(s, tokens_file)
    interp.save(model, ckpt, task={"name": "bench_tokens", "path": str(tokens_file)})
    x_held = heldout_acts(model, s, data["heldout"], device)

    def contender(name, fn):
        if wanted is not None and name not in wanted:
            return None
        if time.perf_counter() - started > args.budget_s:
            result["skipped"][name] = f"time budget ({args.budget_s:.0f} s) spent"
            return None
        try:
            sync(device)
            out = fn()
            result["contenders"][name] = out
            if args.out:  # what is done so far survives a run cut off later
                args.out.parent.mkdir(parents=True, exist_ok=True)
                args.out.write_text(json.dumps(result, indent=2, default=str))
            print(f"[bench_features] {name}: " + json.dumps({k: v for k, v in out.items() if not isinstance(v, dict)}),
                  file=sys.stderr, flush=True)
            return out
        except Exception as e:  # a failed contender is reported, the others still run
            result["skipped"][name] = f"{type(e).__name__}: {e}"[:4000]
            traceback.print_exc()
            return None

    def ours(ks, precision="auto", tag="ours"):
        r = run_ours(ckpt, s, ks, device, work / tag, precision)
        dicts = r.pop("dictionaries")
        r["fve_heldout"] = {name: fve(lambda x, d=d: d(x)[0], x_held) for name, d in dicts.items()}
        return r

    contender("ours", lambda: ours([s["k"]]))

    def minimal():
        r = run_minimal(model, s, data["train"], device, compile_)
        r["fve_heldout"] = fve(r.pop("recon"), x_held)
        return r

    contender("minimal", minimal)

    pythonpath, why = saelens_env(args, work) if (wanted is None or wanted & {"saelens_defaults", "saelens_speed"}) \
        else (None, "not asked for")
    hf_dir = work / "hf"
    if pythonpath:
        from models.hf import export_hf

        export_hf(model.float().cpu(), hf_dir, arch="native")
        model.to(device)
    for variant in ("defaults", "speed"):
        name = f"saelens_{variant}"
        if not pythonpath:
            if wanted is None or name in wanted:
                result["skipped"][name] = why
            continue

        def saelens(variant=variant):
            left = max(60.0, args.budget_s + 60 - (time.perf_counter() - started))
            r = run_saelens(variant, s, hf_dir, tokens_file, device, work, pythonpath, timeout=left)
            sae = features.load(r.pop("sae_dir")).to(device)
            r["fve_heldout"] = fve(lambda x: sae(x)[0], x_held)
            from safetensors.torch import load_file

            tl = load_file(str(Path(r.pop("work")) / "tl_acts_head.safetensors"))["x"].to(device)
            r["tl_vs_ours_max_abs_diff"] = float((tl - x_held[: tl.shape[0]]).abs().max())
            return r

        contender(name, saelens)

    multi = contender("ours_multi4", lambda: ours(list(multi_k), tag="ours_multi4"))
    if wanted is None or "ours_separate4" in wanted:
        def separate():
            runs = {}
            for k in multi_k:
                if k == s["k"] and "ours" in result["contenders"]:
                    runs[f"k{k}"] = result["contenders"]["ours"]
                else:
                    runs[f"k{k}"] = ours([k], tag=f"ours_sep_k{k}")
            wall = sum(r["wall_s"] for r in runs.values())
            steady = 1 / sum(1 / r["tokens_per_s_steady"] for r in runs.values())
            return {"wall_s": wall, "tokens_per_s_steady_per_dictionary": steady,
                    "fve_heldout": {n: next(iter(r["fve_heldout"].values())) for n, r in runs.items()}}

        contender("ours_separate4", separate)
    contender("ours_fp32", lambda: ours([s["k"]], "fp32", "ours_fp32"))  # last: the least needed

    # ratios, measured side by side in this run
    c = result["contenders"]
    ratios = {}

    def ratio(name, a, b, key):
        if a in c and b in c:
            ratios[name] = c[a][key] / c[b][key]

    for key in ("tokens_per_s_steady", "tokens_per_s_end_to_end"):
        short = key.replace("tokens_per_s_", "")
        ratio(f"ours_vs_saelens_defaults_{short}", "ours", "saelens_defaults", key)
        ratio(f"ours_vs_saelens_speed_{short}", "ours", "saelens_speed", key)
        ratio(f"ours_vs_minimal_{short}", "ours", "minimal", key)
    if multi and "ours_separate4" in c:
        sep = c["ours_separate4"]
        ratios["multi4_vs_separate4_wall"] = sep["wall_s"] / multi["wall_s"]
        ratios["multi4_vs_separate4_steady"] = multi["tokens_per_s_steady"] / sep["tokens_per_s_steady_per_dictionary"]
    result["ratios"] = ratios
    result["fve_heldout"] = {n: (r["fve_heldout"] if not isinstance(r["fve_heldout"], dict) else
                                 r["fve_heldout"].get(f"k{s['k']}", next(iter(r["fve_heldout"].values()))))
                             for n, r in c.items() if "fve_heldout" in r}
    result["total_s"] = time.perf_counter() - started
    text = json.dumps(result, indent=2, default=str)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    return result


if __name__ == "__main__":
    main()
