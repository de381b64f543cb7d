"""What every plot shares: the axes to draw into and the two origins' colours."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matplotlib.axes import Axes

#: the report's colours (cellsynth.report.figures): real cells and the floor, synthetic cells
REAL_COLOR, SYNTH_COLOR = "#4c72b0", "#dd8452"


def axes(ax: Axes | None, figsize: tuple[float, float]) -> Axes:
    """``ax``, or the axes of a new pyplot figure of ``figsize`` inches (never shown here)."""
    if ax is not None:
        return ax
    import matplotlib.pyplot as plt

    _, ax = plt.subplots(figsize=figsize, layout="constrained")
    return ax
