"""SAELens (its own runner, transformer-lens 3.x) trains a small SAE on a shipped checkpoint of
ours, passed in as the model; the toolkit loads the saved SAE back (interp.features.load) and
encodes the same activations SAELens does. Runs in .venv-clients/saelens, where
`pip install interp-toolkit sae-lens` resolved (scripts/make_client_venvs.sh)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

sae_lens = pytest.importorskip("sae_lens")
datasets = pytest.importorskip("datasets")
pytestmark = pytest.mark.clients

from common import load  # noqa: E402

HOOK = "blocks.1.hook_resid_pre"
CONTEXT = 32


def _token_dataset(model, n_rows: int = 2048):
    """Tinyshakespeare windows tokenized with the checkpoint's own tokenizer."""
    from interp.paths import shipped

    text = Path(shipped("data/tinyshakespeare.txt")).read_text()[:200_000]
    ids = model.to_tokens(text, prepend_bos=False)[0]
    rows = ids[: n_rows * CONTEXT].view(n_rows, CONTEXT)
    return datasets.Dataset.from_dict({"tokens": rows.tolist()})


def test_saelens_runner_trains_on_our_model_and_we_load_it(tmp_path):
    from sae_lens import LanguageModelSAERunnerConfig, LanguageModelSAETrainingRunner, StandardTrainingSAEConfig
    from sae_lens import SAE, LoggingConfig

    model = load("shakespeare_vanilla")
    d = model.cfg.d_model
    cfg = LanguageModelSAERunnerConfig(
        sae=StandardTrainingSAEConfig(d_in=d, d_sae=4 * d, l1_coefficient=1.0),
        model_name="shakespeare_vanilla", hook_name=HOOK, dataset_path="local", is_dataset_tokenized=True,
        streaming=False, context_size=CONTEXT, prepend_bos=False, training_tokens=40_000,
        train_batch_size_tokens=512, store_batch_size_prompts=32, n_batches_in_buffer=32, lr=3e-3,
        n_batches_for_norm_estimate=5, device="cpu", seed=0, logger=LoggingConfig(log_to_wandb=False),
        checkpoint_path=str(tmp_path / "checkpoints"), output_path=str(tmp_path / "out"), save_final_checkpoint=False,
    )
    runner = LanguageModelSAETrainingRunner(cfg, override_dataset=_token_dataset(model), override_model=model)
    sae = runner.run()  # SAELens calls model.run_with_cache(..., stop_at_layer=2, names_filter=[HOOK])
    out = tmp_path / "out"
    saved = out if (out / "cfg.json").exists() else next(p.parent for p in out.rglob("cfg.json"))

    # the SAE learned something: reconstruction explains most of the variance of real activations
    tokens = model.to_tokens("ROMEO: But soft, what light through yonder window breaks?", prepend_bos=False)
    _, cache = model.run_with_cache(tokens, names_filter=[HOOK])
    x = cache[HOOK][0]
    with torch.no_grad():
        recon = sae(x)
    fve = 1 - ((recon - x) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()
    assert fve > 0.5, f"fraction of variance explained {fve:.3f}"

    # SAELens loads what it saved; the toolkit loads it too and computes the same features
    theirs = SAE.load_from_disk(str(saved))
    features = pytest.importorskip("interp.features", reason="interp.features (SAELens loading) not in this checkout")
    ours = features.load(saved)
    with torch.no_grad():
        torch.testing.assert_close(ours.encode(x), theirs.encode(x), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ours.decode(ours.encode(x)), theirs.decode(theirs.encode(x)), atol=1e-5, rtol=1e-5)
