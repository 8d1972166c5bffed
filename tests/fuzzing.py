"""Shared hypothesis settings for tests/test_fuzz_*.py.

`make test` runs each property on a fixed, derandomised set of examples (same inputs every
run, a few seconds per test, no `.hypothesis/` database written). To hunt for new holes run
e.g. `FUZZ_EXAMPLES=2000 pytest tests/test_fuzz_checkpoint.py`: random seeds, more examples.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

EXPLORE = "FUZZ_EXAMPLES" in os.environ


def fuzz(max_examples: int):
    """`@fuzz(n)`: n examples in CI (FUZZ_EXAMPLES overrides), no deadline, no database."""
    return settings(
        max_examples=int(os.environ.get("FUZZ_EXAMPLES", max_examples)),
        deadline=None,
        database=None,
        derandomize=not EXPLORE,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                               HealthCheck.function_scoped_fixture],
        print_blob=True,
    )
