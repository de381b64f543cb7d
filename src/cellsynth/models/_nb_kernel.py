"""The CPU's sparse negative binomial draw: a vectorised pass over the entries, then the counts.

:func:`~cellsynth.models._draws.nb_csr` draws ``NB(mu, theta)`` counts on the device the decoder
ran on. On a GPU that is a round of torch operations per step; on the CPU each such round is a
pass over memory, and the draw cost more than the decoder did (26 µs a cell at 2,000 genes). Here
numba kernels (numba comes with scanpy) decide each entry and draw its count in registers, in
parallel over cells:

1. every entry ``i`` has its own uniform ``u = U(seed, i)``, from a counter-based generator
   (splitmix64 at position ``i`` of the stream ``seed``), so the cells depend neither on the
   thread count nor on the order the threads take the rows in;
2. the entry is non-zero when ``u < P(x > 0) = 1 - exp(-lam)``, ``lam = theta log1p(mu / theta)``,
   and a zero-inflated one is dropped when a second uniform of the entry falls below its
   dropout;
3. the count of a non-zero entry: given ``u < P(x > 0)``, ``w = u / P(x > 0)`` is uniform, and
   the count is the zero-truncated pmf's inverse at ``w`` where that search is short (small mean,
   a tail that falls fast); otherwise gamma-Poisson draws with the zeros drawn again (many events)
   or compound Poisson (one or more log-series counts: heavy tails with few events), their
   uniforms from the entry's own stream.

The first pass (:func:`_mark`) is written for LLVM's vectoriser: ``P(x > 0)``, or ``P(0)`` where
that is the smaller, in float32 by the branch-free functions of :mod:`._f32math` (numba's
``log1p`` and ``expm1`` are C library calls, one value at a time), and each entry's decision from
the top 24 bits of its uniform; the rare entry those bits leave open (one in 2^24) is decided in
the second pass against all 53. The second (:func:`_fill`) draws the counts of the non-zero
entries into each cell's room in the CSR arrays, from the probabilities the first kept (no
transcendental function for most counts), and the gaps that open and dropped entries left are
closed after. On the machine of docs/PERFORMANCE.md this halved the draw's time against one
scalar pass that decided each entry with ``log1p`` and ``expm1`` in float64. The distribution is
the torch path's, to float32's rounding of ``P(x > 0)`` (relative 5e-7); the random stream is
not (a seed gives other cells on the CPU than on a GPU, as before).
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Iterator

import numba
import numpy as np
from numba import njit, prange

from ._f32math import log1p32, nonzero_or_zero32

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31, _S11 = np.uint64(30), np.uint64(27), np.uint64(31), np.uint64(11)
_S40 = np.uint64(40)
_TO_UNIT = 2.0**-53
_TWO24, _ONE32 = np.float32(2.0**24), np.float32(1.0)

#: inverse-pmf search for counts whose mean is at most this (and log-series parameter ``p`` at
#: most ``SEARCH_P``): each step is a few flops in registers, so longer searches than the torch
#: path's pay; beyond them gamma-Poisson (``lam >= MANY_EVENTS``) or compound Poisson
SEARCH_MU = 16.0
SEARCH_P = 0.75
MANY_EVENTS = 2.0
#: a draw of fewer entries runs on one thread (the same counts: each entry has its own stream):
#: starting the parallel loops cost more than the draw (a cell of 2,000 genes: 0.02 ms on one
#: thread, 0.8 ms on two of a host other processes kept busy)
SERIAL_ENTRIES = 50_000

#: the largest mean count a draw takes: a gene of a cell beyond it is no count (a cell holds
#: at most millions), and the count draws' Poisson steps never end for means near 1e30
MAX_MEAN = 1e12


class MeansBeyondCounts(ValueError):
    """Means above :data:`MAX_MEAN` among the entries drawn; ``top`` the largest of them."""

    def __init__(self, top: float) -> None:
        super().__init__(f"mean counts up to {top:.3g}, above {MAX_MEAN:.0e}")
        self.top = top
_MAX_STEPS = 100_000  # a search stops there (a tail below float64's resolution of the cdf)
_P_MAX = 1.0 - 1e-12


@njit(inline="always")
def _mix(z):
    """splitmix64's output function of the 64-bit state ``z``."""
    z = (z ^ (z >> _S30)) * _MIX1
    z = (z ^ (z >> _S27)) * _MIX2
    return z ^ (z >> _S31)


@njit(inline="always")
def _unit(bits):
    """A float64 in ``[0, 1)`` from the high 53 bits."""
    return float(bits >> _S11) * _TO_UNIT


@njit(inline="always")
def _entry_bits(seed, i):
    """The entry ``i``'s first 64 random bits in the stream ``seed`` (its decision uniform; the
    base of its own stream for any further draw)."""
    return _mix(seed + np.uint64(i + 1) * _GOLDEN)


@njit(inline="always")
def _next(base, k):
    """Uniform number ``k >= 1`` of the entry whose stream starts at ``base``."""
    return _unit(_mix(base + np.uint64(k) * _GOLDEN))


@njit
def _normal(base, k):
    """A standard normal (Box-Muller on two uniforms); returns it and the next counter."""
    u1 = 1.0 - _next(base, k)  # (0, 1]
    u2 = _next(base, k + 1)
    return math.sqrt(-2.0 * math.log(u1)) * math.cos(2.0 * math.pi * u2), k + 2


@njit
def _gamma(shape, base, k):
    """``Gamma(shape, 1)`` by Marsaglia and Tsang's method (``shape < 1``: boosted by one and
    scaled by ``U ** (1 / shape)``); returns it and the next counter."""
    boost = 1.0
    if shape < 1.0:
        boost = (1.0 - _next(base, k)) ** (1.0 / shape)
        k += 1
        shape += 1.0
    d = shape - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    while True:
        x, k = _normal(base, k)
        v = 1.0 + c * x
        if v <= 0.0:
            continue
        v = v * v * v
        u = 1.0 - _next(base, k)
        k += 1
        if math.log(u) < 0.5 * x * x + d - d * v + d * math.log(v):
            return d * v * boost, k


@njit
def _poisson(lam, base, k):
    """``Poisson(lam)``: multiplying uniforms below 10, Hörmann's transformed rejection (PTRS)
    above; returns it and the next counter."""
    if lam < 10.0:
        limit = math.exp(-lam)
        prod = 1.0 - _next(base, k)
        k += 1
        n = 0
        while prod > limit:
            prod *= 1.0 - _next(base, k)
            k += 1
            n += 1
        return float(n), k
    slam = math.sqrt(lam)
    loglam = math.log(lam)
    b = 0.931 + 2.53 * slam
    a = -0.059 + 0.02483 * b
    log_inv_alpha = math.log(1.1239 + 1.1328 / (b - 3.4))
    vr = 0.9277 - 3.6224 / (b - 2.0)
    while True:
        u = _next(base, k) - 0.5
        v = _next(base, k + 1)
        k += 2
        us = 0.5 - abs(u)
        n = math.floor((2.0 * a / us + b) * u + lam + 0.43)
        if us >= 0.07 and v <= vr:
            return n, k
        if n < 0.0 or (us < 0.013 and v > us):
            continue
        if (math.log(v) + log_inv_alpha - math.log(a / (us * us) + b)
                <= -lam + n * loglam - math.lgamma(n + 1.0)):  # fmt: skip
            return n, k


@njit
def _logseries(p, base, k):
    """A log-series count ``P(n) = -p^n / (n log(1 - p))`` by Kemp's algorithm; returns it and
    the next counter."""
    v = _next(base, k)
    k += 1
    if v >= p:
        return 1.0, k
    q = -math.expm1(math.log1p(-p) * _next(base, k))
    k += 1
    if v <= q * q:
        return max(3.0, math.floor(1.0 + math.log(max(v, 1e-300)) / math.log(q))), k
    return (1.0 if v >= q else 2.0), k


@njit
def _search(w, term, p, theta):
    """The first ``n`` whose zero-truncated cdf reaches ``w`` (``term = P(1 | >= 1)``; each next
    term is the last times ``p (n + theta) / (n + 1)``), or 0 when the cdf stopped growing first
    (``w`` beyond its rounding)."""
    cdf = term
    n = 1
    while w > cdf:
        if n >= _MAX_STEPS or term < 1e-17 * cdf:  # what is left is below the cdf's rounding
            return 0.0
        term *= p * (n + theta) / (n + 1.0)
        n += 1
        cdf += term
    return float(n)


@njit
def _positive(w, mu, theta, nonzero, zero, base):
    """An ``NB(mu, theta)`` count given ``>= 1`` (``nonzero``, ``zero``: ``P(x > 0)`` and
    ``P(x = 0)``, each to float32's precision); ``w`` uniform (the entry's decision uniform
    rescaled), further uniforms from the entry's stream ``base``."""
    p = min(mu / (mu + theta), _P_MAX)
    if p <= SEARCH_P and mu <= SEARCH_MU:  # invert the zero-truncated pmf at w
        n = _search(w, theta * p * zero / nonzero, p, theta)
        if n > 0.0:
            return n
        # w fell where float32's P(0) left the cdf short of one (about 1e-6 of the entries):
        # a fresh uniform against the cdf in float64
        lam = theta * math.log1p(mu / theta)
        n = _search(_next(base, 2), theta * p * math.exp(-lam) / -math.expm1(-lam), p, theta)
        return max(n, 1.0)
    lam = theta * math.log1p(mu / theta)
    k = 2  # uniform 0 decided the entry, and number 1 its dropout (if any)
    if lam >= MANY_EVENTS:  # gamma-Poisson, zeros drawn again (probability exp(-lam) <= 0.14)
        while True:
            g, k = _gamma(theta, base, k)
            n, k = _poisson(g * (mu / theta), base, k)
            if n > 0.0:
                return n
    # compound Poisson: one event, plus Poisson(lam - t) after the first event's time t (an
    # exponential truncated to [0, lam]), each event a log-series count
    t = -math.log1p(_next(base, 2) * math.expm1(-lam))
    extra, k = _poisson(max(lam - t, 0.0), base, 3)
    total = 0.0
    for _ in range(int(extra) + 1):
        c, k = _logseries(p, base, k)
        total += c
    return total


@njit(inline="always")
def _nonzero(v):
    """``P(x > 0)`` from :func:`nonzero_or_zero32`'s value (float32, as both passes read it)."""
    return v if v >= 0 else _ONE32 + v


@njit(parallel=True, cache=True, error_model="numpy", fastmath={"contract"})
def _mark(mu, theta, seeds, pos, prob, code, room):
    """Pass 1, vectorised: ``prob``, each entry's :func:`nonzero_or_zero32` (float32) of ``lam
    = theta log1p(mu / theta)``, and its ``code``: 2 when the top 24 bits of its uniform ``u``
    already place it below ``P(x > 0)``, 1 when they leave it open (pass 2 reads the rest), 0
    when it is a zero; ``room[r]``, the entries of cell ``r`` that may be non-zero. Cell ``r``'s
    uniforms are those of row ``pos[r]`` of the stream ``seeds[r]``. Two loops a cell: together
    LLVM does not vectorise them."""
    n, genes = mu.shape
    th_rows = theta.shape[0]
    for row in prange(n):
        r = np.int64(row)  # (prange's index may be unsigned: mixed with signed, it is a float)
        tr = r if th_rows > 1 else np.int64(0)
        seed, first = seeds[r], pos[r] * genes
        for g in range(genes):
            t = theta[tr, g]
            prob[r, g] = nonzero_or_zero32(t * log1p32(mu[r, g] / t))
        count = 0
        for g in range(genes):
            # u in [k, k + 1) / 2^24: below P(x > 0) for sure when k + 1 <= it 2^24, above
            # when k >= it
            k = np.float32(_entry_bits(seed, first + g) >> _S40)
            scaled = _nonzero(prob[r, g]) * _TWO24
            maybe = k < scaled
            code[r, g] = np.uint8(maybe) + np.uint8(k + _ONE32 <= scaled)
            count += maybe
        room[r] = count


@njit(parallel=True, cache=True)
def _fill(mu, theta, dropout, seeds, pos, prob, code, start, indices, data, nnz, limit):
    """Pass 2: the counts of the non-zero entries, from each cell's offset ``start[r]``
    (``nnz[r]`` of them: open entries decided against the whole uniform, zero-inflated ones
    dropped when a second uniform of the entry falls below their dropout). A cell with an
    entry whose mean is above ``limit`` (always one that may be non-zero: its ``P(x > 0)`` is
    one) is left with ``nnz[r] = -1``: its counts would take for ever."""
    n, genes = mu.shape
    th_rows, dr_rows = theta.shape[0], dropout.shape[0]
    for row in prange(n):
        r = np.int64(row)
        tr = r if th_rows > 1 else np.int64(0)
        dr = r if dr_rows > 1 else np.int64(0)
        seed, first = seeds[r], pos[r] * genes
        at = start[r]
        beyond = False
        for g in range(genes):
            c = code[r, g]
            if c == 0:
                continue
            if mu[r, g] > limit:
                beyond = True
                break
            bits = _entry_bits(seed, first + g)
            u = _unit(bits)
            v = prob[r, g]
            p = float(_nonzero(v))
            if c == 1 and u >= p:
                continue
            if dropout.shape[1] and _next(bits, 1) < dropout[dr, g]:
                continue
            indices[at] = g
            zero = -float(v) if v < 0 else 1.0 - p
            data[at] = _positive(u / p, float(mu[r, g]), float(theta[tr, g]), p, zero, bits)
            at += 1
        nnz[r] = -1 if beyond else at - start[r]


@njit(parallel=True, cache=True)
def _pack(start, nnz, indptr, indices, data, out_indices, out_data):
    """Each cell's counts from its room (at ``start``) to its place in the CSR (``indptr``)."""
    for row in prange(len(nnz)):
        r = np.int64(row)
        a, b = start[r], indptr[r]
        for j in range(nnz[r]):
            out_indices[b + j] = indices[a + j]
            out_data[b + j] = data[a + j]


def nb_csr_arrays(mu: np.ndarray, theta: np.ndarray, dropout: np.ndarray | None,
                  seed: int | np.ndarray, threads: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """CSR ``(data, indices, indptr)`` of ``NB(mu, theta)`` counts, zero-inflated by ``dropout``.

    ``mu`` is ``(n, genes)``; ``theta`` and ``dropout`` are ``(1, genes)`` (every cell) or
    ``(n, genes)``; ``seed`` a 64-bit integer, or one per cell (``(n,)``: the rows of several
    draws in one call, each run of a seed numbered from its first row, so each gives the cells
    its own call would); ``threads`` the parallel threads to use (one below
    :data:`SERIAL_ENTRIES` entries).
    """
    n, genes = mu.shape
    if mu.size < SERIAL_ENTRIES:
        threads = 1
    seeds, pos = _streams(seed, n)
    mu = np.ascontiguousarray(mu, dtype=np.float32)
    theta = np.ascontiguousarray(theta, dtype=np.float32).reshape(-1, genes)
    dropout = (np.zeros((1, 0), np.float32) if dropout is None
               else np.ascontiguousarray(dropout, dtype=np.float32).reshape(-1, genes))
    with numba_threads(threads):
        prob, code = _workspace(n * genes)
        prob, code = prob.reshape(n, genes), code.reshape(n, genes)
        room = np.empty(n, dtype=np.int64)
        _mark(mu, theta, seeds, pos, prob, code, room)
        start = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(room, out=start[1:])
        indices = np.empty(start[-1], dtype=np.int32)
        data = np.empty(start[-1], dtype=np.float32)
        nnz = np.empty(n, dtype=np.int64)
        _fill(mu, theta, dropout, seeds, pos, prob, code, start, indices, data, nnz, MAX_MEAN)
        if (nnz < 0).any():
            raise MeansBeyondCounts(float(mu[nnz < 0].max()))
        indptr = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(nnz, out=indptr[1:])
        if indptr[-1] < start[-1]:  # open or dropped entries left gaps: close them
            out_indices = np.empty(indptr[-1], dtype=np.int32)
            out_data = np.empty(indptr[-1], dtype=np.float32)
            _pack(start, nnz, indptr, indices, data, out_indices, out_data)
            indices, data = out_indices, out_data
    return data, indices, indptr


def _streams(seed: int | np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Each cell's stream (uint64) and its row in it: one seed, rows 0 to ``n - 1``; a seed per
    cell, each run of equal consecutive seeds numbered from 0."""
    if np.ndim(seed) == 0:
        return np.full(n, seed, dtype=np.uint64), np.arange(n, dtype=np.int64)
    seeds = np.asarray(seed, dtype=np.uint64)
    if seeds.shape != (n,):
        raise ValueError(f"{seeds.shape[0] if seeds.ndim else 0} seeds for {n} cells")
    new = np.flatnonzero(np.r_[True, seeds[1:] != seeds[:-1]])  # each run's first row
    pos = np.arange(n, dtype=np.int64)
    return seeds, pos - np.repeat(new, np.diff(np.r_[new, n]))


_LOCAL = threading.local()


def _workspace(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pass 1's arrays (float32 and uint8, ``size`` values each), kept between calls of this
    thread: written into fresh from the system, a chunk's 20 MB of them cost more in page faults
    (4x pass 1's time on the machine of docs/PERFORMANCE.md) than the pass itself."""
    have = getattr(_LOCAL, "arrays", None)
    if have is None or have[0].size < size:
        have = _LOCAL.arrays = (np.empty(size, np.float32), np.empty(size, np.uint8))
    return have[0][:size], have[1][:size]


@contextlib.contextmanager
def numba_threads(threads: int) -> Iterator[None]:
    """numba's parallel loops on ``threads`` threads (at most numba's own limit, at least one)
    for the duration, as many as torch's beside them; the earlier count after.

    With numba's OpenMP threading layer, setting its count sets the calling thread's OpenMP
    one, which torch's CPU thread count is: restoring numba's default (every core) after a
    draw would raise a user's ``torch.set_num_threads(1)`` to every core, so that a fit after
    a draw ran on other threads (and summed in another order) than the same fit before it.
    torch's count is put back as it was."""
    import torch

    torch_before = torch.get_num_threads()  # first: numba's first call starts its OpenMP pool
    before = numba.get_num_threads()
    numba.set_num_threads(max(1, min(threads, numba.config.NUMBA_NUM_THREADS)))
    try:
        yield
    finally:
        numba.set_num_threads(before)
        if torch.get_num_threads() != torch_before:
            torch.set_num_threads(torch_before)
