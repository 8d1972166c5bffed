"""circuit-tracer needs a TransformerLens HookedTransformer (models.export.to_transformer_lens
gives one under transformer-lens 3.x) in the same environment as the toolkit. Its 0.5 release
pins transformers <= 4.57.3, and the toolkit needs transformers >= 5.13, so pip cannot install
the two together: scripts/make_client_venvs.sh records pip's reason in
.venv-clients/circuit-tracer.blocked and this test reports which pins block it. Once a
circuit-tracer release allows transformers 5 the venv builds and the test fails, asking for
the real graph test."""

from __future__ import annotations

import re

import pytest

from common import ROOT

pytestmark = pytest.mark.clients
BLOCKED = ROOT / ".venv-clients" / "circuit-tracer.blocked"


def test_circuit_tracer_pins_allow_the_toolkit():
    try:
        import circuit_tracer  # noqa: F401
    except ImportError:
        if not BLOCKED.exists():
            pytest.skip("circuit-tracer venv not built (make test-clients builds it, or records why it cannot)")
        reason = BLOCKED.read_text()
        pins = sorted(set(re.findall(r"(?:interp-toolkit|circuit-tracer)[^\n]*depends on transformers[^\n]*", reason)))
        assert pins or "transformers" in reason, reason[-2000:]
        pytest.skip("circuit-tracer cannot be installed with the toolkit: " + ("; ".join(pins) or reason.strip()[-400:]))
    pytest.fail("circuit-tracer now installs beside the toolkit: replace this test with a graph built on "
                "models.export.to_transformer_lens(load('induction_attn_only'))")
