"""Stand-in for `wandb` (see ../README.md): the benchmark runs SAELens with log_to_wandb=False;
anything that would log raises."""


def _unavailable(*args, **kwargs):
    raise RuntimeError("wandb is not installed in this benchmark environment (a stand-in from "
                       "benchmarks/saelens_shims); run SAELens with LoggingConfig(log_to_wandb=False)")


init = log = log_artifact = finish = watch = _unavailable
run = None


class Artifact:
    def __init__(self, *args, **kwargs):
        _unavailable()


class Table:
    def __init__(self, *args, **kwargs):
        _unavailable()


class Histogram:
    def __init__(self, *args, **kwargs):
        _unavailable()


__version__ = "0.0.0+benchmark-stand-in"
