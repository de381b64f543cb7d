"""The encoder's first layer on the CPU, reading only the non-zero counts.

The encoder's input is ``log1p(x / library * target_sum)`` of every gene, beside the embedded
type and covariates, and its first layer is the widest matmul of a training step after the
decoder's output: ``n_genes x n_hidden`` multiply-adds a cell, forward, and as many again for the
weight's gradient (its input needs none). But single-cell counts are sparse (3-10 % of the
entries of the shared data sets are non-zero, 30 % at most), and a zero count adds nothing to
either product. :class:`SparseFirstLayer` is that layer as an autograd function that reads the
non-zero entries only:

- forward: the non-zero counts of each cell (:func:`nonzero`: a compiled pass over the dense
  batch, in parallel over cells; a training step finds them once for this layer and for the
  likelihood), normalised where they are, as CSC, times the weight's gene columns as they lie
  (:func:`_times_w`: gene by gene, a tile of the weight read once into cache and added into
  every cell that has its genes, in parallel over blocks of the output's columns). Reading the
  weight in place, once, instead of a transposed copy made each step and a row of it for every
  non-zero count, took the layer's forward from 10.4 to 4.6 ms at 14,407 genes (a 29 MB weight,
  128 cells) and from 23.6 to 6.8 ms at 22,312; the same at 2,000 genes;
- backward: the weight's gradient of the genes, gene by gene over the cells that have the gene
  (:func:`_times_t`, on the counts as CSC, in parallel over blocks of genes, written straight
  into the gradient's ``(H, G)`` layout), and the dense products
  for the type and covariate columns, the bias and the embeddings' gradient as
  :class:`torch.nn.Linear` makes them.

Every output element is summed in one fixed order whatever the thread count, so a seed gives the
same weights on any number of threads; the sums run in another order than a dense matmul's, so the
results equal the dense layer's to float rounding (tested), not bit for bit. It runs where the
dense layer would multiply in float32 on the CPU; a GPU, and the bfloat16 training of
``cvae.precision``, keep the dense layer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch
from numba import njit, prange

from .._nb_kernel import numba_threads


@njit(parallel=True, cache=True)
def _count(x):
    """Non-zero entries of each row of the dense ``(B, G)`` float32 ``x``."""
    n = x.shape[0]
    out = np.empty(n, dtype=np.int64)
    for i in prange(n):
        k = 0
        for j in range(x.shape[1]):
            if x[i, j] != 0.0:
                k += 1
        out[i] = k
    return out


@njit(parallel=True, cache=True)
def _fill(x, indptr, indices, values):
    """CSR ``(indices, values)`` of the non-zero entries of the dense ``x``."""
    for i in prange(x.shape[0]):
        at = indptr[i]
        for j in range(x.shape[1]):
            v = x[i, j]
            if v != 0.0:
                indices[at] = j
                values[at] = v
                at += 1


#: genes per tile of :func:`_times_w`: each row of the weight gives a cache line of them
_TILE = 16


@njit(parallel=True, fastmath=True, cache=True)
def _times_w(ptr, idx, values, w, out, width):
    """``out (n, H) = S @ w.T`` for ``S`` of ``n`` rows given as CSC (``ptr`` over its genes,
    ``idx`` the rows) and ``w (H, genes)``, a strided view allowed (the layer's weight as it
    lies). Tasks in parallel: blocks of ``width`` output columns, each summed in a buffer of its
    own; in a task, :data:`_TILE` genes at a time, their weight columns copied into a tile (a
    cache line of each row), each added into the rows that have the gene. Every output element
    is summed over its genes in ascending order whatever the tasks, as a CSR row of sorted
    genes would sum them."""
    n, h = out.shape
    genes = len(ptr) - 1
    for task in prange((h + width - 1) // width):
        k0 = task * width
        hk = min(h, k0 + width) - k0
        tile = np.empty((_TILE, width), dtype=np.float32)
        acc = np.zeros((n, width), dtype=np.float32)
        for g0 in range(0, genes, _TILE):
            g1 = min(genes, g0 + _TILE)
            if ptr[g1] == ptr[g0]:  # no cell has these genes
                continue
            for k in range(hk):
                for j in range(g1 - g0):
                    tile[j, k] = w[k0 + k, g0 + j]
            for j in range(g1 - g0):
                t = tile[j]
                for p in range(ptr[g0 + j], ptr[g0 + j + 1]):
                    v = values[p]
                    row = acc[idx[p]]
                    for k in range(hk):
                        row[k] += v * t[k]
        for i in range(n):
            for k in range(hk):
                out[i, k0 + k] = acc[i, k]


def _width(h: int, threads: int) -> int:
    """Output columns per task of :func:`_times_w`: at most 128 (a task's tile and buffer stay
    in cache), and enough tasks for every thread; a multiple of 16."""
    per = -(-h // max(threads, 1))
    return int(min(128, max(16, -(-per // 16) * 16)))


_BLOCK = 16  # genes per task of :func:`_times_t`: their rows of the output written as one


@njit(parallel=True, fastmath=True, cache=True)
def _times_t(ptr, idx, values, dense, out_t):
    """``out_t (H, n) = (S @ dense).T`` for a compressed sparse ``S`` of ``n`` rows ``(ptr, idx,
    values)`` and ``dense (m, H)``, each row summed in the order of its entries: a block of
    :data:`_BLOCK` rows is summed in registers, then written column by column,
    a cache line of ``out_t`` at a time (``out_t`` may be a strided view: the weight's gradient
    of the genes, written where it lies, with no transposed copy after)."""
    h, n = out_t.shape
    for b in prange((n + _BLOCK - 1) // _BLOCK):
        i0 = b * _BLOCK
        i1 = min(n, i0 + _BLOCK)
        acc = np.zeros((_BLOCK, h), dtype=np.float32)
        for i in range(i0, i1):
            a = acc[i - i0]
            for p in range(ptr[i], ptr[i + 1]):
                v = values[p]
                row = dense[idx[p]]
                for k in range(h):
                    a[k] += v * row[k]
        for k in range(h):
            for i in range(i0, i1):
                out_t[k, i] = acc[i - i0, k]


@dataclass
class Nonzero:
    """The non-zero counts of a CPU batch ``(B, G)``, found in one compiled pass over the dense
    batch (:func:`nonzero`) or read from its CSR (:meth:`from_csr`): CSR
    (``indptr``, ``indices``, ``counts``) and each entry's ``rows`` and ``cols`` (torch int64).
    The encoder's sparse input layer and the likelihood's sum over the non-zero counts both
    read it."""

    shape: tuple[int, int]
    indptr: np.ndarray
    indices: np.ndarray  # int32
    counts: torch.Tensor  # float32, (nnz,)
    rows: torch.Tensor
    cols: torch.Tensor

    @classmethod
    def from_csr(cls, csr: sp.csr_matrix) -> Nonzero:
        """:class:`Nonzero` of a batch the caller holds as CSR already (a training batch sliced
        from the cells' CSR): read from its arrays, with no pass over the dense batch
        (duplicate entries summed and stored zeros dropped first, on a copy)."""
        if not csr.has_canonical_format or (csr.data == 0).any():
            csr = csr.copy()
            csr.sum_duplicates()
            csr.eliminate_zeros()
        indptr = csr.indptr.astype(np.int64)
        indices = np.ascontiguousarray(csr.indices, dtype=np.int32)
        counts = torch.from_numpy(np.ascontiguousarray(csr.data, dtype=np.float32))
        rows = torch.repeat_interleave(torch.arange(csr.shape[0]), torch.from_numpy(np.diff(indptr)))
        return cls(csr.shape, indptr, indices, counts, rows, torch.from_numpy(indices).long())

    def normalised(self, factor: torch.Tensor) -> sp.csr_matrix:
        """CSR of ``log1p(x * factor[:, None])`` (float32)."""
        values = torch.log1p(self.counts * factor.detach().float()[self.rows])
        return sp.csr_matrix((values.numpy(), self.indices, self.indptr), shape=self.shape)


def nonzero(x: torch.Tensor, max_density: float = 1.0) -> Nonzero | None:
    """:class:`Nonzero` of the dense CPU batch ``x``; None when more than ``max_density`` of
    its entries are non-zero (decided from a counting pass, before any entry is written)."""
    xn = np.ascontiguousarray(x.detach().numpy(), dtype=np.float32)
    with numba_threads(torch.get_num_threads()):
        nnz = _count(xn)
        if nnz.sum() > max_density * max(x.numel(), 1):
            return None
        indptr = np.zeros(len(xn) + 1, dtype=np.int64)
        np.cumsum(nnz, out=indptr[1:])
        indices = np.empty(indptr[-1], dtype=np.int32)
        counts = np.empty(indptr[-1], dtype=np.float32)
        _fill(xn, indptr, indices, counts)
    rows = torch.repeat_interleave(torch.arange(len(xn)), torch.from_numpy(nnz))
    return Nonzero(xn.shape, indptr, indices, torch.from_numpy(counts), rows,
                   torch.from_numpy(indices).long())  # fmt: skip


class SparseFirstLayer(torch.autograd.Function):
    """``Linear([log1p(x * factor), cond])`` of the encoder's first layer, reading only the
    non-zero counts of ``x`` (see the module docstring). ``weight`` is the layer's
    ``(H, G + n_cond)``: its first ``G`` columns multiply the genes."""

    @staticmethod
    def forward(ctx, csr: sp.csr_matrix, cond: torch.Tensor, weight: torch.Tensor,
                bias: torch.Tensor) -> torch.Tensor:  # fmt: skip
        n_genes = csr.shape[1]
        csc = csr.tocsc()  # sorted by gene, then by cell; the backward reads it too
        out = np.empty((csr.shape[0], weight.shape[0]), dtype=np.float32)
        threads = torch.get_num_threads()
        with numba_threads(threads):
            _times_w(csc.indptr, csc.indices, csc.data, weight.detach().numpy()[:, :n_genes],
                     out, _width(weight.shape[0], threads))  # fmt: skip
        w_cond = weight[:, n_genes:]
        h = torch.addmm(bias, cond, w_cond.t()).add_(torch.from_numpy(out))
        ctx.csc = csc
        ctx.save_for_backward(cond, weight)
        return h

    @staticmethod
    def backward(ctx, dy: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        cond, weight = ctx.saved_tensors
        csc = ctx.csc
        n_genes = csc.shape[1]
        grad_w = torch.empty_like(weight)
        dy = dy.contiguous()
        with numba_threads(torch.get_num_threads()):  # into grad_w[:, :n_genes], transposed
            _times_t(csc.indptr, csc.indices, csc.data, dy.numpy(), grad_w[:, :n_genes].numpy())
        grad_w[:, n_genes:] = dy.t() @ cond
        grad_cond = dy @ weight[:, n_genes:] if ctx.needs_input_grad[1] else None
        return None, grad_cond, grad_w, dy.sum(0)


#: above this share of non-zero entries in a batch the dense layer is as fast (Kang's 30 %: the
#: same step time either way; 9 % at 2,000 genes: 11 % less, 5 % at 15,000 genes: 17 % less)
MAX_DENSITY = 0.25


def sparse_first_layer(x: torch.Tensor | Nonzero, factor: torch.Tensor, cond: torch.Tensor,
                       layer: torch.nn.Linear) -> torch.Tensor | None:  # fmt: skip
    """``layer(cat([log1p(x * factor[:, None]), cond], -1))`` from the non-zero counts of the
    dense CPU batch ``x`` (or its :class:`Nonzero`); None when more than :data:`MAX_DENSITY` of
    its entries are non-zero (the dense layer is then as fast)."""
    found = x if isinstance(x, Nonzero) else nonzero(x, MAX_DENSITY)
    if found is None or len(found.counts) > MAX_DENSITY * max(math.prod(found.shape), 1):
        return None
    return SparseFirstLayer.apply(found.normalised(factor), cond, layer.weight, layer.bias)
