"""The explorer's two error kinds: a page shows their message as is."""

from __future__ import annotations


class AppError(Exception):
    """Bad input or an unusable checkpoint; the message is shown as is."""


class Unsupported(AppError):
    """The analysis does not apply to this model (the library says why); shown as a note."""
