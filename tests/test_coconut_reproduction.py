"""scripts/coconut_reproduction.py: one run end to end on CPU (train, evaluate in its mode and
out of distribution, pack the checkpoint, card and table), a second call that finds it done,
and a stopped run packed with its training state and continued exactly from it by a later
call on a fresh work directory; the shipped reproduction's table against its checkpoints."""

from __future__ import annotations

import importlib.util
import json
import tarfile
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
ROOT = REPO / "data" / "checkpoints"
spec = importlib.util.spec_from_file_location("coconut_reproduction", REPO / "scripts" / "coconut_reproduction.py")
repro = importlib.util.module_from_spec(spec)
spec.loader.exec_module(repro)

TINY = ["--set", "train.steps=4", "--set", "task.n_train=64", "--set", "task.n_test=16", "--set", "task.n_val=8",
        "--set", "train.eval_every=4", "--set", "train.eval_generate=4", "--set", "train.save_every=2",
        "--set", "train.batch_size=16", "--set", "model.d_model=32", "--set", "model.n_heads=2"]


def unpack(out: Path, into: Path) -> dict:
    with tarfile.open(out / "coconut_prosqa.tar") as t:
        t.extractall(into, filter="data")
    return json.loads((into / "comparison.json").read_text())


def test_one_run_end_to_end_and_a_second_call_finds_it_done(tmp_path):
    table = repro.main(["--out", str(tmp_path / "out"), "--work", str(tmp_path / "w"), "--small", "--only",
                        "prosqa_no_cot", *TINY])
    (row,) = table["rows"]
    assert row["name"] == "coconut_prosqa_no_cot" and row["mode"] == "no_cot" and row["finished"] and row["steps"] == 4
    assert set(row["ood"]) == set(repro.SMALL_OOD) and len(row["check"]["correct"]) == 16
    packed = unpack(tmp_path / "out", tmp_path / "x")
    assert packed["rows"][0]["accuracy"] == row["accuracy"] and not packed["unfinished"]
    ship = tmp_path / "x" / "ship" / "coconut_prosqa_no_cot"
    card = (ship / "card.md").read_text()
    assert f"| {row['accuracy']:.4f} | {row['mean_generated_tokens']:.2f} |" in card and "mode **no_cot**" in card
    from interp import checkpoint as ckpt_lib

    model, _ = ckpt_lib.load(ship)
    assert all(torch.equal(p, p.half().float()) for p in model.parameters())  # fp16 weights shipped
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["coconut_prosqa.tar"]
    # a later call, on a fresh work directory, with the first call's files: nothing to train again
    again = repro.main(["--out", str(tmp_path / "out2"), "--work", str(tmp_path / "w2"), "--small", "--only",
                        "prosqa_no_cot", "--resume-from", str(tmp_path / "out"), *TINY])
    assert again["rows"] == table["rows"] and not (tmp_path / "w2" / "prosqa_no_cot.log").exists()


def test_a_stopped_run_is_packed_with_its_state_and_continued_exactly(tmp_path):
    """A run stopped at step 2 (train.stop_at, as SIGTERM at the deadline would) is packed as
    state_<run>.tar; a fresh call continues it from there to the same weights as one straight run."""
    first = repro.main(["--out", str(tmp_path / "out"), "--work", str(tmp_path / "w"), "--small", "--only",
                        "prosqa_coconut", *TINY, "--set", "train.stop_at=2"])
    assert first["unfinished"] == ["prosqa_coconut"] and not first["rows"]
    assert (tmp_path / "out" / "state_prosqa_coconut.tar").exists()
    second = repro.main(["--out", str(tmp_path / "out2"), "--work", str(tmp_path / "w2"), "--small", "--only",
                         "prosqa_coconut", "--resume-from", str(tmp_path / "out"), *TINY])
    assert [r["name"] for r in second["rows"]] == ["coconut_prosqa_coconut"] and second["rows"][0]["steps"] == 4
    straight = repro.main(["--out", str(tmp_path / "out3"), "--work", str(tmp_path / "w3"), "--small", "--only",
                           "prosqa_coconut", *TINY])
    a, b = unpack(tmp_path / "out2", tmp_path / "a"), unpack(tmp_path / "out3", tmp_path / "b")
    assert a["rows"][0]["check"] == b["rows"][0]["check"] == straight["rows"][0]["check"]
    from safetensors.torch import load_file

    wa = load_file(tmp_path / "a" / "ship" / "coconut_prosqa_coconut" / "model.safetensors")
    wb = load_file(tmp_path / "b" / "ship" / "coconut_prosqa_coconut" / "model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_ablations_are_rows_not_shipped_checkpoints(tmp_path):
    assert repro.ablation_runs(["train.coconut.thought=resid"]) == [
        ("prosqa_coconut_ablate_thought_resid", "prosqa_coconut", 0, ["train.coconut.thought=resid"])]
    with pytest.raises(SystemExit, match="KEY=VALUE"):
        repro.ablation_runs(["thought"])


# ------------------------------------------------------------------ the shipped reproduction
TABLE = ROOT / "coconut_prosqa_comparison.json"


@pytest.mark.skipif(not TABLE.exists(), reason="the symbolic ProsQA reproduction has not been trained and shipped yet "
                                                "(issue 25: scripts/coconut_reproduction.py on the GPU)")
def test_the_shipped_reproduction():
    table = json.loads(TABLE.read_text())
    rows = {r["name"]: r for r in table["rows"]}
    assert set(rows) >= {f"coconut_{n}" for n, _, _ in repro.RUNS} and not table["unfinished"]
    size = sum(p.stat().st_size for n in rows if (ROOT / n).exists() for p in (ROOT / n).iterdir())
    assert size < 12 * 2**20
    for name, row in rows.items():
        card = (ROOT / name / "card.md").read_text()
        assert f"| {row['accuracy']:.4f} | {row['mean_generated_tokens']:.2f} |" in card


def test_install_ships_the_set_and_retires_the_graph_set(tmp_path):
    root = tmp_path / "checkpoints"
    for name in repro.RETIRED + ["coconut_add3_cot"]:
        (root / name).mkdir(parents=True)
        (root / name / "model.safetensors").write_bytes(b"x" * 10)
    (root / "coconut_comparison.json").write_text(json.dumps({"rows": [{"name": n} for n in repro.RETIRED] +
                                                                      [{"name": "coconut_add3_cot"}]}))
    names = [f"coconut_{n}" for n, _, _ in repro.RUNS]

    def call(tar, runs, small=False):  # a call's coconut_prosqa.tar holding these finished runs
        staging = tmp_path / tar.stem
        for n in runs:
            (staging / "ship" / n).mkdir(parents=True, exist_ok=True)
            (staging / "ship" / n / "card.md").write_text(f"{n} from {tar.stem}")
        (staging / "comparison.json").write_text(json.dumps({"rows": [{"name": n, "call": tar.stem} for n in runs],
                                                             "small": small}))
        with tarfile.open(tar, "w") as t:
            t.add(staging / "ship", arcname="ship")
            t.add(staging / "comparison.json", arcname="comparison.json")
        return tar

    first = call(tmp_path / "first.tar", names[:4])
    with pytest.raises(SystemExit, match="unfinished"):
        repro.install([first], root)
    with pytest.raises(SystemExit, match="small"):
        repro.install([call(tmp_path / "small.tar", names, small=True)], root)
    second = call(tmp_path / "second.tar", names[3:])  # the later call also holds names[3]: it wins
    table = repro.install([first, second], root)
    assert [r["name"] for r in table["rows"]] == names and table["rows"][3]["call"] == "second"
    assert (root / names[3] / "card.md").read_text() == f"{names[3]} from second"
    assert (root / names[0] / "card.md").read_text() == f"{names[0]} from first"
    assert json.loads((root / "coconut_prosqa_comparison.json").read_text())["rows"] == table["rows"]
    assert not any((root / n).exists() for n in repro.RETIRED) and (root / "coconut_add3_cot").exists()
    doc = json.loads((root / "coconut_comparison.json").read_text())
    assert doc["rows"] == [{"name": "coconut_add3_cot"}] and doc["retired"] == sorted(repro.RETIRED)
