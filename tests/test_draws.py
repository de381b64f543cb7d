"""The sparse negative binomial draw (models._draws.nb_csr) against the exact distribution, by
both engines: the CPU's compiled kernel and the tensor operations a GPU runs (here on the CPU)."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from scipy import stats

from cellsynth.models._draws import nb_csr

CASES = [(0.01, 0.5), (0.3, 2.0), (5.0, 1.0), (50.0, 10.0), (200.0, 0.3),
         (3.0, 1.0), (1.0, 50.0), (20.0, 0.05), (3.9, 1e4), (30.0, 1e4), (0.2, 0.01),
         (15.0, 1e4), (0.002, 3.0)]
# (3.0, 1.0) and (3.9, 1e4): long inverse-CDF searches; (1.0, 50.0): Poisson-like; (30.0, 1e4):
# a Poisson with many events in the compound path; (20.0, 0.05), (0.2, 0.01): heavy tails;
# (15.0, 1e4): P(x > 0) is 1 in float32, the search reads P(0) itself; (0.002, 3.0): the share
# of non-zeros (200 expected) is all the chi-square sees


ENGINES = ["kernel", "torch"]


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize(("mu", "theta"), CASES)
def test_counts_follow_the_negative_binomial(mu: float, theta: float, engine: str) -> None:
    n = 100_000
    x = nb_csr(np.random.default_rng(0), torch.full((n, 1), mu), torch.tensor([theta]),
               engine=engine)
    x = x.toarray().ravel()
    nb = stats.nbinom(theta, theta / (theta + mu))
    assert abs(x.mean() - mu) < 5 * nb.std() / np.sqrt(n)
    # chi-square on the pmf: one bin per count expected 50 times or more, and the two tails
    ks = [k for k in range(200) if nb.pmf(k) * n >= 50]
    lo, hi = ks[0], ks[-1]
    expected = np.array([nb.cdf(lo - 1), *nb.pmf(ks), nb.sf(hi)]) * n
    observed = np.array([(x < lo).sum(), *[(x == k).sum() for k in ks], (x > hi).sum()])
    used = expected > 0  # no lower tail when the first bin is 0
    p = stats.chisquare(observed[used], expected[used]).pvalue
    assert p > 1e-4, (observed[:5], expected[:5])


@pytest.mark.parametrize("engine", ENGINES)
def test_matrix_shape_dropout_and_seed(engine: str) -> None:
    rng = np.random.default_rng(1)
    mu = torch.from_numpy(np.exp(rng.normal(-2, 2, (300, 400))).astype(np.float32))
    theta = torch.from_numpy(np.exp(rng.normal(0, 1, 400)).astype(np.float32))
    draw = functools.partial(nb_csr, engine=engine)
    a = draw(np.random.default_rng(7), mu, theta)
    b = draw(np.random.default_rng(7), mu, theta)
    assert a.shape == (300, 400) and a.has_canonical_format and a.dtype == np.float32
    assert (a != b).nnz == 0
    assert a.data.min() >= 1 and np.all(a.data == np.rint(a.data))
    # per-cell theta broadcasts like per-gene theta
    c = draw(np.random.default_rng(7), mu, theta.expand(300, 400))
    assert (a != c).nnz == 0
    # zero inflation removes about its share of the non-zeros
    half = draw(np.random.default_rng(7), mu, theta, torch.full((300, 400), 0.5))
    assert 0.45 < half.nnz / a.nnz < 0.55
    # one row of zero inflation for every cell (a type's) draws what its expansion draws
    pi = torch.from_numpy(rng.random((1, 400)).astype(np.float32))
    one = draw(np.random.default_rng(7), mu, theta, pi)
    assert (one != draw(np.random.default_rng(7), mu, theta, pi.expand(300, 400))).nnz == 0
    assert one.nnz < a.nnz
    # gene means follow mu
    big = draw(np.random.default_rng(3), mu[:1].expand(20_000, 400), theta)
    means = np.asarray(big.mean(axis=0)).ravel()
    assert stats.spearmanr(means, mu[0].numpy()).statistic > 0.95


@pytest.mark.parametrize("engine", ENGINES)
def test_the_cells_do_not_depend_on_the_thread_count(engine: str) -> None:
    rng = np.random.default_rng(4)
    mu = torch.from_numpy(np.exp(rng.normal(-1, 2, (700, 900))).astype(np.float32))
    theta = torch.from_numpy(np.exp(rng.normal(0, 2, 900)).astype(np.float32))
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = nb_csr(np.random.default_rng(5), mu, theta, engine=engine)
        torch.set_num_threads(2)
        two = nb_csr(np.random.default_rng(5), mu, theta, engine=engine)
    finally:
        torch.set_num_threads(before)
    assert one.nnz > 0 and (one != two).nnz == 0


@pytest.mark.parametrize("engine", ENGINES)
def test_means_that_carry_a_gradient_are_drawn_from(engine: str) -> None:
    """Means straight from a decoder outside ``no_grad`` (a generator's own sampling code)."""
    mu = (torch.rand(40, 30) * 3).requires_grad_()
    theta = torch.ones(30, requires_grad=True)
    x = nb_csr(np.random.default_rng(0), mu, theta, torch.full((1, 30), 0.1).requires_grad_(),
               engine=engine)
    assert x.shape == (40, 30) and x.nnz > 0


def test_float32_log1p_and_nonzero_probability_are_accurate() -> None:
    """The vectorised float32 functions the kernel decides entries with, against float64."""
    from numba import njit

    from cellsynth.models._f32math import log1p32, nonzero_or_zero32

    @njit(error_model="numpy")
    def both(mu, theta, log_out, prob_out):
        for i in range(mu.size):
            log_out[i] = log1p32(mu[i] / theta[i])
            prob_out[i] = nonzero_or_zero32(theta[i] * log_out[i])

    rng = np.random.default_rng(0)
    mu = (10 ** rng.uniform(-9, 4, 200_000)).astype(np.float32)
    theta = (10 ** rng.uniform(-2, 4, 200_000)).astype(np.float32)
    log_out, prob_out = np.empty_like(mu), np.empty_like(mu)
    both(mu, theta, log_out, prob_out)
    m, t = mu.astype(float), theta.astype(float)
    log_ref = np.log1p(m / t)
    lam = t * log_ref
    nonzero, zero = -np.expm1(-lam), np.exp(-lam)
    v = prob_out.astype(float)
    nonzero_hat, zero_hat = np.where(v >= 0, v, 1 + v), np.where(v >= 0, 1 - v, -v)
    assert np.max(np.abs(log_out - log_ref) / log_ref) < 3e-7
    # the smaller of the two to its own relative precision (the larger is one less it)
    small = nonzero < 0.5
    assert np.max(np.abs(nonzero_hat - nonzero)[small] / nonzero[small]) < 5e-7
    # P(0) = exp(-lam) as precise as float32's lam is: relative error lam times its rounding
    large = ~small & (lam < 80)  # beyond, P(0) < 2e-35 is read as exp(-80)
    assert np.max(np.abs(zero_hat - zero)[large] / zero[large] / (1 + lam[large])) < 5e-7
    assert (v < 0).sum() > 1000 and (v > 0).sum() > 1000  # both sides tried


def test_a_uniform_beyond_the_float32_cdf_is_drawn_again_in_float64() -> None:
    """Where float32's P(0) leaves the zero-truncated cdf short of the entry's uniform, the
    count comes from a fresh uniform against the float64 cdf: small, never the search's cap."""
    from cellsynth.models._nb_kernel import _positive

    mu, theta = 1.0, 1.0
    zero = theta / (theta + mu)  # P(0) of NB(1, 1)
    counts = [_positive(1.0 - 1e-9, mu, theta, 1.0 - zero, zero * 0.999, np.uint64(base))
              for base in range(200)]  # P(0) 0.1% low: the cdf ends below 1 - 1e-9
    assert min(counts) >= 1 and max(counts) < 40
    assert 1.5 < np.mean(counts) < 2.5  # E[x | x >= 1] = mu / P(x > 0) = 2


def test_a_small_draw_runs_on_one_thread_with_the_same_cells(monkeypatch) -> None:
    """Starting numba's parallel loops cost more than drawing a few cells (a busy host: 0.8 ms
    against 0.02 ms for a cell of 2,000 genes): a draw below SERIAL_ENTRIES entries runs on one
    thread, and gives the counts the parallel loops give."""
    from cellsynth.models import _nb_kernel

    rng = np.random.default_rng(2)
    mu = np.exp(rng.normal(-1, 2, (6, 500))).astype(np.float32)
    theta = np.exp(rng.normal(0, 2, (1, 500))).astype(np.float32)
    used: list[int] = []
    real = _nb_kernel.numba_threads

    def spy(threads: int):
        used.append(threads)
        return real(threads)

    monkeypatch.setattr(_nb_kernel, "numba_threads", spy)
    small = _nb_kernel.nb_csr_arrays(mu, theta, None, 9, 2)
    monkeypatch.setattr(_nb_kernel, "SERIAL_ENTRIES", 0)
    parallel = _nb_kernel.nb_csr_arrays(mu, theta, None, 9, 2)
    assert used == [1, 2]
    for a, b in zip(small, parallel, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("engine", ENGINES)
def test_means_beyond_any_count_are_refused_by_every_engine(engine: str) -> None:
    """Means above MAX_MEAN (a damaged or edited model) would make the count draws loop for
    ever: refused with the largest of them named. The CPU's kernel finds them in its second
    pass (no pass over the means of its own); the torch engine looks at the maximum."""
    from cellsynth.errors import CellsynthError

    mu = torch.full((6, 40), 2.0)
    mu[4, 17] = 1e30
    with pytest.raises(CellsynthError, match=r"mean counts reach 1e\+30 in a gene of a cell"):
        nb_csr(np.random.default_rng(0), mu, torch.ones(40), engine=engine)
    mu[4, 17] = 1e11  # large, but a count
    assert nb_csr(np.random.default_rng(0), mu, torch.ones(40), engine=engine).nnz > 0
