"""What keeps the explorer responsive (timings themselves: benchmarks/bench_app.py): the first
run imports with the garbage collector off, then freezes what it imported (torch,
transformer_lens, ...) out of later collections and turns collection back on, so Streamlit's
gc.collect(2) after every rerun no longer scans ~470k long-lived objects."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

PROBE = """
import gc, json, sys
from streamlit.testing.v1 import AppTest
at = AppTest.from_file(sys.argv[1], default_timeout=120)
at.run()
assert not at.exception, [e.value for e in at.exception]
frozen = gc.get_freeze_count()
at.run()
print(json.dumps({"enabled": gc.isenabled(), "frozen": frozen, "frozen_after_rerun": gc.get_freeze_count()}))
"""


def test_first_run_freezes_its_imports_and_turns_collection_back_on(tmp_path):
    import json

    from app_fixtures import make_checkpoint

    make_checkpoint(tmp_path, "induction_attn_only")
    env = {"INTERP_CHECKPOINT_ROOT": str(tmp_path), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", PROBE, str(REPO / "app" / "explorer.py")], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["enabled"], got  # collection is back on after the first run
    assert got["frozen"] > 100_000, got  # torch & co. are out of every later collection
    assert got["frozen_after_rerun"] <= got["frozen"], got  # only the first run freezes (some frozen ones get freed)
