"""Paths a user gives, with ``~`` expanded into a one-line error where it cannot be."""

from __future__ import annotations

from pathlib import Path

from .errors import ConfigError


def expand_user(path: str | Path, option: str = "the path") -> Path:
    """``path`` with a leading ``~`` or ``~user`` expanded; a :class:`ConfigError` naming
    ``option`` when there is no such user or no home directory (pathlib's RuntimeError)."""
    try:
        return Path(path).expanduser()
    except RuntimeError:
        head = Path(path).parts[0] if Path(path).parts else str(path)
        raise ConfigError(f"cannot expand {head!r} in {str(path)!r}: there is no such user or "
                          f"home directory on this machine; give {option} as a full path "
                          "(or one relative to the current folder)") from None
