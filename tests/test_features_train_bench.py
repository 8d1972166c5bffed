"""benchmarks/bench_features.py --small: the GPU benchmark's code runs on CPU and reports every
contender it can (SAELens only where an environment for it is given: not in CI)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_features  # noqa: E402


def test_bench_features_small(tmp_path):
    result = bench_features.main(["--small", "--tokens", "1024", "--only", "ours,minimal,ours_multi4,ours_separate4",
                                  "--out", str(tmp_path / "r.json")])
    assert not result["skipped"], result["skipped"]
    c = result["contenders"]
    assert set(c) == {"ours", "minimal", "ours_multi4", "ours_separate4"}
    assert c["ours"]["tokens"] == 1024 and c["minimal"]["tokens"] == 1024
    assert set(c["ours_multi4"]["fve_heldout"]) == {f"k{k}" for k in bench_features.SMALL_MULTI_K}
    for name in ("ours_vs_minimal_steady", "ours_vs_minimal_end_to_end", "multi4_vs_separate4_wall"):
        assert math.isfinite(result["ratios"][name]) and result["ratios"][name] > 0
    # the k=8 dictionary of the 4-from-one-forward run is the single run's dictionary
    assert math.isclose(c["ours_multi4"]["fve_heldout"]["k8"], c["ours"]["fve_heldout"]["k8"], rel_tol=1e-6)
    assert (tmp_path / "r.json").exists()
