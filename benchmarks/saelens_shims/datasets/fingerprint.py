from . import _unavailable as generate_fingerprint  # noqa: F401
