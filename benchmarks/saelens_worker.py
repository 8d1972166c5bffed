"""The SAELens side of benchmarks/bench_features.py, run in SAELens's own environment (a
subprocess whose PYTHONPATH holds sae_lens 6.x + transformer_lens 3.x; nothing of this repo is
imported here: TransformerLens 3 and 4 cannot share a process).

```bash
PYTHONPATH=benchmarks/saelens_shims:ENV python benchmarks/saelens_worker.py JOB.json
```

JOB.json: {"hf_dir": our model exported as a transformers GPT-2 directory, "tokens": a
safetensors file with "train" and "heldout" (n, context) token ids, "hook", "d_sae", "k",
"batch_tokens", "training_tokens", "lr", "device", "variant": "defaults" | "speed", "out": dir}.

The model: the HF GPT-2 directory loaded with transformers and turned into a TransformerLens
`HookedTransformer` by TransformerLens's own GPT-2 weight conversion (`convert_gpt2_weights`)
and config. The run: `LanguageModelSAETrainingRunner` with `override_model` and
`override_dataset` (rows {"input_ids": ...}, as a pre-tokenised dataset); everything else at
SAELens's defaults except what the benchmark must set (the TopK shape, hook, context size,
batch, token count, device, learning rate, no W&B, no checkpoints) and, for "defaults",
`n_batches_in_buffer=32` (the smallest that runs at context 128: SAELens 6.54's default 20
stops with "Buffer size must be greater than or equal to batch size"). "speed" turns on
SAELens's own speed options: autocast, autocast_lm, compile_llm, compile_sae and
store_batch_size_prompts=512.

Writes OUT/result.json (timings, SAELens's own held-out FVE on the TL model's activations, the
TL-vs-exported activation check) and OUT/sae (save_inference_model, SAELens's layout), which
the benchmark loads with `interp.features.load` to score every contender the same way.
"""

from __future__ import annotations

import importlib.metadata
import json
import sys
import time
from pathlib import Path

import torch


def tl_model(hf_dir: str, device: str):
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens.pretrained.weight_conversions.gpt2 import convert_gpt2_weights
    from transformers import GPT2LMHeadModel

    hf = GPT2LMHeadModel.from_pretrained(hf_dir).eval()
    c = hf.config
    act = {"gelu": "gelu", "gelu_new": "gelu_new", "relu": "relu"}[c.activation_function]
    cfg = HookedTransformerConfig(
        n_layers=c.n_layer, d_model=c.n_embd, n_ctx=c.n_positions, d_head=c.n_embd // c.n_head, n_heads=c.n_head,
        d_mlp=c.n_inner or 4 * c.n_embd, d_vocab=c.vocab_size, act_fn=act, normalization_type="LN",
        eps=c.layer_norm_epsilon, positional_embedding_type="standard", original_architecture="GPT2LMHeadModel",
        default_prepend_bos=False, device=device)
    model = HookedTransformer(cfg)
    model.load_state_dict(convert_gpt2_weights(hf, cfg), strict=False)
    return model.to(device).eval()


class TokenRows:
    """A pre-tokenised dataset as SAELens iterates one: rows {"input_ids": (context,) ids}."""

    def __init__(self, tokens: torch.Tensor):
        self.tokens = tokens

    def __iter__(self):
        for row in self.tokens:
            yield {"input_ids": row}

    def __len__(self) -> int:
        return self.tokens.shape[0]


def main(job_file: str) -> None:
    from safetensors.torch import load_file

    import sae_lens
    from sae_lens import LanguageModelSAERunnerConfig, LanguageModelSAETrainingRunner, LoggingConfig, TopKTrainingSAEConfig

    job = json.loads(Path(job_file).read_text())
    out = Path(job["out"])
    out.mkdir(parents=True, exist_ok=True)
    device = job["device"]
    data = load_file(job["tokens"])
    t0 = time.perf_counter()
    model = tl_model(job["hf_dir"], device)
    context = data["train"].shape[1]
    speed = job["variant"] == "speed"
    extra = dict(autocast=True, autocast_lm=True, compile_llm=True, compile_sae=True,
                 store_batch_size_prompts=job.get("store_batch_size_prompts", 512)) if speed else {}
    cfg = LanguageModelSAERunnerConfig(
        sae=TopKTrainingSAEConfig(d_in=model.cfg.d_model, d_sae=job["d_sae"], k=job["k"], device=device),
        model_name="bench-gpt2-shaped", hook_name=job["hook"], dataset_path="", is_dataset_tokenized=True,
        streaming=False, context_size=context, training_tokens=job["training_tokens"],
        train_batch_size_tokens=job["batch_tokens"], n_batches_in_buffer=job.get("n_batches_in_buffer", 32),
        lr=job["lr"], device=device, seed=job.get("seed", 42), logger=LoggingConfig(log_to_wandb=False),
        checkpoint_path=str(out / "checkpoints"), n_checkpoints=0, output_path=str(out / "output"),
        save_final_checkpoint=False, verbose=False, **extra)

    # step timestamps (no extra sync: SAELens's own progress updates read values back anyway)
    from sae_lens.training.sae_trainer import SAETrainer

    stamps: list[float] = []
    original = SAETrainer._update_pbar

    def stamped(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        stamps.append(time.perf_counter())
        return result

    SAETrainer._update_pbar = stamped
    runner = LanguageModelSAETrainingRunner(cfg, override_model=model, override_dataset=TokenRows(data["train"]))
    t_setup = time.perf_counter()
    sae = runner.run()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t_end = time.perf_counter()
    stamps[-1] = t_end
    steps = len(stamps)
    warm = max(1, steps // 10)  # steady state: from 10% of the steps on (compile and first buffer fill behind)
    steady = (steps - warm) * job["batch_tokens"] / (stamps[-1] - stamps[warm - 1])

    # SAELens's own view of the result: FVE of its SAE on the TL model's held-out activations
    sae.save_inference_model(out / "sae")
    held = data["heldout"].to(device)
    xs = []
    with torch.no_grad():
        for i in range(0, held.shape[0], 32):
            _, cache = model.run_with_cache(held[i: i + 32], names_filter=[job["hook"]])
            xs.append(cache[job["hook"]].reshape(-1, model.cfg.d_model).float())
        x = torch.cat(xs)
        x_hat = torch.cat([sae(x[i: i + 4096].to(sae.dtype)).float() for i in range(0, x.shape[0], 4096)])
        fve = float(1 - (x - x_hat).pow(2).sum() / (x - x.mean(0)).pow(2).sum())
    from safetensors.torch import save_file

    save_file({"x": x[:256].cpu().contiguous()}, str(out / "tl_acts_head.safetensors"))  # checked against ours
    result = {"variant": job["variant"], "sae_lens": sae_lens.__version__,
              "transformer_lens": importlib.metadata.version("transformer-lens"), "torch": torch.__version__,
              "steps": steps, "tokens": steps * job["batch_tokens"], "setup_s": t_setup - t0,
              "wall_s": t_end - t_setup, "tokens_per_s_end_to_end": steps * job["batch_tokens"] / (t_end - t_setup),
              "tokens_per_s_steady": steady, "fve_heldout_saelens_forward": fve,
              "config": {k: v for k, v in cfg.to_dict().items() if isinstance(v, (int, float, str, bool, type(None)))}}
    (out / "result.json").write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k != "config"}))


if __name__ == "__main__":
    main(sys.argv[1])
