"""The report's fidelity sections: the metrics beside the real-vs-real control (with the
per-type and privacy figures of :mod:`cellsynth.pl`) and the covariates' design report."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..errors import DataError, listed
from . import figures
from ._markup import _e, _fmt, _img, _is_num, _left_out, _missing, _note, _Run, _table

# (label, path into report["overall"], what a perfect generator scores)
_FIDELITY_ROWS = [
    ("C2ST AUC", ("c2st_auc",), "0.5"),
    ("MMD² (RBF)", ("mmd_rbf",), "lower; 0"),
    ("energy distance", ("energy_distance",), "lower; 0"),
    ("k-NN precision", ("knn_precision",), "higher"),
    ("k-NN recall", ("knn_recall",), "higher"),
    ("gene mean (Spearman)", ("gene_stats", "mean"), "higher; 1"),
    ("gene variance (Spearman)", ("gene_stats", "variance"), "higher; 1"),
    ("zero fraction (Spearman)", ("gene_stats", "zero_fraction"), "higher; 1"),
    ("library size distance", ("library_size_distance",), "lower; 0"),
    ("correlation distance", ("correlation_distance",), "lower; 0"),
    ("marker overlap", ("marker_overlap", "mean"), "higher; 1"),
]


def _dig(d: Any, keys: Sequence[str]) -> Any:
    for k in keys:
        d = d.get(k) if isinstance(d, dict) else None
    return d


def _sec_fidelity(run: _Run) -> str:
    fid = run.json("metrics/fidelity.json")
    if not isinstance(fid, dict) or "synthetic_vs_real" not in fid:
        return _missing("metrics/fidelity.json")
    floor = (fid.get("real_vs_real") or {}).get("overall", {})
    syn = (fid.get("synthetic_vs_real") or {}).get("overall", {})
    rows = [(label, _dig(floor, path), _dig(syn, path), best)
            for label, path, best in _FIDELITY_ROWS]
    memo = fid.get("memorisation") or {}
    warn = "".join(_note("Memorisation: " + r + ". The fidelity numbers below do not measure "
                         "generation.") for r in memo.get("reasons", []))  # fmt: skip
    parts = [warn, "<p>The control compares two disjoint halves of the real cells: what a "
             "perfect generator would score with this many cells. Read each synthetic number "
             "beside it.</p>",
             _table(["metric", "real vs real (control)", "synthetic vs real", "ideal"], rows),
             _negative_note(rows)]
    try:
        parts.append(_img(figures.fidelity_bars(fid), "fidelity metrics beside the control"))
    except DataError:  # cs.pl.fidelity refuses to draw no bar at all
        parts.append(_left_out("the fidelity figure: no headline metric has a value on either "
                               "side (too few cells to score)"))
    if (fid["synthetic_vs_real"].get("per_type") or (fid.get("real_vs_real") or {})
            .get("per_type")):
        try:
            figure = _img(figures.per_type_bars(fid), "two-sample AUC per type")
        except DataError:  # cs.pl.per_type refuses a figure of no value (the section stays)
            figure = _left_out("the per-type figure: no type has a two-sample AUC on either "
                               "side (too few cells to score)")
        parts += ["<h3>Per type</h3><p>The two-sample AUC of each type's generated against its "
                  "real test cells (0.5: indistinguishable), beside two halves of its real "
                  "cells; its cells (real · generated) beside its name.</p>",
                  figure, _undrawn(fid)]
    else:
        parts.append(_left_out("the per-type figure: no type had enough cells on both sides "
                               "for a two-sample test"))
    parts.append(_genes(fid.get("genes")))
    priv = fid.get("privacy")
    parts.append(_privacy(priv))
    if isinstance(priv, dict) and isinstance(priv.get("attacks"), dict):
        try:
            parts.append(_img(figures.privacy_bars(priv), "privacy audit"))
        except DataError:  # cs.pl.privacy refuses an audit without a number to draw
            parts.append(_left_out("the privacy figure: the audit holds no number to draw"))
    return "".join(parts)


def _undrawn(fid: dict) -> str:
    """Which types the per-type figure leaves out (no number on either side: too few cells
    for a two-sample test), so that a figure of 19 bars is not read as the atlas's 128."""
    drawn = {str(t) for side in ("synthetic_vs_real", "real_vs_real")
             for t in ((fid.get(side) or {}).get("per_type") or {})}
    v = fid.get("verdict") if isinstance(fid.get("verdict"), dict) else {}
    types = [str(t) for t in (v.get("counts") or {})] or [
        str(t) for key in ("per_type", "too_few", "absent", "extra") for t in (v.get(key) or {})]
    left = [t for t in dict.fromkeys(types) if t not in drawn]
    if not left:
        return ""
    return _left_out(f"{len(left)} of {len(set(types) | drawn)} types from the figure: too few "
                     "cells for a two-sample test, of generated against real cells or of two "
                     "real halves (each is in the verdict and in metrics/per_type.csv): "
                     f"{listed(left, 10)}")


def _negative_note(rows: Sequence[tuple]) -> str:
    """Why an MMD or energy distance can be below zero, when one in ``rows`` is."""
    neg = [label for label, *values, _ in rows
           if label.startswith(("MMD", "energy")) and any(_is_num(v) and v < 0 for v in values)]
    if not neg:
        return ""
    return (f"<p>{_e(' and '.join(neg))} below zero: these are unbiased estimates, whose noise "
            "scatters them around the true value; below zero means the two samples are as "
            "alike as this many cells can show (at the noise floor). Read it as 0.</p>")


def _genes(genes: Any) -> str:
    """The gene-level test (top HVGs, each gene a feature) beside its floor, and the per-gene
    relations of real and generated cells."""
    head = "<h3>Gene by gene</h3>"
    if not isinstance(genes, dict):
        return ""
    if isinstance(genes.get("skipped"), str):  # the whole test (else: types skipped)
        return head + _left_out(f"the gene-level test: {genes['skipped']}")
    o = genes.get("overall") or {}
    text = (f"<p>A classifier given the expression of the real cells' top "
            f"{_e(o.get('n_genes', '–'))} variable genes, each gene a feature, tells generated "
            f"from real cells with AUC {_e(_fmt(o.get('auc')))}, against "
            f"{_e(_fmt(o.get('floor_auc')))} for two halves of the real cells (0.5: "
            "indistinguishable). It sees what 30 principal components hide: lowly expressed "
            "genes, their zeros and their spread.</p>")
    if isinstance(genes.get("genes"), dict):
        text += _img(figures.gene_relations(genes), "per-gene mean, zeros and variance")
    return head + text


def _sec_verdict(run: _Run) -> str:
    """The first screen: are the generated cells realistic? Overall and per type."""
    from ..metrics.verdict_text import verdict_lines

    fid = run.json("metrics/fidelity.json")
    if not isinstance(fid, dict):
        return _missing("metrics/fidelity.json")
    if "verdict" not in fid:
        return _left_out("the verdict: fidelity.json holds none (written by an earlier "
                         "version: rerun with --force evaluation)")
    v = fid["verdict"]
    o = v["overall"]
    lines = verdict_lines(v, privacy=fid.get("privacy"))
    out = (f'<p class="verdict verdict-{_e(o["verdict"].replace(" ", "-"))}"><b>{_e(o["verdict"].capitalize())}'
           f"</b>: {_e(o['reason'])}.</p>"
           "<p>Each metric is read against two halves of the real test cells (the floor) and "
           "its noise: <i>indistinguishable</i> within the floor's noise, <i>close</i> within "
           "a margin beyond it, else <i>distinguishable</i>; the metrics that decided are "
           "named.</p><pre>" + _e("\n".join(lines[1:])) + "</pre>")
    table = run.csv("metrics/per_type.csv", text=("type",))
    if table is not None and len(table):
        cols = [c for c in ("type", "n_real", "n_synthetic", "verdict", "c2st_auc",
                            "c2st_auc_floor", "gene_auc", "gene_auc_floor", "genes_at_depth",
                            "genes_at_depth_floor", "knn_precision", "knn_recall", "de_logfc_r",
                            "marker_overlap") if c in table]
        out += ("<h3>Per type</h3><p>Its cells scored (real, generated), its verdict and each "
                "metric beside its floor (all columns in <code>metrics/per_type.csv</code>); "
                "<i>genes_at_depth</i>: genes detected per cell over real cells' at the same "
                "library size (1: as many).</p>"
                + _table(cols, table[cols].itertuples(index=False, name=None)))
    return out


def _privacy(priv: Any) -> str:
    """The privacy audit: membership attacks (AUC, 0.5 = no leak) and distances to the closest
    training cell, generated against held-out real cells."""
    if not isinstance(priv, dict):
        return ""
    head = "<h3>Privacy audit</h3>"
    if "skipped" in priv:
        return head + _note(f"Not run: {priv['skipped']}")
    verdict = ("Flagged: " + "; ".join(priv.get("reasons", [])) if priv.get("flagged") else
               "Not flagged: no attack tells the training cells from held-out real cells "
               "better than chance allows (no proof of privacy, only that these attacks fail).")
    verdict += "".join(f" Caution: {c}." for c in priv.get("caveats") or [])
    if priv.get("donor_key") and priv.get("donor_skipped"):
        verdict += f" Donor level ({priv['donor_key']}) skipped: {priv['donor_skipped']}."
    rows = [(f"{name} attack ({level} level)", a.get("auc"), a.get("auc_sd"), a.get("threshold"),
             a.get("n_members"))
            for level, block in (("cell", priv.get("attacks")), ("donor", priv.get("donor_attacks")))
            for name, a in (block or {}).items()]  # fmt: skip
    repeats = (priv.get("settings") or {}).get("repeats", 1)
    dcr = priv.get("dcr") or {}
    dist = [("median distance to the closest training cell, generated", dcr.get("median_synthetic")),
            ("the same, held-out real cells", dcr.get("median_heldout")),
            ("generated cells closer than 95% of held-out cells (expect 0.05)",
             dcr.get("share_below_quantile")),
            ("exact copies of training cells", dcr.get("exact_duplicates"))]
    return (head + (_note(verdict) if priv.get("flagged") else f"<p>{_e(verdict)}</p>")
            + "<p>An attacker holding the generated cells tries to tell the cells the generator "
            "was trained on from real cells it never saw (the test split): ROC AUC, 0.5 = no "
            "leak; flagged above the threshold (chance at this many cells, or 0.55)"
            + (f"; each AUC the mean over {repeats} random halvings of the training cells into "
               "members and the cells the audit's space is fitted on, ± their standard "
               "deviation" if repeats > 1 else "") + ".</p>"
            + _table(["attack", "AUC", "± s.d. over halvings", "flagged above", "members"], rows)
            + _table(["distance to the closest training cell", "value"], dist))


def _sec_design(run: _Run) -> str:
    """Fidelity per (type x covariate levels) combination and condition effects."""
    rep = run.json("metrics/covariates.json")
    if not isinstance(rep, dict):
        return ("<p>Left out: the generator conditions on the cell type only (set "
                "<code>cvae.covariates</code>, or <code>nb.covariates</code> or "
                "<code>scvi.covariates</code> for those generators, to condition on donor, "
                "condition, batch...).</p>")
    comb = rep.get("combinations") or {}
    per = comb.get("per_combination") or {}
    rows = [(c, r.get("n_real"), r.get("n_synth"), r.get("c2st_auc"), r.get("floor_c2st_auc"))
            for c, r in sorted(per.items())]
    out = (f"<p>Each combination of the type and {_e(', '.join(comb.get('keys', [])))} with at "
           f"least {_e(comb.get('min_cells'))} cells on both sides: two-sample AUC of its "
           "generated against its real test cells, beside two halves of its real cells "
           "(the floor; – when a half is too small).</p>"
           + _table(["combination", "real cells", "generated cells", "AUC", "floor AUC"], rows,
                    digits=[0, 0, 0, 3, 3]))
    skipped = comb.get("skipped") or {}
    if skipped:
        out += (f"<p>{len(skipped)} combination(s) not scored: "
                + _e(listed([f"{c}: {why}" for c, why in skipped.items()], 10, sep="; ")) + "</p>")
    for key, levels in (rep.get("levels_not_generated") or {}).items():
        out += (f"<p>{_e(key)}: {len(levels)} level(s) of the real test cells were not generated "
                f"(no training cell had them; held-out donors?), and are not compared: "
                f"{_e(listed(levels, 10))}.</p>")
    for key, pairs in (rep.get("effects") or {}).items():
        out += f"<h3>Effect of {_e(key)}</h3>"
        if "skipped" in pairs:
            out += f"<p>Not measured: {_e(pairs['skipped'])}.</p>"
            continue
        erows = [(pair, t, e.get("r"), e.get("floor_r"), e.get("slope"), e.get("floor_slope"))
                 for pair, types in pairs.items() for t, e in types.items() if "r" in e]
        out += ("<p>Per type, the log fold changes between the levels in generated cells "
                "against the same in real test cells: Pearson r over genes and the slope over "
                "the most changed genes (1 = the full effect; below 1: attenuated), beside two "
                "halves of the real cells.</p>"
                + _table(["levels", "type", "r", "floor r", "slope", "floor slope"], erows))
    return out
