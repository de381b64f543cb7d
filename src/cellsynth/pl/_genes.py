"""``cs.pl.genes``: gene by gene, the mean–zero-fraction and mean–variance relations of real
and generated cells, where a generator's lowly expressed genes show what 30 PCs hide."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import DataError
from ._common import REAL_COLOR, SYNTH_COLOR, axes_list, finish, plot

if TYPE_CHECKING:
    from matplotlib.axes import Axes


def _block(result: Any) -> Mapping[str, Any]:
    """The per-gene statistics of :func:`cellsynth.metrics.genes.gene_fidelity` from it, an
    Evaluation, its dict or a run's ``fidelity.json``."""
    if not isinstance(result, Mapping):
        raise DataError(f"a {type(result).__name__} holds no gene-level fidelity; give what "
                        "cellsynth.evaluate returned, or metrics.genes.gene_fidelity's dict")
    # an Evaluation or fidelity.json ({"genes": gene_fidelity}), gene_fidelity's dict
    # ({"genes": block}) or the block itself
    for g in (result, result.get("genes"), (result.get("genes") or {}).get("genes")
              if isinstance(result.get("genes"), Mapping) else None):
        if isinstance(g, Mapping) and isinstance(g.get("skipped"), str):  # the whole test
            raise DataError(f"the gene-level test was not run: {g['skipped']}")
        if isinstance(g, Mapping) and "real_mean" in g:
            return _checked(g)
    raise DataError("the result holds no per-gene statistics ('genes' from "
                    "metrics.genes.gene_fidelity)")


#: the per-gene statistics the plot draws, each side
STATS = ("mean", "zero_fraction", "variance")


def _checked(block: Mapping[str, Any]) -> Mapping[str, Any]:
    """``block`` when it holds every statistic, as many values of each per side and at least
    one gene (a hand-made or edited one had stopped with KeyError or matplotlib's ValueError,
    or drawn empty panels)."""
    missing = [f"{side}_{s}" for side in ("real", "synth") for s in STATS
               if f"{side}_{s}" not in block]
    if missing:
        raise DataError(f"the per-gene statistics lack {missing}; give the 'genes' of "
                        "metrics.genes.gene_fidelity (or what cellsynth.evaluate returned)")
    block = {**block}
    for key in (f"{side}_{s}" for side in ("real", "synth") for s in STATS):
        try:  # None (NaN in JSON) is a gene without a value; text stopped in numpy
            block[key] = np.asarray([np.nan if v is None else v for v in
                                     np.ravel(np.asarray(block[key], dtype=object))], dtype=float)
        except (TypeError, ValueError):
            raise DataError(f"the per-gene statistics' {key} holds values that are not numbers; "
                            "give the 'genes' of metrics.genes.gene_fidelity (or what "
                            "cellsynth.evaluate returned)") from None
    for side in ("real", "synth"):
        sizes = {s: np.size(block[f"{side}_{s}"]) for s in STATS}
        if len(set(sizes.values())) > 1:
            raise DataError(f"the per-gene statistics of the {side} side differ in length "
                            f"({sizes}): give one value per gene of each")
        if not sizes["mean"]:
            raise DataError(f"the per-gene statistics hold no gene on the {side} side: there "
                            "is nothing to draw")
    return block


@plot
def genes(
    result: Any,
    *,
    ax: Sequence[Axes] | None = None,
    show: bool | None = None,
    save: str | Path | None = None,
) -> list[Axes] | None:
    """Per gene, real against generated cells: mean against zero fraction, and mean against
    variance (log-normalised values), one point per gene detected on either side.

    A generator that gets lowly expressed genes wrong (too many or too few zeros, too little
    or too much variance for their mean) shows its points leaving the real cells' curve at
    the left of both panels.

    Parameters
    ----------
    result
        What :func:`cellsynth.evaluate` returned (or its dict), a run's
        ``metrics/fidelity.json`` read with ``json.load``, or
        :func:`~cellsynth.metrics.genes.gene_fidelity`'s dict.
    ax
        Two axes to draw into; None makes a new figure with two panels.
    {show_save}

    Returns
    -------
    list of Axes or None
        The two :class:`~matplotlib.axes.Axes` (None with ``show=True``).
    """
    block = _block(result)
    if ax is None:
        import matplotlib.pyplot as plt

        _, ax = plt.subplots(1, 2, figsize=(10, 4), layout="constrained")
    axs = axes_list(ax, 2, "panel")
    for side, color, label in (("real", REAL_COLOR, "real"), ("synth", SYNTH_COLOR, "generated")):
        mean = np.asarray(block[f"{side}_mean"], dtype=float)
        x = np.log10(np.maximum(mean, 1e-4))
        axs[0].scatter(x, block[f"{side}_zero_fraction"], s=3, alpha=0.4, color=color,
                       label=label, rasterized=True)
        var = np.asarray(block[f"{side}_variance"], dtype=float)
        axs[1].scatter(x, np.log10(np.maximum(var, 1e-6)), s=3, alpha=0.4, color=color,
                       label=label, rasterized=True)
    axs[0].set(xlabel="log10 mean (log-normalised)", ylabel="zero fraction",
               title="mean and zeros per gene")
    axs[1].set(xlabel="log10 mean (log-normalised)", ylabel="log10 variance",
               title="mean and variance per gene")
    axs[0].legend(loc="center left", bbox_to_anchor=(1.0, 0.5), markerscale=4, frameon=False)
    return finish(axs, show, save)
