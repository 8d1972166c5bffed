"""The wheel works outside the repository: built from this checkout, installed into a fresh venv
in a temporary directory, then `interp --help`, an import of every subpackage and one analysis,
all run from a directory that is not the repo.

The fresh venv sees the test venv's site-packages through a .pth line (its dependencies, torch
included, are not downloaded again); a .pth line adds a directory without running the .pth
files inside it, so the editable install of this checkout stays invisible there, and
`pip check` shows the wheel's declared requirements are what those packages satisfy.
"""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

# packages other parts of the toolkit import by name; each must be in the wheel
MUST_HAVE = ["models", "models.hf", "interp", "interp.patching", "interp.tokenizers", "interp.tasks",
             "interp.training", "interp.features", "interp.graphs", "analyses", "app.views", "app.components"]


def _run(cmd, cwd, **kw):
    out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600, **kw)
    assert out.returncode == 0, f"{cmd} failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(python of a fresh venv with the wheel installed, a scratch directory outside the repo)."""
    tmp = tmp_path_factory.mktemp("wheel")
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp / "dist"),
          str(ROOT)], cwd=tmp)
    wheel = next((tmp / "dist").glob("interp_toolkit-*.whl"))
    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], cwd=tmp)
    py = venv / "bin" / "python"
    purelib = _run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=tmp).strip()
    (Path(purelib) / "_deps_from_test_venv.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--force-reinstall", str(wheel)], cwd=tmp)
    work = tmp / "elsewhere"
    work.mkdir()
    return py, work, wheel


def test_wheel_holds_every_package_and_the_app_files(installed):
    _, _, wheel = installed
    names = set(zipfile.ZipFile(wheel).namelist())
    for pkg in MUST_HAVE:
        path = pkg.replace(".", "/")
        assert f"{path}/__init__.py" in names or any(n.startswith(path + "/") for n in names), pkg
    for asset in ("app/explorer.py", "app/components/attention.js", "app/components/attention.css"):
        assert asset in names
    assert not any(n.startswith(("tests/", "data/", "benchmarks/")) for n in names)


def test_installed_wheel_imports_every_subpackage_from_elsewhere(installed):
    py, work, _ = installed
    code = f"""
import importlib, json, pkgutil, sys
sys.path = [p for p in sys.path if p not in ('', {str(ROOT)!r})]
seen = []
for top in ("models", "interp", "analyses"):
    pkg = importlib.import_module(top)
    assert {str(ROOT)!r} not in pkg.__file__, pkg.__file__   # the wheel's copy, not the checkout
    seen.append(top)
    for info in pkgutil.walk_packages(pkg.__path__, top + "."):
        if info.ispkg:
            importlib.import_module(info.name)
            seen.append(info.name)
importlib.import_module("app.views"); seen.append("app.views")
print(json.dumps(seen))
"""
    seen = json.loads(_run([str(py), "-c", code], cwd=work).strip().splitlines()[-1])
    assert set(MUST_HAVE) - {"app.components"} <= set(seen), sorted(seen)
    assert "Usage" in _run([str(py.parent / "interp"), "--help"], cwd=work)
    # the wheel's own requirements are met (the fresh venv's bundled setuptools may trip torch's)
    check = subprocess.run([str(py), "-m", "pip", "check"], cwd=work, capture_output=True, text=True)
    assert not [line for line in check.stdout.splitlines() if line.startswith("interp-toolkit")], check.stdout


def test_installed_wheel_runs_an_analysis_from_elsewhere(installed):
    py, work, _ = installed
    out = work / "heads"
    _run([str(py), "-m", "analyses.heads", "--ckpt", str(ROOT / "data/checkpoints/induction_attn_only"),
          "--out", str(out), "--n", "8"], cwd=work)
    summary = json.loads((out / "summary.json").read_text())
    assert summary, "the analysis wrote an empty summary"
