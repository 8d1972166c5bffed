"""The README's Python example runs as written, from a directory outside the repository
(shipped paths such as `data/checkpoints/...` resolve against the checkout)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_python_example_runs(capsys, monkeypatch, tmp_path):
    text = (ROOT / "README.md").read_text()
    code = text.split("## Python in ten lines")[1].split("```python")[1].split("```")[0]
    assert len([line for line in code.strip().splitlines() if line.strip()]) <= 12
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert out.startswith("<bos>ROMEO: But soft") and len(out) > 60
