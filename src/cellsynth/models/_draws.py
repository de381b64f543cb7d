"""Negative binomial counts drawn straight into CSR where the decoder runs, touching the zeros once.

``NB(mu, theta)`` is compound Poisson: ``N ~ Poisson(lam)`` events with
``lam = theta * log1p(mu / theta)``, each a log-series count with ``p = mu / (mu + theta)``. A
count is zero exactly when ``N = 0`` (probability ``exp(-lam)``), so one uniform ``u`` per
entry decides which entries are non-zero (``u < 1 - exp(-lam)``; as that is at most ``mu``,
``u < mu`` screens out most entries first); only those (about a tenth in single-cell data) get
their count drawn (:func:`positive_nb`): small means by inverting the zero-truncated pmf,
entries expecting many events as gamma-Poisson with the zeros drawn again, the rest as
compound Poisson (``N`` given ``N >= 1`` is one plus ``Poisson(lam - t)`` where ``t``, the
first event's time, is an exponential truncated to ``[0, lam]``, and the count is the sum of
``N`` log-series draws, Kemp's algorithm as numpy's ``logseries``).

Two engines draw the same distribution where the means are. On the CPU (the default there) the
compiled kernel of :mod:`._nb_kernel` decides every entry in a vectorised pass and draws the
counts of the non-zero ones in a second, in registers, in parallel over cells. Elsewhere (a
GPU) every step is a vectorised torch operation on the device; only the non-zero entries'
column indices and counts leave it, as CSR. Its noise comes from one seed: from a torch
generator on the device, or (this engine on the CPU, as the tests run it) from numpy's
generators filled in parallel in blocks of :data:`_PART_VALUES` values, each block from its own
stream, so the cells do not depend on the thread count. Each engine has its
own stream: the same seed gives other cells on a GPU than on the CPU.

This replaces a gamma and a Poisson draw for every entry (about 6k cells/s at 2,000 genes on two
cores), the dense-to-CSR conversion after it, and the host loop over the non-zero entries that
followed (about 13 µs a cell at 2,000 genes). The distribution is the same; the random stream is
not, so the same seed gives other cells than earlier versions did.
"""

from __future__ import annotations

import functools
import math
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from ..data.csr import stack_rows
from ..errors import CellsynthError
from ._moments import DIVERGED
from ._nb_kernel import MAX_MEAN, MeansBeyondCounts, nb_csr_arrays
from .modules.likelihoods import NegativeBinomial

_P_MAX = 1.0 - 1e-12  # log-series parameter below 1 (mu >> theta in float rounding)
_PART_VALUES = 1 << 18  # noise values per numpy stream; blocks are filled in parallel threads


class _Noise:
    """Uniform and exponential noise as tensors on ``device``, all from one ``seed``.

    On the CPU each fill is cut into blocks of ``_PART_VALUES`` values, block ``j`` of fill
    ``i`` drawn by ``numpy.random.default_rng([seed, i, j])`` in a thread pool (numpy's
    generators release the GIL); elsewhere a torch generator on the device draws them.
    """

    def __init__(self, seed: int, device: torch.device) -> None:
        self.seed, self.device, self.fills = seed, device, 0
        self.gen = None
        if device.type != "cpu":
            self.gen = torch.Generator(device=device).manual_seed(seed)

    def torch_generator(self) -> torch.Generator:
        """A torch generator for the draws torch makes itself (``torch.poisson``): the noise's
        on a GPU; on the CPU a new one seeded from the noise's seed and the fills so far."""
        if self.gen is not None:
            return self.gen
        self.fills += 1
        return torch.Generator().manual_seed((self.seed + self.fills) % 2**63)

    def draw(self, kind: str, n: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """``n`` values of ``kind`` (``"uniform"`` on ``[0, 1)``, ``"exponential"`` with mean one)."""
        self.fills += 1
        if self.gen is not None:
            out = torch.empty(n, dtype=dtype, device=self.device)
            if kind == "uniform":
                return out.uniform_(generator=self.gen)
            return out.exponential_(generator=self.gen)
        out = np.empty(n, dtype=np.float32 if dtype == torch.float32 else np.float64)
        fill = self.fills

        def part(j: int) -> None:
            rng = np.random.default_rng([self.seed, fill, j])
            block = out[j * _PART_VALUES : (j + 1) * _PART_VALUES]
            if kind == "uniform":
                rng.random(out=block, dtype=block.dtype)
            else:
                rng.standard_exponential(out=block, dtype=block.dtype)

        blocks = math.ceil(n / _PART_VALUES)
        if blocks > 1:
            list(_pool().map(part, range(blocks)))
        elif blocks:
            part(0)  # one block: no hand-off to a thread
        return torch.from_numpy(out)


def _beyond_counts(top: float) -> CellsynthError:
    """The error for means above :data:`MAX_MEAN` (the largest, ``top``)."""
    return CellsynthError(f"the model's mean counts reach {top:.3g} in a gene of a cell, far "
                          f"beyond any count (at most {MAX_MEAN:.0e}): its parameters are "
                          "damaged, edited or from a fit that diverged; restore the model from "
                          "its save, or fit it again")


def nb_csr(
    rng: np.random.Generator,
    mu: torch.Tensor,
    theta: torch.Tensor,
    dropout: torch.Tensor | None = None,
    *,
    engine: str | None = None,
) -> sp.csr_matrix:
    """Counts ``x ~ NB(mu, theta)`` (zero-inflated by ``dropout`` when given) as float32 CSR.

    Parameters
    ----------
    rng
        All randomness: one seed drawn from it seeds the noise, so the cells do not depend on
        the thread count.
    mu
        Means, ``(n, n_genes)``, on any device.
    theta
        Inverse dispersions, ``(n_genes,)``, ``(1, n_genes)`` or ``(n, n_genes)``, same device.
    dropout
        Zero-inflation probabilities ``(n, n_genes)`` or ``(1, n_genes)`` (the same for every
        cell), or ``None``.
    engine
        ``"kernel"`` (the default on the CPU): the compiled kernel of :mod:`._nb_kernel`, a
        vectorised pass over the entries and one over the non-zero ones; ``"torch"`` (the
        default elsewhere): rounds of tensor operations on the device (:class:`_Noise`,
        :func:`positive_nb`). The same distribution, other streams.
    """
    return nb_csr_seeded(int(rng.integers(2**63)), mu, theta, dropout, engine=engine)


def nb_csr_seeded(seed: int | np.ndarray, mu: torch.Tensor, theta: torch.Tensor,
                  dropout: torch.Tensor | None = None, *, engine: str | None = None,
                  ) -> sp.csr_matrix:  # fmt: skip
    """:func:`nb_csr` with its noise from ``seed`` (the integer ``nb_csr`` draws from its
    generator): the same counts for the same seed and means. On the CPU's kernel ``seed`` may
    be one per cell (``(n,)``, runs of one seed: the cells of one call per run, drawn in one)."""
    n, n_genes = mu.shape
    engine = engine or ("kernel" if mu.device.type == "cpu" else "torch")
    if np.ndim(seed) and engine != "kernel":
        raise ValueError("a seed per cell is for the CPU's kernel; draw each run apart")
    if engine == "kernel":
        if mu.device.type != "cpu":
            raise ValueError(f"the kernel draws on the CPU; these means are on {mu.device}")
        try:  # means above MAX_MEAN are found by the kernel's second pass: no pass of its own
            data, indices, indptr = nb_csr_arrays(
                mu.detach().numpy(), theta.detach().reshape(-1, n_genes).numpy(),
                None if dropout is None else dropout.detach().reshape(-1, n_genes).numpy(),
                seed, torch.get_num_threads())
        except MeansBeyondCounts as exc:  # their draws would never end
            raise _beyond_counts(exc.top) from None
        return sp.csr_matrix((data, indices, indptr), shape=(n, n_genes))
    top = float(mu.detach().max()) if mu.numel() else 0.0
    if top > MAX_MEAN:  # the draws of such means never end (nor would they be counts)
        raise _beyond_counts(top)
    noise = _Noise(seed, mu.device)
    with torch.no_grad():
        u = noise.draw("uniform", n * n_genes, torch.float32).to(mu.device)
        # P(x > 0) = 1 - exp(-lam) <= lam <= mu: an entry with u >= mu is zero, and only the
        # others (mu is small for most entries) are decided exactly
        flat = _where(torch.lt(u, mu.reshape(-1)))  # row-major: CSR order
        m = _take(mu.reshape(-1), flat)
        if theta.dim() == 1 or theta.shape[0] == 1:  # one row for every cell
            th = _take(theta.reshape(-1), flat % n_genes)
        else:
            th = _take(theta.reshape(-1), flat)
        lam = th * torch.log1p(m / th)
        hit = _where(_take(u, flat) < -torch.expm1(-lam))
        flat = _take(flat, hit)
        counts = positive_nb(noise, *(_take(a, hit).double() for a in (lam, m, th)))
        if dropout is not None:  # one row for every cell (a type's zero inflation) or one each
            drop = _take(dropout.reshape(-1), flat % n_genes if dropout.shape[0] == 1 else flat)
            keep = noise.draw("uniform", len(flat)).to(mu.device) >= drop
            keep = _where(keep)
            flat, counts = _take(flat, keep), _take(counts, keep)
        rows = torch.div(flat, n_genes, rounding_mode="floor")
        indptr = torch.zeros(n + 1, dtype=torch.int64, device=mu.device)
        indptr[1:] = torch.bincount(rows, minlength=n).cumsum(0)
        cols = (flat - rows * n_genes).int()
    return sp.csr_matrix(
        (counts.float().cpu().numpy(), cols.cpu().numpy(), indptr.cpu().numpy()),
        shape=(n, n_genes),
    )


def positive_nb(noise: _Noise, lam: torch.Tensor, mu: torch.Tensor,
                theta: torch.Tensor) -> torch.Tensor:  # fmt: skip
    """``NB(mu, theta)`` counts given ``>= 1`` (float64; ``lam = theta log1p(mu / theta)``).

    Entries with a small mean whose tail falls fast (``p <= _SEARCH_P``, ``mu <= _SEARCH_MU``:
    most of single-cell data) invert the zero-truncated pmf (:func:`_search`); of the others,
    those expecting many events are gamma-Poisson with rejection (:func:`_gamma_poisson`) and
    the rest compound Poisson (:func:`_compound`).
    """
    p = (mu / (mu + theta)).clamp(max=_P_MAX)
    out = torch.empty_like(lam)
    fast = (p <= _SEARCH_P) & (mu <= _SEARCH_MU)
    at = _where(fast)
    u = noise.draw("uniform", len(at)).to(lam)
    out.index_copy_(0, at, _search(u, *(_take(a, at) for a in (lam, p, theta))))
    many = ~fast & (lam >= _REJECT_LAM)
    at = _where(many)
    out.index_copy_(0, at, _gamma_poisson(noise, _take(mu, at), _take(theta, at)))
    at = _where(~fast & ~many)
    out.index_copy_(0, at, _compound(noise, _take(lam, at), _take(p, at)))
    return out


#: entries expecting at least this many Poisson events (zero with probability ``exp(-lam)``, at
#: most 0.14) are drawn as gamma-Poisson with the zeros drawn again, two draws an entry instead
#: of ``lam`` log-series draws
_REJECT_LAM = 2.0


def _gamma_poisson(noise: _Noise, mu: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """``NB(mu, theta)`` counts given ``>= 1``: ``Poisson(Gamma(theta, mu / theta))`` draws, the
    zeros drawn again until none is left (for entries with ``lam >= _REJECT_LAM``)."""
    gen = noise.torch_generator()
    out = torch.zeros_like(mu)
    left = torch.arange(len(mu), device=mu.device)
    while len(left):
        m, th = _take(mu, left), _take(theta, left)
        x = torch.poisson(torch._standard_gamma(th, generator=gen) * (m / th), generator=gen)
        out.index_copy_(0, left, x)
        left = _take(left, _where(x == 0))
    return out


#: inverse-CDF search for entries with log-series parameter ``p`` and mean at most these (few
#: steps: each step is a round of tensor operations on the entries left)...
_SEARCH_P = 0.75
_SEARCH_MU = 4.0
#: ...for at most this many steps: the pmf falls about ``p`` a step, so what is left of the tail
#: after it (where a count stops at the last step) is below ``0.75 ** 160``, about 1e-20
_SEARCH_STEPS = 160


def _search(u: torch.Tensor, lam: torch.Tensor, p: torch.Tensor,
            theta: torch.Tensor) -> torch.Tensor:  # fmt: skip
    """``NB`` counts given ``>= 1``: the first ``k`` whose conditional cdf reaches ``u``.

    ``P(X = 1 | X >= 1) = theta p exp(-lam) / (1 - exp(-lam))`` and each next term is the last
    times ``p (k + theta) / (k + 1)``. The count is one plus the number of steps whose cdf is
    still below ``u`` (the cdf only grows), so a step is a few in-place operations on the
    entries not yet placed, and those are gathered anew only when fewer than half are left.
    """
    out = torch.ones_like(u)
    term = theta * p * torch.exp(-lam) / -torch.expm1(-lam)
    left = _where(u > term)
    u, term, p, theta = (_take(a, left) for a in (u, term, p, theta))
    cdf = term.clone()
    count = torch.full_like(u, 2.0)  # above the first term: at least 2
    more = torch.empty(len(u), dtype=torch.bool, device=u.device)
    ratio = torch.empty_like(u)
    k = 1
    while len(left) and k < _SEARCH_STEPS:
        torch.add(theta, k, out=ratio)
        ratio.mul_(p).div_(k + 1)  # p (k + theta) / (k + 1)
        term.mul_(ratio)
        cdf.add_(term)
        k += 1
        torch.gt(u, cdf, out=more)
        count.add_(more)
        active = int(more.sum())
        if active <= len(left) // 2:  # gather the entries left (none: done)
            out.index_copy_(0, left, count)
            at = _where(more)
            left, u, term, cdf, p, theta, count = (
                _take(a, at) for a in (left, u, term, cdf, p, theta, count))
            more, ratio = more[: len(at)], ratio[: len(at)]
    out.index_copy_(0, left, count.clamp_(max=float(k)))  # the tail beyond the last step: < 1e-20
    return out


def _take(a: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``a[idx]`` of a 1-D tensor: ``index_select`` (on the CPU a few times faster than
    advanced indexing, as ``index_copy_`` is than an indexed assignment)."""
    return torch.index_select(a, 0, idx)


def _where(mask: torch.Tensor) -> torch.Tensor:
    """Flat indices of the true entries of ``mask`` (numpy's on the CPU: a few times faster)."""
    if mask.device.type == "cpu":
        return torch.from_numpy(np.flatnonzero(mask.numpy()))
    return mask.reshape(-1).nonzero().squeeze(1)


def _compound(noise: _Noise, lam: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """``NB`` counts given ``>= 1`` as compound Poisson: ``N >= 1`` events (one plus a Poisson
    count after the first event's time, an exponential truncated to ``[0, lam]``), each a
    log-series count, summed."""
    if len(lam) == 0:
        return lam
    first = -torch.log1p(noise.draw("uniform", len(lam)).to(lam) * torch.expm1(-lam))
    extra = torch.poisson((lam - first).clamp_min(0.0), generator=noise.torch_generator())
    counts = _logseries(noise, p)
    more = _where(extra > 0)
    if len(more):
        at = torch.repeat_interleave(more, _take(extra, more).long())
        counts.index_add_(0, at, _logseries(noise, _take(p, at)))
    return counts


def _logseries(noise: _Noise, p: torch.Tensor) -> torch.Tensor:
    """Log-series draws ``P(k) = -p^k / (k log(1 - p))``, ``k >= 1``, by Kemp's algorithm:
    ``1`` when ``V >= p``; else with ``q = 1 - (1 - p)^U``, ``floor(1 + log V / log q)`` when
    ``V <= q^2``, ``1`` when ``V >= q`` and ``2`` otherwise (float64)."""
    v = noise.draw("uniform", len(p)).to(p)
    out = torch.ones_like(p)
    at = _where(v < p)
    v, p = _take(v, at).clamp_min(1e-300), _take(p, at)
    q = -torch.expm1(torch.log1p(-p) * noise.draw("uniform", len(at)).to(p))
    tail = torch.floor(1.0 + torch.log(v) / torch.log(q)).clamp_min(3.0)
    out.index_copy_(0, at, torch.where(v <= q * q, tail, 2.0 - (v >= q).to(p)))
    return out


@functools.cache
def _pool() -> ThreadPoolExecutor:
    """Threads for the host noise (numpy's generators release the GIL), one per torch thread."""
    return ThreadPoolExecutor(max(1, torch.get_num_threads()), thread_name_prefix="nb_csr")


def draw_counts(px: Any, library: torch.Tensor, rng: np.random.Generator, *,
                target_sum: float = 1e4) -> sp.csr_matrix:
    """Integer counts (CSR) drawn from the decoder's ``px`` at library sizes ``library`` (B,).

    NB/ZINB: the sparse draw of ``nb_csr``; Gaussian (on ``log1p(x / library * target_sum)``):
    a normal draw, clipped at 0, scaled back to the library and rounded. All noise from ``rng``.
    """
    if isinstance(px, NegativeBinomial):
        return nb_csr(rng, px.mu, px.theta, _checked_dropout(px))
    loc = px.loc.double().cpu().numpy()
    scale = px.scale.double().cpu().numpy()
    v = np.maximum(rng.normal(loc, scale), 0.0)
    lib = library.double().cpu().numpy()[:, None]
    with np.errstate(over="ignore", invalid="ignore"):  # an overflow is refused just below
        x = (np.rint(np.expm1(v) * (lib / target_sum))).astype(np.float32)
    if not np.isfinite(x).all():
        raise CellsynthError(DIVERGED.format(what="the counts it decodes"))
    return sp.csr_matrix(x)


def _checked_dropout(px: NegativeBinomial) -> torch.Tensor | None:
    """``px``'s zero-inflation probabilities (None: none), after refusing the means of a model
    saved before fits were checked for divergence: it decodes non-finite means for its cells,
    and a chunk's first cell tells (every mean would cost a pass over the chunk)."""
    if not bool(torch.isfinite(px.mu[:1]).all()):
        raise CellsynthError(DIVERGED.format(what="the means it decodes"))
    return None if px.zi_logits is None else torch.sigmoid(px.zi_logits)


def sample_counts(module: Any, code: int, n: int, rng: np.random.Generator, latent: str,
                  cov: tuple[int, ...] = (), *, any_type: bool = False,
                  unseen_level: bool = False) -> sp.csr_matrix:
    """``n`` cells of type ``code`` (and covariate codes ``cov``) from a trained CVAE ``module``,
    as CSR counts; all noise from ``rng``.

    ``latent="mixture"`` draws ``z`` and the library size jointly from the type's mixture;
    ``"prior"`` draws ``z`` from ``p(z | type)`` and the library from the type's log-normal.
    ``unseen_level``: ``cov`` holds a level no training cell of the type had (its zero
    inflation, fitted at the type's own levels, is left out: ``CVAEModule.generative``);
    ``any_type``: decoded with the module's "some type" input (label dropout), for a
    combination no training cell had.
    """
    return sample_counts_rows(module, code, [(cov, n)], rng, latent, any_type=any_type,
                              unseen_level=unseen_level)


def sample_counts_rows(module: Any, code: int, pieces: list[tuple[tuple[int, ...], int]],
                       rng: np.random.Generator, latent: str, *, any_type: bool = False,
                       unseen_level: bool = False) -> sp.csr_matrix:  # fmt: skip
    """The counts :func:`sample_counts` gives for each ``(covariate codes, n)`` of ``pieces``
    in turn (one type ``code``, one pair of flags), decoded together: a request of thousands of
    small combinations (a synthetic twin of an atlas of many donors) decoded one at a time ran
    at a few hundred cells a second, each piece a decoder call and a draw of its own.

    Each piece reads the generator in turn: its latent and library noise (``z``'s, then the
    library's), then, for NB and ZINB likelihoods, the seed of its count draw, and its counts
    are drawn from its own rows with that seed, so the cells do not depend on which pieces
    share a chunk (to float rounding of the batched matmuls). A Gaussian likelihood draws its
    noise after decoding: one piece at a time.
    """
    counts = module.likelihood != "gaussian"
    if not counts and len(pieces) != 1:
        raise ValueError("a Gaussian likelihood's noise follows its decoding: decode its pieces "
                         "one at a time")
    device = next(module.parameters()).device
    d = module.n_latent + 1
    u, eps, seeds, covs = [], [], [], []
    for cov, n in pieces:
        u.append(rng.random(n, dtype=np.float32))
        eps.append(rng.standard_normal((n, d), dtype=np.float32))  # z's noise, the library's
        if counts:
            seeds.append(int(rng.integers(2**63)))  # what nb_csr draws after the decoding
        covs.append(np.broadcast_to(np.asarray(cov, dtype=np.int64), (n, len(cov))))
    n_all = sum(n for _, n in pieces)
    y = torch.full((n_all,), code, dtype=torch.long, device=device)
    c = torch.from_numpy(np.concatenate(covs)).to(device) if pieces[0][0] else None
    e = torch.from_numpy(np.concatenate(eps)).to(device)
    if latent == "mixture":  # z and library jointly
        z, library = module.mixture_from_noise(torch.from_numpy(np.concatenate(u)).to(device),
                                               e, y)  # fmt: skip
    else:
        z, library = module.latent_from_noise(e[:, :-1], y), module.library_from_noise(e[:, -1], y)
    px = module.generative(z, y, library, c, one_type=True, any_type=any_type,
                           unseen_level=unseen_level)  # fmt: skip
    if not counts:
        return draw_counts(px, library, rng)
    dropout = _checked_dropout(px)
    sizes = [n for _, n in pieces]
    if px.mu.device.type == "cpu":  # one kernel call, each piece's rows in its own stream
        return nb_csr_seeded(np.repeat(np.array(seeds, dtype=np.uint64), sizes), px.mu,
                             px.theta, dropout)  # fmt: skip

    def rows(t: torch.Tensor | None, sl: slice) -> torch.Tensor | None:
        return t if t is None or t.dim() == 1 or t.shape[0] == 1 else t[sl]

    parts, start = [], 0
    for n, seed in zip(sizes, seeds, strict=True):
        sl = slice(start, start + n)
        parts.append(nb_csr_seeded(seed, px.mu[sl], rows(px.theta, sl), rows(dropout, sl)))
        start += n
    return stack_rows(parts)
