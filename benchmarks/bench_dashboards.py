"""Feature-dashboard speed: `features.dashboard` for a 4,096-latent dictionary over 1M tokens
(issue 26 target: <= 60 s on the GPU), against the model forward it needs and a naive
whole-set computation where that fits in memory. Prints JSON (and writes it to --out).

```bash
python benchmarks/bench_dashboards.py --out $OUT/bench_dashboards.json          # GPU: 4096 latents, 1M tokens
python benchmarks/bench_dashboards.py --small                                   # CPU: 1024 latents, 20k tokens
```

Setup: the shipped `data/checkpoints/shakespeare_vanilla` (4 layers, d_model 192, char-level,
windows of 256), a TopK dictionary (k = 32, random weights from its own init, seed 0: only the
shape matters for speed) on `blocks.1.hook_resid_post`, tokens from the task's train split
(the test split holds ~0.4M tokens).

Phases (each a JSON entry; a rerun with the same --out skips the ones already there):

* `forward_s`: the model forward alone over the same batches, stopped after block 1 (the
  dashboard runs it once and keeps the dictionary inputs for its second pass): the floor.
* `dashboard_s`: `features.dashboard(...)` end to end on the prepared token batches (two passes with
  the running top-k, histogram and interval sampling, logit effects, neighbours, store
  written); `dashboard_warm_s` a second run (caches warm, CUDA initialised). `tokens_per_s`
  from the warm run; `overhead_vs_forward` = dashboard_warm_s / forward_s.
* `naive_s`: (only where the (tokens, d_sae) latents fit: --naive-max-gb) every token's
  latents in one matrix, then per-latent sort / histogram: the straightforward way, checked
  against the store (`naive_top_values_match`).
* `read_latent_ms`: opening one latent's dashboard from disk (median of 50 random latents,
  fresh `open_dashboards` each time, what a page click costs), `read_table_ms`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CKPT = REPO / "data" / "checkpoints" / "shakespeare_vanilla"
HOOK = "blocks.1.hook_resid_post"


def load_avg() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--small", action="store_true", help="CPU-sized: 1024 latents, 20k tokens")
    p.add_argument("--tokens", type=int, default=None)
    p.add_argument("--d-sae", type=int, default=None)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=None, help="rows of 256 tokens per batch")
    p.add_argument("--device", default="auto")
    p.add_argument("--naive-max-gb", type=float, default=None, help="run the naive reference if its latents fit")
    p.add_argument("--out", type=Path, default=None, help="JSON results (rerun: finished phases are kept)")
    p.add_argument("--store", type=Path, default=None, help="where the store goes (default: a temp dir)")
    a = p.parse_args()

    import interp
    from interp import features
    from interp.training.config import resolve_device

    device = str(resolve_device(a.device))
    tokens = a.tokens or (20_000 if a.small else 1_000_000)
    d_sae = a.d_sae or (1024 if a.small else 4096)
    batch = a.batch_size or (8 if a.small else 64)
    naive_gb = a.naive_max_gb if a.naive_max_gb is not None else (2.0 if not device.startswith("cuda") else 24.0)
    out = json.loads(a.out.read_text()) if a.out is not None and a.out.is_file() else {}
    out.update(device=device, gpu=torch.cuda.get_device_name() if device.startswith("cuda") else None,
               torch=torch.__version__, threads=torch.get_num_threads(), checkpoint=str(CKPT.relative_to(REPO)),
               hook=HOOK, d_sae=d_sae, k=a.k, tokens_requested=tokens, batch_rows=batch, load_avg_start=load_avg())

    def save() -> None:
        text = json.dumps(out, indent=2)
        if a.out is not None:
            a.out.parent.mkdir(parents=True, exist_ok=True)
            a.out.write_text(text + "\n")

    model, _ = interp.load(CKPT, device=device)
    torch.manual_seed(0)
    sae = features.make(dict(arch="topk", d_in=model.cfg.d_model, d_sae=d_sae, k=a.k, hook_name=HOOK,
                             model=features.model_identity(model, str(CKPT))), device=device).eval()
    store_dir = a.store or Path(tempfile.mkdtemp(prefix="bench_dash_")) / "store"
    t0 = time.perf_counter()
    batches = list(features.token_batches(CKPT, "train", tokens, batch, device=device))
    out["tokens_s"] = round(time.perf_counter() - t0, 3)
    n_tok = sum(b.n_tokens() for b in batches)
    out["tokens"] = n_tok

    if "forward_s" not in out:  # the floor: the forward the two passes need
        with torch.no_grad():
            for b in batches[:2]:
                model(b.tokens, stop_at_layer=2)
            sync(device)
            t0 = time.perf_counter()
            for b in batches:
                model(b.tokens, stop_at_layer=2)
            sync(device)
        out["forward_s"] = round(time.perf_counter() - t0, 3)
        save()

    def run() -> float:
        sync(device)
        t = time.perf_counter()
        features.dashboard(sae, model, out=store_dir, data=batches, progress=False)
        sync(device)
        return time.perf_counter() - t

    if "dashboard_warm_s" not in out:
        out["dashboard_s"] = round(run(), 3)
        save()
        out["dashboard_warm_s"] = round(run(), 3)
        out["tokens_per_s"] = round(n_tok / out["dashboard_warm_s"])
        out["overhead_vs_forward"] = round(out["dashboard_warm_s"] / max(out["forward_s"], 1e-9), 2)
        out["target_gpu_s"] = 60.0 * n_tok / 1_000_000  # 60 s per 1M tokens
        save()

    store = features.open_dashboards(store_dir)
    g = torch.Generator().manual_seed(1)
    picks = torch.randint(0, d_sae, (50,), generator=g).tolist()
    times = []
    for i in picks:
        t = time.perf_counter()
        features.open_dashboards(store_dir).latent(i)
        times.append((time.perf_counter() - t) * 1000)
    out["read_latent_ms"] = {"median": round(statistics.median(times), 2), "max": round(max(times), 2)}
    t = time.perf_counter()
    features.open_dashboards(store_dir).table()
    out["read_table_ms"] = round((time.perf_counter() - t) * 1000, 2)
    out["store_mb"] = round(sum(f.stat().st_size for f in store_dir.iterdir()) / 2**20, 2)

    need_gb = n_tok * d_sae * 4 / 2**30
    if "naive_s" not in out and need_gb <= naive_gb:
        sync(device)
        t = time.perf_counter()
        with torch.no_grad():
            zs = []
            for b in batches:
                _, cache = model.run_with_cache(b.tokens, names_filter=lambda n: n == HOOK, stop_at_layer=2)
                z = sae.encode(cache[HOOK])
                z[:, 0] = 0  # the leading BOS is not scored
                zs.append(z.reshape(-1, d_sae))
            Z = torch.cat(zs)
            top = Z.topk(20, dim=0).values  # (20, d_sae)
            peak = top[0].clamp_min(1e-30)
            share = Z / peak
            fired = share > 0
            lat = torch.arange(d_sae, device=Z.device).expand_as(Z)[fired]
            bins = ((share[fired] * 50).ceil().long() - 1).clamp(0, 49)
            hist = torch.bincount(lat * 50 + bins, minlength=d_sae * 50).reshape(d_sae, 50).T
        sync(device)
        out["naive_s"] = round(time.perf_counter() - t, 3)
        out["naive_gb"] = round(need_gb, 2)
        ours = store._tensor("top_value").to(top.device)
        out["naive_top_values_match"] = bool(torch.allclose(ours.T, top, rtol=1e-4, atol=1e-5))
        out["naive_hist_match"] = bool((store._tensor("hist").to(hist.device).T == hist).all())
        del Z, zs, share
    elif "naive_s" not in out:
        out["naive_skipped"] = f"latents of every token would take {need_gb:.1f} GB (> --naive-max-gb {naive_gb:g})"
    out["load_avg_end"] = load_avg()
    save()
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
