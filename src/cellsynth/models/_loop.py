"""The one epoch loop the torch generators train with.

:func:`train_loop` runs epochs of mini-batch steps with the KL warm-up, early stopping on the
validation loss (the best weights restored at the end), a progress bar and per-epoch log lines;
:class:`~cellsynth.models.cvae.CVAE`, the distributed CVAE fit and
:class:`~cellsynth.models.seed.SeedCVAE` all call it. Given a
:class:`~cellsynth.models._checkpoint.Checkpoint`, it writes the whole training state every few
epochs (:mod:`~cellsynth.models._checkpoint`); a later fit with the same fingerprint resumes
from it and takes exactly the steps the uninterrupted fit would have taken.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn

from ..errors import CellsynthError
from ..heartbeat import duration_text
from ..options import log_due, progress_bar
from . import _training as tr
from ._checkpoint import Checkpoint, TrainingState

logger = logging.getLogger(__name__)

AUTO_EPOCHS = 400  # max_epochs = "auto": at most this many epochs...
AUTO_STEPS = 10_000  # ...and about this many optimiser steps


def epoch_budget(max_epochs: int | str, n_cells: int, batch_size: int) -> int:
    """``max_epochs``, or for ``"auto"`` ``min(400, round(10,000 * batch_size / n_cells))``, at
    least 1: about 10,000 optimiser steps.

    Training converges in steps, not epochs: the epochs kept for docs/RESULTS.md (the
    ``history`` in ``benchmarks/results/DATASET/cvae.json``) lie far inside this budget; at
    E-ANND-5's size (533k training cells, 2,083 steps an epoch) 5 epochs ended 0.5% below
    2 epochs' validation loss. Up to 6,400 cells at batch 256 this is 400 epochs; at 533k
    cells, 5. scvi-tools' rule (``400 * 20,000 / n_cells``, 8 million cells seen) would be 15
    epochs there, over 3 hours on 2 cores.
    """
    if max_epochs == "auto":
        steps = AUTO_STEPS * batch_size / max(n_cells, 1)
        return max(1, min(AUTO_EPOCHS, round(steps)))
    return int(max_epochs)


class LoopSettings(Protocol):
    """The config fields the loop reads (``CVAEConfig`` and ``SeedVAEConfig`` have them);
    ``max_epochs`` is a number here (:func:`epoch_budget` resolves ``"auto"``)."""

    max_epochs: int
    patience: int  # epochs without improvement before stopping (see ``min_steps``)
    kl_start: float
    kl_anneal_epochs: int


@dataclass
class LoopResult:
    """What :func:`train_loop` returns; the module holds the best weights."""

    history: dict[str, Any]  # train_loss, val_loss (per epoch), best_epoch, epochs, seconds
    best_loss: float  # validation loss of the kept epoch (the best, or within the tolerance)
    epochs_run: int  # epochs this call ran (fewer than history["epochs"] after a resume)


@dataclass
class Steps:
    """What the loop's optimiser steps need.

    Attributes
    ----------
    module
        The network whose weights are trained, kept for early stopping and checkpointed.
    optimizer
        Its optimiser; stepped once per mini-batch (``scheduler`` too, when given).
    loss
        ``loss(batch, kl_weight)``: the mean loss of one mini-batch, a scalar with a graph.
    batches
        One epoch's mini-batches (anything with a ``len``: row indices or a ``Batch``), drawn
        from ``generator``; called per epoch.
    n_rows
        Rows one epoch draws (the training loss is the sum over batches divided by it).
    generator
        The data-order generator (checkpointed with the global random states).
    scheduler
        A learning-rate schedule stepped after every optimiser step.
    train_module
        The module put in training mode each epoch (a ``DistributedDataParallel`` wrapper);
        ``module`` when None.
    """

    module: nn.Module
    optimizer: torch.optim.Optimizer
    loss: Callable[[Any, float], torch.Tensor]
    batches: Callable[[], Iterable[Any]]
    n_rows: int
    generator: torch.Generator
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
    train_module: nn.Module | None = None


@dataclass
class LoopOptions:
    """How the loop reports, checkpoints and checks (everything but the steps and settings).

    Attributes
    ----------
    name
        The model's name in the progress bar and log lines (``"CVAE"``).
    lr_setting
        The learning-rate setting the error for a loss that is never finite names.
    evaluate_every
        Call ``evaluate`` only every this many epochs (and at the last): an expensive check,
        such as the generated cells' distance to the validation cells. ``patience`` then counts
        checks, and the epochs between them have ``None`` as validation loss in the history.
    checkpoint
        Save the training state there and resume from it when it matches.
    reduce
        ``reduce(train_loss, val_loss)`` -> the losses every process agrees on (data-parallel
        training); identity when None.
    tolerance
        A later check within this of the lowest so far is kept instead
        (:class:`~cellsynth.models._training.EarlyStopping`); 0: the lowest is kept.
    verbose
        Log the early stop, the resume and signs of life, and show the progress bar (False on
        every process but the first).
    """

    name: str = "model"
    lr_setting: str = "lr"
    evaluate_every: int = 1
    checkpoint: Checkpoint | None = None
    reduce: Callable[[float, float], tuple[float, float]] | None = None
    verbose: bool = True
    tolerance: float = 0.0


def train_loop(steps: Steps, evaluate: Callable[[], float] | None, settings: LoopSettings,
               options: LoopOptions | None = None) -> LoopResult:  # fmt: skip
    """Train ``steps.module`` epoch by epoch; keep the weights of the best validation epoch.

    Parameters
    ----------
    steps
        The module, optimiser, mini-batch loss and batches (:class:`Steps`).
    evaluate
        The validation loss (eval mode, KL weight 1), or another check where lower is better;
        None when there are no validation cells, then early stopping monitors the training loss.
    settings
        ``max_epochs``, ``patience``, ``kl_start``, ``kl_anneal_epochs`` and, when they have
        them, ``kl_weight`` (the warm-up's end value, default 1), ``min_improvement`` (the
        fraction of the best validation loss an epoch must beat it by, default 0) and
        ``min_steps``: early stopping waits until that many optimiser steps are done (on a few
        hundred cells an epoch is a few steps, and the validation loss sits on a plateau for
        many epochs while the generator still improves); the best epoch's weights are kept.
    options
        Name, checkpoint, check interval and logging (:class:`LoopOptions`); progress bars
        follow :data:`cellsynth.options.settings`.

    Returns
    -------
    :class:`LoopResult`; ``history`` holds ``train_loss``, ``val_loss``, ``best_epoch``,
    ``epochs``, ``seconds`` (training only, over every resumed part) and, after a resume,
    ``resumed_from`` (the epoch it went on from).
    """
    o = options or LoopOptions()
    module, optimizer, loss, batches = steps.module, steps.optimizer, steps.loss, steps.batches
    n_rows, generator, scheduler = steps.n_rows, steps.generator, steps.scheduler
    name, checkpoint, verbose = o.name, o.checkpoint, o.verbose
    stopper = tr.EarlyStopping(patience=settings.patience,
                               rel_delta=float(getattr(settings, "min_improvement", 0.0)),
                               tolerance=o.tolerance)  # fmt: skip
    min_steps = int(getattr(settings, "min_steps", 0))
    history: dict[str, Any] = {"train_loss": [], "val_loss": []}
    state = TrainingState(module, optimizer, scheduler, generator, stopper, history)
    first, elapsed = 0, 0.0
    found = checkpoint.read() if checkpoint is not None else None
    if found is not None:
        try:
            first, elapsed = state.restore(found)
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            why = " ".join(str(exc).split())[:200]  # one line
            raise CellsynthError(f"the training checkpoint {checkpoint.path} does not fit this "
                                 f"{name} ({why}); delete it and run again") from None
        if verbose:
            logger.info("resuming %s training from epoch %d (%s)", name, first, checkpoint.path)
    start = time.perf_counter()
    device = next(module.parameters()).device
    bar = progress_bar(total=settings.max_epochs, initial=first, desc=name, unit="epoch", here=verbose,
                       log=False)  # fmt: skip  # _SignsOfLife logs, with the loss
    epoch = first - 1
    life = _SignsOfLife(history)
    for epoch in range(first, settings.max_epochs):
        beta = tr.kl_weight(epoch, settings.kl_start, settings.kl_anneal_epochs)
        beta *= float(getattr(settings, "kl_weight", 1.0))
        (steps.train_module or module).train()
        total = torch.zeros((), dtype=torch.float64, device=device)  # no sync per step
        n_steps = seen = 0
        for idx in batches():
            n_steps += 1
            batch_loss = loss(idx, beta)
            optimizer.zero_grad(set_to_none=True)
            batch_loss.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            total += batch_loss.detach().double() * len(idx)
            seen += len(idx)
            now = time.perf_counter()
            step, life.stepped = now - life.stepped, now
            if verbose and log_due(now - life.last, step):
                life.log(name, epoch, settings.max_epochs, seen, n_rows,
                         total.item() / max(seen, 1), (epoch - first) * n_rows + seen,
                         time.perf_counter() - start)
        train_loss = total.item() / n_rows
        check = (evaluate is None or (epoch + 1) % max(o.evaluate_every, 1) == 0
                 or epoch + 1 == settings.max_epochs)  # fmt: skip
        val_loss = evaluate() if evaluate is not None and check else math.nan
        if o.reduce is not None:
            train_loss, val_loss = o.reduce(train_loss, val_loss)
        if evaluate is None:
            val_loss = train_loss
        history["train_loss"].append(train_loss)
        history["val_loss"].append(val_loss if check else None)  # JSON null between checks
        bar.update(1)
        bar.set_postfix(train=f"{train_loss:.5g}", val=f"{val_loss:.5g}", beta=f"{beta:.2f}",
                        refresh=False)  # fmt: skip
        logger.debug("epoch %d: train %.4f, val %.4f, kl weight %.2f", epoch, train_loss,
                     val_loss, beta)  # fmt: skip
        # every epoch draws the same number of batches, so steps so far = epochs x n_steps
        if check and stopper.step(val_loss, epoch, module) and (epoch + 1) * n_steps >= min_steps:
            if verbose:
                logger.info("%s: early stopping after epoch %d (no improvement for %d)", name,
                            epoch, settings.patience)  # fmt: skip
            break
        last = epoch + 1 == settings.max_epochs
        if checkpoint is not None and not last and checkpoint.due(epoch + 1):
            seconds = elapsed + time.perf_counter() - start
            checkpoint.write(*state.capture(epoch + 1, seconds, checkpoint.key))
    bar.close()
    if not stopper.restore(module):
        raise CellsynthError(f"the {name} validation loss was never finite; lower {o.lr_setting} "
                             "(e.g. by 10x) and run again")  # fmt: skip
    module.eval()
    history.update(best_epoch=stopper.best_epoch, epochs=len(history["train_loss"]),
                   seconds=elapsed + time.perf_counter() - start)  # fmt: skip
    if first:
        history["resumed_from"] = first
    if checkpoint is not None and checkpoint.writes:
        logger.info("%s: %d training checkpoints written in %.2f s (%.1f ms each)", name,
                    checkpoint.writes, checkpoint.seconds,
                    1000 * checkpoint.seconds / checkpoint.writes)  # fmt: skip
    return LoopResult(history, stopper.kept_loss, epoch + 1 - first)




class _SignsOfLife:
    """A log line at most every :data:`LOG_SECONDS` inside long epochs: where training is, the
    loss so far, the last check, cells a second and the time left in the epoch budget.

    The rate is over the whole run so far, checks included (``done`` cells in ``seconds``): a
    rate within one epoch reads thousands of cells a second at its first batch, and the time
    left it gives leaves out the checks, which are most of a small data set's fit."""

    def __init__(self, history: dict[str, Any]) -> None:
        self.history = history
        self.last = self.stepped = time.perf_counter()  # the last line, the last batch's end

    def log(self, name: str, epoch: int, max_epochs: int, seen: int, n_rows: int, loss: float,
            done: int, seconds: float) -> None:  # fmt: skip
        rate = done / max(seconds, 1e-9)
        left = (n_rows - seen) / rate + (max_epochs - epoch - 1) * n_rows / rate
        checks = [v for v in self.history["val_loss"] if v is not None]
        last = f", last check {checks[-1]:.4g}" if checks else ""
        logger.info("%s: epoch %d/%d, %d of %d cells, loss %.4g%s, %.0f cells/s, at most %s "
                    "left", name, epoch + 1, max_epochs, seen, n_rows, loss, last, rate,
                    duration_text(left))  # fmt: skip
        self.last = time.perf_counter()
