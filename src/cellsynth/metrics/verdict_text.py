"""Verdicts as tables and text: the per-type table every output shows, the verdict's lines
(the CLI, ``fidelity.md``, the results page) and the donor-level summary.

The verdicts themselves, and the rules, are :mod:`.verdict`'s; this module only shows them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import pandas as pd

from .depth import MIN_TYPE_CELLS
from .verdict import (
    _TYPEWISE,
    ABSENT,
    COLUMNS,
    COPIES,
    EXTRA,
    LEVELS,
    TOO_FEW,
    _num,
    fidelity_verdict,
)


def _unscored(row: Mapping[str, Any], genes: Mapping[str, Any] | None,
              typewise: Mapping[str, Any] | None, depth: bool) -> str:
    """Why a judged type's row lacks a metric that was computed for others (its cells too few
    for it): the skip reasons the gene-level test and the typewise metrics give."""
    parts = []
    if genes and _num(row["gene_auc"]) is None:
        why = (genes.get("skipped") or {}).get(row["type"])
        parts.append(f"gene-level AUC ({why or 'not computed'})")
    if genes and genes.get("depth") and not depth:
        parts.append(f"genes at depth (fewer than {MIN_TYPE_CELLS} cells of the type in a real "
                     "half or the synthetic cells)")
    if typewise and _num(row["de_logfc_r"]) is None:
        why = (typewise.get("skipped") or {}).get(row["type"]) or (
            "a fold change is against the other types: it needs two or more types with enough "
            "cells" if row["type"] in (typewise.get("per_type") or {}) else "not computed")
        parts.append(f"DE r and marker overlap ({why})")
    return "not scored: " + "; ".join(parts) if parts else ""


def per_type_table(
    synthetic_vs_real: Mapping[str, Any], real_vs_real: Mapping[str, Any], *,
    verdicts: Mapping[str, Any] | None = None, genes: Mapping[str, Any] | None = None,
    typewise: Mapping[str, Any] | None = None, trts: Mapping[str, Any] | None = None,
    type_counts: Mapping[str, Mapping] | None = None,
) -> pd.DataFrame:
    """One row per type, every type (judged, too few, absent, only in synthetic): its cells,
    each metric beside its floor, TRTS beside TRTR, and its verdict.

    Parameters
    ----------
    synthetic_vs_real, real_vs_real, genes, typewise, type_counts
        As for :func:`fidelity_verdict`.
    verdicts
        :func:`fidelity_verdict`'s result; computed from the other arguments when None.
    trts
        Optional :func:`~cellsynth.metrics.typewise.trts_by_type`.

    Returns
    -------
    pandas.DataFrame
        Indexed by ``type``, the columns of :data:`COLUMNS` (missing numbers are NaN). k-NN
        precision and recall, DE r and marker overlap come from ``typewise`` (equal-sized
        floors), else the k-NN numbers of the reports; ``genes_at_depth`` (and its floor) the
        genes detected per cell at equal library size over real cells' (``genes["depth"]``:
        :func:`~cellsynth.metrics.depth.compare_depth`). ``note`` says why a type has no verdict,
        or that its generated cells are easier to classify than real ones (too typical).
    """
    v = verdicts or fidelity_verdict(synthetic_vs_real, real_vs_real, genes=genes, typewise=typewise,
                            type_counts=type_counts)
    st, ft = synthetic_vs_real.get("per_type") or {}, real_vs_real.get("per_type") or {}
    gt = (genes or {}).get("per_type") or {}
    dt = ((genes or {}).get("depth") or {}).get("per_type") or {}
    tt = (typewise or {}).get("per_type") or {}
    tr = (trts or {}).get("per_type") or {}
    rows = []
    for t in sorted(v["counts"]):
        c = v["counts"][t]
        row: dict[str, Any] = dict.fromkeys(COLUMNS, math.nan)
        row.update(type=t, n_real=c.get("real_total", c.get("real")),
                   n_synthetic=c.get("synthetic_total", c.get("synthetic")),
                   n_real_scored=c.get("real"), n_synthetic_scored=c.get("synthetic"), note="")
        row["c2st_auc"] = st.get(t, {}).get("c2st_auc", math.nan)
        row["c2st_auc_floor"] = ft.get(t, {}).get("c2st_auc", math.nan)
        if t in gt:
            row["gene_auc"], row["gene_auc_floor"] = gt[t].get("auc"), gt[t].get("floor_auc")
        if t in dt:  # genes detected at equal depth, over real cells' (1 = as many)
            row["genes_at_depth"] = dt[t]["ratio"]
            row["genes_at_depth_floor"] = dt[t]["floor_ratio"]
        for m in _TYPEWISE:
            if m in tt.get(t, {}):
                row[m], row[f"{m}_floor"] = tt[t][m]["value"], tt[t][m]["floor"]
            elif m.startswith("knn"):
                row[m] = st.get(t, {}).get(m, math.nan)
                row[f"{m}_floor"] = ft.get(t, {}).get(m, math.nan)
        if t in tr:
            row["trts_f1"], row["trtr_f1"] = tr[t].get("trts_f1"), tr[t].get("trtr_f1")
        if t in v["per_type"]:
            row["verdict"] = v["per_type"][t]["verdict"]
            row["decided_by"] = ", ".join(v["per_type"][t]["decided_by"])
        else:
            row["verdict"], row["decided_by"] = (
                (ABSENT, "") if t in v["absent"] else (EXTRA, "") if t in v["extra"] else
                (TOO_FEW, ""))
            row["note"] = v["too_few"].get(t, "no synthetic cells of this type" if t in v["absent"]
                                           else "no real cells of this type")
        if t in v["per_type"]:
            row["note"] = _unscored(row, genes, typewise, t in dt)
        a, b = _num(row["trts_f1"]), _num(row["trtr_f1"])
        if a is not None and b is not None and a > b + 0.05 and not row["note"]:
            row["note"] = (f"generated cells easier to classify than real ones (TRTS F1 {a:.2f}"
                           f" vs TRTR {b:.2f}): too typical, calibration rather than success")
        rows.append(row)
    return pd.DataFrame(rows, columns=["type", *COLUMNS]).set_index("type")


def verdict_lines(v: Mapping[str, Any], *, privacy: Mapping[str, Any] | None = None) -> list[str]:
    """The verdict as a few lines of text: overall, then each type that is distinguishable,
    too few, absent or only in synthetic, then the privacy audit when given.

    Parameters
    ----------
    v
        :func:`fidelity_verdict`'s result.
    privacy
        Optional :class:`~cellsynth.metrics.privacy.PrivacyResult` as a dict (or
        ``{"skipped": why}``); why the donor level was skipped is said when it holds a
        ``donor_key``.

    Returns
    -------
    list of str
        One line each, no trailing newline.
    """
    o = v["overall"]
    lines = [f"verdict: {o['verdict']} ({o['reason']})"]
    if v.get("warning"):
        lines.append(f"  WARNING: {v['warning']}")
    for t, p in v["per_type"].items():
        if p["verdict"] == LEVELS[2]:
            lines.append(f"  {t}: distinguishable ({p['reason']})")
    for t, why in v["too_few"].items():
        lines.append(f"  {t}: too few cells ({why})")
    for t in v["absent"]:
        n = v["counts"].get(t, {})
        lines.append(f"  {t}: absent from the synthetic data "
                     f"({n.get('real_total', n.get('real'))} real cells)")
    for t in v["extra"]:
        lines.append(f"  {t}: only in the synthetic data (no real cells of this type)")
    n = v["n_types"]
    copies = f"{n[COPIES]} copies of real cells, " if n.get(COPIES) else ""
    lines.append(f"  types: {copies}{n[LEVELS[0]]} indistinguishable, {n[LEVELS[1]]} close, "
                 f"{n[LEVELS[2]]} distinguishable, {len(v['too_few'])} too few, "
                 f"{len(v['absent'])} absent")
    if privacy is not None:
        if "skipped" in privacy:
            lines.append(f"privacy: not audited ({privacy['skipped']})")
        elif privacy.get("flagged"):
            lines.append("privacy: FLAGGED (" + "; ".join(privacy.get("reasons") or []) + ")")
        else:
            lines.append("privacy: not flagged (no attack tells training cells from "
                         "held-out ones better than chance allows)")
        for caveat in privacy.get("caveats") or []:
            lines.append(f"  caution: {caveat}")
        if privacy.get("donor_key") and privacy.get("donor_skipped"):
            lines.append(f"  donor level skipped: {privacy['donor_skipped']}")
        if privacy.get("donor_attacks"):
            lines.append(_donor_line(privacy["donor_attacks"]))
    return lines


def donor_summary(attacks: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The privacy audit's donor level (``donor_attacks``) in a few numbers: ``largest`` attack
    AUC, the donors a side (``n_members``, ``n_nonmembers``), the AUC's ``se_null`` and flag
    ``threshold`` at that many donors (one for every attack: they score the same donors)."""
    first = next(iter(attacks.values()))
    return {"largest": max(a["auc"] for a in attacks.values()),
            **{k: first[k] for k in ("n_members", "n_nonmembers", "se_null", "threshold")}}


def _donor_line(attacks: Mapping[str, Mapping[str, Any]]) -> str:
    """The donor-level AUCs in one line, and whether that many donors can flag at all."""
    d = donor_summary(attacks)
    line = (f"  donor level ({d['n_members']} training, {d['n_nonmembers']} held-out "
            "donors): " + ", ".join(f"{name} AUC {a['auc']:.3f}" for name, a in attacks.items()))
    if d["threshold"] >= 1.0:
        return line + " (too few donors for any AUC to pass its threshold)"
    return line + f" (flagged above {d['threshold']:.3f})"
