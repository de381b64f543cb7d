"""Verdicts: are the generated cells good? Each metric read against its floor and its noise.

Pure functions over the JSON-ready dicts the metrics return, so a pipeline run (which writes
``metrics/fidelity.json`` with ``synthetic_vs_real`` and ``real_vs_real``) and
``cellsynth evaluate`` judge alike. For every metric, per type and overall:

- the **gap** is how much worse the synthetic value is than the floor (real against real, the
  same run; for an AUC the floor is taken as at least 0.5, chance: a floor below it is noise);
- the **noise** is the standard deviation of that gap when the generator is perfect: for an
  AUC, its own from the number of cells (:func:`auc_noise`), for the per-type metrics of
  :func:`~cellsynth.metrics.typewise.typewise_fidelity` the spread over repeated splits, and
  at least what ``floor_spread`` (repeated floors) says;
- **indistinguishable** when ``gap <= tolerance = max(margin, Z * noise)``, **close** when
  ``gap <= tolerance + close``, else **distinguishable** (``margin`` and ``close`` per metric
  in :data:`RULES`).

A metric whose tolerance is wider than ``margin + close`` (few cells: an AUC's noise at 40 cells
a side lets 0.75 pass) is **inconclusive** when it reads indistinguishable: it could not have
shown a gap that matters, so it does not vouch for the cells (a gap beyond it still counts). A
type's verdict is the worst of its metrics (its library sizes among them: the other metrics
read log-normalised values, blind to depth), ``decided_by`` the one or two conclusive ones
furthest beyond their tolerance; its ``reason`` reads "metric value vs floor ± tolerance" for
each; a type whose metrics are all inconclusive gets no verdict (:data:`TOO_FEW`, with why), and
so does one that would read indistinguishable while an inconclusive metric reads a gap of a
distinguishable size (a two-sample AUC of 0.79 on 22 cells: within its noise, but the cells
that read alike on k-NN precision and marker overlap are not vouched for by them). The
overall verdict is the worst of the pooled metrics (library sizes among them) and of the mean
per-type AUC; a type worse than
that makes it at least ``close``, and when half the judged types or more, or types holding
:data:`DISTINGUISHABLE_SHARE` of their real cells, are distinguishable, so is the whole. A
pooled AUC cannot hide a per-type gap, nor an indistinguishable whole a missing type: real
types with no synthetic cells, or too few to score where the real cells have enough, make it
at best ``close``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from ..errors import listed

#: the verdicts, best first
LEVELS = ("indistinguishable", "close", "distinguishable")
#: a type without a verdict: too few cells, none generated, or none real
TOO_FEW, ABSENT, EXTRA = "too few cells", "absent", "only in synthetic"
#: the overall verdict on synthetic cells that copy real ones (memorisation flagged): their
#: metrics measure the real cells, not a generator, whatever level they would read
COPIES = "copies of real cells"
#: a gap within ``Z`` noise standard deviations of the floor is noise: about one perfect type
#: in 700 per metric is called worse than indistinguishable (one-sided normal tail), as the
#: privacy audit flags an attack AUC (``metrics.privacy.AUC_Z``). The spreads of the per-type
#: metrics come from five splits, rough estimates: the margins of :data:`RULES` bound them below
Z = 3.0
#: a cross-validated two-sample AUC varies more than one AUC over the same cells, as each fold's
#: classifier is fitted on other cells. Measured with both sides one distribution, 25-200 cells
#: a side: the C2ST of ``metrics.fidelity`` (40 pairs of 30-d Gaussian samples) had an sd
#: 1.29-1.37 times :func:`auc_se`, the gene-level one of ``metrics.genes`` (30 pairs of halves
#: of a simulated type, 300 genes) 1.33-1.48 times
CV_INFLATION = 1.4
#: the share of the judged types' real cells in distinguishable types that makes the whole
#: distinguishable (as half the types do): two large types swapped are not "close"
DISTINGUISHABLE_SHARE = 1 / 3
#: cells of a type a verdict needs on each side (scored real and synthetic); fewer is
#: :data:`TOO_FEW`. At 20 a side an AUC's noise is already 0.13: only large gaps show
MIN_TYPE_CELLS = 20
#: cells of each type an evaluation's subsample keeps at least, where the type has them
#: (``data.split.stratified_subsample``'s ``floor``): the real-vs-real floor's two halves need
#: :data:`MIN_TYPE_CELLS` each, so an atlas of many types is judged type by type
TYPE_EVAL_CELLS = 2 * MIN_TYPE_CELLS


@dataclass(frozen=True)
class Rule:
    """How one metric is read: its direction and the margins of its verdicts."""

    label: str  # what the report calls it
    higher_is_better: bool
    margin: float  # the smallest tolerance of "indistinguishable", however small the noise
    close: float  # how far beyond the tolerance "close" reaches
    chance: float | None = None  # the floor is taken as at least this (an AUC: 0.5)


#: Margins, on each metric's own scale, chosen for what a biologist would notice, not fitted to
#: a data set. AUCs: within 0.05 of the floor a classifier picks the generated cell of a random
#: pair at most 55% of the time (the privacy audit's ``AUC_MARGIN`` too); ``close`` reaches
#: 0.15 above it, an AUC of about 0.65 (the benchmark's target for the CVAE), beyond which a
#: classifier tells most cells apart. k-NN precision and recall are shares of cells: 0.05 is
#: one cell in twenty off the real manifold (or not covered), ``close`` up to one in five. DE
#: log-fold-change r is a correlation over genes (its floor was 0.92-0.93 with 100-170 cells
#: of a simulated type, 0.5-0.8 with 30-50): 0.05 and 0.20 below the floor. Marker overlap is
#: a share of the top 50 genes: 5 genes of 50, and 15. Library sizes are read on their own
#: (the PCs and the gene test see log-normalised values, blind to depth): the Wasserstein
#: distance of log10 totals, 0.1 (a quarter more or less counts a cell; the floors were
#: 0.01-0.05), and 0.3 beyond it: cells 2.5 times too deep or shallow are "distinguishable".
RULES: dict[str, Rule] = {
    "c2st_auc": Rule("two-sample AUC", False, 0.05, 0.10, 0.5),
    "per_type_c2st_auc": Rule("mean per-type two-sample AUC", False, 0.05, 0.10, 0.5),
    "gene_auc": Rule("gene-level AUC", False, 0.05, 0.10, 0.5),
    "knn_precision": Rule("kNN precision", True, 0.05, 0.15),
    "knn_recall": Rule("kNN recall", True, 0.05, 0.15),
    "de_logfc_r": Rule("DE log-fold-change r", True, 0.05, 0.15),
    "marker_overlap": Rule("marker overlap", True, 0.10, 0.20),
    "library_size_distance": Rule("library-size distance (log10)", False, 0.10, 0.30),
}

#: the per-type table's columns after ``type`` (every column always present)
COLUMNS = ("n_real", "n_synthetic", "n_real_scored", "n_synthetic_scored", "verdict",
           "decided_by", "c2st_auc", "c2st_auc_floor", "gene_auc", "gene_auc_floor",
           "genes_at_depth", "genes_at_depth_floor", "knn_precision", "knn_precision_floor", "knn_recall", "knn_recall_floor",
           "de_logfc_r", "de_logfc_r_floor", "marker_overlap", "marker_overlap_floor",
           "trts_f1", "trtr_f1", "note")
_TYPEWISE = ("knn_precision", "knn_recall", "de_logfc_r", "marker_overlap")
_SKIP = re.compile(r"(\d+) real and (\d+) synthetic")


def auc_se(n: float) -> float:
    """The standard error of an AUC over ``n`` cells a side when both sides are one
    distribution (Mann-Whitney): ``sqrt((2n + 1) / (12 n^2))``."""
    return math.sqrt((2 * n + 1) / (12.0 * n * n)) if n and n > 0 else math.nan


def auc_noise(n: float) -> float:
    """The noise of a cross-validated two-sample AUC of ``n`` cells a side when both sides are
    one distribution: ``CV_INFLATION * auc_se(n)``.

    It is the synthetic AUC's own noise: the reference it is read against is the floor taken
    as at least 0.5, and a floor's expected value is 0.5 (two random halves of one set of
    cells), so its own noise only ever raises the reference. Adding it to the tolerance as
    well would let a type of 60 cells with an AUC of 0.99 pass as ``close``.
    """
    return CV_INFLATION * auc_se(n)


def _num(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def judge(metric: str, value: Any, floor: Any, noise: Any = None) -> dict[str, Any] | None:
    """One metric's verdict (see the module docstring), or None when a number is missing.

    Parameters
    ----------
    metric
        A key of :data:`RULES`.
    value, floor
        The synthetic value and the floor (real against real).
    noise
        The standard deviation of the gap for a perfect generator (None: the margin alone).

    Returns
    -------
    dict or None
        ``metric``, ``label``, ``value``, ``floor``, ``reference`` (the floor, at least
        ``chance``), ``gap`` (worse when positive), ``noise``, ``tolerance``, ``level`` and
        ``excess`` (``gap / tolerance``, to rank what decided a verdict).
    """
    rule = RULES[metric]
    v, f, sd = _num(value), _num(floor), _num(noise)
    if v is None or f is None:
        return None
    ref = max(f, rule.chance) if rule.chance is not None else f
    gap = ref - v if rule.higher_is_better else v - ref
    tol = max(rule.margin, Z * sd) if sd is not None else rule.margin
    level = LEVELS[0] if gap <= tol else LEVELS[1] if gap <= tol + rule.close else LEVELS[2]
    # a tolerance wider than the gap a "distinguishable" reading starts at cannot tell a good
    # generator from a bad one: such a metric can still show a gap, but not its absence
    conclusive = level != LEVELS[0] or tol <= rule.margin + rule.close
    return {"metric": metric, "label": rule.label, "value": v, "floor": f, "reference": ref,
            "gap": gap, "noise": sd, "tolerance": tol, "level": level, "excess": gap / tol,
            "conclusive": conclusive}


def _spread(floor_spread: Mapping | None, where: str, key: str, metric: str) -> float | None:
    """``floor_spread[where][key][metric]`` (or ``[where][metric]`` overall): an sd of the floor."""
    if not floor_spread:
        return None
    block = floor_spread.get(where) or {}
    block = block.get(key, {}) if where == "per_type" else block
    return _num(block.get(metric)) if isinstance(block, Mapping) else None


def _auc(metric: str, value: Any, floor: Any, n: Any, spread: float | None
         ) -> dict[str, Any] | None:
    noise = auc_noise(n or 0)
    if spread is not None:  # repeated floors: the sd an AUC of this many cells showed
        noise = max(noise, spread) if math.isfinite(noise) else spread
    return judge(metric, value, floor, noise if math.isfinite(noise) else None)


def _c2st_n(row: Mapping) -> float | None:
    """Cells a side of a per-type two-sample test: the smaller side (at most 5,000)."""
    n = [_num(row.get(k)) for k in ("n_real", "n_synth")]
    return min(min(x for x in n if x is not None), 5_000) if any(x is not None for x in n) else None


def _typewise_judgement(metric: str, block: Mapping) -> dict[str, Any] | None:
    sd, n, floor = _num(block.get("sd")), _num(block.get("n")), _num(block.get("floor"))
    if metric.startswith("knn") and n and floor is not None:  # binomial: a lower bound
        p = min(max(floor, 0.02), 0.98)
        sd = max(sd or 0.0, math.sqrt(2 * p * (1 - p) / n))
    return judge(metric, block.get("value"), block.get("floor"), sd)


def _summarise(judged: dict[str, dict]) -> dict[str, Any]:
    """The worst level of ``judged`` metrics and the one or two that decided it; ``verdict``
    is None when no metric is conclusive (each within a tolerance too wide to tell)."""
    worst = max((LEVELS.index(j["level"]) for j in judged.values()), default=0)
    top = sorted((j for j in judged.values() if LEVELS.index(j["level"]) == worst
                  and j.get("conclusive", True)), key=lambda j: -j["excess"])[:2]
    if not top:  # every metric indistinguishable within a tolerance too wide to read
        return {"verdict": None, "decided_by": [], "metrics": judged,
                "reason": "; ".join(_describe(j) for j in judged.values())}
    doubt = [j for j in judged.values() if not j.get("conclusive", True)
             and j["gap"] > RULES[j["metric"]].margin + RULES[j["metric"]].close]
    if worst == 0 and doubt:  # a gap of a distinguishable size, within its noise: no vouching
        return {"verdict": None, "decided_by": [], "metrics": judged, "doubt": True,
                "reason": "; ".join(_describe(j) for j in doubt)}
    reason = "; ".join(_describe(j) for j in top)
    return {"verdict": LEVELS[worst], "decided_by": [j["metric"] for j in top], "reason": reason,
            "metrics": judged}


def _inconclusive(scored: tuple[int, int], summary: Mapping, c: Mapping) -> str:
    """Why a type whose metrics are all too noisy to read has no verdict, or whose noisy
    metrics read a gap the others cannot vouch against (``summary["doubt"]``); ``c``: its
    cells (:func:`_counts`), to say whether a larger ``max_cells`` would score more of them."""
    if summary.get("doubt"):
        return (f"{scored[0]} real and {scored[1]} synthetic cells scored: {summary['reason']}: "
                "a gap that would make the type distinguishable, within the noise of this few "
                f"cells, so the metrics that read it alike do not vouch for it; {_more(scored, c)}")
    return (f"{scored[0]} real and {scored[1]} synthetic cells scored: every metric's noise is "
            "wider than the gap that would make it distinguishable, so none can show the cells "
            f"alike ({summary['reason']}); {_more(scored, c)}")


def _more(scored: tuple[int, int], c: Mapping) -> str:
    """How to judge a type its scored cells are too few for: a larger ``max_cells`` where the
    inputs hold more of its cells (at most half the real ones are scored), else more cells."""
    rt, st = c.get("real_total"), c.get("synthetic_total")
    if rt is None or st is None:
        return "give more cells (max_cells) to judge this type"
    if c.get("real_more", rt // 2 > scored[0]) or st > scored[1]:
        return f"raise max_cells to judge this type (the inputs hold {rt} real and {st} synthetic)"
    return (f"the inputs hold only {rt} real and {st} synthetic (about half the real ones are "
            "scored, the rest fit the evaluation space): give more cells of this type to judge it")


def _describe(j: Mapping) -> str:
    noise = f" ± {j['tolerance']:.2f}" if j.get("tolerance") is not None else ""
    floor = f"{j['reference']:.3f}"
    if j.get("floor") is not None and j["floor"] < j["reference"]:  # below chance: read as it
        floor = f"{j['floor']:.3f}, read as chance {j['reference']:.3f},"
    return f"{j['label']} {j['value']:.3f} vs floor {floor}{noise}"


def _counts(fid: Mapping, type_counts: Mapping | None) -> dict[str, dict[str, int | None]]:
    """Per type: ``real`` and ``synthetic`` cells scored, and in the inputs when known."""
    out: dict[str, dict[str, int | None]] = {}
    for t, row in (fid.get("per_type") or {}).items():
        out[t] = {"real": row.get("n_real"), "synthetic": row.get("n_synth")}
    for t, why in (fid.get("skipped") or {}).items():
        m = _SKIP.search(str(why))
        out.setdefault(t, {"real": int(m[1]) if m else None, "synthetic": int(m[2]) if m else None})
    for t, c in (type_counts or {}).items():
        out[str(t)] = {**out.get(str(t), {}), **{k: v for k, v in c.items() if v is not None}}
    return out


def _too_few(scored: tuple[int, int], c: Mapping) -> str:
    """Why a type has no verdict, and whether more of its cells exist to score."""
    why = (f"{scored[0]} real and {scored[1]} synthetic cells scored; a verdict needs "
           f"{MIN_TYPE_CELLS} of each")
    rt, st = c.get("real_total"), c.get("synthetic_total")
    if rt is None or st is None or (rt, st) == scored:
        return why
    # at most half the real cells are scored (the others fit the evaluation space)
    limited = c.get("real_more", True) or st > scored[1]  # max_cells held cells back
    if rt // 2 >= MIN_TYPE_CELLS and st >= MIN_TYPE_CELLS and limited:
        return f"{why}: raise max_cells (the inputs hold {rt} real and {st} synthetic)"
    return f"{why}, and the inputs hold only {rt} real and {st} synthetic"


def fidelity_verdict(
    synthetic_vs_real: Mapping[str, Any], real_vs_real: Mapping[str, Any], *,
    floor_spread: Mapping[str, Any] | None = None, genes: Mapping[str, Any] | None = None,
    typewise: Mapping[str, Any] | None = None, type_counts: Mapping[str, Mapping] | None = None,
    memorisation: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The verdict on generated cells, overall and per type, each metric beside its floor.

    Parameters
    ----------
    synthetic_vs_real, real_vs_real
        :func:`~cellsynth.metrics.fidelity.fidelity_report` and
        :func:`~cellsynth.metrics.fidelity.real_floor` of one run (``fidelity.json``).
    floor_spread
        Optional standard deviations of repeated floors: ``{"overall": {metric: sd},
        "per_type": {type: {metric: sd}}}``; they widen the noise of the AUCs.
    genes
        Optional :func:`~cellsynth.metrics.genes.gene_fidelity`: the gene-level AUC counts.
    typewise
        Optional :func:`~cellsynth.metrics.typewise.typewise_fidelity`: k-NN precision and
        recall, DE log-fold-change r and marker overlap against equal-sized floors count. (The
        reports' own k-NN numbers do not: their floor has half the cells.)
    type_counts
        Optional per type ``{"real": n, "synthetic": n, "real_total": n, "synthetic_total": n}``
        (cells scored, and in the inputs), and ``real_more`` (whether a larger ``max_cells``
        would score more of its real cells; else read from the totals, about half of the real
        cells being scored); by default read from the reports.
    memorisation
        Optional :func:`~cellsynth.metrics.memorisation.memorisation`: when flagged, the overall
        verdict is :data:`COPIES` (decided by ``memorisation``; the reason says what the
        metrics alone would read) and a ``warning`` gives the evidence.

    Returns
    -------
    dict
        ``overall`` and ``per_type`` (type -> the same): ``verdict`` (one of :data:`LEVELS`),
        ``decided_by`` (metric keys, or ``"TYPE/metric"``), ``reason`` and ``metrics`` (each
        :func:`judge`'s dict); ``too_few`` (type -> why), ``absent`` (types with real cells and
        no synthetic ones), ``extra`` (synthetic types with no real cells), ``counts`` (type ->
        cells), ``n_types`` (verdict -> types), ``warning`` (None or a sentence) and the
        ``thresholds`` used.
    """
    fs, ff = synthetic_vs_real, real_vs_real
    counts = _counts(fs, type_counts)
    st, ft = fs.get("per_type") or {}, ff.get("per_type") or {}
    gt = (genes or {}).get("per_type") or {}
    tt = (typewise or {}).get("per_type") or {}
    per_type: dict[str, dict] = {}
    too_few: dict[str, str] = {}
    absent, extra = [], []
    for t in sorted(counts):
        c = counts[t]
        n_r, n_s = c.get("real_total", c.get("real")), c.get("synthetic_total", c.get("synthetic"))
        if n_s == 0:
            absent.append(t)
            continue
        if n_r == 0:
            extra.append(t)
            continue
        scored = (c.get("real") or 0, c.get("synthetic") or 0)
        if min(scored) < MIN_TYPE_CELLS:
            too_few[t] = _too_few(scored, c)
            continue
        if t not in st or t not in ft:
            too_few[t] = (f"{scored[0]} real and {scored[1]} synthetic cells scored, but the "
                          "reports hold no two-sample AUC for this type")
            continue
        judged = {"c2st_auc": _auc("c2st_auc", st[t].get("c2st_auc"), ft[t].get("c2st_auc"),
                                   _c2st_n(st[t]), _spread(floor_spread, "per_type", t,
                                                           "c2st_auc"))}
        if t in gt:
            g = gt[t]
            judged["gene_auc"] = _auc("gene_auc", g.get("auc"), g.get("floor_auc"),
                                      g.get("n_cells"), _spread(floor_spread, "per_type", t,
                                                                "gene_auc"))
        for m in _TYPEWISE:
            if m in tt.get(t, {}):
                judged[m] = _typewise_judgement(m, tt[t][m])
        # depth per type too: one type generated 3 times too deep hid in the pooled distance.
        # It shows a gap, never vouches: alike depths say nothing of the expression
        depth = judge("library_size_distance", st[t].get("library_size_distance"),
                      ft[t].get("library_size_distance"))
        if depth is not None:
            judged["library_size_distance"] = {**depth, "conclusive": depth["level"] != LEVELS[0]}
        judged = {k: v for k, v in judged.items() if v is not None}
        if not judged:
            too_few[t] = "no metric could be computed for this type"
            continue
        summary = _summarise(judged)
        if summary["verdict"] is None:
            too_few[t] = _inconclusive(scored, summary, c)
            continue
        per_type[t] = {**summary, "n_real": scored[0], "n_synthetic": scored[1]}
    overall = _overall(fs, ff, per_type, floor_spread, genes, typewise)
    overall = _missing_types(overall, absent, too_few, counts)
    warnings = []
    if memorisation and memorisation.get("flagged"):
        overall = {**overall, "verdict": COPIES, "decided_by": ["memorisation"],
                   "reason": "the synthetic cells copy real ones, so their scores are the real "
                             f"cells'; the metrics alone read {overall['verdict']} "
                             f"({overall['reason']})"}
        warnings.append("the synthetic cells copy real ones (" + "; ".join(
            memorisation.get("reasons") or []) + "): the verdict does not measure generation")
        # and no type's: a table of per-type verdicts read alone must not call copies good
        per_type = {t: {**p, "verdict": COPIES, "decided_by": ["memorisation"],
                        "reason": "the synthetic cells copy real ones, so this type's scores may "
                                  f"be the real cells'; its metrics alone read {p['verdict']} "
                                  f"({p['reason']})"} for t, p in per_type.items()}
    if absent:  # the verdict is on the types generated: the data's other types are missing
        n_real = sum(1 for c in counts.values() if c.get("real_total", c.get("real")))
        warnings.append(f"{len(absent)} of the {n_real} real cell types have no synthetic cells "
                        f"({listed(absent)}): the "
                        "verdict covers only the types generated")
    if extra:  # cells of types the real data lack: generated, never judged
        warnings.append(f"{len(extra)} synthetic cell type(s) are not in the real data "
                        f"({listed(extra)}): their cells have no real cells of their type to be "
                        "judged against (a type too small to reach these real cells, or a label "
                        "spelled otherwise)")
    warning = "; ".join(warnings) or None
    n_types = {lvl: sum(v["verdict"] == lvl for v in per_type.values()) for lvl in LEVELS}
    if any(v["verdict"] == COPIES for v in per_type.values()):
        n_types[COPIES] = sum(v["verdict"] == COPIES for v in per_type.values())
    return {"overall": overall, "per_type": per_type, "too_few": too_few, "absent": absent,
            "extra": extra, "counts": counts, "n_types": n_types, "warning": warning,
            "thresholds": {"z": Z, "cv_inflation": CV_INFLATION, "min_type_cells": MIN_TYPE_CELLS,
                           "rules": {k: asdict(r) for k, r in RULES.items()}}}


def _overall(fs: Mapping, ff: Mapping, per_type: dict[str, dict], floor_spread: Mapping | None,
             genes: Mapping | None, typewise: Mapping | None) -> dict[str, Any]:
    so, fo = fs.get("overall") or {}, ff.get("overall") or {}
    judged = {"c2st_auc": _auc("c2st_auc", so.get("c2st_auc"), fo.get("c2st_auc"),
                               min(so.get("n_per_side") or 0, 5_000), _spread(floor_spread, "overall", "",
                                                             "c2st_auc"))}
    aucs = [p["metrics"]["c2st_auc"] for p in per_type.values() if "c2st_auc" in p["metrics"]]
    if aucs:  # the mean over judged types: the per-type gap a pooled AUC can hide
        k = len(aucs)
        noise = math.sqrt(sum((a["noise"] or 0.0) ** 2 for a in aucs)) / k
        judged["per_type_c2st_auc"] = judge("per_type_c2st_auc", sum(a["value"] for a in aucs) / k,
                                            sum(a["reference"] for a in aucs) / k, noise or None)
    if genes and genes.get("overall"):
        g = genes["overall"]
        judged["gene_auc"] = _auc("gene_auc", g.get("auc"), g.get("floor_auc"), g.get("n_cells"),
                                  _spread(floor_spread, "overall", "", "gene_auc"))
    for m, block in ((typewise or {}).get("overall") or {}).items():
        if m in RULES:
            judged[m] = _typewise_judgement(m, block)
    judged["library_size_distance"] = judge("library_size_distance",
                                            so.get("library_size_distance"),
                                            fo.get("library_size_distance"))
    judged = {k: v for k, v in judged.items() if v is not None}
    out = _summarise(judged) if judged else {"verdict": LEVELS[0], "decided_by": [],
                                             "reason": "no metric", "metrics": {}}
    level = 0 if out["verdict"] is None else LEVELS.index(out["verdict"])
    worse = {t: p for t, p in per_type.items() if LEVELS.index(p["verdict"]) > level}
    if worse:
        bad = sorted(worse, key=lambda t: (-LEVELS.index(worse[t]["verdict"]),
                                           -max((j["excess"] for j in worse[t]["metrics"].values()),
                                                default=0.0)))
        dist = [p for p in per_type.values() if p["verdict"] == LEVELS[2]]
        cells = sum(p.get("n_real") or 0 for p in per_type.values())
        share = sum(p.get("n_real") or 0 for p in dist) / cells if cells else 0.0
        many = 2 * len(dist) >= len(per_type) or share >= DISTINGUISHABLE_SHARE
        new = 2 if many else max(level, 1)
        if new > level:
            names = ", ".join(f"{t} ({worse[t]['verdict']})" for t in bad[:3])
            more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
            why = (f"{len(dist)} of {len(per_type)} judged types, {share:.0%} of their real "
                   "cells, are distinguishable" if new == 2
                   else "the pooled metrics are better than some types")
            out.update(verdict=LEVELS[new],
                       decided_by=[f"{t}/{m}" for t in bad[:2] for m in worse[t]["decided_by"][:1]],
                       reason=f"{why}: {names}{more}; pooled: {out['reason']}")
    # the pooled test needs as many cells as a type's: below that its floor's noise (two halves
    # of a handful of cells) is so wide that any generator reads as indistinguishable
    sides = {"real cells a side in the floor (two halves of the real test cells)":
             fo.get("n_per_side"), "synthetic cells scored": so.get("n_per_side")}
    sides = {k: v for k, v in sides.items() if isinstance(v, int | float)}
    if out["verdict"] is None:  # no type worse, and every pooled metric too noisy to vouch
        out.update(verdict=TOO_FEW, reason=("every pooled metric's noise is wider than the gap "
                                            "that would make it distinguishable: give more "
                                            f"cells ({out['reason']})"))
    if sides and min(sides.values()) < MIN_TYPE_CELLS:
        which = min(sides, key=sides.get)
        out.update(verdict=TOO_FEW, decided_by=[],
                   reason=(f"{int(sides[which])} {which}; a verdict needs {MIN_TYPE_CELLS} of "
                           f"each: give more cells (the metrics, too noisy to read: "
                           f"{out['reason']})"))
    return out


def _missing_types(overall: dict[str, Any], absent: list[str], too_few: Mapping[str, str],
                   counts: Mapping[str, Mapping]) -> dict[str, Any]:
    """The overall verdict at best ``close`` when real types are missing from the synthetic
    cells: none generated, or too few to score where the real cells had enough."""
    short = [t for t in too_few if t not in absent
             and (counts[t].get("real") or 0) >= MIN_TYPE_CELLS
             and (counts[t].get("synthetic_total", counts[t].get("synthetic")) or 0)
             < MIN_TYPE_CELLS]  # fmt: skip
    missing = [*absent, *short]
    if not missing or overall["verdict"] != LEVELS[0]:
        return overall
    names = listed(missing)
    what = (f"{len(absent)} real type(s) have no synthetic cells" if absent else "") + (
        "; " if absent and short else "") + (
        f"{len(short)} type(s) have fewer than {MIN_TYPE_CELLS} synthetic cells where the "
        "real cells have enough"
        if short else "")  # fmt: skip
    return {**overall, "verdict": LEVELS[1], "decided_by": ["missing types"],
            "reason": f"{what} ({names}); the types generated read: {overall['reason']}"}
