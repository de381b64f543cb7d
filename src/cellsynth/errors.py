"""Errors a user can act on.

Every error raised for bad input is a :class:`CellsynthError`: a one-line message that says
what was wrong and how to fix it. The CLI prints it without a traceback and exits with 2.
"""

from __future__ import annotations

import difflib
import unicodedata
from collections.abc import Iterable
from typing import Any


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
    always says that it is one. Items that hold a comma themselves (a level "IFN-b, 10 ng",
    "a,b") are joined by "; " instead, so a reader can tell where one ends."""
    items = [repr(str(i)) if quote else str(i) for i in items]
    if sep == ", " and not quote and any("," in i for i in items):
        sep = "; "
    if len(items) <= limit:
        return sep.join(items)
    return f"{sep.join(items[:limit])} and {len(items) - limit} more"


def did_you_mean(name: Any, names: Iterable[Any]) -> str:
    """``" (did you mean 'a', 'b'?)"`` for a message about an unknown ``name``, or ``""``.

    The names equal to ``name`` but for case, surrounding spaces and Unicode form come alone: a
    difference in case is the commonest slip, and plain likeness of spelling ranks ``'Stim'``
    close to ``'stim'`` but ``'STIM'`` close to nothing. A name that differs in its Unicode form
    alone (an accent composed or decomposed: both print alike) is said to. Otherwise the up to
    three of ``names`` closest in spelling (:func:`difflib.get_close_matches`). Only a
    suggestion: the caller still refuses ``name``.
    """
    names = [str(n) for n in names]
    folded = _folded(name)
    close = [n for n in names if _folded(n) == folded]
    if not close:
        close = difflib.get_close_matches(str(name), names, n=3, cutoff=0.6)
    if not close:
        return ""
    alike = _nfc(name)
    form = (" The same name in another Unicode form, an accent composed or decomposed, which "
            "prints alike: write it as the data does" if any(
                _nfc(n) == alike and n.strip() != str(name).strip() for n in close) else "")
    return f" (did you mean {', '.join(map(repr, close[:3]))}?{form})"


def _nfc(text: Any) -> str:
    return unicodedata.normalize("NFC", str(text)).strip()


def _folded(text: Any) -> str:
    """``text`` as a near miss compares it: one Unicode form, no surrounding spaces, no case."""
    return _nfc(text).casefold()
