"""circuit-tracer needs a TransformerLens HookedTransformer (models.export.to_transformer_lens
gives one under transformer-lens 3.x) in the same environment as the toolkit. Its 0.5 release
pins transformers <= 4.57.3, and the toolkit needs transformers >= 5.13, so pip cannot install
the two together: scripts/make_client_venvs.sh records pip's reason in
.venv-clients/circuit-tracer.blocked and this test reports which pins block it. Once a
circuit-tracer release allows transformers 5 the venv builds and the test fails, asking for
the real graph test."""

from __future__ import annotations

import pytest

from common import ROOT

pytestmark = pytest.mark.clients
BLOCKED = ROOT / ".venv-clients" / "circuit-tracer.blocked"


def conflicts(ours: list[str], theirs: list[str]) -> list[str]:
    """Requirement pairs on the same package that no version satisfies (checked on every version
    either side names, which decides simple ranges like >=5.13 against <=4.57.3)."""
    from packaging.requirements import Requirement

    mine = {Requirement(r).name.lower(): Requirement(r) for r in ours}
    found = []
    for line in theirs:
        req = Requirement(line)
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        other = mine.get(req.name.lower())
        if other is None:
            continue
        named = {s.version for s in (*req.specifier, *other.specifier)}
        if named and not any(req.specifier.contains(v, prereleases=True) and other.specifier.contains(v, prereleases=True)
                             for v in named):
            found.append(f"circuit-tracer requires {req}, the toolkit {other}")
    return found


def test_conflict_check_finds_disjoint_ranges():
    assert conflicts(["transformers>=5.13"], ["transformers<=4.57.3,>=4.56.0"])
    assert not conflicts(["transformers>=5.13"], ["transformers>=4.56"])


def test_circuit_tracer_pins_allow_the_toolkit():
    try:
        import circuit_tracer  # noqa: F401
    except ImportError:
        if not BLOCKED.exists():
            pytest.skip("circuit-tracer venv not built (make test-clients builds it, or records why it cannot)")
        import tomllib

        ours = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
        requires = BLOCKED.with_suffix(".requires")
        theirs = [line.split(":", 1)[1].strip() for line in requires.read_text().splitlines()] if requires.exists() else []
        found = conflicts(ours, theirs)
        assert found, f"pip refused circuit-tracer but no pin conflict was found:\n{BLOCKED.read_text()[-2000:]}"
        pytest.skip("circuit-tracer cannot be installed with the toolkit: " + "; ".join(found))
    pytest.fail("circuit-tracer now installs beside the toolkit: replace this test with a graph built on "
                "models.export.to_transformer_lens(load('induction_attn_only'))")
