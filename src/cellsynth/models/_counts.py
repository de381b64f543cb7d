"""Count data for the count-space CVAE: mini-batches, the data-based start, the latent mixture.

:class:`~cellsynth.data.rows.Rows` (in memory) and
:class:`~cellsynth.data.loader.BlockLoader` (on disk) serve the mini-batches; these are the
functions :class:`~cellsynth.models.cvae.CVAE` and the distributed fit share: one epoch's
mini-batch order, the mean loss over rows, the decoder's and library model's start from the
data, and what sampling needs fitted after training (the per-type latent mixture and,
with ``dispersion_fit = "moments"``, the NB dispersion).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import NamedTuple

import numpy as np
import scipy.sparse as sp
import torch

from ..data.rows import Rows as Rows  # the in-memory mini-batches (data.rows), named here too
from ..data.rows import csr_type_sums
from ..data.rows import library_sizes as library_sizes
from . import _training as tr
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
        out = module.loss(*rows.batch(np.arange(sl.start, sl.stop)), kl_weight=1.0)
        total += out.loss * (sl.stop - sl.start)
    return total.item() / len(rows)


class SamplerFit(NamedTuple):
    """What sampling needs beyond the trained network (:func:`fit_sampler`)."""

    weight: torch.Tensor  # (n_labels, K) mixture weights
    mean: torch.Tensor  # (n_labels, K, d) component means over (z, log library)
    chol: torch.Tensor  # (n_labels, K, d, d) lower-triangular scale factors
    px_r: torch.Tensor | None  # log inverse dispersion by moments; None: keep the trained one


@torch.no_grad()
def fit_sampler(
    module: CVAEModule, rows: Rows, codes: np.ndarray, batch_size: int, seed: int,
    *, quiet: bool = False, max_cells: int = MIXTURE_MAX_CELLS,
) -> SamplerFit:
    """Each type's mixture over ``(z, log library)`` and, when the module's ``dispersion_fit`` is
    ``"moments"``, the NB inverse dispersion, both from the type's training cells.

    A cell is one posterior draw of ``z`` beside the log of its observed library size, so that
    generated cells keep the coupling of state and sequencing depth that real cells have (a
    library drawn apart from ``z`` gives deep cells a shallow cell's profile). Types with at
    least ``2 (n_latent + 1)`` cells get a full-covariance Gaussian mixture of up to
    ``MIXTURE_COMPONENTS`` components (one per ``n_latent + 1`` cells); smaller ones keep each
    cell as a component (its posterior sd for ``z``, its own library size): the exact
    aggregate posterior. The dispersion: the decoded mean ``mu`` at the same draw and library,
    and ``Var = mu + mu^2 / theta`` solved over the cells as ``theta = sum mu^2 / sum((x - mu)^2
    - mu)`` per gene and type (pooled over types for ``dispersion = "gene"``); no excess
    spread is the Poisson limit. Each type uses at most ``max_cells`` cells (a seeded choice;
    default ``MIXTURE_MAX_CELLS``). ``d = n_latent + 1``.
    """
    from sklearn.mixture import GaussianMixture  # only needed here

    module.eval()
    start = time.perf_counter()
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1,)))
    d = module.n_latent + 1
    moments = module.dispersion_fit == "moments"
    mu2 = np.zeros((module.n_labels, module.n_input))  # per type: sum mu^2, sum (x - mu)^2 - mu
    excess = np.zeros((module.n_labels, module.n_input))
    parts = []
    for t in range(module.n_labels):
        idx = np.flatnonzero(codes == t)
        if len(idx) > max_cells:
            idx = np.sort(rng.choice(idx, max_cells, replace=False))
        k = min(MIXTURE_COMPONENTS, len(idx) // d)
        mean, std, log_lib, draws = [], [], [], []
        for sl in tr.iter_slices(len(idx), batch_size):
            x, y, library, c = rows.batch(idx[sl])
            qz, _ = module.inference(x, y, library, c)
            mean.append(qz.loc.double().cpu().numpy())
            std.append(qz.scale.double().cpu().numpy())
            log_lib.append(np.log(library.double().cpu().numpy()))
            if k >= 2 or moments:  # one draw per cell, in row order
                draws.append(mean[-1] + std[-1] * rng.standard_normal(mean[-1].shape))
            if moments:
                z = torch.from_numpy(draws[-1]).to(qz.loc)
                mu = module.generative(z, y, library, c).mu  # (B, n_genes)
                mu2[t] += (mu * mu).sum(0, dtype=torch.float64).cpu().numpy()
                excess[t] += ((x - mu) ** 2 - mu).sum(0, dtype=torch.float64).cpu().numpy()
        mu, sd, ll = np.concatenate(mean), np.concatenate(std), np.concatenate(log_lib)
        if k < 2:
            chol = np.zeros((len(idx), d, d))
            chol[:, np.arange(d - 1), np.arange(d - 1)] = sd  # the library is the cell's own
            parts.append((np.full(len(idx), 1.0 / len(idx)), np.hstack([mu, ll[:, None]]), chol))
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
    (logger.debug if quiet else logger.info)(
        "CVAE: latent and library mixtures (up to %d components per type)%s in %.1f s",
        k_max,
        " and NB dispersion by moments" if moments else "",
        time.perf_counter() - start,
    )
    return SamplerFit(torch.tensor(weight), torch.tensor(mean), torch.tensor(chol), px_r)


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
