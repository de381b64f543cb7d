"""Paths a user gives, with ``~`` expanded into a one-line error where it cannot be."""

from __future__ import annotations

import os
import re
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


def variables_hint(path: str | Path) -> str:
    """A note for a path that was not found and holds an environment variable (``$HOME/x``,
    ``${DATA}/x``, ``%USERPROFILE%``): a shell expands them on the command line, but a config
    file, ``--set`` within quotes or Python does not; ``""`` for any other path."""
    name = re.search(r"\$\{?(\w+)\}?|%(\w+)%", str(path))
    if name is None:
        return ""
    var = name.group(1) or name.group(2)
    value = os.environ.get(var)
    return (f"; environment variables are not expanded in paths (config files, --set, Python): "
            f"write {name.group(0)} out" + (f" ({value})" if value else ""))
