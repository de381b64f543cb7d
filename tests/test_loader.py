"""The streaming mini-batch loader: every cell once an epoch, seeded, sharded, bounded memory."""

from __future__ import annotations

import logging
import tracemalloc

import h5py
import numpy as np
import pytest
import scipy.sparse as sp
import torch

from cellsynth.data.csr_writer import CSRWriter
from cellsynth.data.loader import BlockLoader, type_sums
from cellsynth.data.store import RowStore
from cellsynth.errors import DataError


@pytest.fixture
def store(tmp_path):
    """1,000 cells x 50 genes of counts on disk, and the matrix in memory to compare."""
    rng = np.random.default_rng(0)
    x = sp.random(1000, 50, density=0.2, format="csr", random_state=rng, dtype=np.float32)
    x.data = np.ceil(x.data * 10)
    with h5py.File(tmp_path / "x.h5", "w") as f:
        w = CSRWriter(f, "X", 50)
        for start in range(0, 1000, 300):
            w.append(x[start : start + 300])
    f = h5py.File(tmp_path / "x.h5", "r")
    yield RowStore(f["X"], "X"), x
    f.close()


def _epoch(loader, epoch=0):
    loader.set_epoch(epoch)
    return list(loader)


def test_every_cell_once_with_its_counts_codes_and_library(store):
    x_disk, x = store
    rows = np.sort(np.random.default_rng(1).choice(1000, 700, replace=False))
    codes = np.arange(700) % 5
    loader = BlockLoader(x_disk, codes, rows=rows, batch_size=64, block_size=8, fetch_factor=3,
                         seed=0)
    batches = _epoch(loader)
    assert len(batches) == loader.n_batches() == -(-700 // 64) and len(loader) == 700
    assert [len(b) for b in batches[:-1]] == [64] * (len(batches) - 1)  # full but the last
    seen = np.concatenate([b.index for b in batches])
    assert np.array_equal(np.sort(seen), np.arange(700))  # each cell exactly once
    assert not np.array_equal(seen, np.arange(700))  # shuffled
    for b in batches[:3]:
        dense = x[rows[b.index]].toarray()
        assert b.x.dtype == torch.float32 and b.x.shape == (len(b.index), 50)
        assert np.array_equal(b.x.numpy(), dense)
        assert np.array_equal(b.y.numpy(), codes[b.index])
        assert np.array_equal(b.library.numpy(), np.maximum(dense.sum(1), 1).astype(np.float32))
    # random access in any order, as the in-memory rows' batch(idx)
    idx = np.array([5, 699, 5, 0, 300])
    xb, yb, lb, _ = loader.batch(idx)
    assert np.array_equal(lb.numpy(), np.maximum(x[rows[idx]].toarray().sum(1), 1))
    assert np.array_equal(xb.numpy(), x[rows[idx]].toarray()) and np.array_equal(yb, codes[idx])


def test_seeded_order(store):
    x_disk, _ = store
    codes = np.zeros(1000, dtype=int)

    def order(seed, epoch, prefetch=True):
        loader = BlockLoader(x_disk, codes, batch_size=50, block_size=16, fetch_factor=4,
                             seed=seed, prefetch=prefetch)
        return np.concatenate([b.index for b in _epoch(loader, epoch)])

    first = order(0, 0)
    assert np.array_equal(first, order(0, 0))  # same seed and epoch: same batches
    assert np.array_equal(first, order(0, 0, prefetch=False))  # reading ahead changes nothing
    assert not np.array_equal(first, order(0, 1))  # a new order each epoch
    assert not np.array_equal(first, order(1, 0))
    loader = BlockLoader(x_disk, codes, batch_size=64, shuffle=False)
    assert np.array_equal(np.concatenate([b.index for b in loader]), np.arange(1000))
    # keyed by a checkpointable torch generator: the same state gives the same epoch
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    loader = BlockLoader(x_disk, codes, batch_size=50, block_size=16, seed=0)
    first = [b.index for b in loader.iter_generator(g1)]
    assert all(np.array_equal(a, b) for a, b in zip(first, [
        b.index for b in loader.iter_generator(g2)], strict=True))
    second = np.concatenate([b.index for b in loader.iter_generator(g1)])
    assert not np.array_equal(np.concatenate(first), second)


def test_sequential_chunks_for_statistics(store):
    x_disk, x = store
    rows = np.arange(0, 1000, 3)
    loader = BlockLoader(x_disk, rows % 4, rows=rows, batch_size=10)
    parts = list(loader.chunks(chunk_size=128))
    assert _same(sp.vstack([c for c, _, _ in parts], format="csr"), x[rows])
    assert np.array_equal(np.concatenate([y for _, y, _ in parts]), rows % 4)
    assert np.array_equal(np.concatenate([lib for _, _, lib in parts]), loader.library_np)


@pytest.mark.parametrize("target_sum", [None, 1e4])
def test_type_sums(store, target_sum):
    x_disk, x = store
    rows = np.arange(1, 1000, 2)
    codes = rows % 3
    loader = BlockLoader(x_disk, codes, rows=rows)
    sums = type_sums(loader, 4, target_sum=target_sum, chunk_size=70)
    dense = x[rows].toarray().astype(np.float64)
    lib = np.maximum(dense.sum(1), 1)
    if target_sum is not None:
        dense = np.log1p(dense / lib[:, None] * target_sum)
    for t in range(4):
        d, lt = dense[codes == t], lib[codes == t]
        assert sums["n"][t] == len(d) and np.isclose(sums["sum_l"][t], lt.sum())
        assert np.isclose(sums["sum_l2"][t], (lt**2).sum())
        assert np.allclose(sums["sum_x"][t], d.sum(0)) and np.allclose(sums["sum_x2"][t], (d**2).sum(0))
        assert np.allclose(sums["sum_lx"][t], lt @ d)


def _same(a, b) -> bool:
    return a.shape == b.shape and (a != b).nnz == 0


@pytest.mark.parametrize("even", [False, True])
def test_ranks_share_the_cells(store, even):
    x_disk, _ = store
    codes = np.zeros(1000, dtype=int)
    parts, lengths = [], []
    for rank in range(3):
        loader = BlockLoader(x_disk, codes, batch_size=32, block_size=10, fetch_factor=2,
                             seed=4, rank=rank, world_size=3, even=even)
        batches = _epoch(loader, 2)
        assert len(batches) == loader.n_batches(2)
        parts.append(np.concatenate([b.index for b in batches]))
        lengths.append(len(batches))
    seen = np.concatenate(parts)
    assert len(np.unique(seen)) == len(seen)  # no cell on two ranks
    if even:
        assert len(set(lengths)) == 1  # DDP ranks step together
        assert len(seen) > 1000 - 3 * 2 * 32
    else:
        assert np.array_equal(np.sort(seen), np.arange(1000))  # all cells, once


def test_drop_last_and_bad_arguments(store):
    x_disk, _ = store
    loader = BlockLoader(x_disk, np.zeros(1000, int), batch_size=96, drop_last=True)
    assert all(len(b) == 96 for b in loader) and loader.n_batches() == 1000 // 96
    with pytest.raises(DataError, match="sorted"):
        BlockLoader(x_disk, np.zeros(2, int), rows=np.array([5, 3]))
    with pytest.raises(DataError, match="type codes"):
        BlockLoader(x_disk, np.zeros(3, int), rows=np.array([1, 2]))
    with pytest.raises(DataError, match="outside world size"):
        BlockLoader(x_disk, np.zeros(1000, int), rank=2, world_size=2)


def test_memory_and_throughput(tmp_path, caplog):
    """An epoch holds a buffer and a batch, not the matrix; its speed is logged.

    The matrix is large against the loader's buffer (about 1.2 MB) so that allocations by other
    threads left by earlier tests (tracemalloc counts them too) cannot reach the bound."""
    rng = np.random.default_rng(0)
    n, g = 60_000, 400
    with h5py.File(tmp_path / "big.h5", "w") as f:
        w = CSRWriter(f, "X", g)
        for _ in range(0, n, 6000):
            part = sp.random(6000, g, density=0.1, format="csr", random_state=rng,
                             dtype=np.float32)
            part.data = np.ceil(part.data * 5)
            w.append(part)
        matrix_bytes = w.nnz * 8
    with h5py.File(tmp_path / "big.h5", "r") as f:
        loader = BlockLoader(RowStore(f["X"], "X"), np.zeros(n, int), batch_size=128,
                             block_size=16, fetch_factor=4, seed=0)
        tracemalloc.start()
        try:
            with caplog.at_level(logging.INFO, logger="cellsynth.data.loader"):
                cells = sum(len(b.index) for b in loader)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert cells == n
    assert peak < 0.2 * matrix_bytes, (peak, matrix_bytes)
    assert "cells/s" in caplog.text and loader.last_epoch["cells_per_second"] > 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_batches_densified_on_cuda(store):
    x_disk, _ = store
    codes = np.arange(1000) % 3
    on_gpu = BlockLoader(x_disk, codes, batch_size=100, seed=0, device="cuda")
    on_cpu = BlockLoader(x_disk, codes, batch_size=100, seed=0)
    for a, b in zip(on_gpu, on_cpu, strict=True):
        assert a.x.device.type == "cuda" and a.y.device.type == "cuda"
        assert np.array_equal(a.index, b.index)
        assert torch.equal(a.x.cpu(), b.x) and torch.equal(a.library.cpu(), b.library)
