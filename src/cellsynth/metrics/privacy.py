"""Privacy and memorisation audit: do generated cells reveal which real cells trained the model?

Everything works on embedded points, ``(n_cells, n_pcs)`` arrays in the evaluation space
(:meth:`~cellsynth.metrics.space.EvalSpace.embed`), of three disjoint sets: the real training
cells (members), held-out real cells (non-members, ideally of donors absent from training) and
the generated cells. Raw counts, when given, make exact copies exact (identical count rows).

- :func:`~cellsynth.metrics.privacy_dcr.distance_to_closest` (:mod:`.privacy_dcr`, with the
  checks the parts share): each generated and each held-out cell's distance to its closest
  training cell (DCR), compared: a generator that does not leak puts its cells as close to the
  training cells as unseen real cells are, no closer.
- :func:`membership_attacks`: an attacker holding the generated cells tells training members
  from held-out non-members; each attack is an ROC AUC (0.5 = no leak), cell level and, with
  donor labels, donor level.
- :func:`redraw_attack`: the re-draw attack (:mod:`cellsynth.metrics.privacy_redraw`), from
  counts: a noise-weighted, depth-aware and calibrated distance that finds generated cells that
  are fresh count draws of training cells (a posterior predictive), which the two attacks above
  miss when count noise swamps the distance.
- :func:`privacy_audit`: all of them, with a ``flagged`` verdict and its reasons
  (:class:`PrivacyResult`).
- :func:`~cellsynth.metrics.privacy_counts.audit_counts` (:mod:`.privacy_counts`): the audit
  from raw counts, in a space fitted on other training cells than the members, averaged over
  random halvings of the training cells.

A flag is evidence of memorisation; its absence is no proof of privacy, only that these
simple attacks fail.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.spatial.distance import cdist
from scipy.special import logsumexp
from sklearn.metrics import roc_auc_score

from ..data.levels import level_text
from ..errors import DataError, listed
from ..options import progress_bar
from ..seeds import derive_seed
from .fidelity import _subsample, c2st_auc
from .privacy_dcr import (
    EXACT_SHARE,
    EXACT_TOL,
    MIN_CELLS,
    OVERLAP_SHARE,
    _check,
    _nearest,
    _points,
    check_audit_size,
    check_donor_pair,
    check_settings,
    count_matrix,
    distance_to_closest,
)
from .privacy_redraw import RedrawSpace, redraw_scores

logger = logging.getLogger(__name__)

#: an AUC is flagged above ``0.5 + max(AUC_MARGIN, AUC_Z * se)``, ``se`` its standard error under
#: no leak, ``sqrt((n1 + n2 + 1) / (12 n1 n2))`` (Mann-Whitney). ``AUC_Z = 3`` keeps false alarms
#: at about 0.1% per attack; ``AUC_MARGIN`` keeps leaks too small to matter (an AUC within 0.05
#: of chance) from flagging in large samples. With 2,000 members per side the margin rules
#: (3 se = 0.027); with 200 the noise does (3 se = 0.087)
AUC_MARGIN = 0.05
AUC_Z = 3.0
#: pairwise-distance entries per block of the density estimate (32 MB of float64)
_BLOCK = 1 << 22


def _log_kde(data: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """Log density at ``queries`` of an isotropic Gaussian KDE of ``data`` (Scott's bandwidth:
    ``sigma * n ** (-1 / (d + 4))``, ``sigma`` the root mean per-dimension variance)."""
    n, d = data.shape
    h = max(float(np.sqrt(data.var(axis=0).mean())) * n ** (-1.0 / (d + 4)), 1e-12)
    out = np.empty(len(queries))
    step = max(1, _BLOCK // n)
    for s in progress_bar(range(0, len(queries), step), desc="privacy: density",
                          unit="block", leave=False):
        sq = cdist(queries[s : s + step], data, "sqeuclidean")
        out[s : s + step] = logsumexp(-sq / (2.0 * h * h), axis=1)
    return out - np.log(n) - d * np.log(h) - 0.5 * d * np.log(2.0 * np.pi)


def auc_threshold(n_members: int, n_nonmembers: int) -> tuple[float, float]:
    """``(threshold, se)`` of an attack AUC of ``n1`` members and ``n2`` non-members:
    ``se = sqrt((n1 + n2 + 1) / (12 n1 n2))``, the AUC's standard error under no leak, and
    ``threshold = 0.5 + max(AUC_MARGIN, AUC_Z * se)``."""
    se = float(np.sqrt((n_members + n_nonmembers + 1) / (12.0 * n_members * n_nonmembers)))
    return 0.5 + max(AUC_MARGIN, AUC_Z * se), se


def _auc(member: np.ndarray, nonmember: np.ndarray) -> dict[str, Any]:
    y = np.r_[np.ones(len(member)), np.zeros(len(nonmember))]
    auc = float(roc_auc_score(y, np.r_[member, nonmember]))
    threshold, se = auc_threshold(len(member), len(nonmember))
    return {"auc": auc, "se_null": se, "threshold": threshold, "flagged": auc > threshold,
            "n_members": len(member), "n_nonmembers": len(nonmember)}


def _folds(n: int, donors: np.ndarray | None, rng: np.random.Generator) -> tuple[np.ndarray, str]:
    """Two folds (0/1) of the held-out cells: by donor when two or more donors give folds of
    ``MIN_CELLS // 2`` cells or more, else at random by cell."""
    split = "cells"
    if donors is not None:
        names, inverse, sizes = np.unique(donors, return_inverse=True, return_counts=True)
        fill, side = [0, 0], np.empty(len(names), dtype=np.int64)
        for j in rng.permutation(len(names)):  # each donor to the smaller fold
            side[j] = int(np.argmin(fill))
            fill[side[j]] += int(sizes[j])
        if min(fill) >= MIN_CELLS // 2:
            return side[inverse], "donors"
        split = "cells (one held-out donor)" if len(names) < 2 else "cells (unequal donors)"
    return rng.permutation(np.arange(n) % 2), split


#: a cell's donor where its donor column holds none (NaN, None): no donor-level audit reads it
NO_DONOR = ""


def _labels(x: Any, n: int, name: str) -> np.ndarray:
    raw = np.asarray(x, dtype=object)
    if raw.ndim != 1 or len(raw) != n:
        raise DataError(f"{name} holds {raw.size} labels, shape {raw.shape}, for {n} cells; "
                        "give one donor per cell, a 1-d list")
    out = raw.astype(str)
    out[pd.isna(raw)] = NO_DONOR
    return out


def donor_values(column: pd.Series) -> np.ndarray:
    """An obs donor column as the audit reads it: each donor's name as text, a whole number
    the same however a file stores it (``data.levels.level_text``: donor 1 and 1.0 are one
    donor, the second what a column of numbers becomes once it holds a NaN), :data:`NO_DONOR`
    where a cell has none (NaN: not one donor named "nan")."""
    names = level_text(column).astype(object)
    names[column.isna().to_numpy()] = None
    return _labels(names, len(column), str(column.name))


def _missing_donors(td: np.ndarray, hd: np.ndarray) -> str | None:
    """Why the donor level is skipped when donors are missing (None: every cell has one)."""
    gaps = {side: int((d == NO_DONOR).sum()) for side, d in (("training", td), ("held-out", hd))}
    if not any(gaps.values()):
        return None
    empty = [side for side, d in (("training", td), ("held-out", hd)) if (d == NO_DONOR).all()]
    if empty:
        return (f"the donor column has no values for the {' and '.join(empty)} cells; give "
                "each cell's donor (donor_key=, --donor-key) or leave it out")
    return (f"{gaps['training']} training and {gaps['held-out']} held-out cells have no donor "
            "(NaN); the donor level needs every cell's: fill them or leave those cells out")


def _donor_level(scores: dict[str, tuple[np.ndarray, np.ndarray]], dm: np.ndarray,
                 dn: np.ndarray) -> tuple[dict[str, Any] | None, str | None]:
    """Per-donor mean of each attack's cell scores, and the AUC over donors."""
    if (why := _missing_donors(dm, dn)) is not None:
        return None, why
    both = sorted(set(dm.tolist()) & set(dn.tolist()))
    if both:
        return None, (f"donor(s) {listed(both)} are in both train and heldout; donor-level "
                      "membership needs held-out donors absent from training")
    um, un = np.unique(dm, return_inverse=True), np.unique(dn, return_inverse=True)
    if min(len(um[0]), len(un[0])) < 2:
        return None, (f"{len(um[0])} training and {len(un[0])} held-out donor(s) among the "
                      "candidates; donor-level AUC needs at least 2 on each side")
    out = {}
    for name, (sm, sn) in scores.items():
        mean_m = np.bincount(um[1], weights=sm) / np.bincount(um[1])
        mean_n = np.bincount(un[1], weights=sn) / np.bincount(un[1])
        out[name] = _auc(mean_m, mean_n)
    return out, None


def membership_attacks(
    train: Any, heldout: Any, synthetic: Any, *, seed: int, max_n: int = 2_000, k: int = 1,
    train_donors: Any = None, heldout_donors: Any = None,
) -> dict[str, Any]:
    """Membership-inference attacks by an attacker who holds the generated cells.

    Members are ``m`` random training cells, non-members ``m`` held-out cells, ``m`` the
    smallest of ``max_n`` and both sizes. Each attack scores every candidate (higher: more
    likely a member); its ROC AUC is 0.5 when the generated cells say nothing of membership:

    - ``distance``: minus the distance to the ``k``-th closest generated cell;
    - ``density`` (DOMIAS, van Breugel et al. 2023): the log ratio of the generated cells'
      density to a reference real population's density at the candidate, each a Gaussian KDE
      (isotropic, Scott's bandwidth). It finds cells the generator over-represents relative to
      the population, not merely cells in dense regions. The reference is held-out cells not
      scored with it: the held-out set is split in two folds, by donor when donors are given
      (so no reference cell shares a donor with the cell it scores), else by cell; a held-out
      candidate is scored against the other fold, and each member against a fold drawn so that
      members and non-members use the folds equally often.

    Parameters
    ----------
    train, heldout, synthetic
        Embedded cells of one evaluation space (training disjoint from held-out).
    seed, max_n, k
        Seeds the candidates and folds; members and non-members (each); the neighbour of the
        distance attack.
    train_donors, heldout_donors
        Optional donor of each cell; with both, each attack's cell scores are averaged per
        donor and an AUC computed over donors.

    Returns
    -------
    dict
        ``distance`` and ``density``: ``auc``, ``se_null``, ``threshold`` (see
        :func:`auc_threshold`), ``flagged``, ``n_members``, ``n_nonmembers``;
        ``donor_level`` (the same per attack over donors) or None with ``donor_skipped``, why;
        ``reference_split``: how the held-out folds were made; ``k``.
    """
    seed, max_n, k = check_settings(seed, max_n, k)
    check_donor_pair(train_donors, heldout_donors)
    tr, ho, sy = _check(train, heldout, synthetic)
    if not 1 <= k <= len(sy):
        raise DataError(f"k must be between 1 and the {len(sy)} synthetic cells, got {k}")
    td = None if train_donors is None else _labels(train_donors, len(tr), "train_donors")
    hd = None if heldout_donors is None else _labels(heldout_donors, len(ho), "heldout_donors")
    rng = np.random.default_rng(derive_seed(seed, "attack-candidates"))
    m = min(max_n, len(tr), len(ho))
    i_m, i_n = _subsample(len(tr), m, rng), _subsample(len(ho), m, rng)
    fold, split = _folds(len(ho), hd, np.random.default_rng(derive_seed(seed, "attack-folds")))
    cand = np.concatenate([tr[i_m], ho[i_n]])
    cand_fold = np.concatenate([rng.permutation(fold[i_n]), fold[i_n]])
    dist = -_nearest(sy, cand, k)
    log_ref = np.empty(len(cand))
    for f in (0, 1):
        sel = cand_fold == f
        if sel.any():
            log_ref[sel] = _log_kde(ho[fold != f], cand[sel])
    density = _log_kde(sy, cand) - log_ref
    scores = {"distance": (dist[:m], dist[m:]), "density": (density[:m], density[m:])}
    out: dict[str, Any] = {name: _auc(*s) for name, s in scores.items()}
    out.update(reference_split=split, k=k, donor_level=None, donor_skipped=None)
    if td is None or hd is None:
        out["donor_skipped"] = "no donor column given (donor_key=, --donor-key)"
    else:
        out["donor_level"], out["donor_skipped"] = _donor_level(scores, td[i_m], hd[i_n])
    return out


def redraw_attack(
    rs: RedrawSpace, train_counts: Any, heldout_counts: Any, synthetic_counts: Any, *,
    seed: int, max_n: int = 2_000, train_donors: Any = None, heldout_donors: Any = None,
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The re-draw attack (:func:`~cellsynth.metrics.privacy_redraw.redraw_scores`): members
    are up to ``max_n`` training cells, non-members up to ``max_n`` held-out cells (each side
    as many as it has: the AUC's null standard error allows unequal sides, and every member
    found counts).

    Returns
    -------
    cell, donor
        The attack's ``auc``, ``se_null``, ``threshold``, ``flagged``, ``n_members`` and
        ``n_nonmembers``, over cells and (with both donor labels, else None) over donors.
    """
    seed, max_n, _ = check_settings(seed, max_n)
    check_donor_pair(train_donors, heldout_donors)
    tr = count_matrix(train_counts, len(rs.space.genes), "training counts")
    ho = count_matrix(heldout_counts, len(rs.space.genes), "held-out counts")
    sy = count_matrix(synthetic_counts, len(rs.space.genes), "synthetic counts")
    for x, name in ((tr, "train"), (ho, "heldout"), (sy, "synthetic")):
        check_audit_size(x.shape[0], name)
    rng = np.random.default_rng(derive_seed(seed, "redraw-candidates"))
    i_m, i_n = _subsample(tr.shape[0], max_n, rng), _subsample(ho.shape[0], max_n, rng)
    sm, sn = redraw_scores(rs, tr[i_m], sy), redraw_scores(rs, ho[i_n], sy)
    cell = _auc(sm, sn)
    if train_donors is None or heldout_donors is None:
        return cell, None
    td = _labels(train_donors, tr.shape[0], "train_donors")[i_m]
    hd = _labels(heldout_donors, ho.shape[0], "heldout_donors")[i_n]
    donor, _ = _donor_level({"redraw": (sm, sn)}, td, hd)
    return cell, None if donor is None else donor["redraw"]


def _donor_sides(train: Any, heldout: Any, train_donors: Any, heldout_donors: Any,
                 pool: Any = None) -> tuple[np.ndarray | None, np.ndarray | None, str | None, bool]:  # fmt: skip
    """Which held-out cells each level of the audit uses: ``(cells, donors, skipped, pure)``.

    The donor level needs held-out donors absent from training, the cell level non-members of
    the members' population. Held-out cells of training donors (a random split's test cells)
    are the cell level's; those of donors with no training cell (held-out donors) the donor
    level's; ``pool`` is every training donor (default: ``train_donors``'). ``cells`` (None:
    every held-out cell) are the cell level's rows: the training donors' held-out cells when
    there are ``MIN_CELLS`` of them and also new donors, else all. ``donors`` (None: no donor
    level) are the donor level's rows, ``skipped`` why there are none; ``pure``: every
    held-out donor is new, so one pass gives both levels.
    """
    if train_donors is None or heldout_donors is None:
        return None, None, "no donor column given (donor_key=, --donor-key)", False
    n_train = train.shape[0] if hasattr(train, "shape") else len(train)
    n_heldout = heldout.shape[0] if hasattr(heldout, "shape") else len(heldout)
    td = _labels(train_donors, n_train, "train_donors")
    hd = _labels(heldout_donors, n_heldout, "heldout_donors")
    if (why := _missing_donors(td, hd)) is not None:
        return None, None, why, False
    seen = np.isin(hd, np.unique(td if pool is None else np.asarray(pool).astype(str)))
    if seen.all():
        return None, None, (
            f"every held-out donor ({len(np.unique(hd))}) also has training cells; donor-level "
            "membership needs held-out donors absent from training: hold out whole donors "
            "(split.heldout_donors in a run), or give held-out cells of other donors"), False
    new = np.flatnonzero(~seen)
    if not seen.any():
        return None, new, None, True
    few = None if len(new) >= MIN_CELLS else (  # the whole audit had failed on them
        f"{len(new)} held-out cell(s) of donors absent from training, fewer than the "
        f"{MIN_CELLS} the donor level needs: give more cells of held-out donors")
    if seen.sum() < MIN_CELLS:
        logger.info("privacy: %d held-out cell(s) of training donors, fewer than %d: the cell "
                    "level uses every held-out cell", int(seen.sum()), MIN_CELLS)
        return None, None if few else new, few, False
    return np.flatnonzero(seen), None if few else new, few, False


@dataclass
class PrivacyResult:
    """What :func:`privacy_audit` found; :meth:`to_dict` gives it JSON-ready."""

    dcr: dict[str, Any]  # distance_to_closest's summary
    attacks: dict[str, dict[str, Any]]  # attack name -> its AUC, threshold and flag (cells):
    # distance, density, and redraw when the audit had counts and a RedrawSpace
    donor_attacks: dict[str, dict[str, Any]] | None  # the same over donors, or None
    donor_skipped: str | None  # why there is no donor level
    reference_split: str  # how the density attack's held-out reference folds were made
    flagged: bool  # evidence of memorisation: an attack AUC over its threshold, or copies
    reasons: list[str]  # one sentence per flag
    settings: dict[str, Any]  # seed, caps and thresholds used
    # the training cells against the held-out ones (two-sample AUC, threshold, shifted): an
    # attack cannot tell a leak from a difference between the two real populations
    population: dict[str, Any] | None = None
    caveats: list[str] = field(default_factory=list)  # what the flags must be read with

    def to_dict(self) -> dict[str, Any]:
        """The result as plain dicts, lists, strings, numbers, booleans and None."""
        return asdict(self)


def privacy_audit(
    train: Any, heldout: Any, synthetic: Any, *, seed: int, train_donors: Any = None,
    heldout_donors: Any = None, train_counts: Any = None, synthetic_counts: Any = None,
    heldout_counts: Any = None, max_n: int = 2_000, k: int = 1,
    redraw: RedrawSpace | None = None, copy_refs: Any = None, log: bool = True,
    population: bool = True, donor_pool: Any = None,
) -> PrivacyResult:
    """Privacy and memorisation audit of generated cells against their training cells.

    Runs :func:`distance_to_closest`, :func:`membership_attacks` and, given ``redraw`` and the
    counts, :func:`redraw_attack`, and flags memorisation when
    an attack's AUC (cell or donor level) exceeds ``0.5 + max(AUC_MARGIN, AUC_Z * se)`` or when
    more than ``EXACT_SHARE`` of the generated cells are exact copies of training cells.

    Parameters
    ----------
    train, heldout, synthetic
        Embedded cells (``EvalSpace.embed``) of the training set, of held-out real cells never
        seen in training (of held-out donors where possible) and of the generator.
    seed, max_n
        Seeds every subsample (child seeds by name); cells per side for DCRs and attacks.
    train_donors, heldout_donors, k
        As in :func:`membership_attacks`, with held-out cells of both kinds allowed: those of
        training donors (a random split's test cells) are the cell level's non-members and
        those of donors with no training cell (held-out donors) the donor level's
        (:func:`_donor_sides`); without new donors the donor level is skipped, with the reason.
    donor_pool
        Every donor of the training cells, when ``train`` holds some of them only (the
        members of a halving, a subsample): a held-out donor among them is no new donor.
    train_counts, synthetic_counts, heldout_counts, copy_refs
        As in :func:`distance_to_closest`.
    redraw
        With the three counts, also runs :func:`redraw_attack` (``attacks["redraw"]``, and at
        donor level); ``privacy_counts.audit_counts`` gives it.
    log
        Log each flag and caveat as a WARNING (``privacy_counts.audit_counts`` logs its average
        instead).
    population
        Test the training cells against the held-out ones (``population``, and a caveat when
        they differ). An audit repeated with other seeds keeps its first repeat's test, so the
        other repeats skip it (``population`` None, no caveats).
    """
    seed, max_n, k = check_settings(seed, max_n, k)
    check_donor_pair(train_donors, heldout_donors)
    cells, donor_rows, donor_skipped, pure = _donor_sides(train, heldout, train_donors,
                                                          heldout_donors, donor_pool)  # fmt: skip

    def rows(x: Any, r: np.ndarray | None) -> Any:
        return x if x is None or r is None else (x[r] if sp.issparse(x) else np.asarray(x)[r])

    ho, ho_counts = rows(heldout, cells), rows(heldout_counts, cells)
    dcr = distance_to_closest(train, ho, synthetic, seed=derive_seed(seed, "dcr"),
                              max_n=max_n, train_counts=train_counts,
                              synthetic_counts=synthetic_counts, heldout_counts=ho_counts,
                              copy_refs=copy_refs)
    donors = {"train_donors": train_donors, "heldout_donors": heldout_donors} if pure else {}
    att = membership_attacks(train, ho, synthetic, seed=derive_seed(seed, "attacks"),
                             max_n=max_n, k=k, **donors)
    attacks = {name: att[name] for name in ("distance", "density")}
    donor_attacks = att["donor_level"] if pure else None
    if donor_rows is not None and not pure:  # the donor level on the new donors' cells alone
        by_donor = membership_attacks(
            train, rows(heldout, donor_rows), synthetic, seed=derive_seed(seed, "attacks-donors"),
            max_n=max_n, k=k, train_donors=train_donors,
            heldout_donors=rows(heldout_donors, donor_rows))  # fmt: skip
        donor_attacks, donor_skipped = by_donor["donor_level"], by_donor["donor_skipped"]
    elif pure:
        donor_skipped = att["donor_skipped"]
    counts = (train_counts, heldout_counts, synthetic_counts)
    if redraw is not None and all(c is not None for c in counts):
        attacks["redraw"], donor = redraw_attack(
            redraw, train_counts, ho_counts, synthetic_counts, seed=derive_seed(seed, "redraw"),
            max_n=max_n, **donors)  # fmt: skip
        if donor_rows is not None and not pure:
            _, donor = redraw_attack(
                redraw, train_counts, rows(heldout_counts, donor_rows), synthetic_counts,
                seed=derive_seed(seed, "redraw-donors"), max_n=max_n,
                train_donors=train_donors, heldout_donors=rows(heldout_donors, donor_rows))
        if donor_attacks is not None and donor is not None:
            donor_attacks = {**donor_attacks, "redraw": donor}
    elif redraw is not None:
        logger.warning("privacy: the re-draw attack needs the counts of all three sets; skipped")
    reasons = _reasons(attacks, donor_attacks, dcr, log=log)
    settings = {"seed": seed, "max_n": max_n, "k": k, "min_cells": MIN_CELLS,
                "auc_margin": AUC_MARGIN, "auc_z": AUC_Z, "exact_share": EXACT_SHARE,
                "overlap_share": OVERLAP_SHARE, "exact_tol": EXACT_TOL}
    if "redraw" in attacks:
        settings["redraw"] = redraw.summary()
    tested, caveats = (_population(train, ho, seed, max_n, log=log) if population
                       else (None, []))  # fmt: skip
    from .privacy_counts import _reversed, _weak  # their home imports this module

    read = [*_reversed(attacks, donor_attacks), *_weak(attacks, bool(reasons), donor_attacks)]
    for caveat in read if log else []:
        logger.warning("privacy: %s", caveat)
    return PrivacyResult(dcr, attacks, donor_attacks, donor_skipped,
                         att["reference_split"], bool(reasons), reasons, settings, tested,
                         [*caveats, *read])


def _reasons(attacks: dict[str, dict[str, Any]], donor_attacks: dict[str, dict[str, Any]] | None,
             dcr: dict[str, Any], *, log: bool = True) -> list[str]:  # fmt: skip
    """One sentence per flag: an attack AUC above its threshold (cells, donors), or more than
    ``EXACT_SHARE`` of the generated cells exact copies of training cells; logged when ``log``."""
    reasons = []
    for level, found in (("cell", attacks), ("donor", donor_attacks or {})):
        for name, a in found.items():
            if a["flagged"]:
                auc, above = _pair(a["auc"], a["threshold"])
                reasons.append(f"{level}-level {name} attack AUC {auc} is above {above} "
                               f"(0.5 = no leak, {a['n_members']} members)")
    if dcr["exact_share"] > EXACT_SHARE:
        reasons.append(f"{dcr['exact_duplicates']} generated cells ({dcr['exact_share']:.1%}) are "
                       f"exact copies of training cells (by {dcr['exact_source']})")
    if log:
        for r in reasons:
            logger.warning("privacy: %s", r)
    return reasons


def _pair(value: float, threshold: float) -> tuple[str, str]:
    """An AUC and the threshold it passed, with the digits that tell them apart."""
    for digits in (3, 4):
        a, b = f"{value:.{digits}f}", f"{threshold:.{digits}f}"
        if a != b:
            return a, b
    return f"{value:.6f}", f"{threshold:.6f}"


def _population(train: Any, heldout: Any, seed: int, max_n: int, *,
                log: bool = True) -> tuple[dict, list[str]]:  # fmt: skip
    """Can the training cells themselves be told from the held-out ones? The attacks assume
    they cannot (both from one population, as a random split gives); where they can (held-out
    cells of another sample, batch or donor mix), an attack AUC above 0.5 may be that
    difference, not a leak."""
    tr, ho = _points(train, "train"), _points(heldout, "heldout")
    auc = c2st_auc(tr, ho, seed=derive_seed(seed, "population"), max_n=max_n)
    n = min(len(tr), len(ho), max_n)
    threshold, _ = auc_threshold(n, n)
    shifted = auc > threshold
    caveats = []
    if shifted:
        caveats.append(
            f"the held-out cells differ from the training cells themselves (two-sample AUC "
            f"{auc:.3f}, above {threshold:.3f}): the attacks may read that difference as a leak; "
            "give held-out cells of the same population as the training cells (a random split "
            "of one data set), or read the flags as an upper bound")
        if log:
            logger.warning("privacy: %s", caveats[0])
    return {"auc": auc, "threshold": threshold, "shifted": shifted}, caveats


def __getattr__(name: str) -> Any:
    """``audit_counts``, ``average_audits`` and ``AUDIT_REPEATS`` live in
    :mod:`~cellsynth.metrics.privacy_counts`; imported from here as before, on first use."""
    if name in ("audit_counts", "average_audits", "AUDIT_REPEATS"):
        from . import privacy_counts

        return getattr(privacy_counts, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
