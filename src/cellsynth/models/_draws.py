"""Negative binomial counts drawn straight into CSR, touching the zeros only once.

``NB(mu, theta)`` is compound Poisson: ``N ~ Poisson(lam)`` events with
``lam = theta * log1p(mu / theta)``, each a log-series count with ``p = mu / (mu + theta)``. A
count is zero exactly when ``N = 0`` (probability ``exp(-lam)``), so one uniform per entry decides
which entries are non-zero (the dense part, in torch on the model's device, both CPU threads or
the GPU), and only those (about a tenth in single-cell data) get their count drawn, on the host:
``N`` given ``N >= 1`` is one plus ``Poisson(lam - t)`` where ``t``, the first event's time, is an
exponential truncated to ``[0, lam]``, and the count is the sum of ``N`` log-series draws.
Entries whose pmf falls fast (most of them) skip that and invert the zero-truncated pmf with
one uniform each, about a fifth less time for the whole draw on two cores.
Blocks of rows are drawn in threads, each from its own stream.

This replaces a gamma draw and a Poisson draw for every entry (about 6k cells/s at 2,000 genes on
two cores) and the dense-to-CSR conversion after it. The distribution is the same; the random
stream is not, so the same seed gives other cells than the dense draw did.
"""

from __future__ import annotations

import functools
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from .modules.cvae import NegativeBinomial

_P_MAX = 1.0 - 1e-12  # log-series parameter below 1 (mu >> theta in float rounding)
_PART_ROWS = 256  # rows per numpy stream; blocks are drawn in parallel threads


def nb_csr(
    rng: np.random.Generator,
    mu: torch.Tensor,
    theta: torch.Tensor,
    dropout: torch.Tensor | None = None,
) -> sp.csr_matrix:
    """Counts ``x ~ NB(mu, theta)`` (zero-inflated by ``dropout`` when given) as float32 CSR.

    Parameters
    ----------
    rng
        All randomness: a torch generator on ``mu``'s device and one numpy stream per block of
        ``_PART_ROWS`` rows are seeded from it, so the cells do not depend on the thread count.
    mu
        Means, ``(n, n_genes)``, on any device.
    theta
        Inverse dispersions, ``(n_genes,)`` or ``(n, n_genes)``, same device.
    dropout
        Zero-inflation probabilities ``(n, n_genes)`` or ``None``.
    """
    n, n_genes = mu.shape
    mu, theta = mu.float(), theta.float()
    seed = int(rng.integers(2**63))
    gen = torch.Generator(device=mu.device).manual_seed(seed)
    with torch.no_grad():
        lam = theta * torch.log1p(mu / theta)  # (n, G) expected events
        hit = torch.rand(mu.shape, generator=gen, device=mu.device) < -torch.expm1(-lam)
        flat = hit.view(-1).nonzero().squeeze(1)  # row-major: CSR order
        lam_h = lam.reshape(-1)[flat].double().cpu().numpy()
        mu_h = mu.reshape(-1)[flat].double().cpu().numpy()
        if theta.dim() == 1:
            th_h = theta.double().cpu().numpy()[(flat % n_genes).cpu().numpy()]
        else:
            th_h = theta.expand(n, n_genes).reshape(-1)[flat].double().cpu().numpy()
        pi_h = None if dropout is None else dropout.reshape(-1)[flat].double().cpu().numpy()
    rows, cols = np.divmod(flat.cpu().numpy(), n_genes)
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=n), out=indptr[1:])
    bounds = indptr[np.r_[0 : n : _PART_ROWS, n]]  # hits of each block of rows

    def part(j: int) -> tuple[np.ndarray, np.ndarray | None]:
        at = slice(bounds[j], bounds[j + 1])
        pi = None if pi_h is None else pi_h[at]
        return _hit_counts(np.random.default_rng([seed, j]), lam_h[at], mu_h[at], th_h[at], pi)

    parts = list(_pool().map(part, range(len(bounds) - 1)))
    counts = np.concatenate([c for c, _ in parts]) if parts else np.zeros(0)
    if pi_h is not None:
        keep = np.concatenate([k for _, k in parts]) if parts else np.zeros(0, dtype=bool)
        counts, cols = counts[keep], cols[keep]
        indptr[1:] = np.cumsum(np.bincount(rows[keep], minlength=n))
    return sp.csr_matrix(
        (counts.astype(np.float32), cols.astype(np.int32), indptr), shape=(n, n_genes)
    )


def _hit_counts(
    rng: np.random.Generator,
    lam: np.ndarray,
    mu: np.ndarray,
    theta: np.ndarray,
    dropout: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Counts of entries known to be non-zero (and which survive ``dropout``), float64.

    Entries whose tail falls fast (``p <= _SEARCH_P``, most of single-cell data) are drawn by
    inverting the zero-truncated pmf (:func:`_search`); the others as compound Poisson.
    """
    p = np.minimum(mu / (mu + theta), _P_MAX)
    counts = np.empty(len(lam))
    fast = p <= _SEARCH_P
    at = np.flatnonzero(fast)
    counts[at] = _search(rng.random(len(at)), lam[at], p[at], theta[at])
    at = np.flatnonzero(~fast)
    counts[at] = _compound(rng, lam[at], p[at])
    keep = None if dropout is None else rng.random(len(lam)) >= dropout
    return counts, keep


#: inverse-CDF search for entries with log-series parameter ``p`` at most this...
_SEARCH_P = 0.75
#: ...for at most this many steps: the pmf falls about ``p`` a step, so what is left of the tail
#: after it (where a count stops at the last step) is below ``0.75 ** 160``, about 1e-20
_SEARCH_STEPS = 160


def _search(u: np.ndarray, lam: np.ndarray, p: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """``NB`` counts given ``>= 1``: the first ``k`` whose conditional cdf reaches ``u``.

    ``P(X = 1 | X >= 1) = theta p exp(-lam) / (1 - exp(-lam))`` and each next term is the last
    times ``p (k + theta) / (k + 1)``; the loop runs over the entries not yet placed, so its cost
    is about that of the first step or two.
    """
    out = np.ones(len(u))
    term = theta * p * np.exp(-lam) / -np.expm1(-lam)
    cdf = term.copy()
    left = np.flatnonzero(u > cdf)
    u, term, cdf, p, theta = u[left], term[left], cdf[left], p[left], theta[left]
    k = 1
    while len(left) and k < _SEARCH_STEPS:
        term *= p * (k + theta) / (k + 1)
        cdf += term
        k += 1
        more = u > cdf
        out[left[~more]] = k
        left, u, term, cdf, p, theta = (a[more] for a in (left, u, term, cdf, p, theta))
    out[left] = k  # the tail beyond the last step: under 1e-20 of an entry's mass
    return out


def _compound(rng: np.random.Generator, lam: np.ndarray, p: np.ndarray) -> np.ndarray:
    """``NB`` counts given ``>= 1`` as compound Poisson: ``N >= 1`` log-series draws, summed."""
    first = -np.log1p(rng.random(len(lam)) * np.expm1(-lam))  # first event time in [0, lam]
    events = 1 + rng.poisson(np.maximum(lam - first, 0.0))
    counts = rng.logseries(p).astype(np.float64)
    more = np.flatnonzero(events > 1)
    if len(more):
        k = events[more] - 1
        extra = rng.logseries(np.repeat(p[more], k))
        counts[more] += np.add.reduceat(extra, np.concatenate([[0], np.cumsum(k)[:-1]]))
    return counts


@functools.cache
def _pool() -> ThreadPoolExecutor:
    """Threads for the host draws (numpy's generators release the GIL), one per torch thread."""
    return ThreadPoolExecutor(max(1, torch.get_num_threads()), thread_name_prefix="nb_csr")


def draw_counts(px: Any, library: torch.Tensor, rng: np.random.Generator, *,
                target_sum: float = 1e4) -> sp.csr_matrix:
    """Integer counts (CSR) drawn from the decoder's ``px`` at library sizes ``library`` (B,).

    NB/ZINB: the sparse draw of ``nb_csr``; Gaussian (on ``log1p(x / library * target_sum)``):
    a normal draw, clipped at 0, scaled back to the library and rounded. All noise from ``rng``.
    """
    if isinstance(px, NegativeBinomial):
        dropout = None if px.zi_logits is None else torch.sigmoid(px.zi_logits)
        return nb_csr(rng, px.mu, px.theta, dropout)
    loc = px.loc.double().cpu().numpy()
    scale = px.scale.double().cpu().numpy()
    v = np.maximum(rng.normal(loc, scale), 0.0)
    lib = library.double().cpu().numpy()[:, None]
    x = np.rint(np.expm1(v) * (lib / target_sum))
    return sp.csr_matrix(x.astype(np.float32))


def sample_counts(module: Any, code: int, n: int, rng: np.random.Generator, latent: str,
                  cov: tuple[int, ...] = ()) -> sp.csr_matrix:
    """``n`` cells of type ``code`` (and covariate codes ``cov``) from a trained CVAE ``module``,
    as CSR counts; all noise from ``rng``.

    ``latent="mixture"`` draws ``z`` and the library size jointly from the type's mixture;
    ``"prior"`` draws ``z`` from ``p(z | type)`` and the library from the type's log-normal.
    """
    device = next(module.parameters()).device
    y = torch.full((n,), code, dtype=torch.long, device=device)  # (n,)
    c = (torch.tensor(cov, dtype=torch.long, device=device).expand(n, len(cov))
         if cov else None)  # (n, k)
    u = torch.from_numpy(rng.random(n, dtype=np.float32))
    # (n, n_latent + 1): z's noise, then the library size's
    eps = torch.from_numpy(rng.standard_normal((n, module.n_latent + 1), dtype=np.float32))
    eps = eps.to(device)
    if latent == "mixture":  # z and library jointly
        z, library = module.mixture_from_noise(u.to(device), eps, y)
    else:
        z = module.latent_from_noise(eps[:, :-1], y)  # (n, n_latent)
        library = module.library_from_noise(eps[:, -1], y)  # (n,)
    return draw_counts(module.generative(z, y, library, c), library, rng)
