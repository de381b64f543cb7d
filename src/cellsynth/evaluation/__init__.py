"""``cellsynth evaluate`` / :func:`cellsynth.evaluate` and ``cellsynth benchmark``.

:func:`compare` scores synthetic cells against real ones, beside the real-vs-real floor, from
AnnData objects or h5ad paths. A file is never loaded whole: it is opened with
:class:`~cellsynth.data.store.H5adFile` (``obs`` in memory, matrices on disk), a stratified
subsample of at most ``max_cells`` cells is read (for the real data, a second, disjoint one to
fit the evaluation space on), and everything after works on the subsamples, so memory follows
``max_cells``, not the file's size (:mod:`.inputs`). Then the verdict
(:mod:`cellsynth.metrics.verdict`), the per-type table, the gene-level test and, given held-out
cells, the privacy audit. :func:`evaluate` writes ``fidelity.json``, ``fidelity.md`` and
``per_type.csv`` (the CLI's ``cellsynth evaluate``); :mod:`.result` holds the
:class:`~cellsynth.evaluation.result.Evaluation` that :func:`cellsynth.evaluate` returns.
"""

from __future__ import annotations

import json
import logging
import shlex
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp

from .. import config
from ..benchmark import flat_report, table
from ..data.labels import check_spaced_names
from ..data.split import stratified_subsample
from ..errors import DataError
from ..metrics.fidelity import fidelity_report, real_floor
from ..metrics.genes import gene_fidelity
from ..metrics.memorisation import memorisation
from ..metrics.space import fit_space
from ..metrics.typewise import trts_by_type, typewise_fidelity
from ..metrics.verdict import MIN_TYPE_CELLS, fidelity_verdict
from ..metrics.verdict_text import per_type_table, verdict_lines
from ..outputs import check_out_dir, enclosing_run, md_text, write_csv, write_json, write_text
from ..seeds import checked_seed, derive_seed, is_whole
from .inputs import (
    IN_MEMORY,
    _check_labels,
    _check_sides,
    _columns,
    _read_side,
    _real_rows,
    _same_file,
    _Sample,
    _shared_genes,
    check_audit_sizes,
)
from .overlap import check_disjoint, check_heldout_unseen, check_members, warn_trained_on
from .runner import run_benchmark as run_benchmark  # cellsynth benchmark; its home

if TYPE_CHECKING:
    import anndata as ad

logger = logging.getLogger(__name__)


#: a share of synthetic cells without a count above this is said (a generator that failed)
EMPTY_SHARE = 0.1


def _empty_cells(side: Any) -> tuple[int, int]:
    """``(cells, cells without any count)`` of one side's counts."""
    n = side.counts.shape[0]
    return n, int(np.sum(np.asarray(side.counts.sum(axis=1)).ravel() == 0)) if n else 0


def _warn_empty_cells(side: Any) -> None:
    """Say so when many synthetic cells hold no count at all: every metric then scores a
    generator's failure (all-zero cells read as a 'DE r' and a 'marker overlap')."""
    n, empty = _empty_cells(side)
    if n and empty > EMPTY_SHARE * n:
        logger.warning("%d of the %d synthetic cells scored (%.0f%%) hold no count at all: did "
                       "the generator fail? The metrics below score them as they are", empty, n,
                       100 * empty / n)


def _refuse_empty_real(side: Any, what: str) -> None:
    """A :class:`DataError` when real cells (the real or held-out side) hold no count at all:
    a space fitted on them has no variance, and synthetic cells would be read as their copies;
    a WARNING when many of them are empty (a fit leaves such cells out, the floor keeps them)."""
    n, empty = _empty_cells(side)
    if n and empty == n:
        raise DataError(f"{what} ({side.source}) hold no count at all in {side.where} (every one "
                        f"of the {n} cells read is empty): give the cells' raw counts (in X, "
                        "layers['counts'] or raw.X)")
    if empty > EMPTY_SHARE * n:
        logger.warning("%s: %d of the %d cells read (%.0f%%) hold no count at all; they are "
                       "scored as real cells: drop them first (sc.pp.filter_cells(adata, "
                       "min_counts=1))", what, empty, n, 100 * empty / n)


def compare(
    real: ad.AnnData | str | Path,
    synthetic: ad.AnnData | str | Path,
    *,
    label_key: str,
    seed: int = 0,
    max_cells: int | None = None,
    heldout: ad.AnnData | str | Path | None = None,
    donor_key: str | None = None,
    gene_repeats: int | Literal["auto"] | None = None,
) -> dict[str, Any]:
    """Fidelity of ``synthetic`` against ``real`` counts, beside two halves of ``real``, with a
    verdict, a per-type table, the gene-level test and, given ``heldout``, a privacy audit.

    The cells are stratified subsamples (each type keeping its share, every type at least one
    cell), read from disk row by row when given as a path, so memory follows ``max_cells``,
    not the files' sizes: at most ``max_cells`` synthetic cells; at most ``max_cells`` real
    cells (and at most half of them) to score; and, disjoint from those, at most ``max_cells``
    other real cells the evaluation space (HVGs, log1p counts per 10k, 30 PCs) is fitted on.
    Scored cells are never those the space was fitted on (as in a run, where the space is
    fitted on training cells and test cells are scored): a space fitted on the scored real
    cells fits their noise and tells them from any new cells, however alike. Genes are matched
    by name.

    Parameters
    ----------
    real, synthetic
        AnnData objects (in memory or backed) or ``.h5ad`` paths, with raw counts in ``X``,
        ``layers['counts']`` or ``raw.X`` and the cell type in ``obs[label_key]``. With
        ``heldout``, ``real`` are the cells the generator was trained on.
    label_key
        The ``obs`` column holding the cell type, in both.
    seed
        Seeds the subsamples, the evaluation space and every metric.
    max_cells
        Cells used at most from each side (and at most as many real cells again for the
        space); default ``report.max_cells`` (:class:`~cellsynth.config.ReportConfig`).
    heldout
        Real cells the generator never saw (the test split), as ``real``: the privacy audit
        (:func:`~cellsynth.metrics.privacy.privacy_audit`) asks whether the generated cells
        reveal which cells were ``real`` (at most ``max_cells`` of them are read). Sharing
        cells with ``real`` is an error.
    donor_key
        An ``obs`` column naming each cell's donor, in ``real`` and ``heldout``: the audit
        then also attacks at donor level (skipped, with the reason, with one donor a side).
    gene_repeats
        Random halvings the gene-level AUCs and their floor average over (``"auto"``: up to 10
        when there are few cells; 1 is the quickest); default ``report.gene_repeats``.

    Returns
    -------
    dict
        ``real_vs_real``: the floor (:func:`~cellsynth.metrics.fidelity.real_floor` on the
        scored real cells); ``synthetic_vs_real``:
        :func:`~cellsynth.metrics.fidelity.fidelity_report`; ``verdict``:
        :func:`~cellsynth.metrics.verdict.fidelity_verdict` (``overall`` and ``per_type``, each a
        ``verdict``, ``decided_by`` and ``reason``; ``too_few``, ``absent``, ``extra``);
        ``per_type``: :func:`~cellsynth.metrics.verdict_text.per_type_table` as a list of rows;
        ``genes``: :func:`~cellsynth.metrics.genes.gene_fidelity` (or ``{"skipped": why}``);
        ``typewise``: :func:`~cellsynth.metrics.typewise.typewise_fidelity`; ``trts``:
        :func:`~cellsynth.metrics.typewise.trts_by_type`; ``privacy``: the audit as a dict,
        or None without ``heldout``; ``n_cells``: for ``real``, ``synthetic`` (and
        ``heldout``) the cells ``used`` (scored) and the ``total`` in the input, and for
        ``real`` the ``space`` cells; ``n_genes`` compared; ``max_cells``, ``seed``,
        ``gene_repeats``, ``label_key``, ``donor_key``; ``real``, ``synthetic`` and
        ``heldout``: the paths (or ``"AnnData"``); ``memorisation``: :func:`~cellsynth.metrics.memorisation.memorisation`
        (``flagged`` when the synthetic cells copy real ones: an AUC below 0.4, exact or near
        copies, or the real file itself), also a WARNING in the log and a line in
        ``fidelity.md``.
    """
    seed = checked_seed(seed)
    if max_cells is not None and not is_whole(max_cells):
        raise DataError(f"max_cells must be a whole number of cells, got {max_cells!r}")
    max_cells = config.ReportConfig().max_cells if max_cells is None else int(max_cells)
    if max_cells < 4:
        raise DataError(f"max_cells must be at least 4 (the floor splits the real cells in "
                        f"halves), got {max_cells}")
    gene_repeats = config.ReportConfig().gene_repeats if gene_repeats is None else gene_repeats
    if not (isinstance(gene_repeats, str) and gene_repeats == "auto"):
        if not is_whole(gene_repeats) or gene_repeats < 1:
            raise DataError(f"gene_repeats must be 'auto' or a whole number of at least 1, got "
                            f"{gene_repeats!r}")
        gene_repeats = int(gene_repeats)
    if donor_key is not None and not isinstance(donor_key, str):  # a list: unhashable in obs
        raise DataError(f"donor_key takes the name of one obs column (a string such as "
                        f"'donor'), not {type(donor_key).__name__} {donor_key!r}")
    if donor_key is not None and donor_key == label_key:
        raise DataError(f"donor_key '{donor_key}' is the label column (label_key): each cell "
                        "type would be read as a donor by the privacy audit's donor level; give "
                        "the obs column of each cell's donor or sample (--donor-key), or leave "
                        "it out")
    picked: dict[str, Any] = {}

    def real_rows(labels: np.ndarray) -> np.ndarray:
        picked["real_total"] = pd.Series(labels).value_counts()
        rows, picked["evaluated"] = _real_rows(labels, max_cells, seed)
        return rows

    def synthetic_rows(labels: np.ndarray) -> np.ndarray:
        picked["synthetic_total"] = pd.Series(labels).value_counts()
        return stratified_subsample(labels, max_cells, seed=derive_seed(seed, "eval-synthetic-cells"))

    def heldout_rows(labels: np.ndarray) -> np.ndarray:
        picked["heldout_total"] = len(labels)
        return stratified_subsample(labels, max_cells, seed=derive_seed(seed, "eval-heldout-cells"))

    donors = donor_key if heldout is not None else None
    _check_sides(real, synthetic)
    if heldout is None:
        warn_trained_on(real, synthetic)
    else:  # before any work: the audit's members are the real cells
        check_members(real)
    r = _read_side(real, label_key, real_rows, "the real data", donor_key=donors)
    s = _read_side(synthetic, label_key, synthetic_rows, "the synthetic data")
    _check_labels(picked["real_total"], picked["synthetic_total"], label_key)
    _refuse_empty_real(r, "the real data")
    _warn_empty_cells(s)
    genes = _shared_genes(r, s)
    h = None
    if heldout is not None:
        h = _read_side(heldout, label_key, heldout_rows, "the held-out data",
                       donor_key=donor_key)
        _refuse_empty_real(h, "the held-out data")
        if r.donor_pool is not None and h.donor_pool is not None:  # "d1", "d1 ": a new donor?
            check_spaced_names([*r.donor_pool, *h.donor_pool], donor_key, "donors")
        check_disjoint(real, heldout, label_key, seed)
        check_heldout_unseen(synthetic, heldout, seed)
    elif donor_key is not None:
        logger.warning("donor_key %r is used by the privacy audit only, which needs held-out "
                       "cells (heldout / --heldout); ignored", donor_key)
    counts = _columns(r, genes, "the real data")
    evaluated = picked["evaluated"]
    rc, rl = counts[evaluated], r.labels[evaluated]  # scored: never seen by the space
    fc, fl = counts[~evaluated], r.labels[~evaluated]  # the space is fitted on these
    if len(rl) and not (pd.Series(rl).value_counts() >= 2).any():  # the floor needs halves
        n, sizes = int(picked["real_total"].sum()), picked["real_total"]
        more = ("a larger max_cells (--max-cells)" if sizes.max() >= 4 else
                "more real cells of each type, or merge the small types")
        raise DataError(f"the real data hold {n} labelled cells of {len(sizes)} types (at most "
                        f"{int(sizes.max())} a type): evaluate scores about half of each type's "
                        "real cells and fits its space on the rest, and the real-vs-real floor "
                        "splits a type's scored cells in two, so it needs a type of at least 4 "
                        f"real cells; give {more}")
    sc = _columns(s, genes, "the synthetic data")
    hc = None
    if h is not None:  # held-out copies of training cells under other names: refused now
        from ..metrics.privacy_dcr import heldout_overlap

        hc = _columns(h, genes, "the held-out data")
        heldout_overlap(counts, hc)
        check_audit_sizes({"the real (training) cells scored": (
            rc.shape[0], -(-int(picked["real_total"].sum()) // 2)),  # a half scored at most
            "the held-out data": (hc.shape[0], picked["heldout_total"]),
            "the synthetic data": (sc.shape[0], int(picked["synthetic_total"].sum()))}, max_cells)
    logger.info("evaluating %d synthetic (of %d) against %d real cells, in a space fitted on %d "
                "other real cells (of %d real; stratified subsamples of at most %d)",
                len(s.labels), s.n_total, len(rl), len(fl), r.n_total, max_cells)  # fmt: skip
    logger.info("raw counts read from %s", ", ".join(
        f"{name} {side.where}" for name, side in (("real", r), ("synthetic", s), ("held-out", h))
        if side is not None))  # a layer or raw.X beside a normalised X: which one, said
    if len(fl) < 3:
        raise DataError(f"the real data hold {r.n_total} cells: too few to fit the evaluation "
                        "space on some and score others; give at least 8 real cells")
    space = fit_space(fc, fl, genes, seed=derive_seed(seed, "eval-space"))
    floor = real_floor(space, rc, rl, seed=derive_seed(seed, "floor"))
    fid = fidelity_report(space, rc, rl, sc, s.labels, seed=derive_seed(seed, "fidelity"))
    # a copy of any real cell at hand is a copy: the held-out ones too (the test file given
    # as the synthetic one scored as perfect, and passed the privacy audit)
    every_real = counts if hc is None else sp.vstack([counts, hc], format="csr")
    memo = memorisation(space, every_real, sc, c2st=fid["overall"]["c2st_auc"],
                        c2st_cells=fid["overall"].get("n_per_side"),
                        seed=derive_seed(seed, "memorisation"))
    for side, what in ((real, "real"), (heldout, "held-out")):
        if side is not None and _same_file(side, synthetic):
            memo["reasons"].insert(0, f"the synthetic data are the {what} file itself")
            memo["flagged"] = True
    if memo["flagged"]:
        logger.warning("memorisation: the synthetic cells copy real ones (%s); their fidelity "
                       "scores do not measure generation", "; ".join(memo["reasons"]))
    result = {
        "real_vs_real": floor,
        "synthetic_vs_real": fid,
        "memorisation": memo,
        "n_cells": {"real": {"used": len(rl), "space": len(fl), "total": r.n_total},
                    "synthetic": {"used": len(s.labels), "total": s.n_total}},
        "n_genes": len(genes),
        "max_cells": max_cells,
        "seed": seed,
        "gene_repeats": gene_repeats,
        "label_key": label_key,
        "real": r.source,
        "synthetic": s.source,
    }
    if h is not None:
        result["n_cells"]["heldout"] = {"used": len(h.labels), "total": h.n_total}
        result.update(heldout=h.source, donor_key=donor_key)
    type_counts = _type_counts(rl, s.labels, picked)
    extras = _extras(space, evaluated, r, h, (rc, rl), (fc, fl), (sc, s.labels), genes, seed,
                     hc, donor_key, gene_repeats)
    v = fidelity_verdict(fid, floor, genes=extras["genes"] if "overall" in extras["genes"] else None,
                typewise=extras["typewise"], type_counts=type_counts, memorisation=memo)
    table = per_type_table(fid, floor, verdicts=v, genes=extras["genes"],
                           typewise=extras["typewise"], trts=extras["trts"],
                           type_counts=type_counts)
    for line in verdict_lines(v, privacy=extras["privacy"]):
        logger.info("%s", line)
    return {**result, **extras, "verdict": v,
            "per_type": table.reset_index().to_dict(orient="records")}


def _type_counts(rl: np.ndarray, sl: np.ndarray, picked: dict) -> dict[str, dict[str, int]]:
    """Per type: cells scored on each side and in each input (labelled cells), and whether a
    larger max_cells would score more of its real ones (``real_more``: half of the real cells
    are scored at most, which stratified rounding spreads a cell or so from half a type)."""
    rt, st = picked["real_total"], picked["synthetic_total"]
    capped = int(picked["evaluated"].sum()) < -(-int(rt.sum()) // 2)  # max_cells held it back
    out = {}
    for t in sorted(set(map(str, rt.index)) | set(map(str, st.index))):
        n = int((rl == t).sum())
        out[t] = {"real": n, "synthetic": int((sl == t).sum()),
                  "real_total": int(rt.get(t, 0)), "synthetic_total": int(st.get(t, 0)),
                  "real_more": capped and int(rt.get(t, 0)) // 2 > n}
    return out


def _skipped(what: str, fn: Callable[[], Any]) -> Any:
    """``fn()``, or ``{"skipped": why}`` when the cells do not allow it (a DataError)."""
    try:
        return fn()
    except DataError as err:
        logger.warning("%s skipped: %s", what, err)
        return {"skipped": str(err)}


def _extras(space: Any, evaluated: np.ndarray, r: _Sample, h: _Sample | None,
            scored: tuple, fitted: tuple, synth: tuple, genes: list[str], seed: int,
            heldout_counts: sp.csr_matrix | None, donor_key: str | None,
            gene_repeats: int | str = "auto") -> dict[str, Any]:
    """The gene-level test, the per-type metrics against equal-sized floors, TRTS per type and,
    with held-out cells, the privacy audit (its refusals are errors: the user asked for it)."""
    (rc, rl), (fc, fl), (sc, sl) = scored, fitted, synth
    out = {
        "genes": _skipped("gene-level fidelity", lambda: gene_fidelity(
            rc, sc, real_labels=rl, synth_labels=sl, seed=derive_seed(seed, "genes"),
            gene_names=genes, min_type_cells=MIN_TYPE_CELLS // 2,  # halves, as the floor's
            repeats=gene_repeats)),
        "typewise": _skipped("per-type floors", lambda: typewise_fidelity(
            space, rc, rl, sc, sl, seed=derive_seed(seed, "typewise"))),
        "trts": _skipped("TRTS", lambda: trts_by_type(
            space.embed(fc), fl, space.embed(rc), rl, space.embed(sc), sl,
            seed=derive_seed(seed, "trts"))),
        "privacy": None,
    }
    if h is not None:
        from ..metrics.privacy import privacy_audit
        from ..metrics.privacy_counts import AUDIT_REPEATS, average_audits, with_donor_key
        from ..metrics.privacy_redraw import fit_redraw_space

        # members: the scored training cells, not the space's (a PCA spreads the cells it is
        # fitted on, so they would sit farther from everything than unseen cells; as
        # metrics.privacy_counts.audit_counts splits them); copies of any real cell: memorisation
        # the pool: every training donor, also those of cells the subsample did not read
        donors, pool = (None, None) if r.donors is None else (r.donors[evaluated], r.donor_pool)
        # the re-draw attack's weights and reference: the cells the space was fitted on
        redraw = _skipped("the re-draw attack", lambda: fit_redraw_space(
            space, fc, fl, seed=derive_seed(seed, "privacy-redraw")))
        # the space is given, so the repeats vary the attacks' candidates and the density
        # attack's reference folds (audit_counts also varies the members and the space)
        embedded = (space.embed(rc), space.embed(heldout_counts), space.embed(sc))
        out["privacy"] = average_audits([privacy_audit(
            *embedded, seed=derive_seed(seed, "privacy" if r == 0 else f"privacy-{r}"),
            train_donors=donors, heldout_donors=h.donors, donor_pool=pool, train_counts=rc,
            heldout_counts=heldout_counts, synthetic_counts=sc, copy_refs=fc, log=False,
            population=r == 0,
            redraw=None if isinstance(redraw, dict) else redraw)
            for r in range(AUDIT_REPEATS)]).to_dict()  # fmt: skip
        out["privacy"]["donor_key"] = donor_key  # None too: the file says none was given
        read = r.counts.shape[0]
        if not out["privacy"]["flagged"] and r.n_total > read:  # a copy of a cell not read
            out["privacy"]["caveats"].append(
                f"exact copies were looked for among the {read:,} real cells read, of "
                f"{r.n_total:,}: a copy of another is not seen; raise --max-cells (max_cells) "
                f"to {r.n_total:,} to look among them all")
        with_donor_key(out["privacy"], donor_key)
    return out


def _out_dir(out: str | Path, flag: str = "--out") -> Path:
    """The output directory, refused when it is an existing file (e.g. the input), when it is
    or lies in a run directory (whose own evaluation it would replace or mix with), or when it
    holds files named as an evaluation's that ``cellsynth evaluate`` did not write; ``flag``
    names it in the message (``--out`` on the command line, ``out`` in Python)."""
    out = check_out_dir(out, flag, "fidelity.json and fidelity.md", DataError)
    from ..models.base import is_model_dir

    if out.is_dir() and is_model_dir(out):
        raise DataError(f"{flag} {out} holds a saved model: an evaluation written there would "
                        "mix with the model's files (a later save or fit there refuses them); "
                        "give a folder of its own")
    run = enclosing_run(out)
    if run is not None:
        raise DataError(f"{flag} {out} is in the run directory {run}, which keeps its own "
                        "evaluation (metrics/fidelity.json, read by its report): writing there "
                        "would replace or mix with the run's results; give a folder outside "
                        "the run")
    held = [name for name in EVALUATION_FILES if (out / name).exists()]
    if held and not _evaluation_written(out):
        raise DataError(f"{flag} {out} holds {', '.join(held)} that cellsynth evaluate did not "
                        "write: writing would destroy them; give a new or empty folder")
    return out


#: the files :func:`write` writes (``per_type.csv`` when the result has the per-type table)
EVALUATION_FILES = ("fidelity.json", "fidelity.md", "per_type.csv")


def _evaluation_written(out: Path) -> bool:
    """Whether the evaluation files in ``out`` are an earlier :func:`write`'s (its
    ``fidelity.json`` holds the comparison of both sides, its ``fidelity.md`` starts with the
    heading it writes): an earlier evaluation may be replaced."""

    try:
        kept = json.loads((out / "fidelity.json").read_text())
        if not (isinstance(kept, dict) and "synthetic_vs_real" in kept):
            return False
    except FileNotFoundError:
        pass
    except (OSError, ValueError):
        return False
    try:
        with open(out / "fidelity.md", encoding="utf-8", errors="replace") as fh:
            return fh.readline().strip() == "# Fidelity"
    except FileNotFoundError:
        return (out / "fidelity.json").exists()
    except OSError:
        return False


def write(result: Mapping[str, Any], out: str | Path) -> Path:
    """Write :func:`compare`'s ``result`` as ``fidelity.json``, ``fidelity.md`` (the verdict
    first) and ``per_type.csv`` (when the result has the per-type table) into ``out``.

    Parameters
    ----------
    result
        What :func:`compare` returned (or the :class:`~cellsynth.evaluation.result.Evaluation` wrapping it).
    out
        The output directory (created if missing).

    Returns
    -------
    The path of ``fidelity.md``.
    """
    from .result import call_args, markdown

    result = dict(result)
    out = _out_dir(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "fidelity.json", result)
    n = result["n_cells"]
    real, syn = n["real"], n["synthetic"]
    if IN_MEMORY in (result["real"], result["synthetic"], result.get("heldout")):
        call = f"`cellsynth.evaluate(..., label_key={result['label_key']!r})` on AnnData objects"
    else:
        # quoted as a shell needs (a label key 'cell type', a path with spaces), with every
        # setting the numbers depend on: copied, it runs this evaluation again
        call = "`" + shlex.join(["cellsynth", "evaluate", *call_args(result)]) + "`"
    head, tail = markdown(result)
    lines = [
        "# Fidelity", "", *head,
        f"{call}: {real['used']} of {real['total']} real and "
        f"{syn['used']} of {syn['total']} synthetic cells (stratified subsamples of at most "
        f"{result['max_cells']}), {result['n_genes']} genes, in an evaluation space fitted on "
        f"{real['space']} other real cells. The first row compares two disjoint halves of the "
        "scored real cells: the floor every other number is read against.",
        "", *table({"real vs real": flat_report(result["real_vs_real"]),
                    "synthetic": flat_report(result["synthetic_vs_real"])}), "", *tail,
    ]  # fmt: skip
    memo = result.get("memorisation") or {}
    if memo.get("flagged"):
        why = md_text("; ".join(memo["reasons"]))
        lines[2:2] = [f"**Memorisation: the synthetic cells copy real ones** ({why}). "
                      "The scores below do not measure generation: do not read them as a "
                      "success.", ""]
    if result.get("per_type"):
        write_csv(out / "per_type.csv", pd.DataFrame(result["per_type"]), index=False)
    else:  # an earlier evaluation's table would be read as this one's
        (out / "per_type.csv").unlink(missing_ok=True)
    path = out / "fidelity.md"
    write_text(path, "\n".join(lines))  # atomic
    return path


def evaluate(real: ad.AnnData | str | Path, synthetic: ad.AnnData | str | Path, label_key: str,
             out: str | Path, *, seed: int = 0, max_cells: int | None = None,
             heldout: ad.AnnData | str | Path | None = None,
             donor_key: str | None = None,
             gene_repeats: int | Literal["auto"] | None = None) -> Path:
    """:func:`compare`, written into ``out`` by :func:`write` (``cellsynth evaluate``).

    Parameters
    ----------
    real, synthetic, label_key, seed, max_cells, heldout, donor_key, gene_repeats
        As for :func:`compare`.
    out
        The output directory for ``fidelity.json``, ``fidelity.md`` and ``per_type.csv``.

    Returns
    -------
    The path of ``fidelity.md``.
    """
    _out_dir(out)  # before any work
    result = compare(real, synthetic, label_key=label_key, seed=seed, max_cells=max_cells,
                     heldout=heldout, donor_key=donor_key, gene_repeats=gene_repeats)
    return write(result, out)
