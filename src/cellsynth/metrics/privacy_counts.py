"""The privacy audit from raw counts, averaged over halvings of the training cells.

:func:`audit_counts` is :func:`~cellsynth.metrics.privacy.privacy_audit` in an evaluation space
fitted on other training cells than the members (a space fitted on the members biases every
distance); the re-draw attack runs here, its weights and reference from the cells the space was
fitted on. One halving of the training cells into members and the space's cells moves an
attack's AUC by a few hundredths, so the audit is the mean over ``AUDIT_REPEATS`` halvings
(:func:`average_audits`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..data.split import stratified_split
from ..errors import DataError
from ..seeds import as_int_hint, derive_seed, is_whole
from .privacy import AUC_MARGIN, MIN_CELLS, PrivacyResult, _reasons, privacy_audit
from .privacy_dcr import check_audit_size, check_donor_pair, check_settings, count_matrix
from .privacy_redraw import fit_redraw_space
from .space import fit_space

logger = logging.getLogger(__name__)

#: random halvings of the training cells :func:`audit_counts` averages over: one halving's attack
#: AUCs moved by 0.01-0.04 (s.d.) with the halving alone on the shared data sets' 300-2,000
#: members (pbmc_kang2018's density attack: 0.565 at one, 0.533 over six), as much as the leaks
#: the audit is read for
AUDIT_REPEATS = 5


#: what :func:`audit_counts` tells a set too small for the audit to do (a run and a benchmark
#: name their settings instead)
FIXES = {"train": "give more training cells", "heldout": "give more held-out cells",
         "synthetic": "give more generated cells"}


def audit_counts(
    train_counts: Any, heldout_counts: Any, synthetic_counts: Any, genes: list[str], *,
    seed: int, train_labels: Any = None, train_donors: Any = None, heldout_donors: Any = None,
    max_n: int = 2_000, repeats: int = AUDIT_REPEATS, donor_pool: Any = None,
    fixes: Mapping[str, str] | None = None,
) -> PrivacyResult:
    """:func:`privacy_audit` from raw counts, in an evaluation space fitted on neither side,
    averaged over ``repeats`` random halvings of the training cells.

    A space fitted on the member cells is biased: a PCA spreads the cells it was fitted on
    further than unseen cells, so members sit farther from everything than non-members and the
    attacks read that as a (negative) leak. So the training cells are split in two (by type
    when ``train_labels`` are given): the space (:func:`~cellsynth.metrics.space.fit_space`) is
    fitted on one half, and the other half are the members the attacks try to find.
    The first half also gives the re-draw attack its weights (binomial thinning of their
    counts) and its calibration reference
    (:func:`~cellsynth.metrics.privacy_redraw.fit_redraw_space`).

    One halving decides which cells are members, the space and the density attack's reference
    folds, and its AUCs move with it by about as much as the leaks the audit is read for (a
    few hundredths on a few hundred members). So the audit is run on ``repeats`` halvings (the
    first with ``seed`` itself, the others with seeds derived from it) and each number is
    their mean: an attack's ``auc`` (its AUC at each halving in ``auc_repeats``, their standard
    deviation in ``auc_sd``), and every distance share. A flag is the mean AUC above the
    threshold of one halving's members (:func:`auc_threshold`): the mean of correlated halvings
    varies less than one does, so the threshold errs towards no flag.

    Parameters
    ----------
    train_counts, heldout_counts, synthetic_counts
        Raw counts (cells x ``genes``) of the generator's training cells, of real cells it never
        saw and of its generated cells.
    genes
        Gene names of the columns.
    seed
        Seeds the split, the space and the audit.
    train_labels
        Cell types of the training cells (the split and the space's PCA are balanced by type).
    train_donors, heldout_donors
        Donor of each training and held-out cell, for the donor-level attack (on held-out
        cells of donors absent from training; :func:`~cellsynth.metrics.privacy.privacy_audit`).
    donor_pool
        Every training donor, when ``train_counts`` are a subsample of the training cells
        (default: ``train_donors``').
    max_n
        Cells per side for the distances and attacks.
    repeats
        Halvings averaged over (``AUDIT_REPEATS``; 1: one audit, as it was before).
    fixes
        What a set too small for the audit is told to do, by set (``"train"``,
        ``"heldout"``, ``"synthetic"``; default :data:`FIXES`): a run and a benchmark name
        the settings that give each its cells.
    """
    seed, max_n, _ = check_settings(seed, max_n)
    check_donor_pair(train_donors, heldout_donors)
    if not is_whole(repeats) or repeats < 1:
        raise DataError(f"repeats must be at least 1, a whole number of halvings, got "
                        f"{repeats!r}{as_int_hint(repeats)}")
    if isinstance(genes, str) or not hasattr(genes, "__len__"):
        raise DataError(f"genes must be the list of the counts' gene names, one a column, got "
                        f"{type(genes).__name__} {genes!r:.60}")
    tr = count_matrix(train_counts, len(genes), "training counts")
    labels = (np.zeros(tr.shape[0], dtype=object) if train_labels is None
              else np.asarray(train_labels, dtype=object).astype(str))  # fmt: skip
    if len(labels) != tr.shape[0]:
        raise DataError(f"train_labels has {len(labels)} entries for {tr.shape[0]} training cells")
    fixes = {**FIXES, **(fixes or {})}
    if tr.shape[0] < 2 * MIN_CELLS:
        raise DataError(f"the privacy audit needs at least {2 * MIN_CELLS} training cells (half "
                        f"fit its space, half are the members), got {tr.shape[0]}; "
                        f"{fixes['train']}")
    hc = count_matrix(heldout_counts, len(genes), "held-out counts")
    sc = count_matrix(synthetic_counts, len(genes), "synthetic counts")
    check_audit_size(hc.shape[0], "the held-out set", fixes["heldout"])
    check_audit_size(sc.shape[0], "the synthetic set", fixes["synthetic"])
    all_donors = None if train_donors is None else np.asarray(train_donors, dtype=object)
    results = []
    for r in range(repeats):
        rseed = seed if r == 0 else derive_seed(seed, f"audit-repeat-{r}")
        part = stratified_split(labels, (0.5, 0.0, 0.5), seed=derive_seed(rseed, "audit-split"))
        fit, members = np.flatnonzero(part == "train"), np.flatnonzero(part == "test")
        space = fit_space(tr[fit], labels[fit], list(genes), seed=derive_seed(rseed, "audit-space"))
        rs = fit_redraw_space(space, tr[fit], labels[fit], seed=derive_seed(rseed, "audit-thin"))
        result = privacy_audit(
            space.embed(tr[members]), space.embed(hc), space.embed(sc), seed=rseed,
            train_donors=None if all_donors is None else all_donors[members],
            heldout_donors=heldout_donors, train_counts=tr[members], heldout_counts=hc,
            synthetic_counts=sc, max_n=max_n, redraw=rs, copy_refs=tr[fit], log=False,
            population=r == 0,  # average_audits keeps the first repeat's population test
            donor_pool=all_donors if donor_pool is None else donor_pool)
        result.settings.update(space_cells=len(fit), member_pool=len(members))
        results.append(result)
    return average_audits(results)


def with_donor_key(privacy: dict[str, Any], donor_key: str | None) -> dict[str, Any]:
    """An audit's dict (:meth:`PrivacyResult.to_dict`) that was asked for a donor level by the
    obs column ``donor_key`` (None or "": not asked): the column is recorded beside it
    (``donor_key``, what the report and the verdict lines name), and a donor level that could
    not run is logged as a WARNING with the reason."""
    if not donor_key:
        return privacy
    privacy["donor_key"] = donor_key
    if privacy.get("donor_skipped"):
        logger.warning("privacy: donor-level audit skipped: %s", privacy["donor_skipped"])
    return privacy


#: a cell-level attack flagged only above this AUC (too few cells a side) makes the audit weak
#: (:func:`_weak`): twice the smallest gap the audit calls a leak (``privacy.AUC_MARGIN``)
WEAK_AUDIT_AUC = 0.5 + 2 * AUC_MARGIN


def average_audits(results: list[PrivacyResult]) -> PrivacyResult:
    """One :class:`PrivacyResult` from audits of one generator repeated with other seeds (the
    halvings of :func:`audit_counts`, or other attack candidates and reference folds): mean
    AUCs (each attack's per halving in ``auc_repeats``, ``auc_sd``) and mean distance shares,
    flags from the means; the first halving's population check and settings, with
    ``repeats``. Logs its flags and caveats."""
    if isinstance(results, PrivacyResult) or not results or not all(
            isinstance(r, PrivacyResult) for r in results):  # [] stopped in results[0]
        raise DataError("average_audits takes a non-empty list of PrivacyResult (what "
                        f"privacy_audit returns), got {type(results).__name__} "
                        f"{str(results)[:60]!r}; keep the PrivacyResult objects, not their to_dict()")
    first = results[0]

    def attacks(tables: list[dict[str, dict[str, Any]] | None]) -> dict[str, dict[str, Any]] | None:
        if any(t is None for t in tables):
            return tables[0]
        out = {}
        for name, a in tables[0].items():
            found = [t[name] for t in tables if name in t]
            aucs = [float(x["auc"]) for x in found]
            auc = float(np.mean(aucs))
            threshold = float(np.mean([x["threshold"] for x in found]))
            out[name] = {**a, "auc": auc, "threshold": threshold, "flagged": auc > threshold,
                         "se_null": float(np.mean([x["se_null"] for x in found])),
                         "auc_repeats": aucs,
                         "auc_sd": float(np.std(aucs, ddof=1)) if len(aucs) > 1 else 0.0}
        return out

    def mean(values: list[Any]) -> Any:
        if all(v == values[0] for v in values) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            return values[0]
        m = float(np.mean(values))
        return round(m) if all(isinstance(v, int) for v in values) else m

    cells = attacks([r.attacks for r in results])
    donors = attacks([r.donor_attacks for r in results])
    dcr = {k: mean([r.dcr[k] for r in results]) for k in first.dcr}
    reasons = _reasons(cells, donors, dcr)
    # the first audit's own reading (privacy_audit's caveats of one audit) is read again
    # from the means; its population test is kept
    own = {*_reversed(first.attacks, first.donor_attacks),
           *_weak(first.attacks, first.flagged, first.donor_attacks)}
    caveats = [*(c for c in first.caveats if c not in own), *_reversed(cells, donors),
               *_weak(cells, bool(reasons), donors)]
    for caveat in caveats:
        logger.warning("privacy: %s", caveat)
    return PrivacyResult(dcr, cells, donors, first.donor_skipped, first.reference_split,
                         bool(reasons), reasons, {**first.settings, "repeats": len(results)},
                         first.population, caveats)


def _reversed(cells: dict[str, dict[str, Any]] | None,
              donors: dict[str, dict[str, Any]] | None) -> list[str]:
    """A caveat when attacks read the held-out cells as the members: an AUC below 0.5 by more
    than chance allows (as far below as a flag is above). No generator knows unseen cells
    better than its training cells: the two are swapped, or it was fitted on the held-out
    cells, and a leak of those would read as no leak."""
    low = [f"{level} {name} attack AUC {a['auc']:.3f}"
           for level, block in (("cell-level", cells), ("donor-level", donors))
           for name, a in (block or {}).items() if a["auc"] < 1 - a["threshold"]]
    if not low:
        return []
    return [f"the attacks read the held-out cells as the members ({', '.join(low)}, below 0.5 "
            "by more than chance allows): the generated cells sit nearer the held-out cells "
            "than the training ones; are the training and held-out cells swapped (the real "
            "cells must be those the generator was fitted on), or was it fitted on the held-out "
            "cells? A leak of those cells reads here as no leak"]


def _weak(cells: dict[str, dict[str, Any]] | None, flagged: bool,
          donors: dict[str, dict[str, Any]] | None = None) -> list[str]:
    """A caveat when nothing is flagged but the audit had too few cells to flag a leak of a
    size that matters: a cell-level attack is flagged only above an AUC beyond
    :data:`WEAK_AUDIT_AUC` (a few dozen cells a side). "Not flagged" then says little: the
    fidelity verdict says "too few cells" in its place, the audit says how weak it was. And
    one when the donor level can flag at no AUC (its threshold above 1: 2 or 3 donors a side),
    whose table showed a threshold of 1.26 without a word."""
    out = []
    if donors:
        d = next(iter(donors.values()))
        if max(a["threshold"] for a in donors.values()) >= 1.0:
            out.append(f"the donor level cannot flag: at {d['n_members']} training and "
                       f"{d['n_nonmembers']} held-out donors no AUC passes its threshold "
                       f"({d['threshold']:.3f}); hold out more donors (split.heldout_donors in "
                       "a run, held-out cells of more donors) for a donor-level audit")
    if flagged or not cells:
        return out
    threshold = max(a["threshold"] for a in cells.values())
    if threshold <= WEAK_AUDIT_AUC:
        return out
    a = next(iter(cells.values()))
    return [*out, f"a weak audit: at {a['n_members']} training and {a['n_nonmembers']} "
            f"held-out cells an attack is flagged only above AUC {threshold:.3f}, so a smaller "
            "leak passes unseen; audit more cells (more held-out cells, or a larger max_cells: "
            "--max-cells, report.max_cells in a run) before reading 'not flagged' as no leak"]
