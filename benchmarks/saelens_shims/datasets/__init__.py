"""Stand-in for Hugging Face `datasets` (see ../README.md): the names sae_lens / transformer_lens
import at module level; using any of them raises."""


def _unavailable(*args, **kwargs):
    raise RuntimeError("the `datasets` package is not installed in this benchmark environment (a stand-in from "
                       "benchmarks/saelens_shims); pass tokens as override_dataset")


class _Unavailable:
    def __init__(self, *args, **kwargs):
        _unavailable()

    @classmethod
    def from_dict(cls, *args, **kwargs):
        _unavailable()


class Dataset(_Unavailable):
    pass


class IterableDataset(_Unavailable):
    pass


class DatasetDict(dict):
    def __init__(self, *args, **kwargs):
        _unavailable()


class IterableDatasetDict(dict):
    def __init__(self, *args, **kwargs):
        _unavailable()


class Features(dict):
    def __init__(self, *args, **kwargs):
        _unavailable()


class Array2D(_Unavailable):
    pass


class Sequence(_Unavailable):
    pass


class Value(_Unavailable):
    pass


load_dataset = _unavailable
load_from_disk = _unavailable
concatenate_datasets = _unavailable
__version__ = "0.0.0+benchmark-stand-in"
