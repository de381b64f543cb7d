"""``report.html``: one self-contained page describing a run directory.

Reads the files a run wrote (never live objects) and writes a single HTML file: inline CSS,
figures as base64 PNG ``data:`` URIs, no external resource. Each section degrades to a note
when its files are missing or unreadable; rendering never fails on a partial run.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from ..data.groups import merges_types, one_group_note
from ..errors import CellsynthError
from ..metrics.classification import small_sample_note
from ..options import literal_text
from ..outputs import check_file_out, report_html, write_text
from ..seeds import derive_seed, is_whole
from . import figures
from ._fidelity import _sec_design, _sec_fidelity, _sec_verdict
from ._markup import _e, _fmt, _img, _left_out, _missing, _note, _Run, _table

logger = logging.getLogger(__name__)

_EXPERIMENTS = {"a": ("Real data", "Real data"), "b": ("Real data", "Synthetic data"),
                "c": ("Synthetic data", "Real data")}

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;max-width:1150px;
margin:0 auto;padding:1em 2em 4em;color:#222;line-height:1.45}
h1{margin-bottom:.2em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
nav{font-size:.9em}nav a{margin-right:.9em;white-space:nowrap}
table{border-collapse:collapse;margin:.6em 0;font-size:.88em}
th,td{border:1px solid #ddd;padding:.25em .6em;text-align:left}th{background:#f3f3f3}
td.n{text-align:right;font-variant-numeric:tabular-nums}
img{max-width:100%;height:auto;display:block;margin:.6em 0}
.note{background:#fff8e1;border-left:4px solid #f0b400;padding:.4em .8em}
.muted{color:#666;font-size:.9em}
.verdict{font-size:1.15em;padding:.5em .8em;border-left:6px solid #999}
.verdict-indistinguishable{border-color:#55a868;background:#eef7f0}
.verdict-close{border-color:#f0b400;background:#fff8e1}
.verdict-distinguishable,.verdict-copies-of-real-cells{border-color:#c44e52;background:#fbeeee}
.verdict-too-few-cells{border-color:#8c8c8c;background:#f4f4f4}
"""

# sets data-images-ok / data-images-total on <body> once every figure has loaded (for tests)
_SCRIPT = """
window.addEventListener("load", function () {
  var imgs = document.images, ok = 0;
  for (var i = 0; i < imgs.length; i++) { if (imgs[i].complete && imgs[i].naturalWidth > 0) ok++; }
  document.body.dataset.imagesOk = ok; document.body.dataset.imagesTotal = imgs.length;
});
"""


# ---------------------------------------------------------------- sections

_NO_GROUPS = ("the coarse level: no fine-to-coarse mapping (dataset.groups) merges any types, "
              "so it would repeat the fine one")


def _used(asked: Any, used: Any) -> str:
    """A setting as the run used it, and as asked where the data changed it."""
    if used is None or str(used) == str(asked):
        return str(asked)
    return f"{used} (asked {asked}; the data allow no more)"


def _rounds(clf: dict, meta: dict) -> str:
    """The boosting rounds the kept classifier uses, beside the most allowed."""
    most = clf.get("n_estimators", "–")
    if isinstance(meta.get("best_iteration"), int):
        return f"{meta['best_iteration'] + 1} rounds kept (at most {most}, early-stopped)"
    return f"at most {most} rounds"


def _sec_run(run: _Run) -> str:
    cfg = run.config()
    manifest = run.json("manifest.json") or {}
    ds, g = cfg.get("dataset", {}), cfg.get("generator", {})
    clf, feat = cfg.get("classifier", {}), cfg.get("features", {})
    mpath = run.root / "manifest.json"
    when = manifest.get("finished") or manifest.get("started") or (
        _dt.datetime.fromtimestamp(mpath.stat().st_mtime).isoformat(timespec="seconds")
        if mpath.is_file() else "unknown")
    rows = [
        ("run directory", str(run.root)),
        ("run date", when),
        ("dataset", ds.get("path") or ("embedded demo atlas (simulated)"
         + (f": {ds.get('demo_cells')} cells, {ds.get('demo_genes')} genes, "
            f"{ds.get('demo_types')} types" if "demo_cells" in ds else ""))),
        ("label column", ds.get("label_key", "–")),
        ("coarse groups", ds.get("groups") or "from the data, if any"),
        ("seed", cfg.get("seed", "–")),
        ("generator", g.get("model", "–")),
        ("generated cells per type", f"eval {g.get('n_per_type_eval', '–')}, train "
         f"{g.get('n_per_type_train', '–')}, val {g.get('n_per_type_val', '–')}"),
        ("PCA components", _used(feat.get("n_components", "–"),
                                 (run.json("features/pca.json") or {}).get("n_components"))),
        ("classifier", f"XGBoost, {_rounds(clf, run.json('classifier/meta.json') or {})}, max "
         f"depth {clf.get('max_depth', '–')}, learning rate {clf.get('learning_rate', '–')}"),
    ]
    parts = [_table(None, [(k, str(v)) for k, v in rows]) if cfg
             else _missing("manifest.json config", "config.toml")]
    env = manifest.get("environment") or {}
    if env:
        parts.append("<h3>Versions</h3>" + _table(["package", "version"], list(env.items())))
    unfinished = [n for n, s in (manifest.get("stages") or {}).items()
                  if s.get("status") != "done"]
    if unfinished:
        parts.append(_note("Stages not finished: " + ", ".join(unfinished)
                           + ". Later sections may be missing."))
    return "".join(parts)


def _sec_data(run: _Run) -> str:
    qc = run.json("data/qc.json")
    steps = pd.DataFrame(qc["steps"]) if qc and qc.get("steps") else run.csv("data/qc_steps.csv")
    parts = []
    if steps is None or steps.empty:
        parts.append(_missing("data/qc.json", "data/qc_steps.csv"))
    else:
        cols = ["step", "cells_removed", "genes_removed", "cells_left", "genes_left"]
        steps = steps[[c for c in cols if c in steps]]
        parts.append("<h3>QC steps</h3>"
                     + _table([c.replace("_", " ") for c in steps.columns],
                              steps.itertuples(index=False)))
        if {"step", "cells_removed", "genes_removed"} <= set(steps):
            uri = figures.qc_removed(steps)
            parts += [_left_out(f"the panel of {what} removed (no QC step removed {what})")
                      for what in ("cells", "genes") if not (steps[f"{what}_removed"] > 0).any()]
            if uri is not None:
                parts.append(_img(uri, "cells and genes removed per QC step"))
    if qc is None:
        return "".join(parts)
    if qc.get("n_cells") is not None:
        parts.append(f"<p>After QC: {_e(_fmt(qc.get('n_cells')))} cells, "
                     f"{_e(_fmt(qc.get('n_genes')))} genes"
                     f"{'' if qc.get('has_counts', True) else ' (normalised values only)'}.</p>")
    if qc.get("dropped_types"):
        parts.append(_note("Types dropped by QC: " + ", ".join(map(str, qc["dropped_types"]))))
    before, after = qc.get("cells_per_type_before") or {}, qc.get("cells_per_type_after") or {}
    if before or after:
        groups = run.json("data/groups.json") or {}
        split = _split_counts(run)
        types = sorted(set(before) | set(after), key=lambda t: (-before.get(t, 0), t))
        header = ["type", *(["group"] if groups else []), "before QC", "after QC", "removed",
                  *(["train", "val", "test"] if split is not None else [])]
        rows = []
        for t in types:
            row = [t, *([groups.get(t, "–")] if groups else []), before.get(t, 0),
                   after.get(t, 0), before.get(t, 0) - after.get(t, 0)]
            if split is not None:
                row += [int(split.get((t, s), 0)) for s in ("train", "val", "test")]
            rows.append(row)
        parts.append("<h3>Cells per type</h3>" + _table(header, rows))
        parts.append(_img(figures.cells_per_type(before, after), "cells per type before and after QC"))
    return "".join(parts)


def _split_counts(run: _Run) -> pd.Series | None:
    cells = run.csv("data/cells.csv", text=(0, 1), index_col=0)
    if cells is None or "cellsynth_split" not in cells or cells.shape[1] < 2:
        return None
    label = cells.columns[0]
    return cells.groupby([cells[label].astype(str), "cellsynth_split"]).size()


def _sec_pca(run: _Run) -> str:
    pca = run.json("features/pca.json")
    ratio = (pca or {}).get("explained_variance_ratio")
    if not ratio:
        return _missing("features/pca.json")
    cum = pd.Series(ratio).cumsum()
    marks = [f"{int((cum < f).sum()) + 1} for {f:.0%}" for f in (0.5, 0.8, 0.9)
             if cum.iloc[-1] >= f]
    text = (f"<p>{len(ratio)} components (fitted on a class-balanced sample of the training "
            f"cells) explain {_e(f'{cum.iloc[-1]:.1%}')} of the variance"
            + (f"; components needed: {_e(', '.join(marks))}" if marks else "") + ".</p>")
    return text + _img(figures.pca_variance(ratio), "PCA explained variance")


def _results_table(summary: dict, level: str) -> str:
    header = ["Experiment", "Training set", "Test set", "Precision (macro)", "Recall (macro)",
              "F1 (macro)", "Precision (micro)", "Recall (micro)", "F1 (micro)", "cells"]
    keys = ["precision_macro", "recall_macro", "f1_macro", "precision_micro", "recall_micro",
            "f1_micro", "n"]
    rows = [[f"({k})", *_EXPERIMENTS[k], *(summary[k][level].get(c) for c in keys)]
            for k in _EXPERIMENTS if k in summary and level in summary[k]]
    note = small_sample_note({f"({k})": summary[k][level] for k in _EXPERIMENTS
                              if k in summary and level in summary[k]})
    return _table(header, rows) + (f"<p><b>{_e(note)}</b></p>" if note else "")


def _sec_classifier(run: _Run) -> str:
    summary = run.json("metrics/summary.json")
    if not summary:
        return _missing("metrics/summary.json")
    groups = run.json("data/groups.json")
    note = one_group_note(groups, (run.json("data/qc.json") or {}).get("cells_per_type_after")
                          or ())
    coarse = ("<p>A prediction inside the right coarse group counts as correct."
              + (f" {_e(note)}" if note else "") + "</p>" + _results_table(summary, "coarse")
              if merges_types(groups) else _left_out(_NO_GROUPS))
    return ("<p>(a) trained on real training cells, tested on real test cells; (b) that "
            "classifier on generated cells, scored against the intended type; (c) trained on "
            "generated cells, tested on the real test cells.</p>"
            "<h3>Fine cell types</h3>" + _results_table(summary, "fine")
            + "<h3>Coarse groups</h3>" + coarse)


#: (file prefix, legend name) of the three experiments' per-class scores and confusions
_SCORED = (("a_real_real", "(a) real-trained, on real test cells"),
           ("b_real_synthetic", "(b) real-trained, on generated cells"),
           ("c_synthetic_real", "(c) synthetic-trained, on real test cells"))


def _sec_per_class(run: _Run) -> str:
    series, sizes, absent = {}, {}, []
    for key, name in _SCORED:
        rel = f"metrics/{key}_fine_per_class.csv"
        df = run.csv(rel, text=("label",))
        if df is None or not {"label", "f1"} <= set(df):
            absent.append(rel)
            continue
        series[name] = df.set_index(df["label"].astype(str))["f1"]
        if key == "a_real_real" and "support" in df:
            sizes = {str(t): int(n) for t, n in zip(df["label"], df["support"], strict=True)}
    if not series:
        return _missing(*absent)
    parts = [_missing(*absent)] if absent else []
    parts.append("<p>F1 per type: " + _e("; ".join(series)) + ". Beside each type, its real "
                 "test cells (the cells (a) and (c) are scored on).</p>")
    parts.append(_img(figures.f1_bars(series, sizes), "per-class F1"))
    return "".join(parts)


def _sec_confusion(run: _Run) -> str:
    parts = ["<p>Rows are the true type (its cells in brackets), columns the prediction; each "
             "row is divided by the true type's cells (row-normalised).</p>"]
    has_groups = merges_types(run.json("data/groups.json"))
    for level in ("fine", "coarse"):
        parts.append(f"<h3>{_e(level.capitalize())} level</h3>")
        if level == "coarse" and not has_groups:
            parts.append(_left_out(_NO_GROUPS))
            continue
        mats = {}
        for key, name in _SCORED:
            df = run.csv(f"metrics/{key}_{level}_confusion.csv", text=(0,),
                         index_col=0)
            if df is not None and not df.empty:
                mats[name] = df
        parts.append(f"<p>{_e('; '.join(mats))}.</p>"
                     + _img(figures.confusion_heatmaps(mats), f"{level} confusion matrices")
                     if mats else _missing(f"metrics/a_real_real_{level}_confusion.csv"))
    return "".join(parts)


def _sec_umap(run: _Run) -> str:
    df = run.csv("features/umap.csv", text=("label",))
    if df is None or not {"origin", "label", "x", "y"} <= set(df):
        return _missing("features/umap.csv")
    n = df["origin"].astype(str).value_counts()
    # the cells drawn per type come from the run's seed, as every other draw of the run
    seed = run.config().get("seed", 0)
    seed = derive_seed(int(seed) if is_whole(seed) and seed >= 0 else 0, "report-umap")
    return (f"<p>{_e(_fmt(int(n.get('real', 0))))} real test and "
            f"{_e(_fmt(int(n.get('synthetic', 0))))} generated cells embedded together. Each "
            "type is drawn with as many generated as real cells (the smaller number of the "
            "two; the legend gives them), so no side swamps the other; a type only one side "
            "holds shows that side alone.</p>"
            + _img(figures.umap_panels(df, seed), "UMAP of real and generated cells"))


def _sec_training(run: _Run) -> str:
    curves: dict[str, dict] = {}
    best: dict[str, int | None] = {}
    hist = run.json("generator/history.json") or {}
    losses = hist.get("train_loss") if isinstance(hist, dict) else None
    gen = hist if isinstance(losses, list) and len(losses) > 1 else None
    for rel, name in (("classifier/meta.json", "classifier (real)"),
                      ("classifier_synthetic/meta.json", "classifier (synthetic)")):
        meta = run.json(rel) or {}
        ev = meta.get("evals_result") or {}
        c = {f"{split} {metric}": vals for split, ms in ev.items() if isinstance(ms, dict)
             for metric, vals in ms.items() if isinstance(vals, list) and vals}
        if c:
            curves[name] = c
            best[name] = meta.get("best_iteration")
    notes = []
    if gen is None:
        notes.append(_note("No generator loss per epoch (generator/history.json missing, or "
                           "this generator is not trained by epochs)."))
    else:
        chose = ("the two-sample AUC of generated against validation cells (right axis)"
                 if hist.get("select") == "fidelity" else "the validation loss")
        notes.append(f"<p>Generator: the kept epoch (dashed) is the one with the best "
                     f"{_e(chose)}. Classifiers: the boosting round with the best validation "
                     "loss.</p>")
    if gen is None and not curves:
        return "".join(notes) + _missing("classifier/meta.json evals_result")
    return "".join(notes) + _img(figures.training_curves(gen, curves, best),
                                 "training loss curves")


def _explained(meta: dict) -> str:
    """Which cells SHAP explained, as the report says it."""
    if meta.get("split") == "training":
        return "training cells: the type has no test cell, so these are cells it learned from"
    return f"{meta['split']} cells" if meta.get("split") else "cells"


def _sec_shap(run: _Run) -> str:
    meta = run.json("explain/shap.json") or {}
    genes = run.csv("explain/shap_genes.csv")
    parts = []
    if meta.get("cell_type"):
        parts.append(f"<p>Why the real-trained classifier predicts <b>{_e(meta['cell_type'])}</b>"
                     f" (mean over {_e(meta.get('n_cells', '?'))} {_e(_explained(meta))}): "
                     "SHAP values of the PCs, "
                     "carried to genes through the PCA loadings; positive genes push cells "
                     "towards the type.</p>")
    if genes is None:
        parts.append(_missing("explain/shap_genes.csv"))
    else:
        cols = [c for c in ("gene", "score", "abs_score", "magnitude") if c in genes]
        parts.append(_table(cols, genes[cols].itertuples(index=False)))
    plot = Path(str(meta.get("plot", ""))).name
    pngs = [(run.root / "explain") / plot] if plot else []
    pngs += sorted((run.root / "explain").glob("shap_*.png")) if (run.root / "explain").is_dir() else []
    png = next((p for p in pngs if p.is_file()), None)
    parts.append(_img(figures.png_data_uri(png.read_bytes()), "SHAP plot") if png
                 else _missing("explain/shap_<type>.png"))
    return "".join(parts)


def _sec_stages(run: _Run) -> str:
    stages = (run.json("manifest.json") or {}).get("stages") or {}
    if not stages:
        return _missing("manifest.json stages")
    rows = []
    for name, s in stages.items():
        extra = {k: v for k, v in s.items()
                 if k not in ("status", "seconds", "peak_rss_mb", "config_hash")}
        rows.append([name, s.get("status", "–"), s.get("seconds"), s.get("peak_rss_mb"),
                     ", ".join(f"{k} {v}" for k, v in extra.items())])
    total = sum(float(s.get("seconds") or 0) for s in stages.values())
    peak = max((float(s.get("peak_rss_mb") or 0) for s in stages.values()), default=0)
    return (_table(["stage", "status", "seconds", "peak RSS (MB)", "details"], rows, (0, 0, 1, 0))
            + f"<p>Total {_e(f'{total:.1f}')} s; peak resident memory {_e(f'{peak:.0f}')} MB.</p>"
            + _img(figures.stage_bars(stages), "stage times"))


#: (anchor id, heading, renderer) of every section, in page order
_SECTIONS: list[tuple[str, str, Callable[[_Run], str]]] = [
    ("verdict", "Are the generated cells realistic?", _sec_verdict),
    ("run", "Run", _sec_run),
    ("data", "Data and quality control", _sec_data),
    ("pca", "PCA explained variance", _sec_pca),
    ("classifier", "Classifier results", _sec_classifier),
    ("per-class", "Per-class F1: real-trained vs synthetic-trained", _sec_per_class),
    ("confusion", "Confusion matrices", _sec_confusion),
    ("umap", "UMAP of real and generated cells", _sec_umap),
    ("fidelity", "Fidelity", _sec_fidelity),
    ("design", "Covariates: per combination and condition effects", _sec_design),
    ("training", "Training curves", _sec_training),
    ("shap", "SHAP: top genes", _sec_shap),
    ("stages", "Stage times and peak memory", _sec_stages),
]
#: (anchor id, heading) of every section, in page order
SECTIONS: list[tuple[str, str]] = [(sid, title) for sid, title, _ in _SECTIONS]


def render_report(run_dir: str | Path) -> str:
    """The report page of ``run_dir`` as one HTML string."""
    run = _Run(Path(run_dir))
    body = []
    for sid, title, render in _SECTIONS:
        try:
            with literal_text():  # a '$' in a type's name is no mathtext on any figure
                content = render(run)
        except Exception as exc:  # a malformed file costs one section, never the report
            logger.warning("report: section %r failed: %s: %s", title, type(exc).__name__, exc)
            content = _note(f"Could not render this section: {type(exc).__name__}: {exc}")
        body.append(f'<section id="{sid}"><h2>{_e(title)}</h2>{content}</section>')
    nav = " ".join(f'<a href="#{sid}">{_e(title)}</a>' for sid, title in SECTIONS)
    now = _dt.datetime.now().isoformat(timespec="seconds")
    name = run.root.resolve().name
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>cellsynth report: {_e(name)}</title><style>{_CSS}</style>"
        f"<script>{_SCRIPT}</script></head><body>"
        f"<h1>cellsynth report: {_e(name)}</h1>"
        f'<p class="muted">Written by <code>cellsynth report</code> on {_e(now)}.</p>'
        + _unfinished(run) + f"<nav>{nav}</nav>" + "".join(body) + "</body></html>\n"
    )


def _unfinished(run: _Run) -> str:
    """A note at the top when the run's stages are not all done (:func:`unfinished_text`)."""
    text = unfinished_text(run)
    return _note(text) if text else ""


def unfinished_text(run: _Run) -> str:
    """What a report of a run whose stages are not all done must say first: a run going on, or
    one stopped (a rerun after a change interrupted), whose sections would otherwise show an
    earlier run's results beside this run's settings and generator without a word ("" when
    every stage is done)."""
    from ..runtime import RunLock

    stages = (run.json("manifest.json") or {}).get("stages")
    if not isinstance(stages, dict):
        return ""
    left = {name: entry for name, entry in stages.items()
            if isinstance(entry, dict) and entry.get("status") != "done"}
    if not left:
        return ""
    named = ", ".join(f"{name} ({entry.get('status')}"
                      + (f": {entry['reason']}" if entry.get("reason") else "") + ")"
                      for name, entry in left.items())  # fmt: skip
    if RunLock(run.root).held_by_a_live_process():
        return (f"A cellsynth run is writing this directory now: stage(s) {named} not done "
                "yet, so their sections show an earlier run's results or none. Write the "
                "report again when the run has finished.")
    return (f"This run is not finished: stage(s) {named} have not run to the end since its "
            "settings or data last changed, so their sections show an earlier run's results "
            "(beside this run's settings) or none. Run the same cellsynth run again to bring "
            "them up to date.")


def write_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write the report of ``run_dir`` to ``out`` (default ``run_dir/report.html``); return it.

    Reads only the files in ``run_dir``; a missing file turns its section into a note.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CellsynthError(f"{run_dir} is not a directory; give a run directory written by "
                             "cellsynth run")
    manifest = run_dir / "manifest.json"
    if not manifest.is_file():
        hint = ""
        if (run_dir / "fidelity.json").is_file():  # cellsynth evaluate's folder
            hint = ("; it holds an evaluation (cellsynth evaluate), whose HTML page comes from "
                    "Python: cs.evaluate(real, synthetic, label_key=...).to_html(path)")
        raise CellsynthError(f"{run_dir} is not a run directory (no manifest.json); give a "
                             f"directory written by cellsynth run{hint}")
    try:
        record = json.loads(manifest.read_text())
    except (OSError, ValueError) as exc:
        raise CellsynthError(f"{manifest} cannot be read ({type(exc).__name__}: {exc}); it is "
                             "the run's record, which cellsynth run writes: rerun the run into "
                             "this directory to write it again") from None
    if not isinstance(record, dict) or not isinstance(record.get("stages"), dict):
        raise CellsynthError(f"{manifest} holds no run's stages: not a run directory written by "
                             "cellsynth run (rerun the run into it to write it again)")
    path = check_file_out(out if out is not None else run_dir / "report.html", "an HTML report",
                          report_html, suffixes=(".html", ".htm"))
    page = render_report(run_dir)
    unfinished = unfinished_text(_Run(run_dir))
    if unfinished:  # said on the console too, not only inside the page
        logger.warning("report of %s: %s", run_dir, unfinished)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, page)  # atomic: a temporary file renamed, removed on error
    logger.info("report: %s", path)
    return path
