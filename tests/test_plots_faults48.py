"""``cs.pl`` and the report's figures under misuse (session 48's sweep): figures left open by a
loop of saves, matplotlib's own tick labels drawn as raw mathtext, missing or non-finite numbers
in a result, and refusals that did not say what each side held."""

from __future__ import annotations

import matplotlib
import pandas as pd
import pytest

import cellsynth as cs

matplotlib.use("Agg")

LABEL = "cell_type"


def _history() -> dict:
    return {"train_loss": [5.0, 4.0, 3.5, 3.4], "best_epoch": 2, "val_loss": [4.5, 4.1, 3.9, 3.8]}


# -- 1: a loop of save= calls ------------------------------------------------------------------


def test_a_loop_of_saves_leaves_no_figure_open(tmp_path, recwarn):
    """cs.pl.history(h, save=f'{i}.png') in a loop on a machine without a display (Agg) left
    each figure open in pyplot: the 21st call warned 'More than 20 figures have been opened'
    and memory grew with each; a saved figure that nothing can show is closed now (as scanpy
    closes it), its axes still returned, and a figure of the caller's (ax=) stays open."""
    import matplotlib.pyplot as plt

    before = len(plt.get_fignums())
    for i in range(22):
        ax = cs.pl.history(_history(), save=tmp_path / f"h{i}.png")
    assert len(plt.get_fignums()) == before
    assert not [w for w in recwarn if "More than 20 figures" in str(w.message)]
    ax.figure.savefig(tmp_path / "again.png")  # the axes returned still save
    assert (tmp_path / "h21.png").stat().st_size and (tmp_path / "again.png").stat().st_size
    _, mine = plt.subplots()
    assert cs.pl.history(_history(), ax=mine, save=tmp_path / "mine.png") is mine
    assert plt.fignum_exists(mine.figure.number)  # the caller's figure is left to the caller
    assert cs.pl.history(_history()).has_data() and len(plt.get_fignums()) == before + 2


# -- 2: log axes' tick labels --------------------------------------------------------------------


def _tick_texts(ax) -> list[str]:
    return [t.get_text() for axis in (ax.xaxis, ax.yaxis) for minor in (False, True)
            for t in axis.get_ticklabels(minor=minor) if t.get_text()]


def test_log_axes_label_their_ticks_as_numbers_not_raw_mathtext(tmp_path, monkeypatch):
    """cs.pl.library_sizes(..., label_key=, save=) wrote '$\\mathdefault{10^{2}}$' on its
    counts axis (and, drawn in a notebook, on its first tick): literal_text, which keeps a '$'
    in a type's name as spelled, kept matplotlib's own log-axis labels as spelled too; the
    report's cells-per-type figure (log axis when sizes span over 100-fold) had the same raw
    labels. Log axes label their ticks as plain numbers now (100, 1,000)."""
    from cellsynth.options import literal_text
    from cellsynth.report import figures

    real, fake = cs.simulate(150, 40, 2, seed=0), cs.simulate(150, 40, 2, seed=1)
    ax = cs.pl.library_sizes(real, fake, label_key=LABEL, save=tmp_path / "lib.png")
    texts = _tick_texts(ax)
    assert any(t.replace(",", "").isdigit() for t in texts)
    assert not [t for t in texts if "$" in t or "mathdefault" in t]
    drawn = []
    monkeypatch.setattr(figures, "to_data_uri", lambda fig: drawn.append(fig) or "")
    with literal_text():  # as the report draws each section
        figures.cells_per_type({"a": 10_000, "b": 5}, {"a": 9_000, "b": 3})
        drawn[0].canvas.draw()
    texts = _tick_texts(drawn[0].axes[0])
    assert "1,000" in texts and not [t for t in texts if "$" in t or "mathdefault" in t]


# -- 3: numbers that are missing, infinite or text ---------------------------------------------


def _na(ax) -> int:
    return sum(t.get_text().strip() == "n/a" for t in ax.texts)


def test_missing_or_non_finite_numbers_are_marked_not_a_traceback_or_a_zero():
    """A result whose number is infinite, None or text (a hand-edited or hand-made
    fidelity.json) stopped cs.pl.privacy with matplotlib's "Axis limits cannot be NaN or Inf"
    or a TypeError, cs.pl.fidelity and cs.pl.genes with ValueError ('could not convert string
    to float'), and an infinite bar in cs.pl.fidelity spilled matplotlib RuntimeWarnings; a
    missing bar looked like a bar of 0 (the worst k-NN recall). Each missing number is now
    written "n/a" at its bar's place; per-gene text is a one-line DataError."""
    inf = float("inf")
    result = {"synthetic_vs_real": {"overall": {"c2st_auc": inf, "knn_precision": "abc",
                                                "knn_recall": 0.0},
                                    "per_type": {"A": {"c2st_auc": None, "n_real": 9},
                                                 "B": {"c2st_auc": 0.7, "n_real": 9}}},
              "real_vs_real": {"overall": {"c2st_auc": 0.5, "knn_precision": 0.8,
                                           "knn_recall": 0.9},
                               "per_type": {"A": {"c2st_auc": 0.5}, "B": {"c2st_auc": -inf}}}}
    ax = cs.pl.fidelity(result, metrics=["c2st_auc", "knn_precision", "knn_recall"])
    assert _na(ax) == 2  # the synthetic side's c2st and k-NN precision; a recall of 0 is one
    assert _na(cs.pl.per_type(result)) == 2
    attack = {"auc": inf, "threshold": None, "flagged": False}
    audit = {"attacks": {"distance": attack, "density": {**attack, "auc": None},
                         "redraw": {"auc": "abc", "threshold": 0.6}},
             "dcr": {"median_ratio": inf, "exact_share": 0.0}}
    ax = cs.pl.privacy(audit)
    assert _na(ax) == 4 and len(ax.get_yticklabels()) == 5
    genes = {"genes": {f"{side}_{s}": [0.1, "abc"] for side in ("real", "synth")
                       for s in ("mean", "zero_fraction", "variance")}}
    with pytest.raises(cs.CellsynthError, match="real_mean holds values that are not numbers"):
        cs.pl.genes(genes)
    genes["genes"] = {k: [0.1, None] for k in genes["genes"]}  # NaN in JSON: a gene without one
    assert len(cs.pl.genes(genes)) == 2


# -- 4: refusals that name what each side holds -----------------------------------------------


def test_no_shared_type_or_too_few_genes_says_what_each_side_holds(caplog):
    """cs.pl.umap and cs.pl.library_sizes with label_key said "the real and synthetic cells share
    no cell type; check the label names" of types 'A' beside 'x_A' (no names given), of a side
    with no cells or no label at all, and of labels 0 beside 0.0 alike; cs.pl.umap of cells of
    one or two genes said they "share 1 gene name(s); a UMAP needs the same genes" when both
    held the same genes, and cs.pl.library_sizes of cells without genes that they "share no
    gene name". Each now names both sides' types, the side without a label, or the gene count."""
    import numpy as np

    real, fake = cs.simulate(120, 30, 2, seed=0), cs.simulate(120, 30, 2, seed=1)
    renamed = fake.copy()
    renamed.obs[LABEL] = "x_" + renamed.obs[LABEL].astype(str)
    for plot in (cs.pl.umap, cs.pl.library_sizes):
        with pytest.raises(cs.CellsynthError, match=r"share no cell type in obs\['cell_type'\] "
                                                    r"\(real: '.*'; synthetic: 'x_"):
            plot(real, renamed, label_key=LABEL)
        for empty in (real[:0].copy(), real.copy()):
            empty.obs[LABEL] = np.nan
            with pytest.raises(cs.CellsynthError, match=r"the real data h\w+ no cell"):
                plot(empty, fake, label_key=LABEL)
    with pytest.raises(cs.CellsynthError, match="share no cell type in the label column"):
        cs.pl.umap(pd.DataFrame({"origin": ["real", "synthetic"], "label": ["0", "0.0"],
                                 "x": [0.0, 1.0], "y": [0.0, 1.0]}))
    with pytest.raises(cs.CellsynthError, match=r"hold 2 gene.*at least 3 genes"):
        cs.pl.umap(real[:, :2].copy(), fake[:, :2].copy(), label_key=LABEL)
    with pytest.raises(cs.CellsynthError, match="the real data hold no gene"):
        cs.pl.library_sizes(real[:, :0].copy(), fake[:, :0].copy())


# -- 5: cells without a count on a log axis ----------------------------------------------------


def test_library_sizes_per_type_shows_cells_without_a_count():
    """cs.pl.library_sizes(real, synthetic, label_key=) of a generator that made empty cells
    (no count) drew no synthetic box at all: its boxes sat at 0, which a log axis has no place
    for, and the figure read as real cells alone. Both sides now add 1 to each cell's counts,
    as the histogram without label_key does (log10(counts + 1))."""
    from matplotlib.colors import same_color

    from cellsynth.pl import SYNTH_COLOR

    real, fake = cs.simulate(120, 30, 2, seed=0), cs.simulate(120, 30, 2, seed=1)
    fake.X = fake.X * 0
    ax = cs.pl.library_sizes(real, fake, label_key=LABEL)
    boxes = [p for p in ax.patches if same_color(p.get_facecolor(), SYNTH_COLOR)]
    assert boxes and all((p.get_path().vertices[:, 1] >= 1).all() for p in boxes)
    assert ax.get_ylim()[0] < 1 < ax.get_ylim()[1] and "+ 1" in ax.get_ylabel()


def test_library_sizes_per_type_names_the_types_one_side_lacks(caplog):
    """cs.pl.library_sizes(..., label_key=) of a generator that missed a type drew the types
    both sides hold and said nothing of the missing one (cs.pl.umap shows it); a warning now
    names each type only one side holds."""
    real, fake = cs.simulate(120, 30, 2, seed=0), cs.simulate(120, 30, 2, seed=1)
    missed = real.obs[LABEL].value_counts().index[0]
    with caplog.at_level("WARNING", logger="cellsynth"):
        ax = cs.pl.library_sizes(real, fake[fake.obs[LABEL] != missed].copy(), label_key=LABEL)
    assert missed not in [t.get_text() for t in ax.get_xticklabels()]
    assert f"only the real cells hold have no box: '{missed}'" in caplog.text


# -- 6: results of another shape -----------------------------------------------------------------


def test_a_result_of_another_shape_is_named_not_a_traceback():
    """cs.pl.fidelity and cs.pl.per_type of a hand-made, truncated or older result stopped with
    KeyError ('overall', 'type', 'used'), TypeError or AttributeError: reports without
    'overall' or that are lists, per-type rows without a type, a type's numbers that are no
    dict, an n_cells or verdict of another shape (only the title reads them). Each is a
    one-line DataError naming the part and what to give; the title leaves out what it cannot
    read."""
    overall = {"c2st_auc": 0.6, "knn_recall": 0.8}
    good = {"synthetic_vs_real": {"overall": overall, "per_type": {"A": {"c2st_auc": 0.6}}},
            "real_vs_real": {"overall": overall, "per_type": {"A": {"c2st_auc": 0.5}}}}
    for bad, match in (({"synthetic_vs_real": {}, "real_vs_real": {}}, "no 'overall'"),
                       ({"synthetic_vs_real": {"overall": None}, "real_vs_real": {}},
                        "no 'overall'"),
                       ({"synthetic_vs_real": [], "real_vs_real": []},
                        "synthetic_vs_real is a list")):
        with pytest.raises(cs.CellsynthError, match=match):
            cs.pl.fidelity(bad)
    with pytest.raises(cs.CellsynthError, match="synthetic_vs_real is a list"):
        cs.pl.per_type({"synthetic_vs_real": [], "real_vs_real": []})
    for rows in ([{"c2st_auc": 0.5, "c2st_auc_floor": 0.5}], ["A"]):
        with pytest.raises(cs.CellsynthError, match="per_type table holds rows that are not"):
            cs.pl.per_type({**good, "per_type": rows})
    odd = {**good, "synthetic_vs_real": {**good["synthetic_vs_real"], "per_type": {"A": 5}}}
    with pytest.raises(cs.CellsynthError, match=r"synthetic_vs_real\['per_type'\] is not a dict"):
        cs.pl.per_type(odd)
    for n_cells, verdict in (({"synthetic": 5, "real": 6}, {"overall": "x"}),
                             ({"real": {"used": 1}}, "abc")):
        ax = cs.pl.fidelity({**good, "n_cells": n_cells, "verdict": verdict})
        assert ax.has_data() and ax.get_title() == ""
    ax = cs.pl.fidelity({**good, "n_cells": {"synthetic": {"used": 3}, "real": {"used": 4}},
                         "verdict": {"overall": {"verdict": "close"}}})
    assert ax.get_title() == "verdict: close (3 synthetic vs 4 real cells)"


def test_a_privacy_audit_of_another_shape_is_named_not_a_traceback():
    """cs.pl.privacy of a result whose 'privacy' was text, a list or a number stopped with
    AttributeError or TypeError ('skipped ...' read as a dict), and an audit whose dcr,
    settings or donor_attacks was no dict with AttributeError; each is a one-line DataError."""
    attacks = {"distance": {"auc": 0.5, "threshold": 0.6, "flagged": False}}
    for priv in ("skipped: no held-out cells", [], 5):
        with pytest.raises(cs.CellsynthError, match=r"privacy is a \w+, not the audit's dict"):
            cs.pl.privacy({"privacy": priv})
    for key in ("dcr", "settings", "donor_attacks"):
        with pytest.raises(cs.CellsynthError, match=f"{key} is not a dict of numbers"):
            cs.pl.privacy({"attacks": attacks, key: ["x"]})
    assert cs.pl.privacy({"attacks": attacks, "dcr": None}).has_data()


def test_show_and_save_without_a_display_says_where_the_figure_is(tmp_path, caplog):
    """cs.pl.history(h, show=True, save='h.png') on a machine without a display saved the
    figure, then told the user to "give save= a file path to keep the figure", which they had
    given; the warning now says where the figure was saved."""
    with caplog.at_level("WARNING", logger="cellsynth"):
        assert cs.pl.history(_history(), show=True, save=tmp_path / "h.png") is None
    assert (tmp_path / "h.png").stat().st_size
    assert f"it is saved in {tmp_path / 'h.png'}" in caplog.text
    assert "give save=" not in caplog.text


def test_n_a_of_a_first_or_last_row_lies_inside_the_axes():
    """The "n/a" of a missing bar in the first or last row of cs.pl.per_type, fidelity or
    privacy was drawn outside the axes, over the legend (a bar without a value widens no
    limit): the report's per-type figure showed it above the plot. The rows of missing bars
    now lie inside the axes."""
    row = {"c2st_auc": 0.6, "n_real": 9}
    result = {"synthetic_vs_real": {"overall": {"c2st_auc": None, "knn_recall": 0.8},
                                    "per_type": {"A": row, "B": row, "C": {"c2st_auc": None}}},
              "real_vs_real": {"overall": {"c2st_auc": 0.5, "knn_recall": None},
                               "per_type": {"A": {"c2st_auc": None}, "B": row, "C": row}}}
    audit = {"attacks": {"distance": {"auc": None, "threshold": 0.6}},
             "dcr": {"median_ratio": float("nan"), "exact_share": 0.0}}
    for ax in (cs.pl.per_type(result), cs.pl.privacy(audit),
               cs.pl.fidelity(result, metrics=["c2st_auc", "knn_recall"])):
        lo, hi = sorted(ax.get_ylim())
        marks = [t.get_position()[1] for t in ax.texts if t.get_text().strip() == "n/a"]
        assert len(marks) == 2 and all(lo < m < hi for m in marks), (marks, lo, hi)


# -- 7: paths given to cs.pl.history -------------------------------------------------------------


def test_history_of_a_path_that_is_no_models_curve_says_what_it_is(tmp_path):
    """cs.pl.history('run/generator/cvae') (a mistyped path) said 'run/generator is a saved
    cvae model, which keeps no history.json', of a directory that held one; a run directory
    was 'run/history.json does not exist'; a run's metrics/fidelity.json was a model that 'has
    not been trained'. Each now says what the path is and what to give."""
    import json

    run = tmp_path / "run"
    (run / "generator").mkdir(parents=True)
    (run / "metrics").mkdir()
    (run / "generator" / "config.json").write_text(json.dumps({"model": "cvae"}))
    (run / "generator" / "history.json").write_text(json.dumps(_history()))
    (run / "metrics" / "fidelity.json").write_text(json.dumps({"synthetic_vs_real": {}}))
    assert cs.pl.history(run / "generator").has_data()
    with pytest.raises(cs.CellsynthError, match=r"generator.cvae does not exist; give a model"):
        cs.pl.history(run / "generator" / "cvae")
    with pytest.raises(cs.CellsynthError, match="is a run directory: its generator's curve is in"):
        cs.pl.history(run)
    with pytest.raises(cs.CellsynthError, match=r"fidelity\.json holds no train_loss per epoch: "
                                                r"it is not a model's history\.json"):
        cs.pl.history(run / "metrics" / "fidelity.json")


def test_umap_of_a_run_directory_names_its_table(tmp_path):
    """cs.pl.umap('run') said 'the UMAP table run does not exist (or is not a file)' of a run
    directory that exists; it now names the run's features/umap.csv (or says how to get one)."""
    run = tmp_path / "run"
    (run / "features").mkdir(parents=True)
    with pytest.raises(cs.CellsynthError, match=r"is a directory; give a run's features/umap"):
        cs.pl.umap(run)
    (run / "features" / "umap.csv").write_text("origin,label,x,y\nreal,A,0,0\nsynthetic,A,1,1\n")
    with pytest.raises(cs.CellsynthError, match=r"is a directory; give its UMAP table, .*umap\.csv"):
        cs.pl.umap(run)
    assert cs.pl.umap(run / "features" / "umap.csv").has_data()


def test_per_type_of_a_metric_no_type_has_is_refused_and_the_report_keeps_its_section(
        tmp_path):
    """cs.pl.per_type(result, 'trts_f1') of an evaluation whose TRTS was skipped (one type), or
    of any metric no type had a value of, drew a figure of empty rows (now "n/a" alone); it is
    a DataError naming the metric now, and the report, whose per-type figure had no guard,
    leaves that figure out with why instead of losing its whole fidelity section."""
    import json

    from cellsynth.report.html import render_report

    row = {"c2st_auc": None, "n_real": 9, "n_synth": 9}
    result = {"synthetic_vs_real": {"overall": {"c2st_auc": 0.6}, "per_type": {"A": row}},
              "real_vs_real": {"overall": {"c2st_auc": 0.5}, "per_type": {"A": row}},
              "per_type": [{"type": "A", "c2st_auc": None, "c2st_auc_floor": None}]}
    for metric in ("c2st_auc", "trts_f1"):
        with pytest.raises(cs.CellsynthError, match=f"no type has a value of '{metric}'"):
            cs.pl.per_type(result, metric)
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "fidelity.json").write_text(json.dumps(result))
    page = render_report(tmp_path)
    fidelity = page.split('<section id="fidelity">')[1].split("</section>")[0]
    assert "Could not render" not in fidelity and "the per-type figure: no type has" in fidelity


def test_type_names_that_differ_only_by_spaces_are_refused_as_evaluate_refuses_them():
    """cs.pl.library_sizes and cs.pl.umap drew 'B cells' and 'B cells ' (a trailing space) as
    two types whose ticks and legend entries read alike, where cellsynth.evaluate refuses such
    names as one type split in two; the plots now refuse them the same way."""
    real, fake = cs.simulate(120, 30, 2, seed=0), cs.simulate(120, 30, 2, seed=1)
    first = real.obs[LABEL].astype(str).iloc[0]
    real.obs[LABEL] = real.obs[LABEL].astype(str)
    real.obs.iloc[:5, real.obs.columns.get_loc(LABEL)] = first + " "
    for plot in (cs.pl.library_sizes, cs.pl.umap):
        with pytest.raises(cs.CellsynthError, match="differ only by surrounding spaces"):
            plot(real, fake, label_key=LABEL)


def test_library_sizes_of_hundreds_of_types_draws_the_largest_and_says_so(caplog, monkeypatch):
    """cs.pl.library_sizes(..., label_key=) drew a box pair for every type, 0.6 inch each:
    1,200 types made a PNG 106,697 pixels wide. It draws the MAX_BOX_TYPES types with the most
    real cells and names how many it left out."""
    import numpy as np

    from cellsynth.pl import _library

    monkeypatch.setattr(_library, "MAX_BOX_TYPES", 3)
    real, fake = cs.simulate(400, 30, 6, seed=0), cs.simulate(400, 30, 6, seed=1)
    sizes = real.obs[LABEL].value_counts()
    with caplog.at_level("WARNING", logger="cellsynth"):
        ax = cs.pl.library_sizes(real, fake, label_key=LABEL)
    drawn = [t.get_text() for t in ax.get_xticklabels()]
    assert drawn == sorted(drawn) and len(drawn) == 3
    assert min(sizes[drawn]) >= np.sort(sizes.to_numpy())[-3]
    shared = len(set(real.obs[LABEL]) & set(fake.obs[LABEL]))
    assert shared > 3
    assert f"the 3 with the most real cells ({shared - 3} left out)" in caplog.text
    assert ax.figure.get_figwidth() == pytest.approx(6.0)  # three pairs' width, not all
