"""Which epoch of a CVAE to keep: the one whose generated cells the validation cells tell apart least.

The validation ELBO measures how well the network encodes and decodes cells it did not train
on; sampling never uses that path. It draws latents from the per-type mixture fitted to the
training cells' posteriors and decodes them, so what counts is how close those cells come to
unseen real ones. On the shared datasets the ELBO's best epoch comes early, while the decoder is
still smooth and the generated cells too alike (high kNN precision, low recall); some epochs
later precision and recall meet and the classifier two-sample AUC against held-out cells is
lowest; later still the generated cells spread beyond the real ones (``cvae.select = "elbo"``
keeps the old choice).

:class:`FidelityCheck` is the loop's ``evaluate`` under ``cvae.select = "fidelity"``: every few
epochs it fits the sampler to the training cells, generates as many cells of each type as a
seeded subsample of the validation cells holds, and returns the mean of two cross-validated
two-sample AUCs between the two (averaged over a few draws when there are few validation
cells): one in an evaluation space (HVGs, log1p per 10k, PCs) fitted once on training cells,
and one on the genes themselves (:func:`~cellsynth.metrics.gene_test.gene_c2st`: the validation
cells' top HVGs, log-normalised, with their detection indicators), so that the kept epoch is
not blind to what the PCs average away (a decoder's lowly expressed genes, zero fractions,
dispersions; issue 21). The gene test is bounded as the PC test is: at most
:data:`CHECK_CELLS` cells a side and :data:`CHECK_GENES` genes, about a third of a second on two
cores. The test split is never read.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import scipy.sparse as sp

from ..data.csr import stack_rows
from ..data.rows import Rows
from ..data.split import stratified_subsample
from ..errors import CellsynthError
from ..metrics.fidelity import c2st_auc
from ..metrics.gene_test import gene_c2st
from ..metrics.space import fit_space
from ..seeds import derive_seed
from ._counts import mean_loss

logger = logging.getLogger(__name__)

CHECK_CELLS = 2_000  # validation cells a check compares with, at most (a stratified subsample)
CHECK_GENES = 500  # HVGs of the validation cells the check's gene-level test uses
SPACE_CELLS_PER_TYPE = 500  # training cells per type the check's space is fitted on, at most
SAMPLER_CELLS = 2_000  # training cells per type a check's sampler is fitted on, at most (the
# final one takes up to 5,000: on a 533k-cell atlas that fit is about 4 minutes)...
# ...and in all types together (the gene scale's draws too; fit_sampler's ``budget``): a check
# compares at most CHECK_CELLS validation cells, far fewer than this resolves. With 126 types of
# 2,000 cells at 22,312 genes a check's sampler took 162 s, 49 s with it (simulated, 2
# cores). The final fit (up to 5,000 cells a type) is not bounded. Below 25 types of 2,000
# cells it never binds.
SAMPLER_BUDGET = 50_000
CHECK_STEPS = 100  # optimiser steps between checks, about (``evaluate_every`` in epochs)...
MAX_CHECKS = 20  # ...but at most this many in the epoch budget
# the PC-level test's boosting in a check: 30 rounds at 0.25 give the AUCs of c2st_auc's 100 at
# 0.1 within their noise (Kang, 162 validation cells, 4 seeds at each of 4 epochs: means within
# 0.004, spread 0.005-0.013 against 0.008-0.014) at 0.6 of the time
CHECK_ROUNDS, CHECK_RATE = 30, 0.25
MAX_REPEATS = 5  # AUCs a check averages when it has fewer than CHECK_CELLS validation cells
MIN_CHECK_CELLS = 20  # fewer validation cells than this: the ELBO decides (an AUC on 5 is noise)


def check_every(n_train: int, batch_size: int, max_epochs: int) -> int:
    """Epochs between two checks: about :data:`CHECK_STEPS` optimiser steps, but no more than
    :data:`MAX_CHECKS` checks in ``max_epochs`` (a check costs a few epochs of a small model:
    on a few thousand cells the checks, not the epochs, were most of a fit); at least one."""
    steps_per_epoch = max(math.ceil(n_train / max(batch_size, 1)), 1)
    return max(round(CHECK_STEPS / steps_per_epoch), math.ceil(max_epochs / MAX_CHECKS), 1)


class FidelityCheck:
    """The two-sample AUC of a model's generated cells against validation cells (lower is better):
    the mean of the PC-level and the gene-level AUC (the PC-level alone when the validation
    cells have too few detected genes for the gene test).

    With fewer than :data:`CHECK_CELLS` validation cells the AUC is the mean over up to
    :data:`MAX_REPEATS` independent draws of generated cells (and classifier folds): on a few
    hundred cells one draw moves the AUC by several hundredths, as much as epochs differ. Every
    check draws the same noise.

    Parameters
    ----------
    model
        The :class:`~cellsynth.models.cvae.CVAE` being trained (its sampler is refitted at each
        call, then refitted again on the kept weights after training).
    train
        The training :class:`~cellsynth.models._counts.Rows` (the sampler's cells).
    train_codes
        Their type codes.
    val_counts, val_codes
        The validation cells' raw counts (CSR) and type codes.
    seed
        Fixes the space, the subsample, every check's sampling and classifier folds.
    """

    def __init__(self, model: Any, train: Any, train_codes: np.ndarray, val_counts: sp.csr_matrix,
                 val_codes: np.ndarray, seed: int,
                 val_covariates: np.ndarray | None = None) -> None:  # fmt: skip
        self.model, self.train, self.train_codes, self.seed = model, train, train_codes, seed
        labels = np.asarray(model.labels, dtype=object)
        self.space = fit_space(train.counts, labels[train_codes], list(model.genes),
                               max_cells_per_class=SPACE_CELLS_PER_TYPE,
                               seed=derive_seed(seed, "select-space"))  # fmt: skip
        pick = stratified_subsample(val_codes, CHECK_CELLS, seed=derive_seed(seed, "select-cells"))
        self.real_counts = val_counts[pick]
        self.real = self.space.embed(self.real_counts)
        # generated cells of the validation subsample's types (and covariate levels)
        keys = np.asarray(val_codes)[pick][:, None]
        if val_covariates is not None:
            keys = np.hstack([keys, np.asarray(val_covariates)[pick]])
        combos, n = np.unique(keys, axis=0, return_counts=True)
        self.request = [(str(labels[c[0]]), tuple(int(v) for v in c[1:]), int(k))
                        for c, k in zip(combos, n, strict=True)]  # fmt: skip
        self.repeats = int(min(MAX_REPEATS, math.ceil(CHECK_CELLS / max(len(pick), 1))))

    def __call__(self) -> float:
        """Refit the sampler, generate, and return the AUC (0.5: indistinguishable)."""
        try:
            self.model._fit_sampler(self.train, self.train_codes, self.seed, quiet=True,
                                    max_cells=SAMPLER_CELLS, budget=SAMPLER_BUDGET)  # fmt: skip
        except CellsynthError as err:  # a diverged epoch: never the one kept
            logger.debug("CVAE: no sampler at this epoch: %s", err)
            return math.nan
        # the same noise at every check: epochs are compared on equal terms, and a resumed
        # training makes the same choice as one that was never stopped
        seed = derive_seed(self.seed, "select-check")
        rng = np.random.default_rng(seed)
        aucs = []
        for rep in range(self.repeats):  # a few hundred cells: average several draws
            chunks = [x for _, x in self.model._chunks(self.request, rng, "mixture")]
            counts = stack_rows(chunks)
            pcs = c2st_auc(self.real, self.space.embed(counts), seed=derive_seed(seed, f"c2st-{rep}"),
                           rounds=CHECK_ROUNDS, learning_rate=CHECK_RATE)  # fmt: skip
            aucs.append(pcs if (genes := self._genes(counts, rep)) is None else (pcs + genes) / 2)
        return float(np.mean(aucs))

    def _genes(self, counts: sp.csr_matrix, rep: int) -> float | None:
        """The gene-level AUC of one draw, or None where the validation cells cannot give one."""
        try:
            return gene_c2st(self.real_counts, counts, n_genes=CHECK_GENES, max_n=CHECK_CELLS,
                             seed=derive_seed(self.seed, f"select-genes-{rep}"))
        except (CellsynthError, ValueError) as err:
            logger.debug("CVAE: the selection check uses the PCs only: %s", err)
            return None


def monitor(model: Any, train: Any, val: Any, yt: np.ndarray, seed: int,
            max_epochs: int) -> tuple[Any, int]:  # fmt: skip
    """What early stopping of ``model`` (a CVAE) watches (None: the training loss), and every
    how many epochs.

    ``cvae.select = "fidelity"`` with at least ``MIN_CHECK_CELLS`` validation cells in
    memory: the two-sample AUC of generated against validation cells
    (:class:`~cellsynth.models._select.FidelityCheck`); otherwise (``"elbo"``, too few
    validation cells, or cells read from disk) the validation ELBO.
    """
    c = model.config
    if not len(val):
        return None, 1
    if c.select == "fidelity" and isinstance(val, Rows) and len(val) >= MIN_CHECK_CELLS:
        every = check_every(len(train), c.batch_size, max_epochs)
        check = FidelityCheck(model, train, yt, val.counts, val.codes_np, seed,
                              val_covariates=val.covariates_np)
        when = (f"every {every} epochs and at the last" if every < max_epochs
                else f"at the last of {max_epochs} epoch(s)")
        logger.info("CVAE: keeping the epoch whose generated cells are closest to %d "
                    "validation cells (two-sample AUC %s)",
                    sum(n for _, _, n in check.request), when)  # fmt: skip
        return check, every
    if c.select == "fidelity":
        logger.info("CVAE: early stopping monitors the validation ELBO: cvae.select = "
                    "\"fidelity\" needs at least %d validation cells in memory",
                    MIN_CHECK_CELLS)  # fmt: skip
    module = model._module()
    return (lambda: mean_loss(module, val, model.eval_rows())), 1
