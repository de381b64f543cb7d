"""scvi-tools' trainer as :class:`~cellsynth.models.scvi.ScviGenerator` runs it: its log
banners and Lightning's warnings kept quiet, and one epoch bar on stderr."""

from __future__ import annotations

import logging
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ..config_rules import fix_hint
from ..errors import ConfigError, DataError
from ..options import progress_bar

logger = logging.getLogger(__name__)

#: the loggers scvi-tools' trainer writes its banners through (seed, devices, tips)
_TRAINER_LOGGERS = ("lightning", "lightning.pytorch", "lightning.fabric", "scvi")


@contextmanager
def trainer_quiet(quiet: bool) -> Iterator[None]:
    """Lightning's warnings about how cellsynth sets up its trainer (logging interval, worker
    counts, its own deprecations) are not the user's to act on: hidden; with ``quiet`` (no
    progress bars: ``--quiet``, or no terminal) its banners and tips (seed set, devices,
    'Tip: ...') too, which its own handlers print whatever cellsynth's logging says."""
    loggers = [logging.getLogger(name) for name in _TRAINER_LOGGERS]
    levels = [lg.level for lg in loggers]
    try:
        if quiet:
            for lg in loggers:
                lg.setLevel(logging.WARNING)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", module=r"lightning(\.|$)")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def last_batch(n_train: int, batch_size: int) -> dict[str, Any]:
    """The data splitter's ``drop_last`` for ``n_train`` training cells in batches of
    ``batch_size``: scvi-tools' batch normalisation fails on a training batch of one cell
    (torch's 'Expected more than 1 value per channel'), so a last batch of one is left out of
    each epoch (a different cell each time: the batches are shuffled); elsewhere nothing
    changes. A batch size of 1, or a single training cell, cannot be trained: refused."""
    if batch_size < 2:
        raise ConfigError(f"scvi.batch_size = {batch_size}: scvi-tools' batch normalisation "
                          "needs at least 2 cells a training batch; set scvi.batch_size to 2 "
                          f"or more (the default is 128); {fix_hint('scvi.batch_size')}")
    if n_train < 2:
        raise DataError(f"scvi needs at least 2 training cells, got {n_train}: scvi-tools' "
                        "batch normalisation cannot train on one; give more cells")
    if n_train % batch_size != 1:
        return {}
    logger.info("SCVI: %d training cells leave a last batch of one cell, which scvi-tools "
                "cannot train on: each epoch leaves out one cell (a different one each time)",
                n_train)  # fmt: skip
    return {"drop_last": True}


def epoch_bar() -> Any:
    """A Lightning progress bar: one tqdm bar over SCVI's epochs, on stderr, or where progress
    bars are hidden (no terminal) a log line every ``options.LOG_SECONDS``
    (:func:`~cellsynth.options.progress_bar`).

    scvi's ``ProgressBar`` and Lightning's ``TQDMProgressBar`` both write to stdout, which
    cellsynth keeps for its results; Lightning disables this one on ranks other than 0.
    """
    from lightning.pytorch.callbacks import ProgressBar

    class EpochBar(ProgressBar):
        def __init__(self) -> None:
            super().__init__()
            self._enabled = True
            self.bar: Any = None

        @property
        def is_enabled(self) -> bool:
            return self._enabled

        def disable(self) -> None:
            self._enabled = False

        def enable(self) -> None:
            self._enabled = True

        def on_train_start(self, trainer, pl_module) -> None:
            super().on_train_start(trainer, pl_module)
            self.bar = progress_bar(total=trainer.max_epochs, desc="SCVI", unit="epoch", file=sys.stderr,
                                    here=self._enabled)  # fmt: skip

        def on_train_epoch_end(self, trainer, pl_module) -> None:
            super().on_train_epoch_end(trainer, pl_module)
            if self.bar is not None:
                metrics = {k: v for k, v in self.get_metrics(trainer, pl_module).items()
                           if k != "v_num"}  # fmt: skip
                self.bar.set_postfix(metrics, refresh=False)
                self.bar.update()

        def on_train_end(self, trainer, pl_module) -> None:
            super().on_train_end(trainer, pl_module)
            if self.bar is not None:
                self.bar.close()
                self.bar = None

    return EpochBar()
