"""The simulator's arguments checked before numpy sees them (:mod:`.simulate`): each wrong
value is a one-line :class:`ConfigError` naming it and what it may be."""

from __future__ import annotations

import math
from numbers import Real

from ..errors import ConfigError
from ..seeds import checked_seed, is_whole

#: arrays of (n_types, n_genes) float64 alive at once while the model is made (log fold
#: changes, program activity, log weights, their normaliser and the shares q)
MODEL_ARRAYS = 6


def whole(value: object, name: str) -> int:
    """``value`` as an int, or a :class:`ConfigError` (a whole-valued float is named as one)."""
    if is_whole(value):
        return int(value)
    if isinstance(value, float) and value.is_integer():
        raise ConfigError(f"{name} must be a whole number given as an int, got the float "
                          f"{value!r}: pass {int(value)}")
    raise ConfigError(f"{name} must be a whole number, got {value!r}")


def check_args(n_cells: object, n_genes: object, n_types: object, n_mito: object, seed: object,
               rates: dict[str, object], library_size: object, n_donors: object,
               n_conditions: object) -> int:
    """Check the simulator's arguments' types and finiteness (their ranges are checked by
    the caller); returns the seed as an int."""
    for name, value in (("n_cells (--cells)", n_cells), ("n_genes (--genes)", n_genes),
                        ("n_types (--types)", n_types), ("n_mito", n_mito),
                        ("n_donors (--donors)", n_donors),
                        ("n_conditions (--conditions)", n_conditions)):  # fmt: skip
        whole(value, name)
    for name, value in {**rates, "library_size": library_size}.items():
        if value is None and name == "library_size":
            continue
        if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
            raise ConfigError(f"{name} must be a finite number, got {value!r}")
    try:
        return checked_seed(seed)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def check_writing(chunk_size: object, compression: object) -> int:
    """``write_atlas``'s own arguments; returns the chunk size as an int."""
    chunk_size = whole(chunk_size, "chunk_size (--chunk-size)")
    if chunk_size < 1:
        raise ConfigError(f"chunk_size must be at least 1 cell, got {chunk_size}")
    if compression not in (None, "gzip", "lzf"):
        raise ConfigError(f"compression must be None, 'gzip' or 'lzf', got {compression!r}")
    return chunk_size


def model_bytes(n_genes: int, n_types: int) -> int:
    """Bytes the dense model takes while it is made (see :data:`MODEL_ARRAYS`)."""
    return (MODEL_ARRAYS * n_types + 16) * n_genes * 8
