"""Every seed is derived from the run's one seed, by name."""

from __future__ import annotations

import zlib

import numpy as np


def derive_seed(seed: int, name: str) -> int:
    """A 32-bit child seed of ``seed`` for the stage or purpose ``name``.

    Uses :class:`numpy.random.SeedSequence` keyed by a stable hash of the name, so adding a new
    stage never changes the seeds of the others.
    """
    ss = np.random.SeedSequence([int(seed), zlib.crc32(name.encode())])
    return int(ss.generate_state(1, dtype=np.uint32)[0])


def is_whole(value: object) -> bool:
    """Whether ``value`` is a whole number given as one: an int or a numpy integer, not a bool
    (an int to Python) nor a float that happens to be whole."""
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def checked_whole(value: object, name: str, least: int = 1) -> int:
    """``value`` as an int, or a :class:`~cellsynth.errors.DataError` naming ``name`` unless it
    is a whole number of at least ``least``."""
    from .errors import DataError

    if not is_whole(value) or value < least:
        raise DataError(f"{name} must be a whole number of at least {least}, got {value!r}"
                        f"{as_int_hint(value)}")
    return int(value)


def as_int_hint(value: object) -> str:
    """For a whole-valued float, how to give it (an int); else nothing."""
    if isinstance(value, float) and value.is_integer():
        return f", a float: pass the int {int(value)}"
    return ""


def checked_seed(seed: object) -> int:
    """``seed`` as an int, or a :class:`~cellsynth.errors.DataError` saying what a seed is (a
    negative or fractional one reached numpy's generators with numpy's own message)."""
    from .errors import DataError

    if not is_whole(seed) or not 0 <= seed < 2**63:
        raise DataError(f"seed must be a whole number from 0 to 2**63 - 1, got {seed!r}"
                        f"{as_int_hint(seed)}")
    return int(seed)
