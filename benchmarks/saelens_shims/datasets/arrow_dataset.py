from . import Dataset  # noqa: F401
