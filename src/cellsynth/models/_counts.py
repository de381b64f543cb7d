"""Count data for the count-space CVAE: mini-batches, the data-based start, the latent mixture.

:class:`Rows` serves CSR counts as dense mini-batches on a device (gathered on the GPU when the
CSR arrays fit there, else densified on the host one batch at a time); the rest are the
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

from . import _training as tr
from .modules.cvae import CVAEModule

logger = logging.getLogger(__name__)

TARGET_SUM = 1e4  # counts per cell before log1p (encoder input, Gaussian likelihood)
MIXTURE_COMPONENTS = 5  # most components of a type's latent mixture
MIXTURE_MAX_CELLS = 5_000  # training cells per type the mixture is fitted on at most


class Rows:
    """Cells (CSR counts, type codes, library sizes) served as dense mini-batches on a device.

    On CUDA, when the CSR arrays fit in a quarter of the free GPU memory, they are copied there
    once and every mini-batch is gathered and densified on the GPU; otherwise (and on the CPU)
    the rows are sliced with scipy, densified on the host and copied over.

    Parameters
    ----------
    counts
        Raw counts, CSR ``(n, n_genes)``.
    codes
        Integer type code per row, ``(n,)``.
    device
        Where the batches go.
    gather
        Force (True) or forbid (False) gathering from device-resident CSR; ``None`` decides.
    """

    def __init__(
        self,
        counts: sp.csr_matrix,
        codes: np.ndarray,
        device: torch.device,
        gather: bool | None = None,
    ) -> None:
        self.counts = counts
        self.n_genes = counts.shape[1]
        self.device = device
        self.library_np = library_sizes(counts)  # (n,)
        self.codes = torch.from_numpy(np.asarray(codes, dtype=np.int64)).to(device)
        self.library = torch.from_numpy(self.library_np).to(device)
        if gather is None:
            gather = device.type == "cuda" and fits_on_device(counts, device)
        self.on_device = bool(gather)
        if self.on_device:
            self.indptr = torch.from_numpy(counts.indptr.astype(np.int64)).to(device)
            self.indices = torch.from_numpy(counts.indices.astype(np.int32)).to(device)
            self.data = torch.from_numpy(counts.data.astype(np.float32)).to(device)

    def __len__(self) -> int:
        return self.counts.shape[0]

    def batch(self, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Counts ``(B, n_genes)``, codes ``(B,)`` and libraries ``(B,)`` of rows ``idx``."""
        idx_t = torch.from_numpy(np.asarray(idx, dtype=np.int64)).to(self.device)
        if self.on_device:
            total = int((self.counts.indptr[idx + 1] - self.counts.indptr[idx]).sum())
            x = gather_rows(self.indptr, self.indices, self.data, idx_t, total, self.n_genes)
        else:
            x = torch.from_numpy(self.counts[idx].toarray())
            if self.device.type == "cuda":
                x = x.pin_memory().to(self.device, non_blocking=True)
        return x, self.codes[idx_t], self.library[idx_t]


def gather_rows(
    indptr: torch.Tensor,
    indices: torch.Tensor,
    data: torch.Tensor,
    idx: torch.Tensor,
    total: int,
    n_cols: int,
) -> torch.Tensor:
    """Rows ``idx`` of a CSR matrix (its three arrays, on one device) as a dense ``(B, n_cols)``.

    ``total`` is the number of stored values in those rows (known on the host, so the GPU is
    never synchronised).
    """
    start = indptr[idx]  # (B,)
    length = indptr[idx + 1] - start  # (B,)
    row = torch.repeat_interleave(
        torch.arange(len(idx), device=idx.device), length, output_size=total
    )  # (total,)
    first = torch.cumsum(length, 0) - length  # (B,) position of each row's first value
    pos = torch.arange(total, device=idx.device) + torch.repeat_interleave(
        start - first, length, output_size=total
    )  # (total,) positions in indices/data
    out = torch.zeros((len(idx), n_cols), dtype=data.dtype, device=data.device)
    out[row, indices[pos]] = data[pos]
    return out


def fits_on_device(counts: sp.csr_matrix, device: torch.device) -> bool:
    """Whether the CSR arrays take under a quarter of the device's free memory."""
    free, _ = torch.cuda.mem_get_info(device)
    return counts.nnz * 8 + counts.shape[0] * 8 < free // 4


def library_sizes(counts: sp.csr_matrix) -> np.ndarray:
    """Total counts per row as float32, at least 1 (``log`` stays finite for empty cells)."""
    return np.maximum(np.asarray(counts.sum(axis=1), dtype=np.float32).ravel(), 1.0)


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
            x, y, library = rows.batch(idx[sl])
            qz, _ = module.inference(x, y, library)
            mean.append(qz.loc.double().cpu().numpy())
            std.append(qz.scale.double().cpu().numpy())
            log_lib.append(np.log(library.double().cpu().numpy()))
            if k >= 2 or moments:  # one draw per cell, in row order
                draws.append(mean[-1] + std[-1] * rng.standard_normal(mean[-1].shape))
            if moments:
                z = torch.from_numpy(draws[-1]).to(qz.loc)
                mu = module.generative(z, y, library).mu  # (B, n_genes)
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
    n_labels, n_genes = module.n_labels, module.n_input
    if module.likelihood == "gaussian":
        x = sp.csr_matrix(sp.diags(TARGET_SUM / library) @ counts, dtype=np.float64)
        x.data = np.log1p(x.data)
    else:
        x = sp.csr_matrix(counts, dtype=np.float64)
    lib = library.astype(np.float64)
    s1 = np.zeros((n_labels, n_genes))  # per type: sum x, sum x^2, sum l x
    s2 = np.zeros((n_labels, n_genes))
    slx = np.zeros((n_labels, n_genes))
    n = np.bincount(codes, minlength=n_labels).astype(np.float64)
    sl = np.bincount(codes, weights=lib, minlength=n_labels)
    sl2 = np.bincount(codes, weights=lib**2, minlength=n_labels)
    for t in range(n_labels):
        rows = x[np.flatnonzero(codes == t)]
        s1[t] = np.asarray(rows.sum(axis=0)).ravel()
        s2[t] = np.asarray(rows.multiply(rows).sum(axis=0)).ravel()
        slx[t] = rows.T @ lib[codes == t]
    return decoder_from_sums(
        {"n": n, "sum_l": sl, "sum_l2": sl2, "sum_x": s1, "sum_x2": s2, "sum_lx": slx},
        module, lib_total=lib.sum(),
    )


def decoder_from_sums(
    sums: dict[str, np.ndarray], module: CVAEModule, *, lib_total: float | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`initial_decoder` from per-type sums (``data.loader.type_sums``'s keys).

    Out of core the sums come from one sequential pass over the cells on disk
    (``type_sums(loader, n_labels, target_sum=TARGET_SUM if gaussian else None)``).
    ``lib_total`` is the sum of every library size (default ``sums["sum_l"].sum()``).
    """
    n_labels = module.n_labels
    n, sl, sl2 = sums["n"], sums["sum_l"], sums["sum_l2"]
    s1, s2, slx = sums["sum_x"], sums["sum_x2"], sums["sum_lx"]
    if lib_total is None:
        lib_total = float(sl.sum())
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
