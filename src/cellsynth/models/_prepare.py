"""What a CVAE fit trains on: its types, genes, covariate design and the training and validation
mini-batch loaders, from one :class:`~cellsynth.cells.Cells` whether in memory or on disk."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..cells import Cells
from ..config import CVAEConfig
from ..errors import DataError
from . import _training as tr
from ._counts import epoch_batches
from ._design import Design

logger = logging.getLogger("cellsynth.models.cvae")


@dataclass
class TrainingData:
    """The cells of one fit: ``train`` and ``val`` loaders (``Rows`` in memory, a
    ``BlockLoader`` on disk) and ``yt``, the training cells' type codes."""

    label_key: str
    labels: list[str]
    genes: list[str]
    design: Design
    train: Any
    val: Any
    yt: np.ndarray

    def steps(self, module: Any, balanced: bool, generator: torch.Generator
              ) -> tuple[Callable[[], Any], Callable[[Any, float], torch.Tensor]]:  # fmt: skip
        """An epoch's batches and the loss of one at KL weight ``beta``: class-balanced draws of
        row positions (random reads when on disk), or the loader's own batches."""
        if balanced:
            return (lambda: epoch_batches(self.yt, self.train.batch_size, True, generator),
                    lambda idx, beta: self.train.take(idx).loss(module, beta))
        return lambda: self.train.iter_generator(generator), lambda b, beta: b.loss(module, beta)


def training_data(cells: Cells, config: CVAEConfig, device: Any, seed: int) -> TrainingData:
    """Split ``cells`` into training and validation loaders for a CVAE with ``config``.

    The model's types are the sorted types of the training cells; validation cells of other
    types, or with a covariate level no training cell had, are left out (with a warning).
    """
    if not cells.has_counts:
        raise DataError("the CVAE needs raw counts, but these cells hold normalised values; "
                        "give the unnormalised file")  # fmt: skip
    y_all = cells.labels()
    rows = cells.split_rows()
    if not len(rows["train"]):
        raise DataError("no training cells: obs['cellsynth_split'] has no 'train' rows")
    labels = sorted(set(y_all[rows["train"]]))
    yt, _ = tr.encode_labels(y_all[rows["train"]], labels, "training",
                             len(rows["train"]), drop_unknown=False)  # fmt: skip
    yv, keep = tr.encode_labels(y_all[rows["val"]], labels, "validation",
                                len(rows["val"]), drop_unknown=True)  # fmt: skip
    used = np.concatenate([rows["train"], rows["val"]])
    design, cov = Design.fit(cells.obs, list(config.covariates), cells.label_key, y_all,
                             rows["train"], used)  # fmt: skip
    val_rows = rows["val"][keep]
    if cov is not None:  # validation cells with a level no training cell had are left out
        seen = (cov[val_rows] >= 0).all(axis=1)
        if not seen.all():
            logger.warning("%d validation cells have covariate levels no training cell had "
                           "and are left out", int((~seen).sum()))  # fmt: skip
        val_rows, yv = val_rows[seen], yv[seen]
    train = cells.loader(rows["train"], yt, batch_size=config.batch_size, device=device,
                         seed=seed, covariates=None if cov is None else cov[rows["train"]])
    val = cells.loader(val_rows, yv, batch_size=4 * config.batch_size, device=device,
                       seed=seed, shuffle=False,
                       covariates=None if cov is None else cov[val_rows])  # fmt: skip
    if len(val) == 0:
        logger.warning("no validation cells; early stopping monitors the training loss")
    genes = list(cells.genes)
    logger.info("CVAE: %d training and %d validation cells, %d genes, %d types%s on %s (%s)",
                len(train), len(val), len(genes), len(labels),
                f", covariates {', '.join(design.keys)}" if design else "", device,
                "read from disk" if cells.on_disk
                else "GPU-gathered" if train.on_device else "host-densified")  # fmt: skip
    return TrainingData(cells.label_key, labels, genes, design, train, val, yt)
