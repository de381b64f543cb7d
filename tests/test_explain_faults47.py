"""Explanations and plots under misuse (session 47's sweep): long names, the figures a plot
leaves open, odd save= paths and hand-made inputs of ``cs.pl`` and ``cellsynth.explain``."""

from __future__ import annotations

import matplotlib
import numpy as np
import pandas as pd
import pytest

import cellsynth as cs
from cellsynth.errors import ConfigError
from cellsynth.options import LABEL_CHARS

matplotlib.use("Agg")

LABEL = "cell_type"
LONG = "CD4-positive, alpha-beta memory T cell " * 6  # 234 characters


def _shap_result(cell_type: str, genes: list[str]):
    from cellsynth.explain import ShapResult

    pcs = pd.DataFrame({"component": [f"PC{i}" for i in range(1, 6)],
                        "mean_abs_shap": np.linspace(1, 0.2, 5), "mean_shap": np.linspace(1, 0.2, 5)})
    score = np.linspace(-1, 1, len(genes))
    gene_table = pd.DataFrame({"gene": genes, "score": score, "abs_score": np.abs(score),
                               "magnitude": np.abs(score)})
    return ShapResult(cell_type, pcs, gene_table, 12)


# -- 1: long type and gene names -------------------------------------------------------------


def test_library_sizes_shortens_a_long_type_name_as_the_other_plots_do():
    """cs.pl.library_sizes(..., label_key=) wrote each type's whole name under its boxes: a
    type named as in the Cell Ontology pushed the boxes into a sliver (constrained layout gave
    up); the ticks now keep at most LABEL_CHARS characters, as cs.pl.umap and per_type do."""
    real, fake = cs.simulate(120, 40, 2, seed=0), cs.simulate(120, 40, 2, seed=1)
    for a in (real, fake):
        a.obs[LABEL] = a.obs[LABEL].astype(str) + " " + LONG
    ax = cs.pl.library_sizes(real, fake, label_key=LABEL)
    ticks = [t.get_text() for t in ax.get_xticklabels()]
    assert len(ticks) == real.obs[LABEL].nunique() and all(len(t) <= LABEL_CHARS for t in ticks)


def test_shap_figure_shortens_long_names_and_keeps_genes_of_one_name_apart(tmp_path,
                                                                          monkeypatch):
    """The SHAP figure of the explain stage put a type's whole name in its title (cut at both
    edges, over the other panel's title) and whole gene names beside the bars; two genes of one
    name (or one shortened label) were drawn as one bar, the other hidden behind it."""
    from matplotlib.figure import Figure

    import cellsynth.explain.shap as shap_module

    made = []

    class Kept(Figure):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(shap_module, "Figure", Kept)
    genes = ["GENE1", "GENE1", "ENSG0001_" + "x" * 100, "GENE2"]
    shap_module.plot_shap(_shap_result(LONG, genes), tmp_path / "shap.png")
    ax_pc, ax_gene = made[0].axes
    assert len(ax_pc.get_title()) <= LABEL_CHARS + len("PCs driving ")
    ticks = [t.get_text() for t in ax_gene.get_yticklabels()]
    assert len(ticks) == 4 and all(len(t) <= LABEL_CHARS for t in ticks)
    assert len(ax_gene.patches) == 4
    assert len({p.get_y() for p in ax_gene.patches}) == 4  # four bars, four rows


# -- 2: show=True where nothing can be shown ---------------------------------------------------


def _history() -> dict:
    return {"train_loss": [5.0, 4.0, 3.5, 3.4], "best_epoch": 2, "val_loss": [4.5, 4.1, 3.9, 3.8]}


def test_show_without_a_display_says_so_and_leaves_no_figure_open(caplog):
    """show=True on a machine without a display (matplotlib's Agg) showed nothing, said nothing
    and returned None, and each call left its figure open in pyplot (a loop over types warned
    'More than 20 figures' and grew in memory); now it says how to keep the figure and closes it."""
    import matplotlib.pyplot as plt

    before = len(plt.get_fignums())
    with caplog.at_level("WARNING", logger="cellsynth"):
        for _ in range(3):
            assert cs.pl.history(_history(), show=True) is None
    assert len(plt.get_fignums()) == before
    assert "cannot show figures" in caplog.text and "save=" in caplog.text
    ax = cs.pl.history(_history())  # without show=: the axes, the figure open
    assert len(plt.get_fignums()) == before + 1 and ax.has_data()


# -- 3: a save= matplotlib cannot write, and a plot that fails half-drawn ---------------------


def test_pgf_without_tex_is_refused_before_the_figure_is_drawn(tmp_path, monkeypatch):
    """save='fig.pgf' on a machine without TeX drew the whole figure, then stopped with
    matplotlib's RuntimeError ('xelatex' not found) and left the figure open; now a one-line
    error before any work names the other formats."""
    import shutil

    import matplotlib.pyplot as plt

    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None)
    before = len(plt.get_fignums())
    with pytest.raises(cs.CellsynthError, match=r"\.pgf.*not installed.*\.pdf or \.svg"):
        cs.pl.history(_history(), save=tmp_path / "fig.pgf")
    assert len(plt.get_fignums()) == before and not (tmp_path / "fig.pgf").exists()


def test_a_failed_write_of_the_figure_is_one_line_and_closes_it(tmp_path, monkeypatch):
    """When matplotlib failed to write a checked save= path (a disk that filled, an image over
    2^16 pixels a side), its OSError or ValueError came out as a traceback and the figure stayed
    open; any failure inside a plot (not only cellsynth's refusals) left its figure open too."""
    import errno

    import matplotlib.pyplot as plt
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    before = len(plt.get_fignums())
    with monkeypatch.context() as m:
        m.setattr(Figure, "savefig", full)
        with pytest.raises(cs.CellsynthError, match=r"could not write.*No space left"):
            cs.pl.history(_history(), save=tmp_path / "fig.png")
    assert len(plt.get_fignums()) == before

    def broken(*args, **kwargs):
        raise ValueError("a drawing failure")

    with monkeypatch.context() as m:
        m.setattr(Axes, "set_xlabel", broken)
        with pytest.raises(ValueError, match="drawing failure"):
            cs.pl.history(_history())
    assert len(plt.get_fignums()) == before


# -- 4: a path no file system takes ------------------------------------------------------------


def test_a_path_too_long_or_with_a_null_character_is_one_line(tmp_path, capsys):
    """save= (and every path a user gives, --out of the command line too) with a name over the
    file system's 255 bytes stopped with pathlib's OSError 'File name too long' as a traceback,
    and one holding a null character drew the whole figure, then failed in matplotlib with
    'embedded null byte'; both are now a one-line ConfigError naming the option."""
    import matplotlib.pyplot as plt

    from cellsynth.cli import main

    before = len(plt.get_fignums())
    long = tmp_path / ("a" * 300 + ".png")
    with pytest.raises(ConfigError, match=r"save= .*longer than this file system allows"):
        cs.pl.history(_history(), save=long)
    with pytest.raises(ConfigError, match=r"save= .*null character"):
        cs.pl.history(_history(), save=str(tmp_path / "a\x00b.png"))
    assert len(plt.get_fignums()) == before
    data = tmp_path / "cells.h5ad"
    cs.simulate(60, 40, 2, seed=0).write_h5ad(data)
    assert main(["run", str(data), "--label-key", LABEL, "--out", str(tmp_path / ("r" * 300)),
                 "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "--out" in err and "longer than this file system allows" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


# -- 5: a hand-made or edited training history -------------------------------------------------


@pytest.mark.parametrize(("history", "match"), [
    ({"train_loss": ["a", "b"]}, "train_loss holds 'a'"),
    ({"train_loss": 3.0}, "train_loss must be a list"),
    ({"train_loss": [[1, 2], [3, 4]]}, r"train_loss holds \[1, 2\]"),
    ({"train_loss": [1.0, 2.0], "val_loss": "ab"}, "val_loss must be a list"),
    ({"train_loss": [1.0, 2.0], "val_loss": [1.0, 2.0, 3.0]}, "3 val_loss values for 2 epochs"),
    ({"train_loss": [float("nan")] * 3}, "NaN or infinite"),
    ({"train_loss": [1.0, 2.0], "best_epoch": 10}, "best_epoch 10 is not an epoch"),
    ({"train_loss": [1.0, 2.0], "best_epoch": "x"}, "best_epoch 'x' is not an epoch"),
])
def test_history_refuses_a_curve_that_is_not_one_by_name(history, match):
    """cs.pl.history of a history dict (or an edited history.json) whose curve was not one
    number per epoch stopped in numpy or matplotlib (ValueError, TypeError, IndexError); one
    whose every loss was NaN drew an empty figure and a best_epoch off the curve stretched the
    axis to it without a word; each is now refused by name."""
    import matplotlib.pyplot as plt

    before = len(plt.get_fignums())
    with pytest.raises(cs.CellsynthError, match=match):
        cs.pl.history(history)
    assert len(plt.get_fignums()) == before


def test_history_json_of_another_kind_and_a_fit_that_kept_no_epoch(tmp_path):
    """A history.json holding a JSON list stopped with AttributeError ('list' has no 'get');
    a fit whose validation never improved (best_epoch -1) still draws, without a kept epoch."""
    (tmp_path / "history.json").write_text("[1, 2, 3]")
    with pytest.raises(cs.CellsynthError, match="JSON list, not a history"):
        cs.pl.history(tmp_path)
    ax = cs.pl.history({"train_loss": [3.0, 2.0], "val_loss": [None, None], "best_epoch": -1})
    assert ax.has_data() and not any("kept epoch" in t.get_text()
                                     for t in ax.get_legend().get_texts())


# -- 6: the explain API's inputs ---------------------------------------------------------------


@pytest.fixture(scope="module")
def small_classifier():
    from cellsynth.classify import train_classifier
    from cellsynth.config import ClassifierConfig

    rng = np.random.default_rng(0)
    y = np.array(["t0", "t1", "t2"])[rng.integers(0, 3, 240)]
    X = rng.normal(size=(240, 5)).astype(np.float32)
    for i in range(3):
        X[y == f"t{i}", i] += 3.0
    cfg = ClassifierConfig(n_estimators=10, max_depth=3, device="cpu", n_jobs=1)
    clf = train_classifier(X[:160], y[:160], X[160:], y[160:], cfg, seed=0)
    return clf, X[y == "t0"], rng.normal(size=(5, 8)), [f"g{i}" for i in range(8)]


def _with(array, row, col, value):
    out = np.array(array, copy=True)
    out[row, col] = value
    return out


@pytest.mark.parametrize(("change", "match"), [
    ({"gene_names": ["g"] * 8}, "duplicate gene names"),
    ({"gene_names": [""] * 7 + ["g7"]}, "empty or only spaces"),
    ({"gene_names": [None] * 8}, "empty or only spaces"),
    ({"gene_names": "abcdefgh"}, "one name per gene column"),
    ({"X": "nan"}, r"NaN or infinite values \(1 of"),
    ({"X": "inf"}, r"NaN or infinite values \(1 of"),
    ({"X": np.array([["a"] * 5])}, "X must hold numbers"),
    ({"components": "nan"}, "components hold 1 NaN"),
    ({"seed": -1}, "seed must be a whole number"),
])
def test_explain_type_refuses_inputs_that_gave_a_silent_or_raw_answer(small_classifier, change,
                                                                     match):
    """explain_type took duplicate, blank or missing gene names (a gene table of rows no one
    could tell apart, 'None' as a gene) and one string as eight names; NaN features were read as
    missing by XGBoost and explained silently, an infinite one stopped it with its C++ stack
    trace; NaN loadings gave NaN gene scores; text features and a negative seed stopped in
    numpy. Each is now a one-line DataError naming the input."""
    from cellsynth.explain import explain_type

    clf, X, components, genes = small_classifier
    args = {"X": X, "components": components, "gene_names": genes, "seed": 0}
    for key, value in change.items():
        if isinstance(value, str) and value in ("nan", "inf") and key != "gene_names":
            value = _with(args[key], 0, 0, float(value))
        args[key] = value
    with pytest.raises(cs.CellsynthError, match=match):
        explain_type(clf, args["X"], "t0", args["components"], args["gene_names"],
                     seed=args["seed"])


def test_shap_contributions_refuses_an_infinite_feature(small_classifier):
    from cellsynth.explain import shap_contributions

    clf, X, _, _ = small_classifier
    with pytest.raises(cs.CellsynthError, match="NaN or infinite"):
        shap_contributions(clf, _with(X, 2, 1, np.inf), "t0")
    assert shap_contributions(clf, X[:3], "t0").shape == (3, X.shape[1] + 1)


# -- 7: where the explain API writes its figure and files --------------------------------------


def test_plot_shap_and_write_shap_write_where_they_are_told_or_refuse(tmp_path, monkeypatch):
    """plot_shap(result, 'shap') wrote 'shap.png' and plot_shap(result, '.') a hidden '.png'
    (files in places not asked for), 'shap.h5ad' stopped in matplotlib with ValueError, any
    existing file (a user's own figure) was overwritten, and '~/x' made a folder named '~';
    write_shap into a file stopped with FileExistsError/NotADirectoryError. The figure's path
    is now checked as cs.pl's save= is, and the directory as every output directory is."""
    import os

    from cellsynth.explain import plot_shap, write_shap

    result = _shap_result("B cells", ["GENE1", "GENE2"])
    monkeypatch.chdir(tmp_path)
    for bad, match in (("shap", "saved as one of"), (".", "is a directory"),
                       ("shap.h5ad", "saved as one of")):
        with pytest.raises(cs.CellsynthError, match=match):
            plot_shap(result, bad)
    (tmp_path / "mine.png").write_bytes(b"my own figure")
    with pytest.raises(cs.CellsynthError, match="not a figure that cellsynth wrote"):
        plot_shap(result, "mine.png")
    assert (tmp_path / "mine.png").read_bytes() == b"my own figure"
    assert sorted(os.listdir(tmp_path)) == ["mine.png"]
    plot_shap(result, "shap.png")
    plot_shap(result, "shap.png")  # its own figure: replaced
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    plot_shap(result, "~/figs/shap.pdf")
    assert (home / "figs" / "shap.pdf").is_file() and not (tmp_path / "~").exists()
    for bad in ("mine.png", "mine.png/sub"):
        with pytest.raises(cs.CellsynthError, match="directory= "):
            write_shap(result, bad)
    write_shap(result, "~/explain")
    write_shap(result, "~/explain")  # a rerun replaces its own files, the figure too
    assert (home / "explain" / "shap.json").is_file()


# -- 8: a UMAP table with holes ----------------------------------------------------------------


def _umap_table() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame({"origin": ["real"] * 30 + ["synthetic"] * 30, "label": ["A", "B"] * 30,
                         "x": rng.normal(size=60), "y": rng.normal(size=60)})


def test_umap_table_with_text_nan_or_missing_labels(caplog):
    """cs.pl.umap of a table whose x held text drew the cells on category positions, one whose
    coordinates were all NaN drew an empty panel, both silently; rows without a label were drawn
    as a cell type called 'nan' (the AnnData path leaves such cells out with a warning)."""
    table = _umap_table()
    with pytest.raises(cs.CellsynthError, match="column 'x' holds 'a', not a number"):
        cs.pl.umap(table.assign(x="a"))
    with pytest.raises(cs.CellsynthError, match="none of the UMAP table's 60 rows"):
        cs.pl.umap(table.assign(y=np.nan))
    with pytest.raises(cs.CellsynthError, match="has no rows"):
        cs.pl.umap(table.iloc[:0])
    holes = table.astype({"label": object})
    holes.loc[:5, "label"] = np.nan
    holes.loc[10, "x"] = np.inf
    with caplog.at_level("WARNING", logger="cellsynth"):
        ax = cs.pl.umap(holes, color="label")
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert len(legend) == 2 and not any(t.startswith("nan") for t in legend)
    assert "7 of 60 rows have no label or no finite x, y" in caplog.text


# -- 9: results with nothing to draw ----------------------------------------------------------


@pytest.fixture(scope="module")
def evaluation_dict():
    real, fake = cs.simulate(240, 60, 2, seed=0), cs.simulate(120, 60, 2, seed=1)
    result = cs.evaluate(real[:120].copy(), fake, label_key=LABEL, max_cells=60,
                         heldout=real[120:].copy())
    return result.to_dict()


def test_results_with_nothing_to_draw_are_refused_not_drawn_empty(evaluation_dict):
    """cs.pl.fidelity of a result whose every asked metric had no value (too few cells), and
    cs.pl.privacy of an audit without attacks or distances, drew empty axes without a word;
    cs.pl.genes of per-gene statistics lacking one, of unequal lengths or of no gene stopped
    with KeyError or matplotlib's ValueError, or drew empty panels."""
    import copy

    import matplotlib.pyplot as plt

    before = len(plt.get_fignums())
    empty = copy.deepcopy(evaluation_dict)
    for side in ("synthetic_vs_real", "real_vs_real"):
        for block in ("overall", "per_type_mean"):
            for key, value in empty[side].get(block, {}).items():
                if isinstance(value, dict):
                    value.update(dict.fromkeys(value))
                else:
                    empty[side][block][key] = None
    with pytest.raises(cs.CellsynthError, match="no value of c2st_auc"):
        cs.pl.fidelity(empty)
    assert cs.pl.fidelity(evaluation_dict).has_data()
    bare = copy.deepcopy(evaluation_dict)
    bare["privacy"].update(attacks={}, dcr={})
    bare["privacy"].pop("donor_attacks", None)
    with pytest.raises(cs.CellsynthError, match="no attack AUC"):
        cs.pl.privacy(bare)
    stats = {f"{side}_{s}": [1.0, 2.0] for side in ("real", "synth")
             for s in ("mean", "zero_fraction", "variance")}
    for block, match in (({k: v for k, v in stats.items() if k != "synth_variance"},
                          r"lack \['synth_variance'\]"),
                         ({**stats, "real_variance": [1.0]}, "real side differ in length"),
                         ({k: [] for k in stats}, "no gene on the real side")):
        with pytest.raises(cs.CellsynthError, match=match):
            cs.pl.genes({"genes": block})
    assert len(plt.get_fignums()) == before + 1
    assert all(a.has_data() for a in cs.pl.genes({"genes": stats}))


# -- 10: axes of another kind, figure or subfigure ---------------------------------------------


def test_axes_polar_in_two_figures_or_in_a_subfigure(tmp_path):
    """ax= a polar (or 3-d) Axes drew every bar and point in polar coordinates silently
    (cs.pl.history stopped with matplotlib's ValueError); panels in two figures with save=
    saved the first figure alone, the second panel lost; an Axes of a SubFigure stopped save=
    with AttributeError ('SubFigure' has no 'savefig') and show=True with a TypeError."""
    import matplotlib.pyplot as plt
    from matplotlib.figure import Figure

    polar = Figure().add_subplot(projection="polar")
    with pytest.raises(cs.CellsynthError, match=r"ordinary .* got polar ones"):
        cs.pl.history(_history(), ax=polar)
    left, right = Figure().subplots(), Figure().subplots()
    stats = {f"{side}_{s}": [1.0, 2.0] for side in ("real", "synth")
             for s in ("mean", "zero_fraction", "variance")}
    with pytest.raises(cs.CellsynthError, match="lie in 2 figures"):
        cs.pl.genes({"genes": stats}, ax=[left, right], save=tmp_path / "genes.png")
    assert not (tmp_path / "genes.png").exists()
    fig = plt.figure()
    inner = fig.subfigures(1, 2)[0].subplots()
    assert cs.pl.history(_history(), ax=inner, save=tmp_path / "sub.png") is inner
    assert (tmp_path / "sub.png").read_bytes()[:4] == b"\x89PNG"
    assert cs.pl.history(_history(), ax=inner, show=True) is None
    assert plt.fignum_exists(fig.number)  # the caller's figure stays open


# -- 11: hundreds of cell types in the UMAP ----------------------------------------------------


def test_umap_of_many_types_keeps_its_panels_readable():
    """With 100 types the UMAP's legend of four columns squeezed both panels into slivers, and
    with 130 (E-ANND-5 has 126) it covered the other panel and its legend (constrained layout
    gave up: 'axes sizes collapsed to zero'); over 50 types each type is now named on its
    cells and the panels keep their width."""
    import warnings

    from matplotlib.figure import Figure

    n = 130
    rng = np.random.default_rng(0)
    labels = [f"type {i} CD4-positive, alpha-beta memory T cell" for i in range(n)]
    table = pd.DataFrame({"origin": ["real", "synthetic"] * (n * 5),
                          "label": [labels[i // 2 % n] for i in range(n * 10)],
                          "x": rng.normal(size=n * 10), "y": rng.normal(size=n * 10)})
    fig = Figure(figsize=(15, 6.5), layout="constrained")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the layout's 'collapsed to zero' warning
        by_type, by_origin = cs.pl.umap(table, color=["label", "origin"],
                                        ax=list(fig.subplots(1, 2)))
        fig.canvas.draw()
    assert by_type.get_legend() is None and len(by_type.texts) == n
    assert by_type.get_position().width > 0.3 and by_origin.get_position().width > 0.3
    few = cs.pl.umap(table[table["label"].isin(labels[:5])], color="label")
    assert len(few.get_legend().get_texts()) == 5 and not few.texts


# -- 12: an argument of the wrong kind ---------------------------------------------------------


def test_plot_arguments_of_the_wrong_kind_are_named():
    """label_key=['cell_type'] (cs.pl.library_sizes, cs.pl.umap) stopped pandas with
    'unhashable type: list', color=None (umap) and metrics=None (fidelity) with 'NoneType is
    not iterable'; each is now a one-line error naming the argument."""
    real, fake = cs.simulate(80, 40, 2, seed=0), cs.simulate(80, 40, 2, seed=1)
    with pytest.raises(cs.CellsynthError, match="label_key takes the name of one obs column"):
        cs.pl.library_sizes(real, fake, label_key=[LABEL])
    with pytest.raises(cs.CellsynthError, match="label_key takes the name of one obs column"):
        cs.pl.umap(real, fake, label_key=[LABEL])
    with pytest.raises(cs.CellsynthError, match="color takes 'origin'"):
        cs.pl.umap(_umap_table(), color=None)
    with pytest.raises(cs.CellsynthError, match="metrics takes metric names"):
        cs.pl.fidelity({"synthetic_vs_real": {"overall": {}}, "real_vs_real": {"overall": {}}},
                       metrics=None)


# -- 13: a type with a few test cells ----------------------------------------------------------


def test_explain_stage_says_when_the_type_has_a_few_test_cells(small_classifier, tmp_path,
                                                               caplog):
    """The explain stage explained a type with one or two test cells as it explained one of
    hundreds, without a word: the mean of SHAP values over a cell or two read as the type's."""
    from contextlib import contextmanager
    from types import SimpleNamespace

    from cellsynth.config import RunConfig
    from cellsynth.pipeline.data import Split
    from cellsynth.pipeline.evaluation import stage_explain

    clf, X, components, genes = small_classifier

    @contextmanager
    def stage(name):
        yield {}

    cfg = RunConfig()
    cfg.explain.cell_type = "t0"
    ctx = SimpleNamespace(cfg=cfg, runs=lambda name: True, stage=stage, seed=lambda name: 0,
                          path=lambda *parts: tmp_path.joinpath(*parts))
    pca = SimpleNamespace(components=components, genes=genes)  # what the stage reads of it
    train = Split(X, np.array(["t0"] * len(X)))
    for n_test, said in ((2, True), (len(X), False)):
        caplog.clear()
        test = Split(X[:n_test], np.array(["t0"] * n_test))
        with caplog.at_level("WARNING", logger="cellsynth"):
            stage_explain(ctx, clf, pca, {"train": train, "test": test})
        assert ("has 2 test cell(s)" in caplog.text) is said
        assert (tmp_path / "explain" / "shap.json").is_file()


# -- 14: a misspelt type among many ------------------------------------------------------------


def test_a_misspelt_explained_type_is_named_with_its_near_miss(small_classifier):
    """explain_type(..., 'T0') listed every type the classifier knows (126 on E-ANND-5, one
    line of thousands of characters) and the run's explain.cell_type check the first 20 in
    sorted order, where the intended type may not be: neither named the near miss, as every
    other unknown name in cellsynth does."""
    from types import SimpleNamespace

    from cellsynth.explain import explain_type
    from cellsynth.pipeline.data import check_before_training

    clf, X, components, genes = small_classifier
    with pytest.raises(cs.CellsynthError, match=r"'T0' is not one .*did you mean 't0'\?"):
        explain_type(clf, X, "T0", components, genes)
    types = [f"type_{i:03d}" for i in range(126)] + ["Zeta cells"]
    obs = pd.DataFrame({LABEL: types * 2, "cellsynth_split": ["train"] * 127 + ["test"] * 127})
    cells = SimpleNamespace(has_counts=True, obs=obs, n_obs=len(obs),
                            labels=lambda: obs[LABEL].to_numpy())
    cfg = cs.RunConfig()
    cfg.generator.model = "nb"
    cfg.explain.cell_type = "zeta cells"
    ctx = SimpleNamespace(cfg=cfg, label_key=LABEL)
    with pytest.raises(cs.CellsynthError, match=r"did you mean 'Zeta cells'\?.*and 107 more"):
        check_before_training(ctx, cells)


# -- 15: a histogram wider than any figure ----------------------------------------------------


def test_library_sizes_refuses_more_bins_than_a_figure_has_pixels():
    """cs.pl.library_sizes(..., bins=10**6) drew for two minutes and bins=10**9 hung, building
    a billion bin edges; more than 1,000 bins is now refused before any work."""
    real, fake = cs.simulate(60, 40, 2, seed=0), cs.simulate(60, 40, 2, seed=1)
    with pytest.raises(cs.CellsynthError, match="bins must be at most 1,000"):
        cs.pl.library_sizes(real, fake, bins=10**5)
    assert cs.pl.library_sizes(real, fake, bins=1000).has_data()


# -- 16: gene names twice or blank in the plots' AnnData ---------------------------------------


def test_umap_and_library_sizes_refuse_duplicate_or_blank_gene_names():
    """cs.pl.umap of cells whose var_names held a name twice or blank names stopped pandas with
    'Reindexing only valid with uniquely valued Index objects'; cs.pl.library_sizes summed or
    left out those genes by name without a word. Both now refuse them as every reader does
    (data.genes.check_gene_names), naming the side and the fix."""
    real, fake = cs.simulate(80, 40, 2, seed=0), cs.simulate(80, 40, 2, seed=1)
    twice, blank = real.copy(), real.copy()
    twice.var_names = ["g"] * 3 + list(real.var_names[3:])
    blank.var_names = [""] * 2 + list(real.var_names[2:])
    for bad, match in ((twice, "duplicate gene names"), (blank, "empty or only spaces")):
        for plot in (lambda a, b: cs.pl.umap(a, b, label_key=LABEL),
                     lambda a, b: cs.pl.library_sizes(a, b, label_key=LABEL)):
            with pytest.raises(cs.CellsynthError, match=f"the real data has .*{match}"):
                plot(bad, fake)
            with pytest.raises(cs.CellsynthError, match=f"the synthetic data has .*{match}"):
                plot(fake, bad)


# -- 17: the explain API given the wrong kind of object ----------------------------------------


def test_explain_type_names_an_argument_of_the_wrong_kind(small_classifier):
    """explain_type with X=None stopped with IndexError, X an AnnData with numpy's 'would
    exceed the maximum number of dimensions', gene_names=None with TypeError and
    classifier=None with AttributeError; each now says what the argument takes."""
    import anndata as ad

    from cellsynth.explain import explain_type

    clf, X, components, genes = small_classifier
    for change, match in (({"X": None}, "X takes the cells' features"),
                          ({"X": ad.AnnData(X)}, "not AnnData"),
                          ({"gene_names": None}, "gene_names takes one name per gene"),
                          ({"classifier": None}, "classifier takes a trained Classifier")):
        args = {"classifier": clf, "X": X, "cell_type": "t0", "components": components,
                "gene_names": genes, **change}
        with pytest.raises(cs.CellsynthError, match=match):
            explain_type(**args)


# -- 18: a UMAP "table" that is not one --------------------------------------------------------


def test_umap_of_an_h5ad_or_an_empty_file_given_as_its_table(tmp_path):
    """cs.pl.umap('atlas.h5ad') (the cells' file where the AnnData was meant) stopped pandas
    with UnicodeDecodeError, and an empty table file with EmptyDataError; both now say what the
    file is and what to give."""
    atlas = tmp_path / "atlas.h5ad"
    cs.simulate(40, 40, 2, seed=0).write_h5ad(atlas)
    with pytest.raises(cs.CellsynthError, match=r"is an h5ad \(HDF5\) file, not a UMAP table"):
        cs.pl.umap(atlas)
    (tmp_path / "umap.csv").write_text("")
    with pytest.raises(cs.CellsynthError, match="is not a CSV table"):
        cs.pl.umap(tmp_path / "umap.csv")
