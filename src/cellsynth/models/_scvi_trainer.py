"""scvi-tools' trainer as :class:`~cellsynth.models.scvi.ScviGenerator` runs it: its log
banners and Lightning's warnings kept quiet, and one epoch bar on stderr."""

from __future__ import annotations

import logging
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ..options import progress_bar

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
