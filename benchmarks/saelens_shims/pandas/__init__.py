"""Stand-in for `pandas` (see ../README.md): transformer_lens.patching and sae_lens.evals import it
at module level; the benchmark calls neither. Any attribute raises AttributeError."""


def __getattr__(name):
    raise AttributeError(f"pandas.{name}: pandas is not installed in this benchmark environment (a stand-in from "
                       "benchmarks/saelens_shims)")


__version__ = "0.0.0+benchmark-stand-in"
