"""Errors a user can act on.

Every error raised for bad input is a :class:`CellsynthError`: a one-line message that says
what was wrong and how to fix it. The CLI prints it without a traceback and exits with 2.
"""

from __future__ import annotations


class CellsynthError(Exception):
    """Bad input or settings: the message names the problem and the fix."""


class ConfigError(CellsynthError, ValueError):
    """A config key that does not exist or a value of the wrong type."""


class DataError(CellsynthError, ValueError):
    """The data cannot be used as given (missing column, negative values, ...)."""


class DownloadError(CellsynthError, OSError):
    """A download failed (offline, truncated, wrong size)."""


class ModelFileError(CellsynthError, OSError):
    """A saved model directory is incomplete, inconsistent or of an unsupported version."""


class NotTrainedError(CellsynthError, RuntimeError):
    """A model asked to generate or be saved before it was trained."""


def listed(items, limit: int = 5, *, quote: bool = False, sep: str = ", ") -> str:
    """``items`` joined by commas (or ``sep``, for items that hold commas) for a message, the
    first ``limit`` of them and how many more (``"a, b, c and 4 more"``): a shortened list
    always says that it is one."""
    items = [repr(str(i)) if quote else str(i) for i in items]
    if len(items) <= limit:
        return sep.join(items)
    return f"{sep.join(items[:limit])} and {len(items) - limit} more"
