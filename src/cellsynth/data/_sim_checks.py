"""The simulator's arguments checked before numpy sees them (:mod:`.simulate`): each wrong
value is a one-line :class:`ConfigError` naming it and what it may be."""

from __future__ import annotations

import math
from numbers import Real

from ..errors import ConfigError
from ..seeds import as_int_hint, checked_seed, is_whole

#: arrays of (n_types, n_genes) float64 alive at once while the model is made (log fold
#: changes, program activity, log weights, their normaliser and the shares q)
MODEL_ARRAYS = 6


def whole(value: object, name: str) -> int:
    """``value`` as an int, or a :class:`ConfigError` (a whole-valued float is named as one)."""
    if is_whole(value):
        return int(value)
    raise ConfigError(f"{name} must be a whole number, got {value!r}{as_int_hint(value)}")


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


#: gene programs (one per type and condition after ``ctrl``) a simulation may have: each is
#: stated in ``uns["simulation"]`` as a group and two datasets, written (and read back) at about
#: 3 ms an HDF5 object, so the time and the file's ``uns`` grow with types x conditions, whatever
#: the cells; 5,000 (126 types x 40 conditions) take under a minute and about 30 MB of ``uns``
#: (measured: 20 types x 100 conditions, 1,980 programs, 17 s and 12 MB for 200 cells)
MAX_PROGRAMS = 5_000


def check_design(n_types: int, n_conditions: int) -> None:
    """Refuse more condition programs than :data:`MAX_PROGRAMS`, before any work."""
    programs = n_types * max(n_conditions - 1, 0)
    if programs > MAX_PROGRAMS:
        raise ConfigError(
            f"{n_types:,} types x {n_conditions:,} conditions make {programs:,} gene programs "
            f"(one per type and condition after ctrl), each stated in uns['simulation'] as 3 "
            f"HDF5 objects at about 3 ms each (about {programs * 9 / 1e3 / 60:,.0f} min): the "
            f"simulator takes at most {MAX_PROGRAMS:,}; ask for fewer types (n_types= or --types) "
            "or conditions (n_conditions= or --conditions)")


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
