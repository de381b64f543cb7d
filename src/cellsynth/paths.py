"""Paths a user gives, with ``~`` expanded into a one-line error where it cannot be."""

from __future__ import annotations

import os
from pathlib import Path

from .errors import ConfigError


def expand_user(path: str | Path, option: str = "the path") -> Path:
    """``path`` with a leading ``~`` or ``~user`` expanded; a :class:`ConfigError` naming
    ``option`` when it is not a path (None, a number: pathlib's TypeError) or when there is no
    such user or no home directory (pathlib's RuntimeError). Every path a user gives to write
    to goes through here, so ``~/x`` is the home folder's ``x`` for every writer, never a
    folder named ``~``."""
    if isinstance(path, bool) or not isinstance(path, str | os.PathLike):
        raise ConfigError(f"{option} takes a path (a string such as 'results/out'), not "
                          f"{type(path).__name__} {path!r}")
    try:
        return Path(path).expanduser()
    except RuntimeError:
        head = Path(path).parts[0] if Path(path).parts else str(path)
        raise ConfigError(f"cannot expand {head!r} in {str(path)!r}: there is no such user or "
                          f"home directory on this machine; give {option} as a full path "
                          "(or one relative to the current folder)") from None
