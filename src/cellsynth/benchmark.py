"""Generators side by side on one dataset: fidelity and utility beside the real-vs-real floor.

For each dataset: preprocess (QC, stratified split) as ``cellsynth run`` does, fit every
generator on the training counts (validation for early stopping), generate as many cells of
each type as the real test split holds (for fidelity) and as the real training split holds
(for TSTR and augmentation), and score them in one evaluation space fitted on real training
cells. The same metrics between two disjoint halves of the real test cells are the floor.
"""

from __future__ import annotations

import functools
import logging
import time
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from . import keys as K
from .benchmark_kept import kept_floor, model_key, read_kept, reusable, save_fit, saved_fit
from .config import RunConfig
from .data.io import read
from .data.qc import preprocess
from .data.store import write_h5ad
from .errors import CellsynthError, DataError
from .metrics.fidelity import fidelity_report, real_floor
from .metrics.memorisation import memorisation
from .metrics.privacy import donor_values
from .metrics.space import fit_space
from .metrics.utility import augmentation, check_rare_count, tstr
from .metrics.verdict import fidelity_verdict
from .metrics.verdict_text import donor_summary
from .models.registry import make_generator
from .outputs import write_json
from .runtime import peak_rss_mb
from .seeds import derive_seed

logger = logging.getLogger(__name__)

#: the columns of the results table: (key in a row, header, format)
COLUMNS = [
    ("c2st_auc", "2-sample AUC ↓", "{:.3f}"),
    ("mmd", "MMD ↓", "{:.4f}"),
    ("energy", "energy ↓", "{:.3f}"),
    ("knn_precision", "kNN prec ↑", "{:.2f}"),
    ("knn_recall", "kNN rec ↑", "{:.2f}"),
    ("gene_mean_spearman", "gene mean ρ ↑", "{:.3f}"),
    ("gene_var_spearman", "gene var ρ ↑", "{:.3f}"),
    ("zero_frac_spearman", "zero frac ρ ↑", "{:.3f}"),
    ("library_distance", "library W1 ↓", "{:.3f}"),
    ("correlation_distance", "gene corr ↓", "{:.3f}"),
    ("marker_overlap", "markers ↑", "{:.2f}"),
    ("per_type_c2st_auc", "per-type AUC ↓", "{:.3f}"),
    ("tstr_macro_f1", "TSTR F1 ↑", "{:.3f}"),
    ("tstr_over_trtr", "TSTR/TRTR ↑", "{:.2f}"),
    ("aug_generated", "rare F1 +gen ↑", "{:.3f}"),
    ("fit_seconds", "fit s", "{:.0f}"),
]
#: the second table: gene-level fidelity (issue 21) and the privacy audit (issue 19)
GENE_PRIVACY_COLUMNS = [
    ("gene_auc", "gene AUC ↓", "{:.3f}"),
    ("gene_auc_detected", "all-gene AUC ↓", "{:.3f}"),
    ("per_type_gene_auc", "per-type gene AUC ↓", "{:.3f}"),
    ("privacy_distance_auc", "distance attack AUC", "{:.3f}"),
    ("privacy_density_auc", "density attack AUC", "{:.3f}"),
    ("privacy_redraw_auc", "re-draw attack AUC", "{:.3f}"),
    ("dcr_share", "closer than 95% held-out", "{:.3f}"),
    ("exact_copies", "exact copies", "{:.0f}"),
    ("privacy_flagged", "leak flagged", "{}"),
    ("verdict", "verdict", "{}"),
]
#: appended to it where a run held out donors (``split.heldout_donors``)
DONOR_COLUMNS = [("privacy_donor_auc", "donor-level AUC (largest)", "{:.3f}"),
                 ("privacy_donors", "donors: training / held out", "{}")]
def flat_report(report: dict[str, Any]) -> dict[str, float]:
    """The headline numbers of a fidelity report, one level deep."""
    o = report["overall"]
    gs = o.get("gene_stats", {})
    mo = o.get("marker_overlap", {})
    return {
        "c2st_auc": o.get("c2st_auc"),
        "mmd": o.get("mmd_rbf"),
        "energy": o.get("energy_distance"),
        "knn_precision": o.get("knn_precision"),
        "knn_recall": o.get("knn_recall"),
        "gene_mean_spearman": gs.get("mean"),
        "gene_var_spearman": gs.get("variance"),
        "zero_frac_spearman": gs.get("zero_fraction"),
        "library_distance": o.get("library_size_distance"),
        "correlation_distance": o.get("correlation_distance"),
        "marker_overlap": mo.get("mean") if isinstance(mo, dict) else mo,
        "per_type_c2st_auc": report.get("per_type_mean", {}).get("c2st_auc"),
    }


def _counts(a: ad.AnnData) -> sp.csr_matrix:
    return sp.csr_matrix(a.layers[K.COUNTS] if K.COUNTS in a.layers else a.X)


def prepare(path: str | Path, cfg: RunConfig) -> ad.AnnData:
    """Read and preprocess a dataset as ``cellsynth run`` does (counts kept in a layer)."""
    pre, _ = preprocess(read(path), cfg.dataset, cfg.qc, cfg.split,
                        seed=derive_seed(cfg.seed, "split"))
    if K.COUNTS not in pre.layers:
        raise DataError(f"{path}: the benchmark needs raw counts (in X, layers['counts'] or "
                        "raw.X); give the unnormalised file")
    return pre




def benchmark_dataset(pre: ad.AnnData, models: list[str], cfg: RunConfig, out: Path, *,
                      n_rare: int = 3, reuse: bool = False, kept_only: bool = False,
                      kept_dir: Path | None = None, fits: int = 1,
                      data: str | None = None) -> dict[str, Any]:
    """Fit, generate and score every generator in ``models`` on one preprocessed dataset.

    Each generator's results are kept in ``kept_dir/NAME.json`` (default ``out/results``; small
    JSON files, so a results page can keep them under version control) with :func:`model_key`,
    and the real-vs-real floor in ``floor.json`` beside them (read back whenever its key
    matches: a page rebuilt from kept results fits neither the floor nor the evaluation space);
    with ``reuse``, a generator whose kept results have the same key is read back, not rerun
    (results kept over more fits than ``fits`` too);
    with ``kept_only``, kept results are read back and a generator without them is left out
    (``details['not_run']``). With ``fits`` above one, each generator is fitted that many times,
    each fit with seeds of its own (the first with those of a single fit), and its row is the
    mean of the fits' rows (:func:`mean_of_fits`: the spread beside it), so that a comparison
    is not read off one fit's luck: on a few hundred cells, refitting with other seeds moves a
    two-sample AUC by several hundredths. ``data``, the data file's sha256, is kept beside the
    results: kept results (and the floor) of another version of the file are not read back
    (results kept without one are, as before).
    """
    if fits < 1:
        raise ValueError(f"fits must be at least 1, got {fits}")
    check_rare_count(n_rare)  # before any generator is fitted
    import datetime as dt
    label_key = cfg.dataset.label_key
    split = pre.obs[K.SPLIT].astype(str).to_numpy()
    y = pre.obs[label_key].astype(str).to_numpy()
    counts = _counts(pre)
    parts = {s: (counts[split == s], y[split == s]) for s in K.SPLITS}
    seed = cfg.seed
    results = kept_dir or out / "results"

    @functools.cache
    def space_and_embedding() -> tuple[Any, dict[str, tuple[np.ndarray, np.ndarray]]]:
        """The evaluation space and each split embedded in it, fitted on first use (a page
        rebuilt from kept results never uses them)."""
        space = fit_space(parts["train"][0], parts["train"][1], list(map(str, pre.var_names)),
                          seed=derive_seed(seed, "eval-space"))
        return space, {s: (space.embed(x), lab) for s, (x, lab) in parts.items()}

    floor_key = model_key(cfg, "floor")
    floor = kept_floor(results / "floor.json", floor_key, data)
    if floor is None:
        t0 = time.perf_counter()
        try:
            floor = real_floor(space_and_embedding()[0], *parts["test"],
                               seed=derive_seed(seed, "floor"))  # fmt: skip
        except DataError as err:  # its hints are evaluate's and a run's
            raise DataError(f"the benchmark's test split is too small: "
                            f"{str(err).split('; give')[0]}; raise split.test (now "
                            f"{cfg.split.test}"
                            + (", e.g. --set split.test=0.2" if cfg.split.test < 0.2 else "")
                            + ") or give more cells") from None  # fmt: skip
        logger.info("real-vs-real floor in %.1f s", time.perf_counter() - t0)
        write_json(results / "floor.json", {"key": floor_key, "floor": floor,
                                            **({"data": data} if data else {})})
    rows: dict[str, dict[str, Any]] = {"real vs real": flat_report(floor)}
    details: dict[str, Any] = {"floor": floor, "models": {}}
    fit_on = pre[np.isin(split, ["train", "val"])]
    n_test = pd.Series(parts["test"][1]).value_counts().to_dict()
    n_train = pd.Series(parts["train"][1]).value_counts().to_dict()
    n_val = pd.Series(parts["val"][1]).value_counts().to_dict()
    def one_fit(name: str, r: int) -> tuple[dict[str, Any], dict[str, Any]]:
        """Fit ``name`` once (fit ``r``: its own seeds from the second on), generate, score."""
        tag = name if r == 0 else f"{name}-fit{r}"  # the first fit's seeds as with one fit
        started = time.perf_counter()
        space, emb = space_and_embedding()
        logger.info("benchmark: fitting %s on %d cells%s", name, fit_on.n_obs,
                    f" (fit {r + 1} of {fits})" if fits > 1 else "")
        fit_key = {"key": model_key(cfg, name), **({"data": data} if data else {})}
        found = saved_fit(out / "models", name, fit_key) if reuse and r == 0 else None
        try:  # the generator's own work: its failure is said, the others still benchmarked
            if found is not None:  # a stopped benchmark's fit, saved before it was scored
                gen, history, fit_seconds = found
            else:
                gen = make_generator(name, cfg)
                t0 = time.perf_counter()
                history = gen.fit(fit_on, label_key, seed=derive_seed(seed, f"fit-{tag}"))
                fit_seconds = time.perf_counter() - t0
            t0 = time.perf_counter()
            syn_test = gen.sample({t: int(n) for t, n in n_test.items()}, seed=derive_seed(seed, f"gen-test-{tag}"))
            gen_seconds = time.perf_counter() - t0
            syn_train = gen.sample({t: int(n) for t, n in n_train.items()}, seed=derive_seed(seed, f"gen-train-{tag}"))
            syn_val = gen.sample({t: max(1, int(n)) for t, n in n_val.items()}, seed=derive_seed(seed, f"gen-val-{tag}"))
        except Exception as err:
            why = generator_failure(err)
            if why is None:
                raise
            raise _Failed(why) from err
        if r == 0 and found is None:  # the first fit's model and cells are kept
            save_fit(gen, out / "models", name, {**fit_key, "history": history,
                                                   "fit_seconds": fit_seconds})
            (out / "synthetic").mkdir(parents=True, exist_ok=True)
            write_h5ad(syn_test, out / "synthetic" / f"{name}.h5ad")  # atomic

        def sx(a: ad.AnnData) -> sp.csr_matrix:
            return sp.csr_matrix(a.X)

        def sl(a: ad.AnnData) -> np.ndarray:
            return a.obs[label_key].astype(str).to_numpy()

        fid = fidelity_report(space, *parts["test"], sx(syn_test), sl(syn_test),
                              seed=derive_seed(seed, f"fid-{tag}"))
        util = tstr(emb["train"], emb["val"], emb["test"], (space.embed(sx(syn_train)), sl(syn_train)),
                    (space.embed(sx(syn_val)), sl(syn_val)), cfg.classifier,
                    seed=derive_seed(seed, "tstr"), synth_test=(space.embed(sx(syn_test)), sl(syn_test)))
        by_type = {t: space.embed(sx(syn_train)[sl(syn_train) == t]) for t in n_train}
        aug = augmentation(emb["train"], emb["val"], emb["test"], by_type, n_rare, cfg.classifier,
                           seed=derive_seed(seed, "augment"))
        genes, privacy = _genes_and_privacy(parts, syn_test, syn_train, label_key, pre, seed,
                                            donor_key=cfg.dataset.donor_key)
        rows["real vs real"].update(genes["floor_row"])
        # copies of any real cell (training cells included) decide the verdict, as in
        # cs.evaluate and the pipeline's evaluation: the metrics alone would read them as close
        memo = memorisation(space, counts, sx(syn_test), c2st=fid["overall"]["c2st_auc"],
                            c2st_cells=fid["overall"].get("n_per_side"),
                            seed=derive_seed(seed, f"memorisation-{tag}"))
        verdict = fidelity_verdict(fid, floor, genes=genes["report"].get("hvg"),
                                   memorisation=memo)
        row = flat_report(fid)
        row.update(genes["row"], **_privacy_row(privacy), verdict=verdict["overall"]["verdict"])
        row.update(
            tstr_macro_f1=util["tstr"]["macro_f1"], trtr_macro_f1=util["trtr"]["macro_f1"],
            trts_macro_f1=util["trts"]["macro_f1"], tstr_over_trtr=util["tstr_over_trtr"],
            aug_real=aug["arms"]["real"]["mean_rare_f1"],
            aug_oversample=aug["arms"]["oversample"]["mean_rare_f1"],
            aug_generated=aug["arms"]["generated"]["mean_rare_f1"], fit_seconds=fit_seconds,
            generate_cells_per_second=syn_test.n_obs / max(gen_seconds, 1e-9),
            epochs=history.get("epochs"),
        )
        logger.info("benchmark %s: AUC %.3f, TSTR %.3f (TRTR %.3f), fit %.0f s, peak RSS %.0f MB",
                    name, row["c2st_auc"] or float("nan"), row["tstr_macro_f1"],
                    row["trtr_macro_f1"], fit_seconds, peak_rss_mb())
        return row, {"fidelity": fid, "utility": util, "augmentation": aug,
                     "genes": genes["report"], "gene_floor": genes["floor_row"],
                     "verdict": verdict, "memorisation": memo, "privacy": privacy,
                     "history": history, "row": row,
                     "date": dt.datetime.now().isoformat(timespec="minutes"),
                     "seconds": time.perf_counter() - started}

    for name in models:
        kept, key = results / f"{name}.json", model_key(cfg, name, fits)
        if kept_only and not kept.exists() and name == "reference":  # kept under its old name
            kept = kept.with_name("seed.json")
        saved = read_kept(kept) if (reuse or kept_only) and kept.exists() else {}
        if saved and reusable(saved, cfg, name, fits, data, kept):
            rows[name], details["models"][name] = saved["row"], saved["details"]
            rows["real vs real"].update(saved["details"].get("gene_floor", {}))
            logger.info("benchmark %s: reusing its results of %s (%s)", name, saved.get("date"),
                        kept)  # fmt: skip
            continue
        if kept_only and saved.get("row"):  # an earlier version's: shown, and said so
            rows[name], details["models"][name] = saved["row"], saved["details"]
            other = data is not None and saved.get("data") not in (None, data)
            details.setdefault("other_data" if other else "stale", []).append(name)
            logger.warning("benchmark %s: the kept results in %s were made %s; shown as they are",
                           name, kept, "from another version of the data file" if other else
                           "with other settings or metrics")  # fmt: skip
            continue
        if kept_only:
            logger.warning("benchmark %s: no kept results for these settings in %s; left out",
                           name, kept)  # fmt: skip
            details.setdefault("not_run", []).append(name)
            continue
        try:
            fitted = [one_fit(name, r) for r in range(fits)]
        except _Failed as failed:
            logger.error("benchmark %s failed: %s; the other generators go on", name, failed)
            details.setdefault("failed", {})[name] = str(failed)
            continue
        row, det = mean_of_fits(fitted) if fits > 1 else fitted[0]
        rows[name], details["models"][name] = row, det
        write_json(kept, {"key": key, "date": det["date"], "row": row, "details": det,
                          **({"data": data} if data else {})})
    details["rows"] = rows
    details["rare_types"] = (next(iter(details["models"].values())).get("augmentation") or {}
                             ).get("rare_types") if details["models"] else []  # fmt: skip
    write_json(out / "benchmark.json", details)
    return details


class _Failed(Exception):
    """A generator's own failure (its one-line ``why``): named, the others benchmarked."""


def generator_failure(err: Exception) -> str | None:
    """Why a generator failed, in one line, where ``err`` is its own failure; None where it is
    one of the disk or files (an OSError in its chain: a full disk, a path), which every
    generator after it would meet too, or a broken assertion (a bug, for its traceback): then
    raised as it is."""
    if isinstance(err, AssertionError):
        return None
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, OSError) and not isinstance(seen, CellsynthError):
            return None
        seen = seen.__cause__ or seen.__context__
    logger.debug("the generator's failure", exc_info=err)  # its traceback, for a bug report
    why = str(err) if isinstance(err, CellsynthError) else f"{type(err).__name__}: {err}"
    return " ".join(why.split())  # one line, on the page and in the error


def mean_of_fits(fitted: list[tuple[dict[str, Any], dict[str, Any]]]
                 ) -> tuple[dict[str, Any], dict[str, Any]]:  # fmt: skip
    """One row from several fits' ``(row, details)``: numbers averaged, text (verdict, leak
    flagged) the most common value, but a leak flagged in some fits is said ("yes (1 of 2
    fits)"); the details are the first fit's, with every fit's row
    (``fits``), the standard deviation of each number across them (``spread``) and the mean
    row."""
    rows = [row for row, _ in fitted]
    mean: dict[str, Any] = {}
    spread: dict[str, float] = {}
    for key in rows[0]:
        values = [row.get(key) for row in rows]
        numbers = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
        if numbers and len(numbers) == len(values):
            mean[key] = float(np.mean(numbers))
            spread[key] = float(np.std(numbers, ddof=1))
        else:  # text, or a number some fits lack: the most common value
            mean[key] = max(values, key=lambda v: (values.count(v), v is not None))
    flags = [row.get("privacy_flagged") for row in rows]
    if 0 < flags.count("yes") < len(flags):  # a leak of one fit is no tie to break by order
        mean["privacy_flagged"] = f"yes ({flags.count('yes')} of {len(flags)} fits)"
    mean["fits"] = len(rows)
    details = {**fitted[0][1], "row": mean, "fits": rows, "spread": spread,
               "seconds": sum(d["seconds"] for _, d in fitted)}
    return mean, details


#: what a benchmark's audit set too small says to do (its split's settings; the generated
#: cells are the training split's twin)
BENCHMARK_FIXES = {
    "train": "give more cells, or a larger split.train (--set split.train=0.8, the fractions "
             "summing to 1)",
    "heldout": ("the test split is the audit's held-out set: hold out more (a larger "
                "split.test, the fractions summing to 1: --set split.train=0.6 --set "
                "split.test=0.3) or give more cells"),
    "synthetic": "give more cells, or a larger split.train (the generated twin's cells)",
}


def _genes_and_privacy(parts: dict[str, tuple[sp.csr_matrix, np.ndarray]], syn: ad.AnnData,
                       twin: ad.AnnData, label_key: str, pre: ad.AnnData,
                       seed: int, donor_key: str = "") -> tuple[dict, dict]:  # fmt: skip
    """Gene-level fidelity of the generated test cells ``syn`` (top HVGs overall and per type,
    and all detected genes overall), each beside its floor; and the privacy audit of ``twin``,
    the training split's composition generated (what would be shared in place of the training
    cells: a posterior-predictive generator re-draws every training cell once), against the
    real training cells with the test split held out (``{"skipped": why}`` when it cannot
    run), at donor level too with a ``donor_key`` (on the test cells of held-out donors)."""
    from .metrics.genes import gene_fidelity
    from .metrics.privacy_counts import audit_counts, with_donor_key

    (xt, yt), (xs, ys) = parts["test"], (sp.csr_matrix(syn.X), syn.obs[label_key].astype(str))
    gseed = derive_seed(seed, "genes")  # one seed: every generator meets the same real halves
    try:
        hvg = gene_fidelity(xt, xs, real_labels=yt, synth_labels=ys.to_numpy(), seed=gseed)
        detected = gene_fidelity(xt, xs, seed=gseed, genes="detected")
    except DataError as exc:  # too few test cells: skipped, as `cellsynth run` and cs.evaluate
        logger.warning("gene-level fidelity skipped: %s", exc)  # skip it, not the generator
        row, floor, report = {}, {}, {"skipped": str(exc)}
    else:
        per_type = [v for v in hvg["per_type"].values() if v.get("auc") is not None]
        row = {"gene_auc": hvg["overall"]["auc"], "gene_auc_detected": detected["overall"]["auc"],
               "per_type_gene_auc": (float(np.mean([v["auc"] for v in per_type]))
                                     if per_type else None)}  # fmt: skip
        floor = {"gene_auc": hvg["overall"]["floor_auc"],
                 "gene_auc_detected": detected["overall"]["floor_auc"],
                 "per_type_gene_auc": (float(np.mean([v["floor_auc"] for v in per_type]))
                                       if per_type else None)}  # fmt: skip
        hvg.pop("genes", None)  # per-gene statistics: too large for the kept results
        report = {"hvg": hvg, "detected": {"overall": detected["overall"]}}
    donors: dict[str, np.ndarray] = {}
    if donor_key:
        d, split = donor_values(pre.obs[donor_key]), pre.obs[K.SPLIT].astype(str).to_numpy()
        donors = {"train_donors": d[split == "train"], "heldout_donors": d[split == "test"]}
    try:
        privacy = audit_counts(parts["train"][0], xt, sp.csr_matrix(twin.X),
                               list(map(str, pre.var_names)),
                               seed=derive_seed(seed, "privacy"),
                               train_labels=parts["train"][1], fixes=BENCHMARK_FIXES,
                               **donors).to_dict()  # fmt: skip
        privacy = with_donor_key(privacy, donor_key)
    except DataError as exc:
        logger.warning("privacy audit skipped: %s", exc)
        privacy = {"skipped": str(exc)}
    return {"row": row, "floor_row": floor, "report": report}, privacy


def _privacy_row(privacy: dict[str, Any]) -> dict[str, Any]:
    if "skipped" in privacy:
        return {}
    attacks, dcr = privacy["attacks"], privacy["dcr"]
    return {"privacy_distance_auc": attacks["distance"]["auc"],
            "privacy_density_auc": attacks["density"]["auc"],
            "privacy_redraw_auc": attacks.get("redraw", {}).get("auc"),
            "dcr_share": dcr["share_below_quantile"], "exact_copies": dcr["exact_duplicates"],
            "privacy_flagged": "yes" if privacy["flagged"] else "no",
            **(_donor_row(privacy["donor_attacks"]) if privacy.get("donor_attacks") else {})}


def _donor_row(attacks: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The donor level's largest attack AUC, its donors and the AUC's s.e. under no leak."""
    d = donor_summary(attacks)
    return {"privacy_donor_auc": d["largest"],
            "privacy_donors": f"{d['n_members']} / {d['n_nonmembers']}",
            "privacy_donor_se": d["se_null"]}


def table(rows: dict[str, dict[str, Any]], columns: list[tuple[str, str, str]] | None = None
          ) -> list[str]:  # fmt: skip
    """A markdown table: one row per generator plus the real-vs-real floor (``columns``:
    :data:`COLUMNS` by default)."""
    columns = COLUMNS if columns is None else columns
    head = "| generator | " + " | ".join(h for _, h, _ in columns) + " |"
    sep = "|---|" + "|".join("---:" for _ in columns) + "|"
    lines = [head, sep]
    for name, row in rows.items():
        cells = []
        for key, _, fmt in columns:
            v = row.get(key)
            cells.append("–" if v is None or (isinstance(v, float) and np.isnan(v)) else fmt.format(v))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines
