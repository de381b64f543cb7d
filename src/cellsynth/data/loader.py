"""Mini-batches of cells read from disk: contiguous blocks, shuffled within a buffer.

Random rows of an on-disk CSR cost one read each; contiguous rows cost one read for many.
:class:`BlockLoader` takes the middle way of block sampling (the idea behind scDataset and
annbatch): the cells are cut into blocks of ``block_size`` consecutive rows, the blocks are
shuffled each epoch, ``fetch_factor * batch_size`` cells' worth of blocks are read at once into
a buffer (sorted, so the reads run forward through the file), the buffer's rows are shuffled,
and mini-batches are cut from it and densified one at a time. Every cell comes once per epoch;
the same seed and epoch give the same batches; under ``torch.distributed`` each rank takes
every ``world_size``-th block of the shuffled order.

Memory holds one buffer (two while the next one is read ahead), one dense mini-batch, and four
bytes a cell (library sizes, type codes).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from .. import keys as K
from ..errors import DataError
from ..options import progress_bar
from .csr import stack_rows
from .store import RowStore

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Batch:
    """One mini-batch: what a count-space VAE's ``loss(x, y, library)`` takes, and where from."""

    x: torch.Tensor  # (B, n_genes) float32 counts
    y: torch.Tensor  # (B,) int64 type codes
    library: torch.Tensor  # (B,) float32 total counts, at least 1
    index: np.ndarray  # (B,) positions of the cells among the loader's cells
    c: torch.Tensor | None = None  # (B, k) int64 covariate codes; None without covariates
    csr: sp.csr_matrix | None = None  # the counts x as CSR, where they were sliced from CSR

    def __len__(self) -> int:
        """Cells in the batch (what a training loop weights the batch's mean loss by)."""
        return len(self.index)

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``(x, y, library, c)``: ``module.loss(*batch.tensors(), kl_weight=beta)``."""
        return self.x, self.y, self.library, self.c

    def loss(self, module: torch.nn.Module, kl_weight: float) -> torch.Tensor:
        """The batch's mean loss under ``module`` (a count-space VAE) at KL weight
        ``kl_weight``, with its CSR counts where it has them (the CPU: no pass over the dense
        counts to find the non-zero ones)."""
        return module.loss(*self.tensors(), kl_weight=kl_weight, csr=self.csr).loss


class BlockLoader:
    """Shuffled mini-batches of the rows ``rows`` of an on-disk CSR, densified one at a time.

    Parameters
    ----------
    x
        The counts on disk (e.g. ``PreprocessedStore(path).x``).
    codes
        Integer type code of each cell served, ``(n,)``, aligned with ``rows``.
    rows
        Sorted positions in ``x`` of the cells served (e.g. the training cells); all by default.
    batch_size
        Cells per mini-batch; the last batch of an epoch may be smaller (unless ``drop_last``).
    block_size
        Consecutive cells read and kept together; smaller blocks mix better and read slower.
    fetch_factor
        The buffer holds ``fetch_factor * batch_size`` cells (whole blocks) shuffled together.
    shuffle
        Shuffle blocks and rows (training); ``False`` serves the cells in order (evaluation).
    seed
        Seeds every epoch's order: ``(seed, epoch)`` gives the same batches on every run.
    rank, world_size
        This process's share under ``torch.distributed`` (default: from the initialised process
        group, else one process). Ranks take every ``world_size``-th block of the same shuffled
        order, so their cells never overlap.
    even
        With several ranks, every rank yields the same number of batches (DDP steps in lock
        step): up to a block of cells per rank then waits for a later epoch. ``False`` yields
        every cell exactly once across ranks, in unequal numbers of batches.
    library
        Total counts of each cell, if known; otherwise computed in one pass over the cells.
    covariates
        Integer covariate codes of each cell served, ``(n, k)``, aligned with ``rows``; None
        without covariates.
    device
        Where the tensors go; on CUDA the sparse rows are copied and densified there.
    prefetch
        Read the next buffer in a background thread while the current one is served.
    """

    def __init__(
        self,
        x: RowStore,
        codes: np.ndarray,
        *,
        rows: np.ndarray | None = None,
        batch_size: int = 256,
        block_size: int = 32,
        fetch_factor: int = 32,
        shuffle: bool = True,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        even: bool = True,
        drop_last: bool = False,
        library: np.ndarray | None = None,
        covariates: np.ndarray | None = None,
        device: str | torch.device = "cpu",
        prefetch: bool = True,
    ) -> None:
        if min(batch_size, block_size, fetch_factor) < 1:
            raise DataError(f"batch_size, block_size and fetch_factor must be at least 1, got "
                            f"{batch_size}, {block_size}, {fetch_factor}")
        self.x = x
        self.rows = np.arange(x.shape[0]) if rows is None else np.asarray(rows, dtype=np.int64)
        if len(self.rows) > 1 and np.any(np.diff(self.rows) <= 0):
            raise DataError("BlockLoader rows must be sorted, unique positions; sort them first")
        if len(self.rows) and (self.rows[0] < 0 or self.rows[-1] >= x.shape[0]):
            raise DataError(f"BlockLoader rows run outside the {x.shape[0]} stored cells")
        self.codes_np = np.asarray(codes, dtype=np.int64)
        if len(self.codes_np) != len(self.rows):
            raise DataError(f"{len(self.codes_np)} type codes for {len(self.rows)} cells; "
                            "give one code per cell served")
        self.batch_size, self.block_size, self.fetch_factor = batch_size, block_size, fetch_factor
        self.shuffle, self.seed, self.drop_last, self.even = shuffle, seed, drop_last, even
        self.rank, self.world_size = _rank_and_size(rank, world_size)
        self.device = torch.device(device)
        self.prefetch = prefetch
        self.library_np = (np.asarray(library, dtype=np.float32) if library is not None
                           else self._library())
        self.covariates_np = (None if covariates is None
                              else np.asarray(covariates, dtype=np.int64).reshape(len(self.rows), -1))
        self.on_device = False  # rows are read from disk, never held on the device
        self.epoch = 0
        self.last_epoch: dict[str, float] = {}
        self.passes = 0  # epochs served by iter_generator, to name them in logs

    @classmethod
    def for_split(cls, store, labels: list[str], split: str = "train", **kwargs) -> BlockLoader:
        """The cells of one split of a ``PreprocessedStore``, typed by their index in ``labels``.

        Cells of types outside ``labels`` are left out (with a warning).
        """
        obs = store.obs
        in_split = obs[K.SPLIT].astype(str).to_numpy() == split
        cell_labels = obs[store.label_key].astype(str).to_numpy()
        known = np.isin(cell_labels, labels)
        if (in_split & ~known).any():
            logger.warning("%d %s cells of types the model does not know are left out",
                           int((in_split & ~known).sum()), split)
        rows = np.flatnonzero(in_split & known)
        codes = pd.Categorical(cell_labels[rows], categories=list(labels)).codes.astype(np.int64)
        return cls(store.x, codes, rows=rows, **kwargs)

    def __len__(self) -> int:
        """Cells served (all ranks), as the in-memory rows' ``len``; see :meth:`n_batches`."""
        return len(self.rows)

    def n_batches(self, epoch: int | None = None) -> int:
        """Mini-batches this rank yields in ``epoch`` (default: the one :meth:`set_epoch` set)."""
        return self._n_batches(self._plans(self.epoch if epoch is None else epoch))

    def set_epoch(self, epoch: int) -> None:
        """The epoch the next ``iter(loader)`` serves (as ``DistributedSampler.set_epoch``)."""
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[Batch]:
        return self.iter_epoch(self.epoch)

    def iter_generator(self, generator: torch.Generator) -> Iterator[Batch]:
        """One epoch whose order is keyed by a number drawn from ``generator``.

        A training loop that checkpoints its data-order generator then resumes with the very
        batches it would have had (every rank must hold the same generator state).
        """
        key = int(torch.randint(0, 2**62, (1,), generator=generator))
        self.passes += 1
        return self.iter_epoch(key, name=f"pass {self.passes}")

    def chunks(self, chunk_size: int = 10_000) -> Iterator[tuple[sp.csr_matrix, np.ndarray,
                                                               np.ndarray]]:
        """The cells in order, sparse, ``chunk_size`` at a time: ``(counts, codes, library)``.

        For statistics over every cell (e.g. a decoder's data-based start), never densified.
        """
        for pos, block in self.x.chunks(chunk_size, self.rows):
            yield block, self.codes_np[pos], self.library_np[pos]

    def type_sums(self, n_labels: int, *, target_sum: float | None = None) -> dict[str, np.ndarray]:
        """Per-type sums over every cell in one sequential pass (:func:`type_sums`)."""
        return type_sums(self, n_labels, target_sum=target_sum)

    def digest(self) -> tuple[np.ndarray, ...]:
        """What identifies the cells for a training checkpoint: stored values per row (when the
        store has a row pointer), library sizes and type codes."""
        indptr = getattr(self.x, "indptr", None)
        nnz = () if indptr is None else (indptr[self.rows + 1] - indptr[self.rows],)
        cov = () if self.covariates_np is None else (self.covariates_np,)
        return (*nnz, self.library_np, self.codes_np, *cov)

    # ------------------------------------------------------------------------------------------

    def _library(self) -> np.ndarray:
        out = np.empty(len(self.rows), dtype=np.float32)
        for pos, block in self.x.chunks(10_000, self.rows, desc="library sizes"):
            out[pos] = np.asarray(block.sum(axis=1), dtype=np.float32).ravel()
        return np.maximum(out, 1.0)

    def _rng(self, *key: int) -> np.random.Generator:
        return np.random.default_rng(np.random.SeedSequence(self.seed, spawn_key=key))

    def _plans(self, epoch: int) -> list[list[np.ndarray]]:
        """For every rank, its fetches: each the sorted positions of the cells of some blocks."""
        n = len(self.rows)
        n_blocks = -(-n // self.block_size)
        order = self._rng(epoch).permutation(n_blocks) if self.shuffle else np.arange(n_blocks)
        per_fetch = max(1, self.fetch_factor * self.batch_size // self.block_size)
        plans = []
        for r in range(self.world_size):
            mine = order[r :: self.world_size]
            fetches = []
            for i in range(0, len(mine), per_fetch):
                blocks = np.sort(mine[i : i + per_fetch])
                starts = blocks * self.block_size
                fetches.append(np.concatenate(
                    [np.arange(s, min(s + self.block_size, n)) for s in starts]))
            plans.append(fetches)
        return plans

    def _n_batches(self, plans: list[list[np.ndarray]]) -> int:
        def count(fetches):
            cells = sum(len(f) for f in fetches)
            return cells // self.batch_size if self.drop_last else -(-cells // self.batch_size)
        if self.world_size > 1 and self.even:
            return min(count(p) for p in plans)
        return count(plans[self.rank])

    def _read(self, positions: np.ndarray) -> sp.csr_matrix:
        return self.x.take(self.rows[positions])

    def iter_epoch(self, epoch: int, *, name: str | None = None) -> Iterator[Batch]:
        """This rank's mini-batches of epoch ``epoch`` (``name`` in the progress bar and log:
        default ``epoch N``)."""
        name = name or f"epoch {epoch}"
        plans = self._plans(epoch)
        fetches, n_batches = plans[self.rank], self._n_batches(plans)
        rng = self._rng(epoch, self.rank, 1)
        started, read_s, served, n_done = time.perf_counter(), 0.0, 0, 0
        carry_x = sp.csr_matrix((0, self.x.shape[1]), dtype=np.float32)
        carry_i = np.empty(0, dtype=np.int64)
        bar = progress_bar(total=n_batches, desc=name, unit="batch")
        pool = ThreadPoolExecutor(max_workers=1) if self.prefetch else None
        try:
            pending = (pool.submit(self._read, fetches[0]) if pool and fetches else None)
            for i, positions in enumerate(fetches):
                if n_done == n_batches:  # even shards: this rank has served its share
                    break
                t0 = time.perf_counter()
                block = pending.result() if pending is not None else self._read(positions)
                read_s += time.perf_counter() - t0
                if pool is not None and i + 1 < len(fetches):
                    pending = pool.submit(self._read, fetches[i + 1])
                buf_x = stack_rows([carry_x, block]) if carry_i.size else block
                buf_i = np.concatenate([carry_i, positions]) if carry_i.size else positions
                if self.shuffle:
                    perm = rng.permutation(len(buf_i))
                    buf_x, buf_i = buf_x[perm], buf_i[perm]
                last = i + 1 == len(fetches)
                stop = len(buf_i) if last else len(buf_i) - len(buf_i) % self.batch_size
                for start in range(0, stop, self.batch_size):
                    if n_done == n_batches:
                        break
                    end = min(start + self.batch_size, stop)
                    if end - start < self.batch_size and self.drop_last:
                        break
                    yield self._batch(buf_x[start:end], buf_i[start:end])
                    served += end - start
                    n_done += 1
                    bar.update(1)
                carry_x, carry_i = buf_x[stop:], buf_i[stop:]
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
            bar.close()
        seconds = time.perf_counter() - started
        self.last_epoch = {"epoch": epoch, "cells": served, "batches": n_done, "seconds": seconds,
                           "read_seconds": read_s, "cells_per_second": served / max(seconds, 1e-9)}
        logger.info("loader %s (rank %d/%d): %d cells in %d batches, %.2f s, %.0f cells/s "
                    "(waiting on reads %.2f s)", name, self.rank, self.world_size, served, n_done,
                    seconds, self.last_epoch["cells_per_second"], read_s)

    def batch(self, idx: np.ndarray) -> tuple[torch.Tensor, ...]:
        """Counts ``(B, n_genes)``, codes, libraries and covariate codes (or None) of the cells
        at positions ``idx``.

        Random access in any order (read sorted, returned as asked): for evaluation passes and
        per-type subsamples, as the in-memory rows' ``batch``.
        """
        return self.take(idx).tensors()

    def take(self, idx: np.ndarray) -> Batch:
        """The cells at positions ``idx`` as a :class:`Batch` (random access, as :meth:`batch`)."""
        idx = np.asarray(idx, dtype=np.int64)
        order = np.argsort(idx, kind="stable")
        uniq, inverse = np.unique(idx[order], return_inverse=True)
        block = self._read(uniq)[inverse]
        back = np.empty_like(order)
        back[order] = np.arange(len(order))
        return self._batch(block[back], idx)

    def _batch(self, block: sp.csr_matrix, index: np.ndarray) -> Batch:
        """Densify ``block`` (rows ``index``) into tensors on the device."""
        y = torch.from_numpy(self.codes_np[index])
        library = torch.from_numpy(self.library_np[index])
        c = None if self.covariates_np is None else torch.from_numpy(self.covariates_np[index])
        if self.device.type == "cuda":
            x = _densify_on_device(block, self.device)
            y, library = (t.pin_memory().to(self.device, non_blocking=True) for t in (y, library))
            c = None if c is None else c.pin_memory().to(self.device, non_blocking=True)
            return Batch(x, y, library, index, c)
        return Batch(torch.from_numpy(block.toarray()), y, library, index, c, block)


def type_sums(
    loader: BlockLoader, n_labels: int, *, target_sum: float | None = None,
    chunk_size: int = 10_000,
) -> dict[str, np.ndarray]:  # fmt: skip
    """Per-type sums over every cell of ``loader``, in one sequential sparse pass (float64).

    Returns ``n``, ``sum_l``, ``sum_l2`` (``(n_labels,)``: cells, sum of library sizes and of
    their squares) and ``sum_x``, ``sum_x2``, ``sum_lx`` (``(n_labels, n_genes)``: sum of the
    values, of their squares, and of library x value), the moments a count model's data-based
    start needs. The values are the counts, or ``log1p(counts / library * target_sum)`` when
    ``target_sum`` is given.
    """
    g = loader.x.shape[1]
    sums = {key: np.zeros((n_labels, g)) for key in ("sum_x", "sum_x2", "sum_lx")}
    for block, codes, lib in loader.chunks(chunk_size):
        lib = lib.astype(np.float64)
        x = sp.csr_matrix(block, dtype=np.float64)
        if target_sum is not None:
            x = sp.csr_matrix(sp.diags(target_sum / lib) @ x)
            x.data = np.log1p(x.data)
        onehot = sp.csr_matrix((np.ones(len(codes)), (codes, np.arange(len(codes)))),
                               shape=(n_labels, len(codes)))  # (n_labels, chunk)
        sums["sum_x"] += (onehot @ x).toarray()
        sums["sum_x2"] += (onehot @ x.multiply(x)).toarray()
        sums["sum_lx"] += (onehot @ sp.diags(lib) @ x).toarray()
    lib, codes = loader.library_np.astype(np.float64), loader.codes_np
    sums["n"] = np.bincount(codes, minlength=n_labels).astype(np.float64)
    sums["sum_l"] = np.bincount(codes, weights=lib, minlength=n_labels)
    sums["sum_l2"] = np.bincount(codes, weights=lib**2, minlength=n_labels)
    return sums


def _densify_on_device(block: sp.csr_matrix, device: torch.device) -> torch.Tensor:
    """Copy the CSR arrays (not the dense rows) to ``device`` and scatter them into a dense tensor."""
    n, g = block.shape
    counts = torch.from_numpy(np.diff(block.indptr).astype(np.int64)).pin_memory()
    cols = torch.from_numpy(block.indices.astype(np.int64)).pin_memory()
    vals = torch.from_numpy(block.data.astype(np.float32, copy=False)).pin_memory()
    counts, cols, vals = (t.to(device, non_blocking=True) for t in (counts, cols, vals))
    rows = torch.repeat_interleave(torch.arange(n, device=device), counts)
    x = torch.zeros((n, g), dtype=torch.float32, device=device)
    return x.index_put_((rows, cols), vals, accumulate=True)


def _rank_and_size(rank: int | None, world_size: int | None) -> tuple[int, int]:
    if rank is None or world_size is None:
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized():
            rank = dist.get_rank() if rank is None else rank
            world_size = dist.get_world_size() if world_size is None else world_size
    rank, world_size = int(rank or 0), int(world_size or 1)
    if not 0 <= rank < world_size:
        raise DataError(f"rank {rank} is outside world size {world_size}")
    return rank, world_size
