"""The simulator's arguments checked before numpy sees them (:mod:`.simulate`): each wrong
value is a one-line :class:`ConfigError` naming it and what it may be."""

from __future__ import annotations

import math
from numbers import Real

import numpy as np

from ..errors import ConfigError
from ..keys import SPLIT
from ..seeds import as_int_hint, checked_seed, is_whole

#: arrays of (n_types, n_genes) float64 alive at once while the model is made (log fold
#: changes, program activity, log weights, their normaliser and the shares q)
MODEL_ARRAYS = 6


def whole(value: object, name: str) -> int:
    """``value`` as an int, or a :class:`ConfigError` (a whole-valued float is named as one)."""
    if is_whole(value):
        return int(value)
    raise ConfigError(f"{name} must be a whole number, got {value!r}{as_int_hint(value)}")


#: the range of ``library_size``: a median cell of at least one count, and of at most a million
#: (10x cells hold up to some 10^5; above some 10^7 a gene's count passes 2^24, beyond which
#: float32 holds only some whole numbers, and near 10^16 the draw itself fails)
MIN_LIBRARY, MAX_LIBRARY = 1.0, 1e6


def check_flag(value: object, name: str) -> None:
    """Refuse a switch that is not True or False (``"no"`` would read as true)."""
    if not isinstance(value, bool | np.bool_):
        raise ConfigError(f"{name} must be True or False, got {value!r}")


def check_args(n_cells: object, n_genes: object, n_types: object, n_mito: object, seed: object,
               rates: dict[str, object], library_size: object, n_donors: object,
               n_conditions: object, free: float | None) -> int:
    """Check the simulator's arguments, their types and ranges, and the memory of the model
    and the plan (``free``: the bytes available); returns the seed as an int."""
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
    for name, value in rates.items():
        if not 0 <= value < 0.5:
            raise ConfigError(f"{name} must be from 0 to under 0.5 (a share of the cells), got "
                              f"{value!r}")
    if library_size is not None and not MIN_LIBRARY <= library_size <= MAX_LIBRARY:
        raise ConfigError(
            f"library_size (a cell's median nuclear counts) must be from {MIN_LIBRARY:,.0f} to "
            f"{MAX_LIBRARY:,.0f}, or None to grow it with n_genes, got {library_size!r}: under "
            "one count most cells are empty, and far above a million a gene's count is no "
            "longer a whole number in float32 (or cannot be drawn)")
    try:
        seed = checked_seed(seed)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if min(n_cells, n_types) < 1:
        raise ConfigError(f"need at least 1 cell and 1 type (n_cells= or --cells, n_types= or "
                          f"--types); got {n_cells} cells and {n_types} types")
    if n_mito < 0 or n_genes - n_mito < 10:
        raise ConfigError(f"need at least {max(n_mito, 0) + 10} genes (n_genes= or --genes): "
                          f"{n_mito} mitochondrial genes (n_mito) and 10 others; got {n_genes}")
    if min(n_donors, n_conditions) < 0 or max(n_donors, n_conditions) > 1000:
        raise ConfigError(f"need 0 <= n_donors, n_conditions <= 1000 (0: no such column); got "
                          f"{n_donors} donors, {n_conditions} conditions")  # fmt: skip
    check_design(n_types, n_conditions)
    check_model_memory(n_cells, n_genes, n_types, free)
    return seed


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


#: bytes a cell's plan and annotations hold while an atlas is simulated (types, kinds, library
#: sizes, QC columns, obs), an upper bound for the memory check
PLAN_BYTES_PER_CELL = 256

#: bytes a non-zero count takes while the counts of many cells are held: its value (float32)
#: and column (int32) in the blocks drawn and in the matrix they are joined into (measured: 18
#: bytes per non-zero at the peak of ``simulate_atlas``, at 2,000 and at 33,538 genes)
NONZERO_BYTES = 20

#: a cell's mean library over its median (the libraries are log-normal with sd 0.45)
_LIB_MEAN = math.exp(0.45**2 / 2)


def check_model_memory(n_cells: int, n_genes: int, n_types: int, free: float | None) -> None:
    """Refuse a model (types x genes) or a plan (cells) that memory cannot hold, before either
    is made."""
    model, plan = model_bytes(n_genes, n_types), n_cells * PLAN_BYTES_PER_CELL
    if free is not None and model > free:
        raise ConfigError(f"{n_types:,} types x {n_genes:,} genes need about "
                          f"{model / 2**30:,.1f} GiB of memory for the simulator's model, and "
                          f"{free / 2**30:,.1f} GiB are available: ask for fewer types "
                          "(n_types= or --types) or genes (n_genes= or --genes)")
    if free is not None and plan > free:
        raise ConfigError(f"{n_cells:,} cells need about {plan / 2**30:,.1f} GiB of memory for "
                          f"their annotations alone (counts are written in chunks), and "
                          f"{free / 2**30:,.1f} GiB are available: ask for fewer cells "
                          "(n_cells= or --cells)")


def nonzeros_per_cell(q: np.ndarray, theta: np.ndarray, type_size: np.ndarray,
                      proportions: np.ndarray, lib: float, n_mito: int,
                      doublet_rate: float) -> float:  # fmt: skip
    """About the non-zero counts a simulated cell holds, a little more than are drawn: the
    expected genes an NB draw detects at each type's mean library, over the types' shares,
    doublets counted twice and every mitochondrial gene detected (5-15% above the drawn
    ones at 2,000 genes and at 33,538)."""
    rows = max(1, (1 << 20) // max(q.shape[1], 1))  # a few MB of types at a time
    total = 0.0
    for start in range(0, len(q), rows):
        mean = (lib * _LIB_MEAN * type_size[start : start + rows])[:, None] * q[start : start + rows]
        detected = -np.expm1(-theta * np.log1p(mean / theta)).sum(axis=1)
        total += float(proportions[start : start + rows] @ detected)
    return total * (1 + doublet_rate) + n_mito


def check_counts_memory(n_cells: int, chunk_size: int | None, nonzeros: float,
                        free: float | None, block: int) -> None:  # fmt: skip
    """Refuse, before a count is drawn, counts that cannot be held in memory: all the cells'
    (``chunk_size`` None, :func:`.simulate.simulate_atlas`) or a chunk's
    (:func:`.simulate.write_atlas`, which holds up to a chunk and a ``block`` of cells, the
    cells drawn at once), beside every cell's plan."""
    cells = n_cells if chunk_size is None else min(n_cells, chunk_size + block)
    plan, per_cell = n_cells * PLAN_BYTES_PER_CELL, nonzeros * NONZERO_BYTES
    if free is None or plan + cells * per_cell <= free:
        return
    gib = (f"about {(plan + cells * per_cell) / 2**30:,.1f} GiB of memory, and "
           f"{free / 2**30:,.1f} GiB are available")  # fmt: skip
    if chunk_size is None:
        raise ConfigError(
            f"{n_cells:,} simulated cells hold about {nonzeros:,.0f} non-zero counts each, "
            f"{n_cells * nonzeros:,.0f} in all, which need {gib}; ask for fewer cells "
            "(n_cells=) or genes (n_genes=), or write the atlas to a file chunk by chunk "
            "(cellsynth.data.simulate.write_atlas, or `cellsynth simulate --out`)")
    fits = int((free - plan) / per_cell) - block
    fix = (f"give a chunk_size (--chunk-size) of at most {fits:,}" if fits >= 100 else
           "ask for fewer genes (n_genes= or --genes) or cells (n_cells= or --cells)")
    raise ConfigError(
        f"a chunk of {min(n_cells, chunk_size):,} simulated cells (about {nonzeros:,.0f} "
        f"non-zero counts each) held while it is written, beside the plan of {n_cells:,} "
        f"cells, needs {gib}; {fix}")


def file_bytes(n_cells: int, nonzeros: float) -> int:
    """About the bytes of an uncompressed simulated atlas: a value (float32) and a column
    (int32) per non-zero, a row pointer (int64) and a name and annotations per cell."""
    return int(n_cells * (nonzeros * 8 + 8 + 64))


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: a command line's bytes that are not UTF-8
        return False
    return True


def check_label_key(label_key: object, written: tuple[str, ...]) -> None:
    """Refuse a label column the file cannot hold, that cellsynth reads as its own, or that
    another column the simulator ``written`` would overwrite."""
    if (not isinstance(label_key, str) or not label_key.strip() or label_key == "."
            or "/" in label_key or "\0" in label_key or not _utf8(label_key)):  # fmt: skip
        raise ConfigError(f"the label column must be a non-empty name an h5ad file can hold "
                          f"(UTF-8 text, not '.', without '/' or a null character), got "
                          f"{label_key!r} (label_key= or --label-key)")  # fmt: skip
    if label_key == "_index":  # anndata refused it only when the file was written
        raise ConfigError("the label column cannot be named '_index': the h5ad format keeps "
                          "that name for the cell names; choose another --label-key")
    if label_key.startswith("cellsynth_"):  # SPLIT: a fit then read the types as its split
        raise ConfigError(f"the label column cannot be named {label_key!r}: cellsynth keeps "
                          f"names starting with 'cellsynth_' for its own columns ({SPLIT!r} "
                          "marks the cells a fit leaves out), so fit and run could not read "
                          "the atlas; choose another --label-key")  # fmt: skip
    if label_key in written:
        raise ConfigError(f"the label column {label_key!r} is the name of a column the simulator "
                          f"writes itself ({', '.join(written)}): the cell types would be lost; "
                          "choose another --label-key")  # fmt: skip
