#!/usr/bin/env bash
# Wheels SAELens needs on the GPU box (Python 3.12, manylinux x86_64, no internet) beyond what it
# has (torch 2.11, transformers 5.17, numpy, safetensors, einops, jaxtyping, tokenizers,
# huggingface_hub, accelerate, sentencepiece, pyyaml, typer), for benchmarks/bench_features.py:
#
#   bash benchmarks/saelens_wheels.sh [DIR]          # default DIR: benchmarks/saelens_wheels (~2 MB)
#   python benchmarks/bench_features.py --saelens-wheels DIR --out $OUT/bench_features.json
#
# Measured (a process that sees only the box's packages, python -S): `import sae_lens` and a
# TopK training run (defaults and speed options) need exactly these five beyond the box, once
# benchmarks/saelens_shims stands in for `datasets`, `wandb` and `pandas`. Those three ARE
# imported at module level (sae_lens.config: `import wandb`, `from datasets import ...`;
# sae_lens.training.activations_store: `import datasets`; transformer_lens.utilities:
# `from datasets.arrow_dataset import Dataset`; transformer_lens.patching: `import pandas`), and
# the real `datasets` imports pyarrow (~40 MB) and pandas (~12 MB), and wandb is ~20 MB: with the
# 48 MB tree that does not fit the 64 MiB a GPU call carries. The benchmark uses none of them
# (tokens passed as override_dataset, log_to_wandb=False, no patching); the shims raise if used.
# `--full` also downloads them (and their own dependencies) for a machine where size is no
# object; then run the benchmark with --saelens-no-shims.
set -euo pipefail
full=0
if [[ "${1:-}" == "--full" ]]; then full=1; shift; fi
dir="${1:-benchmarks/saelens_wheels}"
mkdir -p "$dir"
get() { python -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
          --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 --platform any -d "$dir" "$@"; }
get "sae-lens==6.54.12" "transformer-lens==3.9.0" "better-abc==0.0.3" "simple-parsing==0.1.9" \
    "docstring-parser==0.18.0"
if [[ $full == 1 ]]; then
  get datasets pyarrow pandas python-dateutil six tzdata dill multiprocess xxhash wandb pydantic pydantic-core \
      annotated-types typing-inspection protobuf platformdirs sentry-sdk gitpython gitdb smmap click \
      typeguard beartype fancy-einsum transformers-stream-generator
fi
du -sh "$dir"
ls "$dir"
