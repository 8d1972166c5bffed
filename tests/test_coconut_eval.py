"""`interp eval` on Coconut-trainer checkpoints answers the way each was trained (continuous
thoughts, pause tokens, CoT, No-CoT), says which, and agrees with the shipped cards and the
per-example results stored beside them (data/checkpoints/coconut_comparison.json and, once the
symbolic ProsQA reproduction ships, coconut_prosqa_comparison.json)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from interp.cli import app
from interp.training import evaluate_checkpoint

ROOT = Path(__file__).resolve().parents[1] / "data" / "checkpoints"
TABLES = [ROOT / "coconut_comparison.json", ROOT / "coconut_prosqa_comparison.json"]  # the second once shipped
ROWS = {r["name"]: r for t in TABLES if t.exists() for r in json.loads(t.read_text())["rows"]
        if (ROOT / r["name"]).exists()}
WORDS = {"coconut": "continuous thought", "pause": "<latent> token", "cot": "writes its chain of thought",
         "no_cot": "right after the question"}
N = 16  # the first N of the stored per-example results: CPU seconds per checkpoint


def one_per_mode() -> list[str]:
    """A checkpoint of every mode, preferring tasks whose test split is drawn without the
    training split (interp.training.coconut.TEST_FIRST: seconds instead of a minute on CPU)."""
    from interp.training.coconut import TEST_FIRST

    def fast(name):
        return json.loads((ROOT / name / "config.json").read_text())["task"]["name"] in TEST_FIRST

    modes = sorted({r["mode"] for r in ROWS.values()})
    return [sorted(ROWS, key=lambda n: (ROWS[n]["mode"] != m, not fast(n), n))[0] for m in modes]


@pytest.mark.parametrize("name", one_per_mode())
def test_eval_uses_the_trained_mode_and_matches_the_stored_results(name):
    row = ROWS[name]
    got = evaluate_checkpoint(ROOT / name, "test", device="cpu", batch_size=N, max_batches=1, n_generate=N)
    assert got["mode"] == row["mode"]
    assert WORDS[row["mode"]] in got["evaluated_as"], got["evaluated_as"]
    stored = row["check"]["correct"][:N]
    assert got["n_generated"] == N and got["stage"] == row["stage"]
    # fp32 on this CPU vs fp32 on the GPU that wrote the table: a greedy tie may flip one example
    assert abs(got["accuracy"] * N - sum(stored)) <= 1, (got["accuracy"], sum(stored) / N)
    if row["mode"] == "coconut":  # the thoughts count as generated tokens (the paper's "# tokens")
        assert got["mean_generated_tokens"] > got["mean_language_tokens"]
    else:
        assert got["mean_generated_tokens"] == got["mean_language_tokens"]


def test_cli_says_how_it_evaluated_and_agrees_with_the_card():
    """The card's test accuracy is over the whole test split; `interp eval --generate <all>` gives it."""
    name = min((n for n in ROWS if ROWS[n]["mode"] == "coconut"), key=lambda n: ROWS[n]["params"])
    row = ROWS[name]
    result = CliRunner().invoke(app, ["eval", str(ROOT / name), "--split", "test", "--generate", str(row["n_test"]),
                                      "--batch-size", "256", "--batches", "1", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "evaluated as trained: Coconut:" in result.stderr
    metrics = json.loads(result.stdout)
    assert metrics["mode"] == "coconut" and metrics["n_generated"] == row["n_test"]
    card = (ROOT / name / "card.md").read_text()
    assert abs(metrics["accuracy"] - row["accuracy"]) <= 2 / row["n_test"]  # fp32 CPU vs GPU greedy ties
    assert f"| {row['accuracy']:.4f} | {row['mean_generated_tokens']:.2f} |" in card
