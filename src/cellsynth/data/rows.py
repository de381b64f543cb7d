"""Cells in memory served as mini-batches, as cells on disk are by the block loader.

:class:`Rows` serves in-memory counts as dense mini-batches on a device with the interface of
the on-disk :class:`~cellsynth.data.loader.BlockLoader` (``len``, ``batch``, ``iter_generator``,
``chunks``, ``type_sums``, ``digest``), so a model trains from either without asking where the
cells are.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import scipy.sparse as sp
import torch

from .loader import Batch


class Rows:
    """Cells (CSR counts, type codes, library sizes) served as dense mini-batches on a device.

    On CUDA, when the CSR arrays fit in a quarter of the free GPU memory, they are copied there
    once and every mini-batch is gathered and densified on the GPU; otherwise (and on the CPU)
    the rows are sliced with scipy, densified on the host and copied over.

    Parameters
    ----------
    counts
        Raw counts, CSR ``(n, n_genes)``.
    codes
        Integer type code per row, ``(n,)``.
    device
        Where the batches go.
    gather
        Force (True) or forbid (False) gathering from device-resident CSR; ``None`` decides.
    batch_size
        Cells per mini-batch of :meth:`iter_generator`.
    covariates
        Integer covariate codes per row, ``(n, k)``; None without covariates.
    """

    def __init__(
        self,
        counts: sp.csr_matrix,
        codes: np.ndarray,
        device: torch.device,
        gather: bool | None = None,
        *,
        batch_size: int = 256,
        covariates: np.ndarray | None = None,
    ) -> None:
        self.counts = counts
        self.n_genes = counts.shape[1]
        self.device = device
        self.batch_size = batch_size
        self.library_np = library_sizes(counts)  # (n,)
        self.codes_np = np.asarray(codes, dtype=np.int64)
        self.codes = torch.from_numpy(self.codes_np).to(device)
        self.library = torch.from_numpy(self.library_np).to(device)
        cov = None if covariates is None else np.asarray(covariates, dtype=np.int64)
        self.covariates_np = cov[:, None] if cov is not None and cov.ndim == 1 else cov  # (n, k)
        self.covariates = (None if covariates is None
                           else torch.from_numpy(self.covariates_np).to(device))
        if gather is None:
            gather = device.type == "cuda" and fits_on_device(counts, device)
        self.on_device = bool(gather)
        if self.on_device:
            if not counts.has_canonical_format:  # the gather writes each entry, not their sum
                counts = counts.copy()
                counts.sum_duplicates()
                self.counts = counts
            self.indptr = torch.from_numpy(counts.indptr.astype(np.int64)).to(device)
            self.indices = torch.from_numpy(counts.indices.astype(np.int32)).to(device)
            self.data = torch.from_numpy(counts.data.astype(np.float32)).to(device)

    def __len__(self) -> int:
        return self.counts.shape[0]

    def batch(self, idx: np.ndarray) -> tuple[torch.Tensor, ...]:
        """Counts ``(B, n_genes)``, codes ``(B,)``, libraries ``(B,)`` and covariate codes
        ``(B, k)`` (None without covariates) of rows ``idx``."""
        return self.take(idx).tensors()

    def take(self, idx: np.ndarray) -> Batch:
        """Rows ``idx`` as a :class:`~cellsynth.data.loader.Batch` (on the CPU with their CSR
        counts beside the dense ones)."""
        idx = np.asarray(idx, dtype=np.int64)
        idx_t = torch.from_numpy(idx).to(self.device)
        csr = None
        if self.on_device:
            total = int((self.counts.indptr[idx + 1] - self.counts.indptr[idx]).sum())
            x = gather_rows(self.indptr, self.indices, self.data, idx_t, total, self.n_genes)
        else:
            csr = self.counts[idx]
            x = torch.from_numpy(csr.toarray())
            if self.device.type == "cuda":
                x, csr = x.pin_memory().to(self.device, non_blocking=True), None
        c = None if self.covariates is None else self.covariates[idx_t]
        return Batch(x, self.codes[idx_t], self.library[idx_t], idx, c, csr)

    def iter_generator(self, generator: torch.Generator) -> Iterator[Batch]:
        """One epoch of shuffled mini-batches, the order drawn from ``generator``."""
        order = torch.randperm(len(self), generator=generator).numpy()
        for start in range(0, len(order), self.batch_size):
            yield self.take(order[start : start + self.batch_size])

    def chunks(self, chunk_size: int = 10_000) -> Iterator[tuple[sp.csr_matrix, np.ndarray,
                                                               np.ndarray]]:  # fmt: skip
        """The cells in order, sparse: ``(counts, codes, library)`` ``chunk_size`` at a time."""
        for start in range(0, len(self), chunk_size):
            sl = slice(start, start + chunk_size)
            yield self.counts[sl], self.codes_np[sl], self.library_np[sl]

    def type_sums(self, n_labels: int, *, target_sum: float | None = None) -> dict[str, np.ndarray]:
        """Per-type sums a count model's data-based start needs (as ``loader.type_sums``),
        summed type by type; ``lib_total`` is the sum of every library size."""
        return csr_type_sums(self.counts, self.codes_np, self.library_np, n_labels,
                             target_sum=target_sum)  # fmt: skip

    def digest(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """What identifies the cells for a training checkpoint: stored values per row, library
        sizes and type codes."""
        cov = () if self.covariates_np is None else (self.covariates_np,)
        return (np.diff(self.counts.indptr), self.library_np, self.codes_np, *cov)


def csr_type_sums(counts: sp.csr_matrix, codes: np.ndarray, library: np.ndarray, n_labels: int,
                  *, target_sum: float | None = None) -> dict[str, np.ndarray]:  # fmt: skip
    """Per-type ``n``, ``sum_l``, ``sum_l2`` and ``sum_x``, ``sum_x2``, ``sum_lx`` of CSR counts
    (``log1p(x / library * target_sum)`` when ``target_sum`` is given), and ``lib_total``."""
    if target_sum is not None:
        x = sp.csr_matrix(sp.diags(target_sum / library) @ counts, dtype=np.float64)
        x.data = np.log1p(x.data)
    else:
        x = sp.csr_matrix(counts, dtype=np.float64)
    n_genes = x.shape[1]
    lib = library.astype(np.float64)
    s1, s2, slx = (np.zeros((n_labels, n_genes)) for _ in range(3))
    for t in range(n_labels):
        rows = x[np.flatnonzero(codes == t)]
        s1[t] = np.asarray(rows.sum(axis=0)).ravel()
        s2[t] = np.asarray(rows.multiply(rows).sum(axis=0)).ravel()
        slx[t] = rows.T @ lib[codes == t]
    return {
        "n": np.bincount(codes, minlength=n_labels).astype(np.float64),
        "sum_l": np.bincount(codes, weights=lib, minlength=n_labels),
        "sum_l2": np.bincount(codes, weights=lib**2, minlength=n_labels),
        "sum_x": s1, "sum_x2": s2, "sum_lx": slx, "lib_total": lib.sum(),
    }  # fmt: skip


def gather_rows(
    indptr: torch.Tensor,
    indices: torch.Tensor,
    data: torch.Tensor,
    idx: torch.Tensor,
    total: int,
    n_cols: int,
) -> torch.Tensor:
    """Rows ``idx`` of a CSR matrix (its three arrays, on one device) as a dense ``(B, n_cols)``.

    ``total`` is the number of stored values in those rows (known on the host, so the GPU is
    never synchronised).
    """
    start = indptr[idx]  # (B,)
    length = indptr[idx + 1] - start  # (B,)
    row = torch.repeat_interleave(
        torch.arange(len(idx), device=idx.device), length, output_size=total
    )  # (total,)
    first = torch.cumsum(length, 0) - length  # (B,) position of each row's first value
    pos = torch.arange(total, device=idx.device) + torch.repeat_interleave(
        start - first, length, output_size=total
    )  # (total,) positions in indices/data
    out = torch.zeros((len(idx), n_cols), dtype=data.dtype, device=data.device)
    out[row, indices[pos]] = data[pos]
    return out


def fits_on_device(counts: sp.csr_matrix, device: torch.device) -> bool:
    """Whether the CSR arrays take under a quarter of the device's free memory."""
    free, _ = torch.cuda.mem_get_info(device)
    return counts.nnz * 8 + counts.shape[0] * 8 < free // 4


def library_sizes(counts: sp.csr_matrix) -> np.ndarray:
    """Total counts per row as float32, at least 1 (``log`` stays finite for empty cells)."""
    return np.maximum(np.asarray(counts.sum(axis=1), dtype=np.float32).ravel(), 1.0)
