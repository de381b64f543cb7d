"""``cs.pl.privacy``: the privacy audit, each number beside what no leak gives and its flag."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import DataError
from ._common import FLAG_COLOR, axes, finish, finite, mark_missing, plot

if TYPE_CHECKING:
    from matplotlib.axes import Axes

#: an unflagged bar (neither origin's colour: these numbers compare generated with real cells)
NEUTRAL = "#9a9a9a"


def _audit(result: Any) -> Mapping[str, Any]:
    """The audit's dict from an Evaluation, its dict, a run's ``fidelity.json``, a
    :class:`~cellsynth.metrics.privacy.PrivacyResult` or the audit's dict itself."""
    if hasattr(result, "to_dict") and hasattr(result, "attacks"):  # PrivacyResult
        return result.to_dict()
    if not isinstance(result, Mapping):
        raise DataError(f"a {type(result).__name__} holds no privacy audit; give what "
                        "cellsynth.evaluate(..., heldout=...) returned or its privacy dict")
    priv = result if "attacks" in result or "skipped" in result else result.get("privacy")
    if priv is None:
        raise DataError("the result holds no privacy audit: evaluate with held-out cells "
                        "(cs.evaluate(real, synthetic, heldout=test_cells, ...))")
    if not isinstance(priv, Mapping):  # a hand-made or edited one: str, list... had stopped
        raise DataError(f"the result's privacy is a {type(priv).__name__}, not the audit's dict; "
                        "give what cellsynth.evaluate(..., heldout=...) returned, or "
                        "PrivacyResult.to_dict()")
    if "skipped" in priv:
        raise DataError(f"the privacy audit was not run: {priv['skipped']}")
    if not isinstance(priv.get("attacks"), Mapping):
        raise DataError("the privacy dict has no 'attacks'; give PrivacyResult.to_dict()")
    odd = [k for k in ("donor_attacks", "dcr", "settings")
           if priv.get(k) is not None and not isinstance(priv[k], Mapping)]
    if odd:
        raise DataError(f"the privacy dict's {' and '.join(odd)} {'is' if len(odd) == 1 else 'are'}"
                        " not a dict of numbers; give PrivacyResult.to_dict() (or the evaluation "
                        "whole)")
    return priv


#: a caveat of the audit (its first words) as the title names it
CAVEATS = (("a weak audit", "a weak audit"),
           ("the attacks read the held-out cells as the members", "sides swapped?"),
           ("the held-out cells differ from the training cells", "populations differ"),
           ("the donor level cannot flag", "too few donors"))


def _caveats(priv: Mapping[str, Any]) -> str:
    """What the title adds for the audit's caveats (a weak audit, sides swapped): without it a
    figure said "not flagged" where the audit said a leak would read as none."""
    said = [c for c in priv.get("caveats") or [] if isinstance(c, str)]
    if not said:
        return ""
    names = [next((short for start, short in CAVEATS if c.startswith(start)), "see caveats")
             for c in said]
    return f" (read with: {', '.join(dict.fromkeys(names))})"


def _rows(priv: Mapping[str, Any]
          ) -> list[tuple[str, float, float | None, float | None, bool, float]]:  # fmt: skip
    """``(label, value, expected without a leak, flagged above, flagged, spread)`` per bar; the
    spread is an attack AUC's standard deviation over the audit's halvings of the training
    cells (``auc_sd``; 0 for the other bars and for a single audit)."""
    def tick(v: Any) -> float | None:  # a threshold or an expectation: None when no number
        x = finite(v)
        return None if np.isnan(x) else x

    rows = []
    for level, block in (("cells", priv.get("attacks")), ("donors", priv.get("donor_attacks"))):
        for name, a in (block or {}).items():
            if not isinstance(a, Mapping):
                raise DataError(f"the privacy audit's {name!r} attack is a "
                                f"{type(a).__name__}, not an attack's numbers (auc, threshold, "
                                "flagged): give PrivacyResult.to_dict() or the evaluation whole")
            rows.append((f"{name} attack AUC ({level})", finite(a.get("auc")), 0.5,
                         tick(a.get("threshold")), bool(a.get("flagged")),
                         np.nan_to_num(finite(a.get("auc_sd")))))
    dcr = priv.get("dcr") or {}
    exact_share = tick((priv.get("settings") or {}).get("exact_share", 0.01))
    if dcr.get("share_below_quantile") is not None:
        q = tick(dcr.get("quantile", 0.05))
        rows.append((f"generated closer than {1 - q:.0%} of held-out" if q is not None else
                     "generated closer than most held-out cells",
                     finite(dcr["share_below_quantile"]), q, None, False, 0.0))
    if dcr.get("exact_share") is not None:
        share = finite(dcr["exact_share"])
        rows.append(("exact copies of training cells (share)", share, 0.0, exact_share,
                     exact_share is not None and share > exact_share, 0.0))
    if dcr.get("median_ratio") is not None:
        rows.append(("median distance to closest training cell,\ngenerated / held-out",
                     finite(dcr["median_ratio"]), 1.0, None, False, 0.0))
    return rows


@plot
def privacy(
    result: Any,
    *,
    ax: Axes | None = None,
    show: bool | None = None,
    save: str | Path | None = None,
) -> Axes | None:
    """The privacy audit: membership-attack AUCs with their flag thresholds, and the distances
    to the closest training cell (DCR) summarised.

    One grey bar per number, each with a black tick where a generator that leaks nothing
    lands and, for what can flag, a dashed red tick at the flag threshold; a flagged bar is
    red.

    - each attack's ROC AUC (cell level, and donor level when audited): an attacker holding
      the generated cells tells training cells from held-out ones; 0.5 is chance, flagged
      above its threshold (chance at this many cells, at least 0.55); an audit averaged over
      halvings of the training cells (:func:`~cellsynth.metrics.privacy_counts.audit_counts`) shows
      their standard deviation as an error bar;
    - the share of generated cells closer to a training cell than 95% of held-out cells are
      (0.05 without a leak);
    - the share of generated cells that are exact copies of training cells (flagged above
      1%);
    - the median DCR of generated cells over that of held-out cells (about 1 without a leak;
      below 1: generated cells hug the training cells).

    Parameters
    ----------
    result
        What :func:`cellsynth.evaluate` returned with ``heldout`` (an
        :class:`~cellsynth.evaluation.result.Evaluation` or its dict), a run's ``metrics/fidelity.json``
        read with ``json.load``, a :class:`~cellsynth.metrics.privacy.PrivacyResult`, or its
        ``to_dict()``.
    {ax}
    {show_save}

    Returns
    -------
    Axes or None
        The :class:`~matplotlib.axes.Axes` drawn into (None with ``show=True``). The title
        says whether the audit flagged a leak.
    """
    priv = _audit(result)
    rows = _rows(priv)
    if not rows:  # an empty figure said nothing of why
        raise DataError("the privacy audit holds no attack AUC and no distance to the closest "
                        "training cell: give PrivacyResult.to_dict() or the evaluation whole")
    ax = axes(ax, (6.5, 0.5 * len(rows) + 1.4))
    y = np.arange(len(rows))
    values = np.array([r[1] for r in rows])
    colors = [FLAG_COLOR if r[4] else NEUTRAL for r in rows]
    ax.barh(y, values, height=0.6, color=colors)
    spread = [(yi, r[1], r[5]) for yi, r in zip(y, rows, strict=True) if r[5]]  # attacks' s.d.
    if spread:
        ax.errorbar([v for _, v, _ in spread], [yi for yi, _, _ in spread],
                    xerr=[sd for _, _, sd in spread], fmt="none", ecolor="dimgrey", capsize=2,
                    linewidth=1)
    for yi, (_, value, expected, threshold, _, _) in zip(y, rows, strict=True):
        if expected is not None:
            ax.plot([expected, expected], [yi - 0.4, yi + 0.4], color="black", linewidth=1.5)
        if threshold is not None:
            ax.plot([threshold, threshold], [yi - 0.4, yi + 0.4], color=FLAG_COLOR,
                    linewidth=1.5, linestyle="--")
        if not np.isnan(value):  # no number (an edited file): "n/a" at the bar's place
            ax.text(value, yi, f" {value:.3f}", va="center", fontsize=7)
    mark_missing(ax, y, values, 0.6)
    ax.set_yticks(y, [r[0] for r in rows], fontsize=8)
    ax.invert_yaxis()
    top = max([1.0, *values[~np.isnan(values)], *(r[3] for r in rows if r[3] is not None)])
    ax.set_xlim(0, top * 1.15)
    ax.set_xlabel("value")
    from matplotlib.lines import Line2D

    ax.legend(handles=[Line2D([], [], color="black", label="no leak"),
                       Line2D([], [], color=FLAG_COLOR, linestyle="--", label="flagged above")],
              fontsize=8, loc="lower left", bbox_to_anchor=(0.0, 1.0), ncol=2, frameon=False)
    flagged = priv.get("flagged")
    ax.set_title(("privacy: flagged" if flagged else "privacy: not flagged") + _caveats(priv),
                 fontsize=10, loc="right", color=FLAG_COLOR if flagged else "black")
    return finish(ax, show, save)
