"""Count data for the count-space CVAE: mini-batches, the data-based start, the latent mixture.

:class:`~cellsynth.data.rows.Rows` (in memory) and
:class:`~cellsynth.data.loader.BlockLoader` (on disk) serve the mini-batches; these are the
functions :class:`~cellsynth.models.cvae.CVAE` and the distributed fit share: one epoch's
mini-batch order, the mean loss over rows, the decoder's and library model's start from the
data, and what sampling needs fitted after training (the per-type latent mixture, the
per-type gene scale of generated means and, with ``dispersion_fit = "moments"``, the NB
dispersion).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import NamedTuple

import numpy as np
import scipy.sparse as sp
import torch
from threadpoolctl import threadpool_limits

from ..data.rows import Rows as Rows  # the in-memory mini-batches (data.rows), named here too
from ..data.rows import csr_type_sums
from ..data.rows import library_sizes as library_sizes
from ..errors import CellsynthError
from . import _training as tr
from ._levels import TRANSFER_DRAWS, Combinations, fit_level_scale
from ._moments import (
    DIVERGED,
    decode_mixture,
    gene_scale_by_moments,
    log_theta_by_moments,
    share_budget,
    type_progress,
    zero_inflation_by_moments,
)
from .modules.cvae import CVAEModule

logger = logging.getLogger(__name__)

TARGET_SUM = 1e4  # counts per cell before log1p (encoder input, Gaussian likelihood)
MIXTURE_COMPONENTS = 5  # most components of a type's latent mixture
MIXTURE_MAX_CELLS = 5_000  # training cells per type the mixture is fitted on at most


def epoch_batches(
    codes: np.ndarray, batch_size: int, balanced: bool, generator: torch.Generator
) -> Iterator[np.ndarray]:
    """Row indices of one epoch's mini-batches: class-balanced draws or a seeded shuffle.

    Every draw comes from ``generator``, so its state is the whole data order.
    """
    if balanced:
        for idx in tr.balanced_batches(codes, batch_size, generator, n_samples=len(codes)):
            yield np.asarray(idx, dtype=np.int64)
        return
    order = torch.randperm(len(codes), generator=generator).numpy()
    for sl in tr.iter_slices(len(codes), batch_size):
        yield order[sl]


@torch.no_grad()
def mean_loss(module: CVAEModule, rows: Rows, batch_size: int) -> float:
    """Mean per-cell negative ELBO (KL weight 1) of ``rows`` in eval mode."""
    module.eval()
    total = torch.zeros((), device=rows.device)
    for sl in tr.iter_slices(len(rows), batch_size):
        total += rows.take(np.arange(sl.start, sl.stop)).loss(module, 1.0) * (sl.stop - sl.start)
    return total.item() / len(rows)


class SamplerFit(NamedTuple):
    """What sampling needs beyond the trained network (:func:`fit_sampler`)."""

    weight: torch.Tensor  # (n_labels, K) mixture weights
    mean: torch.Tensor  # (n_labels, K, d) component means over (z, log library)
    chol: torch.Tensor  # (n_labels, K, d, d) lower-triangular scale factors
    px_r: torch.Tensor | None  # log inverse dispersion by moments; None: keep the trained one
    # (n_labels, n_genes) scale of generated NB means, already set on the module; None: gaussian
    gene_scale: torch.Tensor | None = None
    # (n_labels, n_genes) zero inflation of generated NB counts, already set; None: not "nb"
    zero_inflation: torch.Tensor | None = None
    # (R + 1, n_genes) gene scales of covariate levels (models._levels), already set; None:
    # no covariates or not an NB
    level_scale: torch.Tensor | None = None


@torch.no_grad()
def fit_sampler(
    module: CVAEModule, rows: Rows, codes: np.ndarray, batch_size: int, seed: int,
    *, quiet: bool = False, max_cells: int = MIXTURE_MAX_CELLS, budget: int | None = None,
) -> SamplerFit:
    """Each type's mixture over ``(z, log library)``, its gene scale and, when the module's
    ``dispersion_fit`` is ``"moments"``, the NB inverse dispersion, from the type's training cells.

    A cell is one posterior draw of ``z`` beside the log of its observed library size, so that
    generated cells keep the coupling of state and sequencing depth that real cells have (a
    library drawn apart from ``z`` gives deep cells a shallow cell's profile). Types with at
    least ``2 (n_latent + 1)`` cells get a full-covariance Gaussian mixture of up to
    ``MIXTURE_COMPONENTS`` components (one per ``n_latent + 1`` cells); smaller ones one
    Gaussian with a shrunk (Ledoit-Wolf) covariance: too few cells for a full covariance, and
    one component per cell (its posterior, its own library size) would re-draw each training
    cell of a small type, which a membership attack finds (``metrics.privacy``). A type of one
    cell keeps that cell's posterior: there is nothing else to learn it from. The dispersion:
    the decoded mean ``mu`` at the same draw and library,
    and ``Var = mu + mu^2 / theta`` solved over the cells as ``theta = sum mu^2 / sum((x - mu)^2
    - mu)`` per gene and type (pooled over types for ``dispersion = "gene"``); no excess
    spread is the Poisson limit. Each type uses at most ``max_cells`` cells (a seeded choice;
    default ``MIXTURE_MAX_CELLS``). ``d = n_latent + 1``.

    ``budget`` bounds a fit's cost over many types (a fidelity check refits the sampler every
    few epochs; ``models._select``): the cells read, and the gene scale's draws, are at most
    ``budget`` in all, the zero inflation's draws (each visited at every step of its solve) at most
    ``budget * ZERO_DRAWS / SCALE_MIN_DRAWS``, each type's share cut by :func:`~cellsynth.models._moments.share_budget`.
    Where the budget holds every type's share, the fit is the same as without it.

    The gene scale (NB likelihoods; :func:`~cellsynth.models._moments.gene_scale_by_moments`): cells drawn from the new
    mixture are decoded, and each type's gene means are scaled to the training cells' means.
    Decoded at posterior draws the means fit, but the mixture smooths the latent space, and the
    decoder's means of lowly expressed genes, high in small regions only, come out too low
    under it (pbmc4k with its 14,407 detected genes: about 0.7 of the training means for genes
    under 0.01 counts a cell; ``docs/GENE_LEVEL.md``).

    With covariates, each level's gene scale within a type follows the type's
    (:mod:`~cellsynth.models._levels`, from the same draws), and with ``likelihood = "nb"`` the
    zero inflation (:func:`~cellsynth.models._moments.zero_inflation_by_moments`) is solved last, under both scales.

    The module's mixture, gene scales, zero inflation and (moments) dispersion are set here;
    they are also returned (:class:`SamplerFit`) for callers that keep or send them.
    """
    from sklearn.mixture import GaussianMixture  # only needed here

    module.eval()
    start = time.perf_counter()
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1,)))
    d = module.n_latent + 1
    moments = module.dispersion_fit == "moments"
    mu2 = np.zeros((module.n_labels, module.n_input))  # per type: sum mu^2, sum (x - mu)^2 - mu
    excess = np.zeros((module.n_labels, module.n_input))
    scaled = module.likelihood != "gaussian"
    inflated = module.likelihood == "nb"  # zinb learns its zeros; gaussian has none
    if scaled:  # every decoded mean below is the network's own (the fit before is undone)
        module.set_gene_scale(torch.ones(()))
    module.set_zero_inflation(torch.zeros(()))
    zeros = np.zeros((module.n_labels, module.n_input))  # per type: zero counts of the cells used
    sum_x = np.zeros((module.n_labels, module.n_input))  # per type: counts of the cells used
    n_used = np.zeros(module.n_labels, dtype=np.int64)
    covariates: list[np.ndarray | None] = []  # per type: the covariate codes of the cells used
    # per type: training counts per combination of covariate levels (the level scale)
    observed: list[Combinations | None] = [None] * module.n_labels
    if scaled and module.n_covariate_levels:
        module.set_level_scale(torch.zeros_like(module.level_rows), torch.ones(1, module.n_input))
    parts = []
    n_type = np.bincount(codes, minlength=module.n_labels)
    take = share_budget(np.minimum(n_type, max_cells), budget)
    for t in type_progress(module.n_labels, "latent mixtures", not quiet):
        idx = np.flatnonzero(codes == t)
        if len(idx) > take[t]:
            idx = np.sort(rng.choice(idx, take[t], replace=False))
        k = min(MIXTURE_COMPONENTS, len(idx) // d)
        mean, std, log_lib, draws, cov = [], [], [], [], []
        n_used[t] = len(idx)
        for sl in tr.iter_slices(len(idx), batch_size):
            x, y, library, c = rows.batch(idx[sl])
            if scaled:
                sum_x[t] += x.sum(0, dtype=torch.float64).cpu().numpy()
            if inflated:
                zeros[t] += (x == 0).sum(0).cpu().numpy()
            if c is not None:
                cov.append(c.cpu().numpy())
                if scaled:
                    observed[t] = observed[t] or Combinations()
                    observed[t].add(x, c)
            qz, _ = module.inference(x, y, library, c)
            mean.append(qz.loc.double().cpu().numpy())
            std.append(qz.scale.double().cpu().numpy())
            log_lib.append(np.log(library.double().cpu().numpy()))
            if len(idx) > 1 or moments:  # one draw per cell, in row order
                draws.append(mean[-1] + std[-1] * rng.standard_normal(mean[-1].shape))
            if moments:
                z = torch.from_numpy(draws[-1]).to(qz.loc)
                mu = module.generative(z, y, library, c, one_type=True).mu  # (B, n_genes)
                mu2[t] += (mu * mu).sum(0, dtype=torch.float64).cpu().numpy()
                excess[t] += ((x - mu) ** 2 - mu).sum(0, dtype=torch.float64).cpu().numpy()
        covariates.append(np.concatenate(cov) if cov else None)
        mu, sd, ll = np.concatenate(mean), np.concatenate(std), np.concatenate(log_lib)
        if not (np.isfinite(mu).all() and np.isfinite(sd).all()):  # before the mixture's EM
            raise CellsynthError(DIVERGED.format(what="the latent positions of its cells"))
        if len(idx) == 1:  # its posterior for z, its own library size
            chol = np.zeros((1, d, d))
            chol[:, np.arange(d - 1), np.arange(d - 1)] = sd
            parts.append((np.ones(1), np.hstack([mu, ll[:, None]]), chol))
            continue
        # one BLAS / OpenMP thread: on these small matrices (up to 5 components of
        # n_latent + 1 dimensions over a few thousand cells) threads beside torch's only wait,
        # and the EM took ten times as long (cbmc: 4 of a check's 6 s); the same fit
        with threadpool_limits(1):
            if k < 2:
                parts.append(_one_gaussian(np.hstack([np.concatenate(draws), ll[:, None]])))
                continue
            gm = GaussianMixture(
                k, covariance_type="full", reg_covar=1e-4, random_state=int(rng.integers(2**31))
            ).fit(np.hstack([np.concatenate(draws), ll[:, None]]))
            parts.append((gm.weights_, gm.means_, np.linalg.cholesky(gm.covariances_)))
    k_max = max(len(w) for w, _, _ in parts)
    weight = np.zeros((len(parts), k_max))
    mean = np.zeros((len(parts), k_max, d))
    chol = np.zeros((len(parts), k_max, d, d))
    for t, (w, m, c) in enumerate(parts):
        weight[t, : len(w)], mean[t, : len(w)], chol[t, : len(w)] = w / w.sum(), m, c
    px_r = None
    if moments:
        px_r = torch.tensor(log_theta_by_moments(mu2, excess, module.dispersion), dtype=torch.float32)
    weight, mean, chol = torch.tensor(weight), torch.tensor(mean), torch.tensor(chol)
    module.set_latent_mixture(weight, mean, chol)
    if px_r is not None:
        module.set_dispersion(px_r)
    scale = levels = None
    if scaled:
        decoded: list[Combinations | None] = [None] * module.n_labels
        scale = gene_scale_by_moments(
            module, sum_x, n_used, covariates, batch_size,
            np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(2,))), decoded,
            budget=budget, progress=not quiet)
        module.set_gene_scale(scale)
        # a budgeted fit (a fidelity check) generates the validation cells' combinations only:
        # no level a type lacked is decoded there
        carry = None if budget is not None else _level_decoder(
            module, covariates, batch_size,
            np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(4,))))
        levels = fit_level_scale(module, observed, decoded, scale, carry)
    else:  # no gene scale decodes the mixture: a few draws of each type, before any sampling
        _check_decodes(module, covariates, batch_size,
                       np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(5,))))
    pi = None
    if inflated:
        pi = zero_inflation_by_moments(
            module, zeros, n_used, covariates,
            np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(3,))),
            budget=budget, progress=not quiet)
        module.set_zero_inflation(pi)
    (logger.debug if quiet else logger.info)(
        "CVAE: latent and library mixtures (up to %d components per type)%s%s%s%s in %.1f s",
        k_max,
        ", gene scale" if scaled else "",
        f", gene scale of {len(levels) - 1} covariate levels" if levels is not None else "",
        ", zero inflation" if inflated else "",
        " and NB dispersion by moments" if moments else "",
        time.perf_counter() - start,
    )
    return SamplerFit(weight, mean, chol, px_r, scale, pi, levels)


def _check_decodes(module: CVAEModule, covariates: list[np.ndarray | None], batch_size: int,
                   rng: np.random.Generator, draws: int = 64) -> None:
    """Refuse a Gaussian CVAE whose mixture gives counts that are not finite (a diverged fit:
    its latent positions and library sizes overflow), from ``draws`` cells of each type."""
    device = next(module.parameters()).device
    b = min(draws, batch_size)
    for t in range(module.n_labels):
        u = torch.from_numpy(rng.random(b, dtype=np.float32)).to(device)
        eps = torch.from_numpy(rng.standard_normal((b, module.n_latent + 1),
                                                   dtype=np.float32)).to(device)  # fmt: skip
        c = None if covariates[t] is None else torch.from_numpy(
            covariates[t][rng.integers(len(covariates[t]), size=b)]).to(device)
        y = torch.full((b,), t, dtype=torch.long, device=device)
        z, library = module.mixture_from_noise(u, eps, y)
        px = module.generative(z, y, library, c, one_type=True)
        loc, scale = px.loc.double(), px.scale.double()  # (b, n_genes) log-normalised values
        counts = torch.expm1(loc.clamp_min(0.0)) * library.double()[:, None]
        if not (torch.isfinite(counts.float()).all() and torch.isfinite(scale).all()):
            raise CellsynthError(DIVERGED.format(what="the counts its cells decode to"))


def _one_gaussian(points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One component over ``points`` (cells x d): their mean and Ledoit-Wolf covariance."""
    from sklearn.covariance import LedoitWolf  # only needed here

    cov = LedoitWolf().fit(points).covariance_ + 1e-4 * np.eye(points.shape[1])
    return np.ones(1), points.mean(0, keepdims=True), np.linalg.cholesky(cov)[None]


def _level_decoder(module: CVAEModule, covariates: list[np.ndarray | None], batch_size: int,
                   rng: np.random.Generator) -> Callable[[int, int, int], np.ndarray]:  # fmt: skip
    """``decode(type, covariate, level)`` for :func:`~cellsynth.models._levels.fit_level_scale`:
    the mean of ``TRANSFER_DRAWS`` cells of the type from its mixture, decoded at that level
    (their other levels random training cells' of the type) as generation decodes a level the
    type lacked (no zero inflation; "some type" where the module has one)."""
    device = next(module.parameters()).device

    def decode(t: int, j: int, level: int) -> np.ndarray:
        codes = covariates[t].copy()
        codes[:, j] = level
        total = torch.zeros(module.n_input, dtype=torch.float64, device=device)
        for sl in tr.iter_slices(TRANSFER_DRAWS, batch_size):
            px, _ = decode_mixture(module, t, sl.stop - sl.start, codes, rng, device,
                                    unseen_level=True, any_type=module.any_type is not None)
            total += px.mean.sum(0)
        return total.cpu().numpy() / TRANSFER_DRAWS

    return decode


def initial_decoder(
    counts: sp.csr_matrix, codes: np.ndarray, library: np.ndarray, module: CVAEModule
) -> tuple[torch.Tensor, torch.Tensor]:
    """Data-based start for the decoder's output bias and ``px_r`` (see ``init_from_data``).

    With few optimiser steps (small atlases) a dispersion started at 1 barely moves, and
    generated cells get the wrong share of zeros. NB: the bias is the log expression share
    and ``theta`` the method-of-moments estimate within types (``Var = mu + mu^2 / theta``
    around ``library * share_type``). Gaussian: the mean and within-type sd of
    ``log1p(x / library * 1e4)``.
    """
    target = TARGET_SUM if module.likelihood == "gaussian" else None
    return decoder_from_sums(csr_type_sums(counts, codes, library, module.n_labels,
                                           target_sum=target), module)  # fmt: skip


def decoder_from_sums(
    sums: dict[str, np.ndarray], module: CVAEModule, *, lib_total: float | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`initial_decoder` from per-type sums (``data.loader.type_sums``'s keys).

    Out of core the sums come from one sequential pass over the cells on disk
    (``type_sums(loader, n_labels, target_sum=TARGET_SUM if gaussian else None)``).
    ``lib_total`` is the sum of every library size (default ``sums["lib_total"]`` when the sums
    hold it, else ``sums["sum_l"].sum()``).
    """
    n_labels = module.n_labels
    n, sl, sl2 = sums["n"], sums["sum_l"], sums["sum_l2"]
    s1, s2, slx = sums["sum_x"], sums["sum_x2"], sums["sum_lx"]
    if lib_total is None:
        lib_total = sums.get("lib_total", float(sl.sum()))
    if module.likelihood == "gaussian":
        mean = s1 / np.maximum(n, 1)[:, None]
        within = s2 - n[:, None] * mean**2  # per type sum of squared deviations
        sd_pooled = np.sqrt(within.sum(0) / max(n.sum() - n_labels, 1))  # (n_genes,)
        sd = np.sqrt(within / np.maximum(n - 1, 1)[:, None])
        sd = np.where(n[:, None] >= 2, sd, sd_pooled)
        bias = s1.sum(0) / max(n.sum(), 1)
        log_r = np.log(np.maximum(sd_pooled if module.dispersion == "gene" else sd, 1e-2))
    else:
        share = s1 / np.maximum(sl, 1)[:, None]  # (n_labels, n_genes) expression share per type
        # per type: sum (l p)^2 and sum (x - l p)^2 - l p
        mu2 = sl2[:, None] * share**2
        excess = s2 - 2 * share * slx + mu2 - sl[:, None] * share
        log_r = log_theta_by_moments(mu2, excess, module.dispersion)
        bias = np.log(np.maximum(s1.sum(0) / max(lib_total, 1.0), 1e-9))
    return torch.tensor(bias, dtype=torch.float32), torch.tensor(log_r, dtype=torch.float32)


def library_model(
    library: np.ndarray, codes: np.ndarray, n_labels: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-type mean and sd of ``log(library)``; types with one cell take the pooled sd."""
    log_lib = np.log(library.astype(np.float64))
    n = np.bincount(codes, minlength=n_labels).astype(np.float64)
    mean = np.bincount(codes, weights=log_lib, minlength=n_labels) / np.maximum(n, 1)
    sq = np.bincount(codes, weights=(log_lib - mean[codes]) ** 2, minlength=n_labels)
    std = np.sqrt(sq / np.maximum(n - 1, 1))
    pooled = float(np.std(log_lib, ddof=1)) if len(log_lib) > 1 else 0.0
    std = np.where(n >= 2, std, pooled)
    return torch.tensor(mean, dtype=torch.float32), torch.tensor(std, dtype=torch.float32)
