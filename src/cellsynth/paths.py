"""Paths a user gives, with ``~`` expanded into a one-line error where it cannot be."""

from __future__ import annotations

import errno
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
        out = Path(path).expanduser()
    except RuntimeError:
        head = Path(path).parts[0] if Path(path).parts else str(path)
        raise ConfigError(f"cannot expand {head!r} in {str(path)!r}: there is no such user or "
                          f"home directory on this machine; give {option} as a full path "
                          "(or one relative to the current folder)") from None
    check_name(out, option)
    return out


def check_name(path: Path, option: str) -> None:
    """A :class:`ConfigError` naming ``option`` when no file system takes ``path`` as a name: it
    holds a null character, or it (or a name in it) is longer than the system allows. pathlib's
    ``exists()`` raised the OSError (or said False and the write raised a ValueError) as a
    traceback, wherever a path was first looked at."""
    text = str(path)
    if "\x00" in text:
        raise ConfigError(f"{option} {text!r} holds a null character, which no file name may; "
                          "give the path without it")
    try:
        os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ENAMETOOLONG:
            longest = max(len(os.fsencode(p)) for p in path.parts) if path.parts else 0
            shown = text if len(text) <= 80 else f"{text[:60]}...{text[-15:]}"
            raise ConfigError(f"{option} {shown}: the path is longer than this file system "
                              f"allows ({len(os.fsencode(text))} bytes, its longest name "
                              f"{longest}; most systems take 255 a name); give a shorter "
                              "path") from None


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
