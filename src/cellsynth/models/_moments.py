"""What the CVAE's sampler fits by moments after training, type by type, from cells drawn from
each type's latent mixture and decoded: the per-type gene scale that brings generated means to
the training cells' (:func:`gene_scale_by_moments`), the zero inflation that brings their
shares of zeros there (:func:`zero_inflation_by_moments`, :func:`solve_zero_inflation`) and the
NB dispersion by moments (:func:`log_theta_by_moments`). :func:`~cellsynth.models._counts.fit_sampler`
calls them.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from ..errors import CellsynthError
from ..options import progress_bar
from . import _training as tr
from ._levels import Combinations
from .modules.cvae import CVAEModule
from .modules.likelihoods import NegativeBinomial

MIN_TYPE_SHARE = 128  # cells or draws a type keeps, at least, where a sampler fit has a budget


def share_budget(sizes: np.ndarray, budget: int | None, least: int = MIN_TYPE_SHARE) -> np.ndarray:
    """Each type's share of ``budget`` cells (or draws) in all, from what each would take alone
    (``sizes``): every size cut to one common cap, the largest whose total fits the budget (small
    types keep all theirs), but no share below ``least`` (nor above its size). ``budget=None``:
    the sizes as they are."""
    sizes = np.asarray(sizes, dtype=np.int64)
    if budget is None or sizes.sum() <= budget:
        return sizes
    ordered = np.sort(sizes)
    # the cap c solves sum(min(sizes, c)) = budget: the k smallest kept whole, the rest at c
    below = np.concatenate([[0], np.cumsum(ordered)[:-1]])
    caps = (budget - below) / (len(sizes) - np.arange(len(sizes)))
    cap = int(caps[np.argmax(caps < ordered)])  # at the first type the cap cuts (one does)
    return np.minimum(sizes, max(cap, least))


# cells drawn from a type's mixture to calibrate its gene means (scale_draws): SCALE_PER_CELL
# per training cell, at least SCALE_FEW_DRAWS, at most SCALE_MIN_DRAWS (more cells, as many)
SCALE_MIN_DRAWS = 2_000
SCALE_FEW_DRAWS = 500
SCALE_PER_CELL = 4
#: what a fit whose sampler cannot be fitted says (a diverged training: overflowing latents)
DIVERGED = ("the CVAE's training diverged: {what} are not finite (they overflow), and the "
            "cells it generated would be empty or infinite; lower cvae.lr (e.g. by 10x; and "
            "cvae.weight_decay, if raised) and fit again")
MAX_GENE_SCALE = 1e6  # largest per-type gene scale (a gene the decoder all but switched off)
GENE_SCALE_PRIOR_COUNTS = 1.0  # pseudo-counts at the decoded mean the gene scale is shrunk with
# the zero inflation (zero_inflation_by_moments): cells drawn from a type's mixture, pseudo-cells
# at the NB's own share of zeros the observed share is shrunk with, and the largest inflation
ZERO_DRAWS = 512  # at most; SCALE_PER_CELL per training cell, at least ZERO_FEW_DRAWS
ZERO_FEW_DRAWS = 128
ZERO_PRIOR_CELLS = 10.0
MAX_ZERO_INFLATION = 0.95
# solve_zero_inflation: a gene is solved when its share of zeros is within ZERO_TOL of the target
# or pi is bracketed within MAX_ZERO_INFLATION / 2**12 (what 12 bisection steps gave), after at
# most ZERO_STEPS safeguarded Newton steps
ZERO_TOL = 1e-5
ZERO_STEPS = 40


def type_progress(n_labels: int, what: str, progress: bool) -> Iterator[int]:
    """The type codes a sampler fit visits in turn, behind a progress bar when ``progress``: at
    an atlas's size a pass over its types takes minutes, and a log must show signs of life."""
    if not progress:
        return iter(range(n_labels))
    return iter(progress_bar(range(n_labels), desc=f"CVAE sampler: {what}", unit="type",
                             leave=False))


def decode_mixture(module: CVAEModule, t: int, b: int, cov: np.ndarray | None,
                    rng: np.random.Generator, device: torch.device, **how: bool,
                    ) -> tuple[NegativeBinomial, torch.Tensor | None]:  # fmt: skip
    """``b`` cells of type ``t`` drawn from its mixture over ``(z, log library)`` (covariate
    codes of random training cells of the type, ``cov``) and decoded, calibrated: the NB the
    sampler's moment fits read, and the covariate codes. Draws, in order: component uniforms,
    normals, covariate rows. ``how``: ``generative``'s flags."""
    y = torch.full((b,), t, dtype=torch.long, device=device)
    u = torch.from_numpy(rng.random(b, dtype=np.float32)).to(device)
    eps = torch.from_numpy(rng.standard_normal((b, module.n_latent + 1),
                                               dtype=np.float32)).to(device)
    c = None
    if cov is not None:
        c = torch.from_numpy(cov[rng.integers(len(cov), size=b)]).to(device)
    z, library = module.mixture_from_noise(u, eps, y)
    return module.generative(z, y, library, c, one_type=True, **how), c


def scale_draws(n: int, few: int = SCALE_FEW_DRAWS, most: int = SCALE_MIN_DRAWS, *,
                more: bool = True) -> int:
    """Cells a moment fit of the sampler (gene scale, zero inflation) draws for a type of ``n``
    training cells: ``SCALE_PER_CELL`` per cell, within ``[few, most]``, and with ``more`` ``n``
    when that is more. Then the draws' own error in what is matched (a mean, a share of zeros:
    an average over the draws whose spread is at most a count's) stays under half the ``n``
    cells' sampling error of the value it is matched to. A type of a few cells draws a few
    hundred, not thousands: on 13 pancreas types of 2 to 300 cells and 14,878 genes decoding
    them was most of a sampler fit, and a fit refits the sampler at every fidelity check."""
    m = min(most, max(few, SCALE_PER_CELL * n))
    return max(m, n) if more else m


@torch.no_grad()
def gene_scale_by_moments(
    module: CVAEModule, train_sum: np.ndarray, n_cells: np.ndarray,
    covariates: list[np.ndarray | None], batch_size: int, rng: np.random.Generator,
    combinations: list[Combinations | None] | None = None, budget: int | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Per type and gene, the training cells' mean count over the mean decoded under the
    module's mixture: the scale that makes generated means equal the training means.

    Each type draws :func:`scale_draws` cells (``n``: its training cells used) from its
    mixture over ``(z, log library)``, as :func:`~cellsynth.models._draws.sample_counts` does,
    with the covariate codes of random training cells of the type, and decodes their means (the
    module's gene scale must be one: :func:`fit_sampler` resets it).
    Like the dispersion, a moment fit on the training cells, but shrunk towards one where the
    type's training cells hold few counts of the gene: the scale is
    ``(observed + a) / (expected + a)`` with ``observed`` the gene's counts in the type's training
    cells, ``expected`` the same under the decoded means and ``a = GENE_SCALE_PRIOR_COUNTS``
    (a gamma prior of ``a`` pseudo-counts at the decoder's mean, the empirical-Bayes estimate of
    a rate ratio). A gene with thousands of counts in a type is calibrated fully; one with a count
    or two (small types, rare genes) keeps about the decoder's smooth mean, so that a generated
    cell is not pulled towards the few training cells of a small type.

    Parameters
    ----------
    module
        The trained module, its mixture set and its gene scale one.
    train_sum
        ``(n_labels, n_genes)`` counts of each type's training cells (those used).
    n_cells
        ``(n_labels,)`` training cells of each type those counts are over.
    covariates
        Per type, the covariate codes ``(n, k)`` of the training cells used, or None.
    batch_size
        Cells decoded at a time.
    rng
        All the draws.
    combinations
        Filled, when given, with each type's decoded means per combination of covariate
        levels (types with covariates; :mod:`~cellsynth.models._levels`).
    budget
        Draws in all types together, at most (:func:`share_budget`; None: no bound).
    progress
        A progress bar over the types (a log line every 30 s where there is no terminal).

    Returns
    -------
    torch.Tensor
        ``(n_labels, n_genes)`` float32 scales in ``[0, MAX_GENE_SCALE]``.
    """
    device = next(module.parameters()).device
    decoded = np.zeros_like(train_sum)
    draws = share_budget(np.array([scale_draws(int(n)) for n in n_cells]), budget)
    for t in type_progress(module.n_labels, "gene scale", progress):
        cov, n = covariates[t], int(draws[t])
        total = torch.zeros(module.n_input, dtype=torch.float64, device=device)
        for sl in tr.iter_slices(n, batch_size):
            px, c = decode_mixture(module, t, sl.stop - sl.start, cov, rng, device)
            total += px.mean.sum(0)  # a batch summed in float32, the batches in float64
            if combinations is not None and c is not None:
                combinations[t] = combinations[t] or Combinations()
                combinations[t].add(px.mean, c)
        decoded[t] = total.cpu().numpy() / n
        if not np.isfinite(decoded[t]).all():  # 0 counts over an infinite mean: a scale of 0
            raise CellsynthError(DIVERGED.format(what="the means it decodes"))
    n = n_cells[:, None].astype(np.float64)
    a = GENE_SCALE_PRIOR_COUNTS
    scale = (train_sum + a) / (decoded * n + a)
    return torch.tensor(np.clip(scale, 0.0, MAX_GENE_SCALE), dtype=torch.float32)


@torch.no_grad()
def zero_inflation_by_moments(
    module: CVAEModule, zeros: np.ndarray, n_cells: np.ndarray,
    covariates: list[np.ndarray | None], rng: np.random.Generator,
    budget: int | None = None, progress: bool = False,
) -> torch.Tensor:
    """Per type and gene, the zero inflation ``pi`` that gives generated cells the training
    cells' share of zeros, their means kept.

    Each type draws ``SCALE_PER_CELL`` cells per training cell, within ``[ZERO_FEW_DRAWS,
    ZERO_DRAWS]`` (:func:`scale_draws`' reason), from its mixture (covariate codes of random training
    cells of the type) and decodes their calibrated NB means ``mu`` and dispersion ``theta``
    (the gene scale set, no inflation yet). A generated count is then zero with probability
    ``pi + (1 - pi) E[NB(0; mu / (1 - pi), theta)]``; ``pi`` is solved (:func:`solve_zero_inflation`) to make that
    the training share, which is shrunk towards the NB's own share by ``ZERO_PRIOR_CELLS``
    pseudo-cells (a type of a few cells is not given its few cells' zeros). Where the NB has as
    many zeros already, ``pi = 0``; at most ``MAX_ZERO_INFLATION``.

    Why: the NB dispersion fitted by moments around each training cell's reconstruction (the
    encoder has seen the cell) reads much of the cell-to-cell spread as explained, so generated
    cells detect genes in too many cells: a gene on in a third of a type's cells comes out on in
    half of them at the same mean, and a classifier on genes tells them apart
    (``docs/GENE_LEVEL.md``). Matching the share of zeros, as the gene scale matches the mean,
    closes most of that gap without heavier tails (fitting the dispersion to the zeros instead
    moved the cells in PC space).

    Parameters
    ----------
    module
        The trained module, its mixture, dispersion and gene scale set.
    zeros
        ``(n_labels, n_genes)`` zero counts of each type's training cells (those used).
    n_cells
        ``(n_labels,)`` training cells of each type those counts are over.
    covariates
        Per type, the covariate codes ``(n, k)`` of the training cells used, or None.
    rng
        All the draws.
    budget
        The sampler fit's budget (that of the gene scale's draws): these draws are at most
        ``budget * ZERO_DRAWS / SCALE_MIN_DRAWS`` in all types together (each is visited at
        every step of the solve; :func:`share_budget`; None: no bound).
    progress
        A progress bar over the types (a log line every 30 s where there is no terminal).

    Returns
    -------
    torch.Tensor
        ``(n_labels, n_genes)`` float32 probabilities in ``[0, MAX_ZERO_INFLATION]``.
    """
    device = next(module.parameters()).device
    out = torch.zeros(module.n_labels, module.n_input)
    a = ZERO_PRIOR_CELLS
    draws = share_budget(
        np.array([scale_draws(int(n), ZERO_FEW_DRAWS, ZERO_DRAWS, more=False) if n else 0
                  for n in n_cells]),
        None if budget is None else budget * ZERO_DRAWS // SCALE_MIN_DRAWS)
    for t in type_progress(module.n_labels, "zero inflation", progress):
        n, b = int(n_cells[t]), int(draws[t])
        if n == 0:
            continue
        px, _ = decode_mixture(module, t, b, covariates[t], rng, device)
        mu, theta = px.mu.float(), px.theta.float().reshape(1, -1).expand(1, module.n_input)
        p0 = torch.exp(-theta * torch.log1p(mu / theta)).mean(0)  # (n_genes,): pi = 0
        target = (torch.from_numpy(zeros[t]).to(p0) + a * p0) / (n + a)
        genes = torch.nonzero(target > p0 + 1e-9).squeeze(1)
        if not len(genes):
            continue
        mu, theta, target = mu[:, genes], theta[:, genes], target[genes]
        out[t, genes.cpu()] = solve_zero_inflation(mu, theta, target).cpu()
    return out


def solve_zero_inflation(mu: torch.Tensor, theta: torch.Tensor,
                         target: torch.Tensor) -> torch.Tensor:  # fmt: skip
    """Per gene, the ``pi`` in ``[0, MAX_ZERO_INFLATION]`` whose share of zeros
    ``f = pi + (1 - pi) E[P0(mu / (1 - pi))]`` is ``target`` (``P0(m) = (1 + m / theta) **
    -theta``, the NB's zero at mean ``m``; ``E`` the mean over the draws: rows of ``mu``
    ``(b, g)``; ``theta`` ``(1, g)``; ``target`` ``(g,)``, above ``f`` at ``pi = 0``).

    Safeguarded Newton in ``s = 1 / (1 - pi)``, the factor the kept counts' mean is inflated by:
    ``f = 1 - (1 - E[P0(mu s)]) / s`` grows with ``s``, nearly linearly for rarely detected genes
    (``f ~ 1 - mu + mu^2 (1 + 1 / theta) s / 2``), whose zeros hardly move with ``pi``, and
    ``df/ds = (1 - E[P(0)] - E[P(1)]) / s^2`` at the inflated means (``P(1) = P0 m / (1 + m /
    theta)``) comes from the same pass over the draws. A step that leaves the bracket kept
    around the root is a bisection step instead. Genes leave as they converge (their share
    within ``ZERO_TOL`` of the target, or ``pi`` bracketed as 12 bisection steps bracketed it),
    so later steps see fewer columns; the first step is at the largest ``pi``, where the genes
    whose target is out of reach (most rarely detected ones) stop.
    """
    g = mu.shape[1]
    out = torch.empty(g, device=mu.device)
    left = torch.arange(g, device=mu.device)  # the genes not yet solved
    lo = torch.ones(g, device=mu.device)
    hi = torch.full_like(lo, 1.0 / (1.0 - MAX_ZERO_INFLATION))
    s = hi.clone()  # first at the largest pi: genes that cannot reach the target stop there
    width = MAX_ZERO_INFLATION / 2**12  # in pi
    for step in range(ZERO_STEPS + 1):
        r = mu * (s / theta[0])  # (b, g): the inflated mean over theta
        p0 = torch.exp(-theta * torch.log1p(r))
        e0 = p0.mean(0)
        e1 = (p0 * r / (1.0 + r)).mean(0) * theta[0]  # E[P(1)]
        f = 1.0 - (1.0 - e0) / s - target
        below = f < 0
        lo, hi = torch.where(below, s, lo), torch.where(below, hi, s)
        close = f.abs() < ZERO_TOL
        done = close | (1.0 / lo - 1.0 / hi < width) | (step == ZERO_STEPS)
        at_s = close | (below if step == 0 else torch.zeros_like(close))  # pi is where f was
        done |= at_s  # at step 0, below: out of reach, the largest pi
        out[left[done]] = 1.0 - 1.0 / torch.where(at_s, s, (lo + hi) / 2)[done]
        if bool(done.all()):
            break
        slope = (1.0 - e0 - e1) / (s * s)
        step_s = s - f / slope.clamp_min(1e-30)
        inside = (slope > 0) & (step_s > lo) & (step_s < hi)
        s = torch.where(inside, step_s, (lo + hi) / 2)
        keep = torch.nonzero(~done).squeeze(1)
        if len(keep) < len(left):
            left, s, lo, hi, target = (a[keep] for a in (left, s, lo, hi, target))
            mu, theta = mu[:, keep], theta[:, keep]
    return out


def log_theta_by_moments(mu2: np.ndarray, excess: np.ndarray, dispersion: str) -> np.ndarray:
    """Log NB inverse dispersion from ``Var = mu + mu^2 / theta`` summed over cells.

    ``mu2`` and ``excess`` are per type and gene ``(n_labels, n_genes)``: the sums of ``mu^2``
    and of ``(x - mu)^2 - mu``. ``theta = mu2 / excess`` per type (``dispersion = "gene"``: the
    sums pooled over types, one per gene); where there is no excess spread (or no counts) it is
    the Poisson limit 1e4; kept in ``[1e-2, 1e4]``.
    """
    if dispersion == "gene":
        mu2, excess = mu2.sum(0), excess.sum(0)
    theta = np.where(excess > 0, mu2 / np.maximum(excess, 1e-12), 1e4)
    theta = np.where(np.isfinite(theta) & (theta > 0), theta, 1e4)
    return np.log(np.clip(theta, 1e-2, 1e4))
