"""benchmarks/bench_precision.py: the fp32-master-weight optimizer it times does what it says,
and the script runs end to end (CPU smoke run)."""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import bench_precision  # noqa: E402


def test_master_weights_step_is_fp32_adamw_on_the_masters():
    torch.manual_seed(0)
    weight = torch.nn.Parameter(torch.randn(8, 8).to(torch.bfloat16))
    reference = torch.nn.Parameter(weight.detach().float().clone())
    opt = bench_precision.MasterWeights([weight], fused=False)
    ref_opt = torch.optim.AdamW([reference], lr=1e-4)
    for _ in range(3):
        grad = torch.randn(8, 8).to(torch.bfloat16)
        weight.grad, reference.grad = grad.clone(), grad.float()
        opt.step()
        ref_opt.step()
        opt.zero_grad()
        assert weight.grad is None
    # the masters keep updates far below a bf16 ulp; the bf16 weights are the masters rounded
    assert torch.equal(opt.master[0], reference.detach())
    assert torch.equal(weight.detach(), reference.detach().to(torch.bfloat16))
    assert not torch.equal(opt.master[0], opt.master[0].to(torch.bfloat16).float())


def test_bench_precision_small_runs(tmp_path):
    out = tmp_path / "precision.json"
    result = bench_precision.main(["--small", "--steps", "1", "--rounds", "1", "--warmup", "1",
                                   "--recipes", "pure_master", "--out", str(out)])
    assert out.exists()
    assert set(result["steps"]) == {"ours_pure_master", "anchor_pure_master"}
    for row in result["steps"].values():
        assert row["tokens_per_s"] > 0 and 0 < row["loss"] < 10
