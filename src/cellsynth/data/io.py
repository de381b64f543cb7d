"""Reading an h5ad and finding out what its expression values are.

Expression Atlas files usually hold normalised values in ``X`` and may hold raw counts in
``raw.X`` or a layer: :func:`find_counts` detects which, never assumes.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..errors import DataError, listed
from ..paths import expand_user, variables_hint
from .csr import canonical, check_structure
from .genes import check_gene_names as check_gene_names  # re-exported: its users import it here
from .genes import gene_difference, names_said_here
from .values import check_values, doubt, is_counts, stored_values

logger = logging.getLogger(__name__)

#: files larger than this are opened backed on ``backed="auto"``
BACKED_BYTES = 2 * 1024**3
#: non-zero values inspected to decide counts vs normalised
_PROBE_VALUES = 1_000_000

Source = Literal["X", "layers/counts", "raw.X"]


def read(path: str | Path, *, backed: Literal["auto", True, False] = "auto") -> ad.AnnData:
    """Read an h5ad file, backed when it is large.

    Raises :class:`DataError` for a missing, non-h5ad, corrupt or empty file.
    """
    if isinstance(path, ad.AnnData):  # not "the path takes a path" with the AnnData's repr
        raise DataError("read takes the path of an .h5ad file, not an AnnData: this one is "
                        "read already, so use it as it is")
    if isinstance(path, bool) or not isinstance(path, str | os.PathLike):
        raise DataError(f"read takes the path of an .h5ad file, not {type(path).__name__} "
                        f"{path!r}")
    path = check_file(path)
    use_backed = path.stat().st_size > BACKED_BYTES if backed == "auto" else bool(backed)
    try:
        with names_said_here():  # check_shape says them
            adata = ad.read_h5ad(path, backed="r" if use_backed else None)
    except Exception as exc:  # h5py/anndata raise many types for damaged files
        raise unreadable(path, exc) from None
    check_shape(adata, str(path))
    logger.info("read %s: %d cells x %d genes%s", path, adata.n_obs, adata.n_vars,
                " (backed)" if use_backed else "")
    return adata


def unreadable(path: Path, exc: Exception) -> DataError:
    """The one-line error of an HDF5 file that h5py or anndata cannot read as h5ad: a 10x
    Genomics ``.h5`` (its ``matrix`` group) is named as such, a file HDF5 could not lock
    (another process writing it, or a file system without locks) as such, anything else as
    damaged."""
    locked = _lock_error(exc, path)
    if locked is not None:
        return locked
    try:
        with h5py.File(path, "r") as f:
            loom = "matrix" in f and "row_attrs" in f and "col_attrs" in f
            tenx = "matrix" in f and "obs" not in f and not loom
    except OSError:
        loom = tenx = False
    if loom:
        return DataError(f"{path} is a loom file, not an h5ad; convert it with scanpy "
                         "(sc.read_loom(path).write_h5ad(...)) and pass the .h5ad")
    if tenx:
        return DataError(f"{path} is a 10x Genomics .h5 matrix, not an h5ad; convert it with "
                         "scanpy (sc.read_10x_h5(path).write_h5ad(...)) and pass the .h5ad")
    if "float16" in str(exc):  # scipy.sparse has no float16: anndata cannot read it either
        return DataError(f"{path} stores its sparse values as float16, which scipy.sparse (and "
                         "so anndata) cannot read; write them as float32 (with h5py, or "
                         "the tool that wrote the file), or read it backed "
                         "(--set dataset.backed=true)")
    return DataError(f"{path} could not be read as h5ad ({type(exc).__name__}: {exc}); the file "
                     "may be truncated or corrupt: download or write it again")


def _lock_error(exc: Exception, path: Path) -> DataError | None:
    """HDF5's "unable to lock file" said as what it is, not as a damaged file to download
    again: errno 11, another process holds the file open for writing; other numbers, a file
    system without locks (some NFS or Lustre mounts)."""
    text = str(exc)
    if "unable to lock file" not in text:
        return None
    if "errno = 11" in text or isinstance(exc, BlockingIOError):
        return DataError(f"{path} is open for writing in another process (HDF5's file lock: "
                         "a write still going on, or an AnnData opened with backed='r+' in a "
                         "notebook): let the write end or close the file there, then run "
                         "again")
    return DataError(f"{path} could not be locked for reading ({text.splitlines()[0][:160]}): "
                     "this file system does not support HDF5's file locks; set the "
                     "environment variable HDF5_USE_FILE_LOCKING=FALSE and run again")


def check_file(path: str | Path) -> Path:
    """The path of an existing HDF5 file; :class:`DataError` otherwise."""
    path = expand_user(path)
    if path.is_dir():
        if (path / "manifest.json").is_file():
            raise DataError(f"{path} is a run directory, not an h5ad; its generated cells are "
                            f"in {path / 'synthetic'} and its preprocessed cells in "
                            f"{path / 'data'}: pass one of those .h5ad files")
        if (path / "config.json").is_file():
            raise DataError(f"{path} is a saved model's directory, not an h5ad of cells: "
                            f"generate cells from it (cellsynth generate {path} ...) and pass "
                            "the .h5ad written")
        raise DataError(f"{path} is a directory; give the path of an .h5ad file")
    if not path.is_file():
        where = "" if path.is_absolute() else f" (a relative path, read from {Path.cwd()})"
        from .download import download_hint

        hint = download_hint(path) or ";"  # the E-ANND-5 presets' file: download it first
        raise DataError(f"{path} does not exist{where}{variables_hint(path)}{hint} give the path "
                        "of an .h5ad file")
    if not h5py.is_hdf5(path):
        kind = _compressed(path)
        if kind:
            raise DataError(f"{path} is compressed ({kind}); uncompress it first (e.g. "
                            f"{COMPRESSED[kind][1]} {path.name}) and pass the .h5ad")
        if _text(path):
            raise DataError(f"{path} is a text file (a CSV or TSV table?), not an h5ad; read it "
                            "with scanpy (sc.read_csv(path), cells as rows) or anndata, then "
                            "write_h5ad(...) and pass the .h5ad")
        raise DataError(
            f"{path} is not an h5ad (HDF5) file; convert it with anndata/scanpy "
            "(e.g. sc.read_10x_mtx(...).write_h5ad(...)) and pass the .h5ad"
        )
    return path


#: compression formats by their first bytes: (magic, the command that uncompresses)
COMPRESSED = {"gzip": (b"\x1f\x8b", "gunzip"), "bzip2": (b"BZh", "bunzip2"),
              "xz": (b"\xfd7zXZ\x00", "unxz"), "zip": (b"PK\x03\x04", "unzip"),
              "zstd": (b"\x28\xb5\x2f\xfd", "unzstd")}


def _head(path: Path, n: int = 512) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read(n)
    except OSError:
        return b""


def _compressed(path: Path) -> str:
    """The compression format of ``path`` by its first bytes, whatever its name ("": none)."""
    head = _head(path, 8)
    return next((kind for kind, (magic, _) in COMPRESSED.items() if head.startswith(magic)), "")


def _text(path: Path) -> bool:
    """Whether ``path`` starts as a text file (a table, a log) does."""
    head = _head(path)
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:  # a character cut at the end of the head, or not text
        try:
            text = head[:-3].decode("utf-8")
        except UnicodeDecodeError:
            return False
    text = text.removeprefix("\ufeff")  # the byte order mark a spreadsheet's export starts with
    return bool(text) and all(c.isprintable() or c in "\t\r\n" for c in text)


def check_shape(adata: ad.AnnData, name: str = "the data") -> None:
    """Refuse empty data, duplicate cell or gene names, and sparse matrices whose index arrays
    are damaged."""
    if adata.n_obs == 0 or adata.n_vars == 0:
        raise DataError(
            f"{name} has {adata.n_obs} cells and {adata.n_vars} genes; an atlas needs both"
        )
    if not adata.obs_names.is_unique:
        dup = listed(pd.unique(adata.obs_names[adata.obs_names.duplicated()]), 3, quote=True)
        raise DataError(
            f"{name} has duplicate cell names ({dup}); make them unique with "
            "adata.obs_names_make_unique() (then write the file again, for a file)"
        )
    check_gene_names(adata.var_names, name)
    _check_matrices(adata, name)


def _check_matrices(adata: Any, name: str) -> None:
    """The sparse matrices of an AnnData in memory (``X``, the layers, ``raw.X``) with index
    arrays that hold together (:func:`~.csr.check_structure`); a file's on disk are checked
    as they are read (:class:`~.store.RowStore`)."""
    if not isinstance(adata, ad.AnnData) or adata.isbacked:
        return
    if adata.is_view:  # its parent's matrices: a view's would each be copied to be read
        adata = getattr(adata, "_adata_ref", None)
        if adata is None:
            return
    check_structure(adata.X, f"{name}: X")
    for key, layer in adata.layers.items():
        check_structure(layer, f"{name}: layers[{key!r}]")
    if adata.raw is not None:
        check_structure(adata.raw.X, f"{name}: raw.X")


def _values(x: np.ndarray | sp.spmatrix | sp.sparray) -> np.ndarray:
    """A sample of the stored values (non-zeros for sparse) of a matrix, dense or sparse."""
    if sp.issparse(x):  # a gene stored twice in a cell: one value, as the readers sum them
        return np.asarray(canonical(x).data[:_PROBE_VALUES])
    if hasattr(x, "shape") and not isinstance(x, np.ndarray):  # backed dense dataset
        n = max(1, min(x.shape[0], _PROBE_VALUES // max(1, x.shape[1])))
        x = x[:n]
    return np.asarray(x).ravel()[:_PROBE_VALUES]


def _probe(x) -> np.ndarray:
    """Values of the first rows of ``x`` (backed or in memory), enough to judge it."""
    if getattr(x, "shape", None) is None:
        return np.empty(0)
    stored = getattr(x, "stored_dtype", None)  # a matrix on disk, read as float32
    if stored is not None and stored.kind not in "biuf":  # text, objects: not read as numbers
        return stored_values(np.empty(0, dtype=np.float32), stored)
    n_rows = x.shape[0]
    step = max(1, min(n_rows, 20_000))
    indptr = getattr(x, "indptr", None)
    if indptr is not None and getattr(x, "format", None) == "csr":  # the probe's rows only
        step = max(1, min(step, int(np.searchsorted(indptr, _PROBE_VALUES))))
    elif isinstance(x, np.ndarray | h5py.Dataset) or getattr(x, "format", None) == "dense":
        # dense (on disk too): only the rows of the values looked at, not 20,000 of any width
        step = max(1, min(step, -(-_PROBE_VALUES // max(1, x.shape[1]))))
    values = _values(x[:step])
    return values if stored is None else stored_values(values, stored)


@dataclass(frozen=True)
class Expression:
    """Where the raw counts live (``None`` when the file only has normalised values)."""

    counts: Source | None
    normalised: bool  # whether X is normalised (log or otherwise)
    # without counts: why X should not be read as log-normalised values either (counts with
    # round-off or noise, normalised values never log-transformed; "" otherwise)
    note: str = ""
    # the note as said to a caller that needs raw counts, where its advice differs ("": note)
    counts_note: str = ""
    # without counts: a layer of another name that holds whole numbers, said ("": none)
    elsewhere: str = ""

    def for_counts(self) -> str:
        """The note for a caller that needs raw counts: its advice leads to counts."""
        return self.counts_note or self.note

    def no_counts(self, message: str) -> DataError:
        """The error for a caller that needs counts and has none: ``message``, or the note."""
        return DataError((self.for_counts() or message) + self.elsewhere)


def find_counts(adata: ad.AnnData, is_normalised: Literal["auto", True, False] = "auto") -> Expression:
    """Detect where raw counts are: ``X``, ``layers['counts']`` or ``raw.X``.

    Parameters
    ----------
    is_normalised
        ``"auto"`` inspects the values; ``True`` says ``X`` is normalised (counts are then
        looked for in ``layers['counts']`` and ``raw.X``); ``False`` says ``X`` holds counts.
    """
    file = getattr(adata, "file", None)  # store.H5adFile: the h5ad itself
    try:
        x = None if isinstance(file, h5py.File) and "X" not in file else adata.X
    except KeyError:  # a backed AnnData of a file without X (counts in a layer): none
        x = None
    if x is None:  # counts kept in a layer or raw alone
        found = None if is_normalised is False else _counts_elsewhere(adata)
        if found is None:
            raise DataError("the data have no X and no counts in layers['counts'] or raw.X; "
                            "write the counts into X (or layers['counts'])")
        return found
    x_values = _probe(x)
    try:
        check_values(x_values, "X")
    except DataError as bad:  # scaled (scanpy's sc.pp.scale) or damaged X: counts elsewhere?
        found = None if is_normalised is False else _counts_elsewhere(adata)
        scaled = x_values.dtype.kind in "biuf" and np.any(x_values < 0)
        if found is None and scaled:  # scaled: where the counts would be, said
            raw = getattr(adata, "raw", None)
            said = " (raw.X holds normalised values, not counts)" if raw is not None else ""
            raise DataError(f"{bad}, and neither layers['counts'] nor raw.X holds the raw counts"
                            f"{said}: give the raw counts, in X, layers['counts'] or raw.X "
                            "(cellsynth normalises them itself)"
                            + _other_count_layers(adata)) from None
        if found is None:
            raise
        logger.warning("X is not expression (%s); using the counts in %s", bad, found.counts)
        return found
    x_counts = is_counts(x_values)
    if is_normalised is False:
        if not x_counts:
            raise DataError(
                "dataset.is_normalised = false but X holds non-integer values (normalised data); "
                "set dataset.is_normalised = \"auto\" or true"
            )
        return Expression("X", normalised=False)
    if is_normalised == "auto" and x_counts:
        return _layer_or_x(adata, x)
    # X is normalised: look for counts elsewhere
    note, counts_note = doubt(x_values) if is_normalised == "auto" else ("", "")
    return _counts_elsewhere(adata) or Expression(None, normalised=True, note=note,
                                                  counts_note=counts_note,
                                                  elsewhere=_other_count_layers(adata))


def _other_count_layers(adata: Any) -> str:
    """Where no counts were found: ``"; layers['raw_counts'] holds ..."``, naming a layer of
    another name than ``counts`` whose values are whole numbers (counts are looked for in
    ``layers['counts']`` only), with how to use it; "" where there is none."""
    for key in [k for k in getattr(adata, "layers", {}) if k != "counts"]:
        try:
            vals = _probe(adata.layers[key])
        except Exception:  # a layer that cannot be read (another format) is no hint
            continue
        if vals.size and np.all(np.isfinite(vals)) and (vals > 0).any() and is_counts(vals):
            return (f"; layers[{key!r}] holds whole numbers: if they are the raw counts, name "
                    f"that layer 'counts' (adata.layers['counts'] = adata.layers[{key!r}], then "
                    "write the file again, for a file)")
    return ""


#: rows of X and layers['counts'] compared to tell whether they hold the same counts
_SAME_ROWS = 500


def _layer_or_x(adata: ad.AnnData, x: Any) -> Expression:
    """The counts of an ``X`` that holds counts, or of ``layers['counts']`` where that holds
    counts too: the one rule of every command (``fit``, ``run``, ``evaluate``,
    ``predict_types``), a layer named "counts" being the raw counts by name. Two count
    matrices that differ are said, with how to choose the other."""
    if "counts" not in adata.layers:
        return Expression("X", normalised=False)
    layer = adata.layers["counts"]
    vals = _probe(layer)
    check_values(vals, "layers['counts']")
    if not is_counts(vals):
        logger.warning("layers['counts'] holds non-integer values, not raw counts (e.g. %.6g); "
                       "X holds counts: using X (remove or mend layers['counts'])",
                       vals[np.mod(vals, 1) != 0][0])
        return Expression("X", normalised=False)
    n = min(_SAME_ROWS, adata.n_obs)
    head_x, head_layer = (sp.csr_matrix(m[:n], dtype=np.float64) for m in (x, layer))
    if (head_x != head_layer).nnz:
        logger.warning(
            "X and layers['counts'] both hold raw counts, but different ones (the first %d "
            "cells hold %s counts in X, %s in layers['counts']): using layers['counts'], as "
            "every cellsynth command does; to use X instead, delete the layer (del "
            "adata.layers['counts']) or, for cellsynth run, set dataset.is_normalised = false",
            n, f"{head_x.sum():,.0f}", f"{head_layer.sum():,.0f}")
    return Expression("layers/counts", normalised=False)


def _counts_elsewhere(adata: ad.AnnData) -> Expression | None:
    """Counts in ``layers['counts']``, else in ``raw.X`` (scanpy's layout), beside an ``X``
    that does not hold them; None where neither does."""
    if "counts" in adata.layers:
        vals = _probe(adata.layers["counts"])
        check_values(vals, "layers['counts']")
        if is_counts(vals):
            return Expression("layers/counts", normalised=True)
    if adata.raw is not None and adata.raw.shape[0] == adata.n_obs:
        vals = _probe(adata.raw.X)
        check_values(vals, "raw.X")
        if is_counts(vals):
            if not adata.raw.var_names.equals(adata.var_names):
                logger.warning("raw.X holds the counts, over %s: using raw's genes",
                               gene_difference(adata.raw.var_names, adata.var_names, "raw.X",
                                               "X"))
            return Expression("raw.X", normalised=True)
    return None


def training_source(adata: ad.AnnData, *, say: bool = False) -> tuple[Any, pd.Index]:
    """The raw counts a generator trains on, with their genes: where :func:`find_counts` finds
    them, as every command reads them (``layers['counts']`` when it holds counts, else ``X``,
    or ``raw.X`` under a normalised ``X``: scanpy's layout). Raises :class:`DataError` when
    there are none. ``say``: where they are, at INFO (once per fit: where a fit first reads
    the user's data; the copies cellsynth makes of it, whose counts are in a layer, say nothing)."""
    expr = find_counts(adata)
    if expr.counts is None and "counts" in adata.layers:
        layer = _probe(adata.layers["counts"])
        raise DataError("layers['counts'] holds non-integer values (e.g. "
                        f"{layer[np.mod(layer, 1) != 0][0]:.6g}), not raw counts, and X holds "
                        "none either; put the raw counts in layers['counts'] (or X)")
    if expr.counts is None:
        raise expr.no_counts("this generator needs raw counts, but X holds normalised values "
                             "and there is no layers['counts'] or raw.X with counts; give the "
                             "unnormalised counts in X, layers['counts'] or raw.X")
    logger.log(logging.INFO if say else logging.DEBUG, "training on the raw counts in %s",
               expr.counts)
    if expr.counts == "raw.X":
        return adata.raw.X, adata.raw.var_names
    if expr.counts == "layers/counts":
        return adata.layers["counts"], adata.var_names
    return adata.X, adata.var_names


def counts_matrix(adata: ad.AnnData, expr: Expression) -> tuple[sp.csr_matrix, pd.Index]:
    """The counts (or, without counts, ``X``) as CSR float32, with their gene names."""
    if expr.counts == "layers/counts":
        x, genes = adata.layers["counts"], adata.var_names
    elif expr.counts == "raw.X":
        x, genes = adata.raw.X, adata.raw.var_names
    else:
        x, genes = adata.X, adata.var_names
    if not isinstance(x, np.ndarray | sp.spmatrix | sp.sparray):
        x = x[:]  # backed: read into memory (data.chunked reads chunks instead)
    x = canonical(sp.csr_matrix(x, dtype=np.float32))  # a gene stored twice in a cell: summed
    check_values(x.data, "the expression matrix")
    return x, pd.Index(genes)


def require_counts(adata: ad.AnnData, what: str) -> None:
    """Refuse normalised data where raw counts are needed (generators in count space)."""
    expr = find_counts(adata)
    if expr.counts is None:
        raise expr.no_counts(
            f"{what} needs raw counts, but X holds normalised values and there is no "
            "layers['counts'] or raw.X with counts; give the unnormalised file"
        )
