"""What a matrix's values are: counts (whole, plausible totals per cell) or not, and why not.

The checks every reader of expression values shares (:mod:`.io`'s :func:`~.io.find_counts`, the
cells a pipeline reads, a generator's training data, an evaluation's inputs): no negative, NaN,
infinite or true/false values; whole numbers where counts are needed; no cell whose total is a
corrupt value; and, for values that are not counts, why they should not be read as
log-normalised either.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import scipy.sparse as sp

from ..errors import DataError, listed

logger = logging.getLogger(__name__)


#: a cell whose total count is this many times the median cell's is a corrupt or mis-scaled
#: value (one count of 1e9 among cells of a few thousand), not a deep cell
MAX_LIBRARY_RATIO = 1_000.0
#: a median total count per cell above this is more than sequencing gives (scaled-up counts)
MAX_MEDIAN_LIBRARY = 1e7


def check_libraries(libraries: np.ndarray, what: str = "the counts") -> None:
    """Refuse cells whose total count exceeds :data:`MAX_LIBRARY_RATIO` times the median cell's
    (over 10 cells or more): a single absurd value would set every mean and dispersion a model
    fits for its type. Warn when the median itself exceeds :data:`MAX_MEDIAN_LIBRARY`, and when
    nearly every cell has the same total (90% within 5% of the median, over 50 cells or more):
    normalised values rounded to whole numbers pass as counts, and a generator would learn
    their totals, not a library size."""
    libs = np.asarray(libraries, dtype=np.float64)
    seen = libs[libs > 0]
    if len(seen) < 10:
        return
    med = float(np.median(seen))
    bad = libs > MAX_LIBRARY_RATIO * med
    if bad.any():
        raise DataError(
            f"{what}: {int(bad.sum())} cell(s) have a total count over "
            f"{MAX_LIBRARY_RATIO:,.0f} times the median cell's {med:,.0f} (the largest "
            f"{libs.max():.3g}): a corrupt or mis-scaled value, which would set every mean "
            "the model fits for its type; drop those cells or fix their counts")
    if med > MAX_MEDIAN_LIBRARY:
        logger.warning("%s: the median cell holds %.3g counts, more than sequencing gives "
                       "(thousands to a few million): are these counts scaled up?", what, med)
    share = float(np.mean(np.abs(seen - med) <= 0.05 * med))
    if len(seen) >= 50 and share >= 0.9:
        logger.warning("%s: %.0f%% of %d cells have a total within 5%% of %.0f counts: these "
                       "look like normalised values rounded to whole numbers, not raw counts "
                       "(whose totals vary from cell to cell); give the unnormalised counts",
                       what, 100 * share, len(seen), med)


def stored_values(values: np.ndarray, stored: np.dtype) -> np.ndarray:
    """Values read as float32 in the dtype they are stored in (a matrix on disk's
    ``stored_dtype``), so that :func:`check_values` sees a true/false, int8 or float16
    matrix as such (a matrix of text, objects or complex numbers: none of its values, in its
    dtype, which :func:`check_values` refuses)."""
    if stored.kind not in "biuf":  # text, objects, complex: refused by their dtype alone
        return np.zeros(0, dtype=stored)
    narrow = stored.kind in "biu" or (stored.kind == "f" and stored.itemsize == 2)
    return values.astype(stored, copy=False) if narrow else values


#: what values of a dtype that is not a real number are, by the dtype's kind
_NOT_NUMBERS = {"O": "Python objects", "S": "text", "U": "text", "c": "complex numbers", "M": "dates",
                "m": "time spans", "V": "records"}


def check_dtype(dtype: np.dtype, where: str) -> None:
    """Refuse a matrix whose values are not real numbers (text, Python objects, complex
    numbers...), which numpy's checks of values cannot read (a TypeError traceback) and a
    conversion to float32 reads silently (a complex number's imaginary part dropped)."""
    dtype = np.dtype(dtype)
    if dtype.kind in "biuf":
        return
    what = _NOT_NUMBERS.get(dtype.kind, "values that are not numbers")
    table = ": a table with text columns taken for the matrix?" if dtype.kind == "O" else ""
    raise DataError(
        f"{where} holds {what} (dtype {dtype}{table}), not numbers: expression values must be a "
        "numeric matrix (float32 or an integer type); convert it where its values are numbers "
        "(e.g. adata.X = adata.X.astype(np.float32), then write the file again, for a file), "
        "or give the raw counts as numbers")


def check_values(values: np.ndarray, where: str) -> None:
    """Refuse values that are not real numbers (:func:`check_dtype`), negative, NaN or
    infinite expression values, and true/false ones (binarised data: not counts, and no model
    of counts can be fitted to them)."""
    check_dtype(values.dtype, where)
    if values.size == 0:
        return
    if values.dtype.kind == "b":
        raise DataError(f"{where} holds true/false values (binarised expression: detected or "
                        "not), not counts: give the raw counts the matrix was made from")
    if not np.all(np.isfinite(values)):
        if values.dtype == np.float16 and not np.isnan(values).any():  # overflowed: said
            raise DataError(
                f"{where} holds infinite values stored as float16, which holds values up to "
                f"{float(np.finfo(np.float16).max):,.0f} only: larger counts became infinite "
                "when they were converted; write the counts from their source as float32 or "
                "int32 (a conversion back cannot recover them)")
        raise DataError(
            f"{where} holds NaN or infinite values; replace or drop those cells before running"
        )
    if values.min() < 0:
        if values.dtype.kind == "i" and values.dtype.itemsize <= 2:  # int8/int16: wrapped
            info = np.iinfo(values.dtype)
            raise DataError(
                f"{where} holds negative values (min {values.min()}) stored as {values.dtype}, "
                f"which holds counts up to {info.max} only: larger counts wrapped around to "
                "negative numbers when they were converted; write the counts from their source "
                "as float32 or int32 (a conversion back cannot recover them)")
        raise DataError(
            f"{where} holds negative values (min {values.min():.3g}): expression must be counts "
            "or normalised non-negative values, not scaled/centred data"
        )


def is_counts(values: np.ndarray) -> bool:
    """Whether sampled values look like raw counts: non-negative whole numbers."""
    if values.size == 0:
        return True
    return bool(np.all(values >= 0) and np.all(np.mod(values, 1) == 0))


def fractional_rows(x: sp.csr_matrix) -> tuple[np.ndarray, float | None]:
    """The rows of the CSR ``x`` holding a non-integer value, and one such value (None: none)."""
    fractional = np.mod(x.data, 1) != 0
    if not fractional.any():
        return np.zeros(0, dtype=np.int64), None
    entry_rows = np.repeat(np.arange(x.shape[0]), np.diff(x.indptr))
    return np.unique(entry_rows[fractional]), float(x.data[fractional][0])


def check_whole(x: sp.csr_matrix, rows: np.ndarray | None = None) -> None:
    """Refuse counts (CSR) with a non-integer value, naming the first such cells: their row
    numbers in the data are ``rows`` (default: ``x``'s own)."""
    bad, example = fractional_rows(x)
    if not len(bad):
        return
    at = bad if rows is None else np.asarray(rows)[bad]
    raise DataError(
        "this generator needs raw counts, but the matrix holds non-integer values (cells at "
        f"rows {listed(at, 3)}; e.g. {example:.6g}: normalised, scaled or "
        "ambient-corrected data); give the unnormalised counts in X, layers['counts'] or raw.X "
        "(counts with a little noise: round them, np.rint)")


#: a sample whose non-zero values are at least this share whole numbers reads as counts with a
#: few non-integer values (noise, ambient correction), not as normalised data
MOSTLY_WHOLE = 0.9


#: sampled values all this close to whole numbers are counts with round-off or a little noise
NEAR_WHOLE = 0.01
#: normalised values above this are not log-transformed (log1p of counts per 10,000 stays under
#: 10, of counts per million under 14, log2 of them under 20)
LOGGED_MAX = 50.0


def doubt(values: np.ndarray) -> tuple[str, str]:
    """Why sampled values that are not counts should not be read as log-normalised values
    either, with what to do (``("", "")`` when they may): counts with round-off, noise, a
    constant offset or a few corrected values, or normalised values that were never
    log-transformed. The second text is the advice for a caller that needs raw counts, where it
    differs from the first ("": the same)."""
    nonzero = values[values != 0]
    if not nonzero.size:
        return "", ""
    off = np.abs(nonzero - np.rint(nonzero))
    if off.max() <= NEAR_WHOLE:
        return (f"X looks like raw counts stored with round-off or a little noise (every "
                f"sampled value within {NEAR_WHOLE} of a whole number, e.g. "
                f"{nonzero[off.argmax()]:.8g}): round them (adata.X.data = np.rint(adata.X.data)) "
                "and write the file again, or give the raw counts in layers['counts']"), ""
    if offset := _offset(nonzero):
        return offset, ""
    if mostly := _mostly_whole(nonzero):  # counts with a few corrected values: large too
        return mostly, ""
    if nonzero.max() > LOGGED_MAX:
        what = (f"X holds normalised values that are not log-transformed (the largest sampled "
                f"is {nonzero.max():.6g}; log-normalised values stay under {LOGGED_MAX:g})")
        return (f"{what}: give the raw counts (best: generators and evaluate need them), or "
                "log-transform them (sc.pp.log1p) for what reads log-normalised values alone",
                f"{what}, and raw counts are needed here (log-transforming them would not do): "
                "give the unnormalised counts in X, layers['counts'] or raw.X")
    return "", ""


def _offset(nonzero: np.ndarray) -> str:
    """Where every sampled value is a whole number plus one constant (a pseudo-count added to
    counts, e.g. 0.5), what to do about it ("" otherwise)."""
    frac = np.mod(nonzero, 1)
    shift = float(np.median(frac))
    if nonzero.size < 2 or np.ptp(frac) > NEAR_WHOLE or not NEAR_WHOLE < shift < 1 - NEAR_WHOLE:
        return ""
    return (f"X looks like raw counts plus a constant {shift:.6g} (every sampled value is a "
            f"whole number + {shift:.6g}, e.g. {nonzero[0]:.6g}: a pseudo-count added?): give "
            f"the raw counts, or subtract it from the stored values (sparse X: adata.X.data -= "
            f"{shift:.6g}; dense X: adata.X -= {shift:.6g}) and write the file again")


def _share(n: int, total: int, what: str) -> str:
    """``"12 of 3,000,000 values (0.0004%)"``: a part, its whole and the percentage to its
    first significant digit (a few of millions never reads as 0.00%)."""
    pct = 100 * n / max(total, 1)
    digits = 1 if pct >= 1 or pct <= 0 else max(1, -math.floor(math.log10(pct)))
    return f"{n:,} of {total:,} {what} ({pct:.{digits}f}%)"


def _mostly_whole(values: np.ndarray) -> str:
    """Where sampled values are counts but for a few non-integer ones, what to do about them."""
    nonzero = values[values != 0]
    fractional = np.mod(nonzero, 1) != 0
    if not nonzero.size or not fractional.any() or fractional.mean() > 1 - MOSTLY_WHOLE:
        return ""
    share = _share(int(fractional.sum()), nonzero.size, "non-zero values sampled")
    return (f"X looks like raw counts, but {share} are not whole numbers (e.g. "
            f"{nonzero[fractional][0]:.6g}): ambient-corrected or noisy counts? round them "
            "(np.rint) or drop those cells, or give the raw counts in layers['counts']")
