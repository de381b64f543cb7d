"""The CPU's sparse negative binomial draw: one compiled pass per entry, straight into CSR.

:func:`~cellsynth.models._draws.nb_csr` draws ``NB(mu, theta)`` counts on the device the decoder
ran on. On a GPU that is a round of torch operations per step; on the CPU each such round is a
pass over memory, and the draw cost more than the decoder did (26 µs a cell at 2,000 genes). Here
a numba kernel (numba comes with scanpy) decides each entry and draws its count in registers, in
parallel over cells:

1. every entry ``i`` has its own uniform ``u = U(seed, i)``, from a counter-based generator
   (splitmix64 at position ``i`` of the stream ``seed``), so the cells depend neither on the
   thread count nor on the order the threads take the rows in;
2. the entry is non-zero when ``u < P(x > 0) = 1 - exp(-lam)``, ``lam = theta log1p(mu / theta)``
   (``u >= mu`` screens out most entries first, as ``P(x > 0) <= mu``), and a zero-inflated one
   is dropped when a second uniform of the entry falls below its dropout;
3. the count of a non-zero entry: given ``u < P(x > 0)``, ``w = u / P(x > 0)`` is uniform, and
   the count is the zero-truncated pmf's inverse at ``w`` where that search is short (small mean,
   a tail that falls fast); otherwise gamma-Poisson draws with the zeros drawn again (many events)
   or compound Poisson (one or more log-series counts: heavy tails with few events), their
   uniforms from the entry's own stream.

A first pass marks the non-zero entries and counts them per cell; the second draws the counts of
the marked ones into the CSR arrays at each cell's offset. The distribution is the torch path's;
the random stream is not (a seed gives other cells on the CPU than on a GPU, as before).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import numba
import numpy as np
from numba import njit, prange

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31, _S11 = np.uint64(30), np.uint64(27), np.uint64(31), np.uint64(11)
_TO_UNIT = 2.0**-53

#: inverse-pmf search for counts whose mean is at most this (and log-series parameter ``p`` at
#: most ``SEARCH_P``): each step is a few flops in registers, so longer searches than the torch
#: path's pay; beyond them gamma-Poisson (``lam >= MANY_EVENTS``) or compound Poisson
SEARCH_MU = 16.0
SEARCH_P = 0.75
MANY_EVENTS = 2.0
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
def _positive(w, mu, theta, lam, pos, base):
    """An ``NB(mu, theta)`` count given ``>= 1`` (``pos = P(x > 0) = 1 - exp(-lam)``); ``w``
    uniform (the entry's decision uniform rescaled), further uniforms from the entry's stream
    ``base``."""
    p = min(mu / (mu + theta), _P_MAX)
    if p <= SEARCH_P and mu <= SEARCH_MU:  # invert the zero-truncated pmf at w
        term = theta * p * (1.0 - pos) / pos  # P(1 | >= 1)
        cdf = term
        n = 1
        while w > cdf and n < _MAX_STEPS:
            term *= p * (n + theta) / (n + 1.0)
            n += 1
            cdf += term
            if term < 1e-17 * cdf:  # what is left of the tail is below the cdf's rounding
                break
        return float(n)
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
def _nonzero(mu, theta, u):
    """Whether an entry of mean ``mu`` is non-zero at its uniform ``u``: ``u < 1 - exp(-lam)``.

    Bounds decide most entries without a transcendental function: ``lam <= mu`` and
    ``1 - exp(-x) <= x - x^2 / 2 + x^3 / 6`` above; ``lam >= lo = theta mu / (theta + mu)`` and
    ``1 - exp(-x) >= max(x / (1 + x), x - x^2 / 2)`` below.
    """
    if u >= mu or u >= mu * (1.0 - mu * (0.5 - mu / 6.0)):
        return False
    lo = theta * mu / (theta + mu)
    if u < max(lo / (1.0 + lo), lo * (1.0 - 0.5 * lo)):
        return True
    return u < -math.expm1(-theta * math.log1p(mu / theta))


@njit(parallel=True, cache=True)
def _mark(mu, theta, dropout, seed, keep, nnz):
    """Pass 1: ``keep[r, g]`` for the non-zero entries, ``nnz[r]`` per cell."""
    n, genes = mu.shape
    th_rows, dr_rows = theta.shape[0], dropout.shape[0]
    for row in prange(n):
        r = np.int64(row)  # (prange's index may be unsigned: mixed with signed, it is a float)
        tr = r if th_rows > 1 else np.int64(0)
        dr = r if dr_rows > 1 else np.int64(0)
        count = 0
        for g in range(genes):
            m = float(mu[r, g])
            bits = _entry_bits(seed, r * genes + g)
            hit = _nonzero(m, float(theta[tr, g]), _unit(bits))
            if hit and dropout.shape[1] and _next(bits, 1) < dropout[dr, g]:
                hit = False
            keep[r, g] = hit
            count += hit
        nnz[r] = count


@njit(parallel=True, cache=True)
def _fill(mu, theta, seed, keep, indptr, indices, data):
    """Pass 2: the counts of the marked entries, at each cell's CSR offset."""
    n, genes = mu.shape
    th_rows = theta.shape[0]
    for row in prange(n):
        r = np.int64(row)
        tr = r if th_rows > 1 else np.int64(0)
        at = indptr[r]
        for g in range(genes):
            if not keep[r, g]:
                continue
            m = float(mu[r, g])
            th = float(theta[tr, g])
            bits = _entry_bits(seed, r * genes + g)
            lam = th * math.log1p(m / th)
            pos = -math.expm1(-lam)  # P(x > 0)
            indices[at] = g
            data[at] = _positive(_unit(bits) / pos, m, th, lam, pos, bits)
            at += 1


def nb_csr_arrays(mu: np.ndarray, theta: np.ndarray, dropout: np.ndarray | None, seed: int,
                  threads: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """CSR ``(data, indices, indptr)`` of ``NB(mu, theta)`` counts, zero-inflated by ``dropout``.

    ``mu`` is ``(n, genes)``; ``theta`` and ``dropout`` are ``(1, genes)`` (every cell) or
    ``(n, genes)``; ``seed`` a 64-bit integer; ``threads`` the parallel threads to use.
    """
    n, genes = mu.shape
    mu = np.ascontiguousarray(mu, dtype=np.float32)
    theta = np.ascontiguousarray(theta, dtype=np.float32).reshape(-1, genes)
    dropout = (np.zeros((1, 0), np.float32) if dropout is None
               else np.ascontiguousarray(dropout, dtype=np.float32).reshape(-1, genes))
    with numba_threads(threads):
        keep = np.empty((n, genes), dtype=np.bool_)
        nnz = np.empty(n, dtype=np.int64)
        _mark(mu, theta, dropout, np.uint64(seed), keep, nnz)
        indptr = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(nnz, out=indptr[1:])
        indices = np.empty(indptr[-1], dtype=np.int32)
        data = np.empty(indptr[-1], dtype=np.float32)
        _fill(mu, theta, np.uint64(seed), keep, indptr, indices, data)
    return data, indices, indptr


@contextlib.contextmanager
def numba_threads(threads: int) -> Iterator[None]:
    """numba's parallel loops on ``threads`` threads (at most numba's own limit, at least one)
    for the duration, as many as torch's beside them; the earlier count after."""
    before = numba.get_num_threads()
    numba.set_num_threads(max(1, min(threads, numba.config.NUMBA_NUM_THREADS)))
    try:
        yield
    finally:
        numba.set_num_threads(before)
