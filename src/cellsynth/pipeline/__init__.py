"""The experiment end to end (:func:`run`), and the standalone fit behind ``cellsynth fit``.

Each stage is a small function over a :class:`~cellsynth.pipeline.context.RunContext`
(settings, run directory, seeds, manifest) and one :class:`~cellsynth.cells.Cells`,
whether the cells are in memory or on disk.

The names load on first use: ``cellsynth generate`` imports :mod:`.generate` alone, without
the stages, metrics and report that :func:`run` needs (a second of start-up).
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["RunContext", "fit_model", "out_of_core", "run"]

_WHERE = {"RunContext": "context", "out_of_core": "context", "fit_model": "fit", "run": "experiment"}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
