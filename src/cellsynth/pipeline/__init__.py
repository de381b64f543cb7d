"""The experiment end to end (:func:`run`), and the standalone fit behind ``cellsynth fit``.

Each stage is a small function over a :class:`~cellsynth.pipeline.context.RunContext`
(settings, run directory, seeds, manifest) and one :class:`~cellsynth.cells.Cells`,
whether the cells are in memory or on disk.
"""

from .context import RunContext, out_of_core
from .fit import fit_model
from .run import run

__all__ = ["RunContext", "fit_model", "out_of_core", "run"]
